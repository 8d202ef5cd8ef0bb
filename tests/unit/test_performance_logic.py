"""The performance job's pure logic: metrics per served version on the rows with outcomes, coverage,
delay, and the direction-aware decay verdict that only comes with enough labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as sk

from keel.monitoring.performance import decay_metric_for, decay_of, evaluate, live_metrics

T0 = pd.Timestamp("2026-12-01T12:00:00Z")


def _served(n: int, version: str, rng: np.random.Generator, role: str = "primary") -> pd.DataFrame:
    return pd.DataFrame({"request_id": [f"{version}-{i}" for i in range(n)], "row": 0, "version": version,
                         "role": role, "timestamp": T0 + pd.to_timedelta(np.arange(n), unit="s"),
                         "prediction": rng.random(n)})


def test_metrics_per_version_match_sklearn_on_the_labelled_rows() -> None:
    rng = np.random.default_rng(0)
    served = pd.concat([_served(400, "1", rng), _served(100, "2", rng, "canary")], ignore_index=True)
    labelled = served.sample(frac=0.6, random_state=1)
    y = (rng.random(len(labelled)) < labelled["prediction"]).astype(int)
    outcomes = pd.DataFrame({"request_id": labelled["request_id"], "row": 0, "label": y.astype(float),
                             "observed_at": labelled["timestamp"] + pd.Timedelta(hours=2)})
    got = {v.version: v for v in evaluate(served, outcomes, "binary", {"1": {"roc_auc": 0.9}}, "roc_auc",
                                          threshold=0.5, min_labels=50)}
    for version, n in (("1", 400), ("2", 100)):
        rows = labelled[labelled["version"] == version]
        yv = y[(labelled["version"] == version).to_numpy()]
        v = got[version]
        assert (v.served_rows, v.labelled_rows) == (n, len(rows))
        assert v.label_coverage == len(rows) / n
        assert v.metrics["roc_auc"] == sk.roc_auc_score(yv, rows["prediction"])
        assert v.metrics["precision"] == sk.precision_score(yv, rows["prediction"] >= 0.5)
        assert abs(v.metrics["log_loss"] - sk.log_loss(yv, rows["prediction"], labels=[0, 1])) < 1e-12
        assert v.label_delay_p50_s == 7200.0
    assert got["1"].decay == 0.9 - got["1"].metrics["roc_auc"] and got["1"].decay_metric == "roc_auc"
    assert got["2"].decay is None  # no baseline recorded for v2: no verdict


def test_no_verdict_below_min_labels_and_direction_for_lower_is_better() -> None:
    rng = np.random.default_rng(1)
    served = _served(50, "3", rng)
    outcomes = pd.DataFrame({"request_id": served["request_id"], "row": 0, "label": served["prediction"] + 1.0,
                             "observed_at": served["timestamp"]})
    (v,) = evaluate(served, outcomes, "regression", {"3": {"rmse": 0.5}}, "rmse", min_labels=51)
    assert v.decay is None and abs(v.metrics["rmse"] - 1.0) < 1e-9
    (v,) = evaluate(served, outcomes, "regression", {"3": {"rmse": 0.5}}, "rmse", min_labels=50)
    assert abs(v.decay - 0.5) < 1e-9  # rmse 1.0 against 0.5: worse by 0.5
    assert decay_of("roc_auc", 0.7, 0.9) > 0 and decay_of("log_loss", 0.2, 0.3) < 0


def test_multiclass_from_the_logged_top_class() -> None:
    y = np.array(["a", "b", "c", "a", "b", "c"])
    pred = np.array([0, 1, 1, 0, 2, 2], dtype=float)  # indexes into the version's classes
    got = live_metrics("multiclass", y, pred, classes=["a", "b", "c"])
    assert got["accuracy"] == 4 / 6
    assert got["precision.b"] == 0.5 and got["recall.c"] == 0.5 and got["recall.a"] == 1.0
    assert decay_metric_for("multiclass", "log_loss") == "accuracy"  # the log has no probabilities
    assert decay_metric_for("binary", "roc_auc") == "roc_auc"


def test_auc_is_left_out_with_one_class() -> None:
    got = live_metrics("binary", np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]))
    assert "roc_auc" not in got and got["recall"] == 2 / 3
