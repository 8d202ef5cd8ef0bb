"""Distributed training for a team's training function: ``fit_xgboost`` trains an XGBoost model data-
parallel with Ray Train's ``XGBoostTrainer`` on the Ray cluster (KEEL_RAY_ADDRESS, or the local stack's
head with KEEL_RAY_WORKERS), the training rows a Ray Dataset sharded over the workers, and returns the
same ``Trained`` a single-process function returns, so keel registers, gates and serves it unchanged.

A training function opts in by calling it (``train: mymodule:fit`` in keel.yaml, ``fit`` returning
``fit_xgboost(training_set, ...)``); how a model is trained stays the team's choice.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from keel.config import Settings, load_settings
from keel.errors import KeelError
from keel.train import Trained, evaluate, time_split

OBJECTIVE = {"binary": "binary:logistic", "regression": "reg:squarederror"}


def _loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: its shard of the rows, one ``xgboost.train`` that XGBoost's collective
    (set up by the trainer) makes one model across the workers."""
    import pandas as pd
    import xgboost as xgb
    from ray import train as rt
    from ray.train.xgboost import RayTrainReportCallback

    shard = rt.get_dataset_shard("train")
    part = pd.concat(list(shard.iter_batches(batch_format="pandas", batch_size=None)), ignore_index=True)
    data = xgb.DMatrix(part[config["features"]], label=part[config["label"]])
    xgb.train(config["params"], data, num_boost_round=config["rounds"], callbacks=[RayTrainReportCallback()])


def fit_xgboost(training_set: Any, *, task: str = "binary", params: dict[str, Any] | None = None,
                num_boost_round: int = 100, workers: int | None = None, holdout_fraction: float = 0.2,
                settings: Settings | None = None) -> Trained:
    """Train on the training set's rows before the time split, across ``workers`` Ray Train workers;
    holdout metrics computed here, as a single-process function computes them. ``workers`` defaults to
    KEEL_TRAIN_WORKERS (set in a RayJob to the spec's training.ray.workers), else 2."""
    import ray
    import xgboost as xgb
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    if task not in OBJECTIVE:
        raise KeelError(f"fit_xgboost: task '{task}' is not one of: {', '.join(OBJECTIVE)}")
    if workers is None:
        workers = int(os.environ.get("KEEL_TRAIN_WORKERS") or 2)
    if workers < 1:
        raise KeelError(f"fit_xgboost: workers must be at least 1, got {workers}")
    settings = settings or load_settings()
    if not settings.ray_cluster:
        raise KeelError("fit_xgboost needs a Ray cluster: KEEL_RAY_ADDRESS, or KEEL_RAY_WORKERS > 0 and `keel up`")
    features, label = list(training_set.features), training_set.label
    train, holdout = time_split(training_set.frame, holdout_fraction)
    used = {"objective": OBJECTIVE[task], "nthread": 1, "max_depth": 6, "eta": 0.1, **(params or {})}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address=settings.ray_cluster, log_to_driver=False, configure_logging=False)
    trainer = XGBoostTrainer(
        _loop, train_loop_config={"features": features, "label": label, "params": used, "rounds": num_boost_round},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        # checkpoints where every node of a local cluster can write; on Kubernetes, shared storage
        run_config=RunConfig(storage_path=str(settings.home / "ray_train"), name=f"xgboost-{uuid.uuid4().hex[:8]}"),
        datasets={"train": ray.data.from_pandas(train[[*features, label]])})
    booster = RayTrainReportCallback.get_model(trainer.fit().checkpoint)
    model = xgb.XGBClassifier() if task == "binary" else xgb.XGBRegressor()
    model.load_model(bytearray(booster.save_raw("json")))
    return Trained(model, train, holdout, evaluate(model, holdout, features, label, task),
                   {**used, "num_boost_round": num_boost_round, "workers": workers, "trainer": "ray.train.xgboost"})
