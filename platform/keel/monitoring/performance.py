"""The performance job: were the served predictions right? Outcomes joined to the prediction log.

Per model and version (primary, canary and shadow rows each count for the version that scored them) it
computes the task's metrics on the rows that have an outcome — AUC, log loss, precision and recall at
the serving threshold for a binary model; RMSE and MAE for regression; accuracy, macro F1 and
per-class precision/recall for multiclass (the log keeps the top class, not the probabilities) — plus
label coverage (labelled rows / served rows) and label delay (outcome observed − prediction made).

The decay verdict compares the live value of the version's gate metric with the same metric on the
holdout it was registered with (its baseline), direction-aware, only once ``min_labels`` rows are
labelled and only for a version an alias (champion, challenger) still points at:
``keel_model_performance_decay`` (positive: worse than the baseline) against
``keel_model_performance_decay_threshold``. KeelModelPerformanceDecay fires on that, and the keel
controller takes it as a retraining reason ("performance") beside drift.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings
from keel.errors import KeelError, ServiceUnavailableError
from keel.monitoring.drift import parse_window

JOB = "keel_performance"
# metrics the prediction log can give: a multiclass row keeps only its top class
LIVE = {"binary": ("roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "precision", "recall"),
        "multiclass": ("accuracy", "macro_f1"), "regression": ("rmse", "mae", "r2")}


@dataclass
class VersionPerformance:
    version: str
    served_rows: int
    labelled_rows: int
    label_coverage: float
    label_delay_p50_s: float | None
    label_delay_p90_s: float | None
    metrics: dict[str, float]
    baseline: dict[str, float]
    decay_metric: str | None
    decay: float | None  # > 0: worse than the baseline by this much (in the metric's units)


@dataclass
class PerformanceResult:
    model: str
    task: str
    window_start: str
    window_end: str
    threshold: float
    decay_tolerance: float
    min_labels: int
    versions: list[VersionPerformance]
    run_id: str | None = None
    pushed: bool = False
    finished: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def of(self, version: str) -> VersionPerformance:
        for v in self.versions:
            if v.version == version:
                return v
        raise KeelError(f"no served rows of version {version} in this window; versions: "
                        f"{', '.join(v.version for v in self.versions) or '(none)'}")


def live_metrics(task: str, y: np.ndarray, pred: np.ndarray, threshold: float = 0.5,
                 classes: list[str] | None = None, only: str | None = None) -> dict[str, float]:
    """The task's metrics (or ``only`` that one) from logged predictions (a score, a value, or the top
    class's index) and labels; a metric undefined on these rows (AUC with one class present) is left
    out, not zero."""
    from sklearn import metrics as sk

    if not len(y):
        return {}
    table: dict[str, Any] = {}
    if task == "binary":
        yb, p = y.astype(int), pred.astype(float)
        hard = (p >= threshold).astype(int)
        both = len(set(yb)) == 2
        table = {
            "roc_auc": (lambda: sk.roc_auc_score(yb, p)) if both else None,
            "pr_auc": (lambda: sk.average_precision_score(yb, p)) if both else None,
            "log_loss": lambda: sk.log_loss(yb, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]),
            "accuracy": lambda: sk.accuracy_score(yb, hard),
            "f1": lambda: sk.f1_score(yb, hard, zero_division=0),
            "precision": lambda: sk.precision_score(yb, hard, zero_division=0),
            "recall": lambda: sk.recall_score(yb, hard, zero_division=0),
        }
    elif task == "regression":
        yr, p = y.astype(float), pred.astype(float)
        table = {"rmse": lambda: np.sqrt(np.mean((yr - p) ** 2)), "mae": lambda: np.mean(np.abs(yr - p)),
                 "r2": (lambda: sk.r2_score(yr, p)) if len(yr) > 1 and np.var(yr) > 0 else None}
    else:
        names = list(classes) if classes else sorted(set(map(str, y)))
        predicted = np.array([names[i] if 0 <= i < len(names) else "?" for i in pred.astype(int)], dtype=object)
        truth = y.astype(str).astype(object)
        table = {"accuracy": lambda: sk.accuracy_score(truth, predicted),
                 "macro_f1": lambda: sk.f1_score(truth, predicted, average="macro", labels=names, zero_division=0)}
        if only is None or only.startswith(("precision.", "recall.")):
            prec = sk.precision_score(truth, predicted, average=None, labels=names, zero_division=0)
            rec = sk.recall_score(truth, predicted, average=None, labels=names, zero_division=0)
            for c, pv, rv in zip(names, prec, rec, strict=True):
                table[f"precision.{c}"] = lambda v=pv: v
                table[f"recall.{c}"] = lambda v=rv: v
    wanted = [only] if only is not None else list(table)
    return {k: float(table[k]()) for k in wanted if table.get(k) is not None}


def decay_of(metric: str, live: float, baseline: float) -> float:
    """How much worse live is than the baseline, in the metric's units (negative: better)."""
    from keel.registry import metrics as rm

    return baseline - live if rm.greater_is_better(metric) else live - baseline


