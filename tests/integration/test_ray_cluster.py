"""The local multi-node Ray cluster `keel up` starts (a head and two worker nodes, each its own raylet)
and batch scoring fanned out over it with Ray Data: the same scores as in-process, from both workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from keel.config import Settings
from keel.stack import Stack
from keel.stack.ray_cluster import temp_dir
from tests.conftest import free_block
from tests.integration.test_batch_score import _fresh_entities

RAY = ["ray-head", "ray-worker-1", "ray-worker-2"]


def _ray_processes(s: Settings) -> list[int]:
    mark = str(temp_dir(s)).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def ray_settings(stack: Stack, stack_settings: Settings) -> Iterator[Settings]:
    s = stack_settings.model_copy(update={"ray_workers": 2, "ray_port": free_block(4), "ray_worker_cpus": 1,
                                          "ray_object_store_mb": 128})
    cluster = Stack(s)
    try:
        states = {st.name: st.state for st in cluster.up(RAY)}
        assert states == dict.fromkeys(RAY, "healthy"), states
        yield s
    finally:
        import ray

        ray.shutdown()
        cluster.down(RAY)
    assert not _ray_processes(s), "Ray processes outlived `keel down`"
    assert not temp_dir(s).exists(), "Ray's session files outlived `keel down`"


def test_the_local_cluster_has_a_head_and_two_worker_nodes(ray_settings: Settings) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=ray_settings.ray_cluster, log_to_driver=False, configure_logging=False)
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 3
    assert sorted(n["Resources"].get("CPU", 0) for n in alive) == [0, 1, 1]  # the head schedules no work


def test_batch_scores_on_ray_equal_in_process_and_use_both_workers(
        ray_settings: Settings, served_model: dict[str, str], feature_data: dict[str, Path]) -> None:
    from keel import batch

    rows = _fresh_entities(feature_data, 40)
    local = batch.score(ray_settings, served_model["name"], rows, engine="local")
    on_ray = batch.score(ray_settings, served_model["name"], rows, chunk_rows=5, engine="ray")  # 8 blocks
    assert on_ray.nodes == 2
    assert on_ray.frame[["customer_id", "merchant_id"]].equals(rows[["customer_id", "merchant_id"]])
    np.testing.assert_allclose(on_ray.frame["score"].to_numpy(dtype="float64"),
                               local.frame["score"].to_numpy(dtype="float64"), rtol=0, atol=1e-9)
    assert not on_ray.frame["degraded"].any() and on_ray.version == local.version


def test_a_training_set_joined_on_ray_equals_the_single_process_join(
        ray_settings: Settings, feature_data: dict[str, Path]) -> None:
    import pandas as pd

    from keel.features import training

    events = pd.read_parquet(feature_data["transactions"]).head(6000)
    single = training.build(ray_settings, "fraud_model_v1", events, label="is_fraud")
    on_ray = training.build(ray_settings, "fraud_model_v1", events, label="is_fraud", engine="ray")
    assert on_ray.engine == "ray" and single.engine == "keel"
    pd.testing.assert_frame_equal(on_ray.frame, single.frame)
    assert on_ray.snapshot_hash == single.snapshot_hash  # the same content, so the same snapshot


def test_a_model_trained_with_ray_train_registers_gates_and_serves(
        ray_settings: Settings, training_set, served_model: dict[str, str]) -> None:
    import xgboost as xgb

    from keel.registry.client import Registry
    from keel.serving.core import Predictor
    from keel.train import evaluate
    from keel.train_ray import fit_xgboost

    trained = fit_xgboost(training_set, params={"max_depth": 4}, num_boost_round=40, workers=2,
                          settings=ray_settings)
    assert trained.params["workers"] == 2 and trained.params["trainer"] == "ray.train.xgboost"
    # quality within 0.02 AUC of the same XGBoost trained in one process on the same rows
    features, label = training_set.features, training_set.label
    alone = xgb.XGBClassifier(max_depth=4, learning_rate=0.1, n_estimators=40, n_jobs=1).fit(
        trained.train[features], trained.train[label])
    single = evaluate(alone, trained.holdout, features, label, "binary")["roc_auc"]
    assert abs(trained.metrics["roc_auc"] - single) <= 0.02, (trained.metrics, single)

    reg = Registry(ray_settings)
    v = reg.register(trained.model, "fraud_ray_train", training_set, trained.holdout, trained.metrics).version
    assert reg.gate("fraud_ray_train").passed  # no champion yet: the first version passes
    reg.promote("fraud_ray_train", reason="trained with Ray Train")
    answer = Predictor.from_registry(ray_settings, "fraud_ray_train").predict(
        [{"customer_id": 1, "merchant_id": 1, "amount": 30.0}])
    assert answer.version == v and 0.0 <= answer.scores[0] <= 1.0 and not any(answer.degraded)
