"""The contract between keel and a team's training function, and two helpers such functions use.

A training entry point (``train: module:function`` in keel.yaml) takes a keel TrainingSet and keyword
parameters and returns ``Trained``: the fitted model, its train and holdout frames, holdout metrics and
the parameters used. keel registers exactly that; how the model is fitted is the team's business.

``time_split`` splits by time (not at random) because a model scores future events: a random split
leaks tomorrow's behaviour into today's training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keel.errors import KeelError

if TYPE_CHECKING:
    import pandas as pd


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


def evaluate(model: Any, holdout: pd.DataFrame, features: list[str], label: str, task: str) -> dict[str, float]:
    """The task's holdout metrics for ``model`` (what `keel models show` reports for each task)."""
    from keel.registry import metrics as m

    out = m.scores(model, holdout[features], task)
    return m.evaluate(task, holdout[label].to_numpy(), out, m.classes_of(model))
