"""Training functions of the delivery example: scikit-learn pipelines with a categorical string column."""

from __future__ import annotations

from typing import Any

from keel.train import Trained, evaluate, time_split

CATEGORICAL = ["vehicle"]


def _pipeline(estimator: Any, features: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    numeric = [f for f in features if f not in CATEGORICAL]
    prep = ColumnTransformer([
        ("cat", Pipeline([("fill", SimpleImputer(strategy="constant", fill_value="unknown")),
                          ("onehot", OneHotEncoder(handle_unknown="ignore"))]), CATEGORICAL),
        ("num", SimpleImputer(strategy="median"), numeric)])
    return Pipeline([("prep", prep), ("model", estimator)])


def train_regressor(training_set: Any, max_iter: int = 100, seed: int = 0) -> Trained:
    from sklearn.ensemble import HistGradientBoostingRegressor

    feats, label = training_set.features, training_set.label
    train, holdout = time_split(training_set.frame)
    model = _pipeline(HistGradientBoostingRegressor(max_iter=max_iter, random_state=seed), feats)
    model.fit(train[feats], train[label])
    return Trained(model, train, holdout, evaluate(model, holdout, feats, label, "regression"), {"max_iter": max_iter})


def train_classifier(training_set: Any, max_iter: int = 100, seed: int = 0) -> Trained:
    from sklearn.ensemble import HistGradientBoostingClassifier

    feats, label = training_set.features, training_set.label
    train, holdout = time_split(training_set.frame)
    model = _pipeline(HistGradientBoostingClassifier(max_iter=max_iter, random_state=seed), feats)
    model.fit(train[feats], train[label])
    return Trained(model, train, holdout, evaluate(model, holdout, feats, label, "multiclass"), {"max_iter": max_iter})
