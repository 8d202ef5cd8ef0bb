"""The A/B comparison: champion (primary) against challenger (sticky canary) on real outcomes.

The rows compared are the logged predictions of each variant that have an outcome, over the time the
challenger was served (both variants on the same days, so a weekday effect lands on both). The report
gives each variant's metric, the difference challenger − champion, and a percentile bootstrap
confidence interval for it: each variant's labelled rows resampled with replacement, independently
(the split is by entity, so the two groups are independent samples), ``n_boot`` times from one seeded
generator — reproducible, and for any metric, AUC included, where no closed form is simple.

``gate_passes`` is the promotion gate's use of it: the challenger may be worse than the champion by at
most the tolerance even at the pessimistic end of the interval, and each variant needs ``min_labels``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings
from keel.errors import KeelError
from keel.monitoring.performance import live_metrics

ROLES = ("primary", "canary")


@dataclass
class Variant:
    name: str  # "A" (the champion, primary) or "B" (the challenger, canary)
    version: str
    served_rows: int
    labelled_rows: int
    value: float | None


@dataclass
class ABReport:
    model: str
    metric: str
    greater_is_better: bool
    window_start: str
    window_end: str
    a: Variant
    b: Variant
    diff: float | None  # B - A
    ci_low: float | None
    ci_high: float | None
    confidence: float
    n_boot: int
    seed: int
    verdict: str  # "B better", "B worse", "no difference shown", "not enough outcomes"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric_fn(task: str, metric: str, threshold: float, classes: list[str] | None) -> Callable[..., float]:
    def fn(y: np.ndarray, pred: np.ndarray) -> float:
        got = live_metrics(task, y, pred, threshold, classes, only=metric)
        if metric not in got:
            raise KeelError(f"metric '{metric}' cannot be measured from the prediction log for task '{task}' "
                            f"on these rows; measurable: {', '.join(sorted(got)) or '(none)'}")
        return got[metric]

    return fn


def bootstrap(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], fn: Callable[..., float],
              n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of fn(B) - fn(A) over resamples; a resample where the metric is undefined
    (AUC on one class) is drawn again from the same generator."""
    rng = np.random.default_rng(seed)
    diffs = []
    (ya, pa), (yb, pb) = a, b
    while len(diffs) < n_boot:
        ia = rng.integers(0, len(ya), len(ya))
        ib = rng.integers(0, len(yb), len(yb))
        try:
            diffs.append(fn(yb[ib], pb[ib]) - fn(ya[ia], pa[ia]))
        except KeelError:
            continue
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(diffs), [tail, 100.0 - tail])
    return float(low), float(high)


