"""The fraud model's training entry point (``train`` in keel.yaml): time split, XGBoost, holdout metrics.

keel calls it with a point-in-time TrainingSet and registers what it returns; nothing in it is keel's
business beyond that contract (``keel.train.Trained``).
"""

from __future__ import annotations

from typing import Any

from keel.errors import KeelError
from keel.train import Trained, evaluate, time_split


def train_fraud_model(training_set: Any, holdout_fraction: float = 0.2, seed: int = 0,
                      **overrides: Any) -> Trained:
    """Fit an XGBoost classifier on a keel TrainingSet. ``overrides`` go to XGBClassifier."""
    import xgboost as xgb

    feats, label = training_set.features, training_set.label
    train, holdout = time_split(training_set.frame, holdout_fraction)
    if train[label].nunique() < 2:
        raise KeelError(f"training rows have a single class in '{label}'; need both to train a classifier")
    params: dict[str, Any] = {"n_estimators": 150, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.9,
                              "random_state": seed, "n_jobs": 2, "tree_method": "hist", **overrides}
    model = xgb.XGBClassifier(**params)
    model.fit(train[feats], train[label])
    return Trained(model, train, holdout, evaluate(model, holdout, feats, label, "binary"), params)
