from __future__ import annotations

import numpy as np
import pytest

from keel.errors import KeelError
from keel.registry import metrics as m


@pytest.mark.parametrize(
    ("name", "challenger", "champion", "tol", "ok"),
    [
        ("roc_auc", 0.80, 0.80, 0.0, True),
        ("roc_auc", 0.79, 0.80, 0.0, False),
        ("roc_auc", 0.79, 0.80, 0.02, True),
        ("log_loss", 0.30, 0.25, 0.0, False),
        ("log_loss", 0.20, 0.25, 0.0, True),
        ("rmse", 1.05, 1.0, 0.1, True),
        ("rmse", 1.2, 1.0, 0.1, False),
        ("mae", 0.9, 1.0, 0.0, True),
    ],
)
def test_gate_direction_and_tolerance(name: str, challenger: float, champion: float, tol: float, ok: bool) -> None:
    assert m.not_worse(name, challenger, champion, tol) is ok


def test_direction_can_be_overridden_by_the_spec() -> None:
    assert m.not_worse("r2", 0.5, 0.9, 0.0, greater=False) is True


def test_unknown_metric_lists_choices() -> None:
    expected = r"unknown promotion metric 'auc' \(KEEL_PROMOTION_METRIC\); valid choices: accuracy, f1"
    with pytest.raises(KeelError, match=expected):
        m.metric("auc")
    with pytest.raises(KeelError, match=r"'roc_auc' \(task 'regression'\); valid choices: mae, r2, rmse"):
        m.metric("roc_auc", "regression")


def test_metrics_compute_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert m.metric("roc_auc")(y, s) == pytest.approx(0.75)
    assert m.metric("accuracy")(y, s) == pytest.approx(0.75)  # 0.35 falls below 0.5
    assert m.metric("rmse", "regression")(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == pytest.approx(1.0)


def test_multiclass_metrics_use_the_class_order_of_the_model() -> None:
    y = np.array(["a", "b", "c", "a"])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]])
    got = m.evaluate("multiclass", y, proba, ["a", "b", "c"])
    assert got["accuracy"] == pytest.approx(0.75)
    expected_ll = -np.mean(np.log([0.8, 0.8, 0.6, 0.3]))
    assert got["log_loss"] == pytest.approx(expected_ll)


def test_scores_by_task() -> None:
    class Clf:
        classes_ = np.array([0, 1, 2])

        def predict_proba(self, X: object) -> np.ndarray:
            return np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])

        def predict(self, X: object) -> np.ndarray:
            return np.array([0, 1])

    assert m.scores(Clf(), None, "multiclass").shape == (2, 3)
    assert m.scores(Clf(), None, "regression").tolist() == [0, 1]
    assert m.classes_of(Clf()) == [0, 1, 2]


def test_scores_take_positive_class_probability() -> None:
    class Clf:
        def predict_proba(self, X: object) -> np.ndarray:
            return np.array([[0.9, 0.1], [0.2, 0.8]])

    assert m.scores(Clf(), None).tolist() == [0.1, 0.8]
