"""Tasks and their holdout metrics: what the gate compares, and which direction is better for each.

Three tasks. ``binary``: the model's output is the positive class's probability. ``multiclass``: one
probability per class (a rows × classes matrix, in the model's class order). ``regression``: the
predicted value. Each metric is defined for the tasks it makes sense for, so a spec asking for
``rmse`` on a classifier is refused when it is read, not when the gate runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keel.errors import KeelError

TASKS = ("binary", "multiclass", "regression")
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "precision", "recall"),
    "multiclass": ("log_loss", "accuracy", "macro_f1", "roc_auc_ovr"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
# what each task's training function should report, and what `keel models show` prints
REPORTED = {"binary": ("roc_auc", "pr_auc", "log_loss"), "multiclass": ("log_loss", "accuracy", "macro_f1"),
            "regression": ("rmse", "mae", "r2")}
GREATER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "accuracy": True, "f1": True, "precision": True,
                     "recall": True, "macro_f1": True, "roc_auc_ovr": True, "r2": True,
                     "log_loss": False, "rmse": False, "mae": False}
THRESHOLD = 0.5  # binary: scores at or above it count as positive for accuracy/f1/precision/recall


def _table(y: np.ndarray, out: np.ndarray, classes: Sequence[Any] | None) -> dict[str, Callable[[], float]]:
    from sklearn import metrics as sk

    if out.ndim == 2:  # multiclass probabilities
        labels = list(classes) if classes is not None else list(range(out.shape[1]))
        pred = np.asarray(labels, dtype=object)[out.argmax(axis=1)]
        yo = y.astype(object)
        return {
            "log_loss": lambda: sk.log_loss(y, np.clip(out, 1e-15, 1.0), labels=labels),
            "accuracy": lambda: sk.accuracy_score(yo, pred),
            "macro_f1": lambda: sk.f1_score(yo, pred, average="macro", labels=labels, zero_division=0),
            "roc_auc_ovr": lambda: sk.roc_auc_score(y, out, multi_class="ovr", labels=labels),
        }
    y_bin = (out >= THRESHOLD).astype(int)
    return {
        "roc_auc": lambda: sk.roc_auc_score(y, out),
        "pr_auc": lambda: sk.average_precision_score(y, out),
        "log_loss": lambda: sk.log_loss(y, np.clip(out, 1e-15, 1 - 1e-15), labels=[0, 1]),
        "accuracy": lambda: sk.accuracy_score(y, y_bin),
        "f1": lambda: sk.f1_score(y, y_bin, zero_division=0),
        "precision": lambda: sk.precision_score(y, y_bin, zero_division=0),
        "recall": lambda: sk.recall_score(y, y_bin, zero_division=0),
        "rmse": lambda: float(np.sqrt(sk.mean_squared_error(y, out))),
        "mae": lambda: sk.mean_absolute_error(y, out),
        "r2": lambda: sk.r2_score(y, out),
    }


def metric(name: str, task: str | None = None) -> Callable[..., float]:
    """``f(y_true, output, classes=None) -> float`` for a metric name (checked against the task)."""
    valid = METRICS[task] if task else tuple(sorted(GREATER_IS_BETTER))
    if name not in valid:
        where = f"task '{task}'" if task else "KEEL_PROMOTION_METRIC"
        raise KeelError(f"unknown promotion metric '{name}' ({where}); valid choices: {', '.join(sorted(valid))}")

    def score(y_true: Any, output: Any, classes: Sequence[Any] | None = None) -> float:
        return float(_table(np.asarray(y_true), np.asarray(output), classes)[name]())

    return score


def evaluate(task: str, y_true: Any, output: Any, classes: Sequence[Any] | None = None,
             names: Sequence[str] | None = None) -> dict[str, float]:
    """The task's reported metrics (or ``names``) on one holdout."""
    return {n: metric(n, task)(y_true, output, classes) for n in names or REPORTED[task]}


def greater_is_better(name: str, override: bool | None = None) -> bool:
    return GREATER_IS_BETTER[name] if override is None else override


def not_worse(name: str, challenger: float, champion: float, tolerance: float,
              greater: bool | None = None) -> bool:
    """The gate: the challenger may be worse than the champion by at most ``tolerance``."""
    if greater_is_better(name, greater):
        return challenger >= champion - tolerance
    return challenger <= champion + tolerance


def classes_of(model: object) -> list[Any] | None:
    """A classifier's class labels in its output order (sklearn-style ``classes_``), when it has them."""
    found = getattr(model, "classes_", None)
    if found is None and hasattr(model, "steps"):  # a Pipeline: its last step is the estimator
        found = getattr(model.steps[-1][1], "classes_", None)
    return None if found is None else [c.item() if hasattr(c, "item") else c for c in found]


def scores(model: object, X: object, task: str = "binary") -> np.ndarray:
    """The model's output for ``task``: binary, the positive class's probability (n,); multiclass, the
    class probabilities (n, k); regression, the prediction (n,). A torch module is called on the float32
    matrix (nulls as 0) on the device its parameters live on."""
    if not hasattr(model, "predict") and callable(model) and hasattr(model, "parameters"):
        import torch

        device = next(iter(model.parameters()), torch.empty(0)).device  # type: ignore[attr-defined]
        matrix = np.nan_to_num(np.asarray(X, dtype="float32"))
        with torch.no_grad():
            out = model(torch.as_tensor(matrix, device=device)).float().cpu().numpy()
        return out if task == "multiclass" and out.ndim == 2 else out.reshape(-1)
    if task != "regression" and hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X))
        if task == "multiclass":
            return proba
        return proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else proba.reshape(-1)
    out = np.asarray(model.predict(X))  # type: ignore[attr-defined]
    if hasattr(out, "to_numpy"):
        out = out.to_numpy()
    if task == "multiclass":
        return out
    return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.ravel()