def read_served(uri: str, model: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The window's logged rows of every role: request_id, row, version, role, timestamp, prediction."""
    import fsspec
    import pyarrow.parquet as pq

    from keel.monitoring.drift import _window_files

    frames = []
    for path in _window_files(uri, model, start, end):
        with fsspec.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            cols = [c for c in ("request_id", "row", "version", "role", "timestamp", "prediction", "degraded")
                    if c in names]
            df = pf.read(columns=cols).to_pandas()
        if "row" not in df:
            df["row"] = df.groupby(["request_id", "role"] if "role" in df else "request_id").cumcount()
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["request_id", "row", "version", "role", "timestamp", "prediction"])
    df = pd.concat(frames, ignore_index=True)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    df["version"] = df["version"].astype(str)
    df["row"] = df["row"].astype("int64")
    return df[(df["timestamp"] >= start) & (df["timestamp"] < end)].reset_index(drop=True)


def evaluate(served: pd.DataFrame, outcomes: pd.DataFrame, task: str, baselines: dict[str, dict[str, float]],
             decay_metric: str, threshold: float = 0.5, min_labels: int = 100,
             classes: dict[str, list[str] | None] | None = None) -> list[VersionPerformance]:
    """Per served version: the metrics on its labelled rows, coverage, delay and the decay verdict."""
    labels = outcomes[["request_id", "row", "label", "observed_at"]] if len(outcomes) else \
        pd.DataFrame(columns=["request_id", "row", "label", "observed_at"])
    joined = served.merge(labels.astype({"row": "int64"}), on=["request_id", "row"], how="left")
    out = []
    for version, rows in joined.groupby("version", sort=True):
        got = rows[rows["label"].notna()]
        delay = (pd.to_datetime(got["observed_at"], utc=True) - got["timestamp"]).dt.total_seconds().clip(lower=0)
        live = live_metrics(task, got["label"].to_numpy(), got["prediction"].to_numpy(), threshold,
                            (classes or {}).get(str(version)))
        base = baselines.get(str(version), {})
        verdict = None
        if len(got) >= min_labels and decay_metric in live and decay_metric in base:
            verdict = decay_of(decay_metric, live[decay_metric], base[decay_metric])
        out.append(VersionPerformance(
            str(version), len(rows), len(got), len(got) / len(rows) if len(rows) else 0.0,
            float(delay.quantile(0.5)) if len(got) else None, float(delay.quantile(0.9)) if len(got) else None,
            live, {k: v for k, v in base.items() if k in live}, decay_metric if verdict is not None else None,
            verdict))
    return out


def decay_metric_for(task: str, gate_metric: str) -> str:
    """The gate metric when the log can measure it, else the task's first metric it can."""
    return gate_metric if gate_metric in LIVE[task] else LIVE[task][0]


def _push(settings: Settings, r: PerformanceResult, interval_s: float) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    mv = ["model", "version", "metric"]
    live = Gauge("keel_model_performance", "A task metric on the served rows that have outcomes", mv, registry=reg)
    base = Gauge("keel_model_performance_baseline", "The same metric on the version's registration holdout", mv,
                 registry=reg)
    decay = Gauge("keel_model_performance_decay", "How much worse than the baseline (metric units; > 0 worse)",
                  mv, registry=reg)
    limit = Gauge("keel_model_performance_decay_threshold", "Decay past which KeelModelPerformanceDecay fires", mv,
                  registry=reg)
    cover = Gauge("keel_model_label_coverage_ratio", "Served rows with an outcome / served rows", ["model", "version"],
                  registry=reg)
    rows = Gauge("keel_model_labelled_rows", "Served rows with an outcome in the window", ["model", "version"],
                 registry=reg)
    served = Gauge("keel_model_served_rows", "Served rows in the performance window", ["model", "version"],
                   registry=reg)
    delay = Gauge("keel_model_label_delay_seconds", "Outcome observed minus prediction made",
                  ["model", "version", "quantile"], registry=reg)
    for v in r.versions:
        for k, x in v.metrics.items():
            live.labels(r.model, v.version, k).set(x)
        for k, x in v.baseline.items():
            base.labels(r.model, v.version, k).set(x)
        if v.decay is not None and v.decay_metric:
            decay.labels(r.model, v.version, v.decay_metric).set(v.decay)
            limit.labels(r.model, v.version, v.decay_metric).set(r.decay_tolerance)
        cover.labels(r.model, v.version).set(v.label_coverage)
        rows.labels(r.model, v.version).set(v.labelled_rows)
        served.labels(r.model, v.version).set(v.served_rows)
        for q, x in (("0.5", v.label_delay_p50_s), ("0.9", v.label_delay_p90_s)):
            if x is not None:
                delay.labels(r.model, v.version, q).set(x)
    Gauge("keel_performance_job_interval_seconds", "The performance job's schedule", ["model"],
          registry=reg).labels(r.model).set(interval_s)
    Gauge("keel_performance_job_last_success_timestamp_seconds", "When the performance job last finished",
          ["model"], registry=reg).labels(r.model).set(r.finished)
    try:
        push_to_gateway(settings.pushgateway_url.removeprefix("http://"), job=JOB, grouping_key={"model": r.model},
                        registry=reg, timeout=10)
    except OSError as exc:
        raise ServiceUnavailableError("Pushgateway", settings.pushgateway_url,
                                      f"the run is kept in KEEL_HOME/performance/{r.model}/ ({exc})") from None


