"""Holdout metrics the promotion gate can compare, and which direction is better for each."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from keel.errors import KeelError


def _sk(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y_true: np.ndarray, y_score: np.ndarray) -> float:
        from sklearn import metrics as m

        y_bin = (y_score >= 0.5).astype(int)
        table: dict[str, Callable[[], float]] = {
            "roc_auc": lambda: m.roc_auc_score(y_true, y_score),
            "pr_auc": lambda: m.average_precision_score(y_true, y_score),
            "log_loss": lambda: m.log_loss(y_true, np.clip(y_score, 1e-15, 1 - 1e-15), labels=[0, 1]),
            "accuracy": lambda: m.accuracy_score(y_true, y_bin),
            "f1": lambda: m.f1_score(y_true, y_bin, zero_division=0),
            "rmse": lambda: float(np.sqrt(m.mean_squared_error(y_true, y_score))),
            "mae": lambda: m.mean_absolute_error(y_true, y_score),
            "r2": lambda: m.r2_score(y_true, y_score),
        }
        return float(table[name]())

    return score


GREATER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "accuracy": True, "f1": True, "r2": True,
                     "log_loss": False, "rmse": False, "mae": False}


def metric(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    if name not in GREATER_IS_BETTER:
        raise KeelError(f"unknown promotion metric '{name}' (KEEL_PROMOTION_METRIC); "
                        f"valid choices: {', '.join(sorted(GREATER_IS_BETTER))}")
    return _sk(name)


def not_worse(name: str, challenger: float, champion: float, tolerance: float) -> bool:
    """The gate: the challenger may be worse than the champion by at most ``tolerance``."""
    if GREATER_IS_BETTER[name]:
        return challenger >= champion - tolerance
    return challenger <= champion + tolerance


def scores(model: object, X: object) -> np.ndarray:
    """Positive-class probability when the model has one, else its prediction. A torch module is
    called on the float32 matrix (nulls as 0) on the device its parameters live on."""
    if not hasattr(model, "predict") and callable(model) and hasattr(model, "parameters"):
        import torch

        device = next(iter(model.parameters()), torch.empty(0)).device  # type: ignore[attr-defined]
        matrix = np.nan_to_num(np.asarray(X, dtype="float32"))
        with torch.no_grad():
            return model(torch.as_tensor(matrix, device=device)).float().cpu().numpy().reshape(-1)
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X))
        return proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else proba
    out = np.asarray(model.predict(X))  # type: ignore[attr-defined]
    return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.ravel()
