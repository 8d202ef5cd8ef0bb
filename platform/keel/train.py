"""The fraud model's training entry point: time-based split, xgboost, holdout metrics.

A time split (not a random one) is used because the model will score future transactions; a random
split leaks tomorrow's customer behaviour into today's training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from keel.errors import KeelError, require
from keel.registry import metrics as m


@dataclass(frozen=True)
class Trained:
    model: Any
    train: pd.DataFrame
    holdout: pd.DataFrame
    metrics: dict[str, float]
    params: dict[str, Any]


def time_split(frame: pd.DataFrame, holdout_fraction: float = 0.2,
               timestamp: str = "event_timestamp") -> tuple[pd.DataFrame, pd.DataFrame]:
    if not 0.0 < holdout_fraction < 1.0:
        raise KeelError(f"invalid holdout_fraction={holdout_fraction}: expected a fraction between 0 and 1")
    ordered = frame.sort_values(timestamp, kind="mergesort")
    cut = int(len(ordered) * (1.0 - holdout_fraction))
    return ordered.iloc[:cut], ordered.iloc[cut:]


def train_fraud_model(training_set: Any, holdout_fraction: float = 0.2, seed: int = 0,
                      **overrides: Any) -> Trained:
    """Fit an XGBoost classifier on a keel TrainingSet. ``overrides`` go to XGBClassifier."""
    xgb = require("xgboost", "train")
    feats, label = training_set.features, training_set.label
    train, holdout = time_split(training_set.frame, holdout_fraction)
    if train[label].nunique() < 2:
        raise KeelError(f"training rows have a single class in '{label}'; need both to train a classifier")
    params: dict[str, Any] = {"n_estimators": 150, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.9,
                              "random_state": seed, "n_jobs": 2, "tree_method": "hist", **overrides}
    model = xgb.XGBClassifier(**params)
    model.fit(train[feats], train[label])
    score = m.scores(model, holdout[feats])
    y = holdout[label].to_numpy()
    metrics = {name: m.metric(name)(y, score) for name in ("roc_auc", "pr_auc", "log_loss")}
    return Trained(model, train, holdout, metrics, params)