def _log_to_mlflow(registry: Any, r: PerformanceResult) -> str | None:
    """One monitoring run per served version (tags keel.kind=performance, keel.version), beside the
    drift runs: what a model card reads as the version's live history."""
    import mlflow

    registry.client  # noqa: B018 - sets the tracking URI
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_experiment(f"keel/{r.model}/monitoring")
    last = None
    for v in r.versions:
        with contextlib.redirect_stdout(io.StringIO()), \
                mlflow.start_run(run_name=f"performance-{r.model}-v{v.version}") as run:
            mlflow.set_tags({"keel.kind": "performance", "keel.model": r.model, "keel.version": v.version,
                             "keel.window": f"{r.window_start} .. {r.window_end}"})
            mlflow.log_metrics({**{k.replace(".", "_") if "." in k else k: x for k, x in v.metrics.items()},
                                "labelled_rows": v.labelled_rows, "served_rows": v.served_rows,
                                "label_coverage": v.label_coverage,
                                **({"label_delay_p50_seconds": v.label_delay_p50_s}
                                   if v.label_delay_p50_s is not None else {}),
                                **({"decay": v.decay} if v.decay is not None else {})})
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "performance.json").write_text(json.dumps(asdict(v), indent=1))
                mlflow.log_artifact(str(Path(tmp) / "performance.json"))
        last = str(run.info.run_id)
    return last


def run(settings: Settings, model: str, window: str | None = None, predictions: str | None = None,
        outcomes: str | None = None, interval: str | None = None, end: datetime | None = None, push: bool = True,
        progress: Callable[[str], None] | None = None) -> PerformanceResult:
    """Join, measure, push, log; the result is also kept under KEEL_HOME/performance even when a later
    step (Pushgateway, MLflow) fails. The spec's ``performance`` settings apply when it names the model."""
    import json as _json

    from keel.client import Client
    from keel.project import PerformanceSpec
    from keel.registry import metrics as rm
    from keel.registry.client import CLASSES_TAG, TASK_TAG, Registry

    say = progress or (lambda msg: None)
    spec = Client(settings).spec_of(model)
    perf = spec.performance if spec else PerformanceSpec()
    span = parse_window(window or perf.window)
    interval_s = parse_window(interval).total_seconds() if interval else span.total_seconds()
    end = end or datetime.now(UTC)
    start = end - span
    registry = Registry(settings)
    say(f"reading '{model}' versions from MLflow")
    registry._model(model)  # unknown model: the error lists the registered ones
    pred_uri = predictions or settings.predictions_location
    out_uri = outcomes or settings.outcomes_location
    say(f"reading served rows {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC from {pred_uri}")
    served = read_served(pred_uri, model, start, end)
    if served.empty:
        raise KeelError(f"no predictions of '{model}' in the window {start:%Y-%m-%d %H:%M} .. {end:%H:%M} UTC "
                        f"(prediction log: {pred_uri}); serve traffic or widen --window")
    from keel.monitoring.outcomes import read as read_outcomes

    labels = read_outcomes(out_uri, model, since=start)
    say(f"joining {len(served):,} served rows with {len(labels):,} outcomes")
    infos = {v: registry.version(model, v) for v in sorted(served["version"].unique())}
    first = next(iter(infos.values()))
    task = first.tags.get(TASK_TAG) or (spec.task if spec else "binary")
    gate_metric = spec.gate_metric if spec else first.tags.get("keel.promotion_metric", rm.DEFAULT_METRIC[task])
    metric = decay_metric_for(task, gate_metric)
    classes = {v: [str(c) for c in _json.loads(i.tags[CLASSES_TAG])] if CLASSES_TAG in i.tags else None
               for v, i in infos.items()}
    baselines = {v: dict(i.metrics) for v, i in infos.items()}
    versions = evaluate(served, labels, task, baselines, metric, perf.threshold, perf.min_labels, classes)
    for v in versions:  # a version no alias points at any more serves nobody: its decay must not retrain
        if not infos[v.version].aliases:
            v.decay, v.decay_metric = None, None
    result = PerformanceResult(model, task, start.isoformat(), end.isoformat(), perf.threshold, perf.decay_tolerance,
                               perf.min_labels, versions)
    out = settings.home / "performance" / model
    out.mkdir(parents=True, exist_ok=True)
    record = out / f"{end:%Y%m%dT%H%M%S}.json"
    record.write_text(result.to_json())
    say("logging the measurements to MLflow")
    result.run_id = _log_to_mlflow(registry, result)
    if push:
        say("pushing performance gauges to the Pushgateway")
        _push(settings, result, interval_s)
        result.pushed = True
    record.write_text(result.to_json())
    return result