def compare(model: str, joined: pd.DataFrame, task: str, metric: str, threshold: float = 0.5,
            classes: list[str] | None = None, min_labels: int = 100, n_boot: int = 1000, seed: int = 0,
            confidence: float = 0.95, versions: tuple[str, str] | None = None) -> ABReport:
    """``joined``: logged rows (version, role, timestamp, prediction) with ``label`` (NaN: no outcome yet).
    ``versions`` (A, B) picks the variants; default: the canary rows' most served version as B and the
    primary rows' most served version over B's time as A."""
    from keel.registry import metrics as rm

    rows = joined[joined["role"].isin(ROLES)]
    canary = rows[rows["role"] == "canary"]
    if versions is None:
        if canary.empty:
            raise KeelError(f"no canary traffic of '{model}' in the window: serve the challenger beside the champion "
                            "(keel deploy MODEL --canary challenger:PERCENT, sticky by default) and send outcomes")
        b_version = str(canary["version"].value_counts().idxmax())
    else:
        b_version = versions[1]
    b_rows = rows[(rows["role"] == "canary") & (rows["version"] == b_version)]
    if b_rows.empty:
        raise KeelError(f"no canary traffic of '{model}' v{b_version} in the window")
    start, end = b_rows["timestamp"].min(), b_rows["timestamp"].max()
    primary = rows[(rows["role"] == "primary") & rows["timestamp"].between(start, end)]
    if versions is None:
        if primary.empty:
            raise KeelError(f"no champion traffic of '{model}' while v{b_version} was the canary")
        a_version = str(primary["version"].value_counts().idxmax())
    else:
        a_version = versions[0]
    a_rows = primary[primary["version"] == a_version]
    fn = _metric_fn(task, metric, threshold, classes)
    variants, data = [], []
    for name, version, part in (("A", a_version, a_rows), ("B", b_version, b_rows)):
        got = part[part["label"].notna()]
        y, p = got["label"].to_numpy(), got["prediction"].to_numpy()
        try:
            value = fn(y, p) if len(got) else None
        except KeelError:
            value = None
        variants.append(Variant(name, version, len(part), len(got), value))
        data.append((y, p))
    a, b = variants
    greater = rm.greater_is_better(metric)
    base = dict(model=model, metric=metric, greater_is_better=greater, window_start=str(start), window_end=str(end),
                a=a, b=b, confidence=confidence, n_boot=n_boot, seed=seed)
    if a.value is None or b.value is None or min(a.labelled_rows, b.labelled_rows) < min_labels:
        return ABReport(**base, diff=None, ci_low=None, ci_high=None, verdict="not enough outcomes")
    low, high = bootstrap(data[0], data[1], fn, n_boot, seed, confidence)
    diff = b.value - a.value
    if low > 0 or high < 0:
        better = (low > 0) == greater
        verdict = "B better" if better else "B worse"
    else:
        verdict = "no difference shown"
    return ABReport(**base, diff=diff, ci_low=low, ci_high=high, verdict=verdict)


def gate_passes(r: ABReport, tolerance: float) -> bool:
    """The challenger (B) is at worst ``tolerance`` behind the champion (A) at the interval's pessimistic end."""
    if r.diff is None or r.ci_low is None or r.ci_high is None:
        return False
    return r.ci_low >= -tolerance if r.greater_is_better else r.ci_high <= tolerance


def joined_window(settings: Settings, model: str, window: str, predictions: str | None = None,
                  outcomes: str | None = None, end: datetime | None = None) -> pd.DataFrame:
    """The window's logged rows with their outcome's label (NaN where none came yet)."""
    from keel.monitoring.drift import parse_window
    from keel.monitoring.outcomes import read
    from keel.monitoring.performance import read_served

    end = end or datetime.now(UTC)
    start = end - parse_window(window)
    served = read_served(predictions or settings.predictions_location, model, start, end)
    labels = read(outcomes or settings.outcomes_location, model, since=start)
    if labels.empty:
        return served.assign(label=np.nan)
    return served.merge(labels[["request_id", "row", "label"]].astype({"row": "int64"}), on=["request_id", "row"],
                        how="left")


def report(settings: Settings, model: str, window: str | None = None, metric: str | None = None,
           versions: tuple[str, str] | None = None, n_boot: int = 1000, seed: int = 0) -> ABReport:
    """The A/B report of ``model`` over ``window`` (default: the spec's performance window)."""
    import json

    from keel.client import Client
    from keel.monitoring.performance import decay_metric_for
    from keel.project import PerformanceSpec
    from keel.registry import metrics as rm
    from keel.registry.client import CLASSES_TAG, TASK_TAG, Registry

    spec = Client(settings).spec_of(model)
    perf = spec.performance if spec else PerformanceSpec()
    joined = joined_window(settings, model, window or perf.window)
    if joined.empty:
        raise KeelError(f"no predictions of '{model}' in the last {window or perf.window}; serve traffic first")
    reg = Registry(settings)
    some = reg.version(model, versions[1] if versions else str(joined["version"].iloc[-1]))
    task = some.tags.get(TASK_TAG) or (spec.task if spec else "binary")
    chosen = metric or decay_metric_for(task, spec.gate_metric if spec else rm.DEFAULT_METRIC[task])
    classes = [str(c) for c in json.loads(some.tags[CLASSES_TAG])] if CLASSES_TAG in some.tags else None
    return compare(model, joined, task, chosen, perf.threshold, classes, perf.min_labels, n_boot, seed,
                   versions=versions)
