"""The drift job: the serving model's training holdout against its recent prediction log, with Evidently.

Reference is what the model version was registered with (its holdout artifact in MLflow, scored by the
model itself for prediction drift), so it travels with the version to any cluster. Current is the
prediction log for the window: primary-role records only (canary and shadow rows belong to other
versions) and not degraded (a degraded row carries default feature values, not what clients sent).

Memory stays bounded however big the window is: files are streamed in record batches and a uniform
sample of at most ``sample_size`` rows is kept by bottom-k sampling — every row gets a random key from a
seeded generator and the rows with the k smallest keys are kept. That is a uniform sample without
replacement (the reservoir-sampling result), mergeable batch by batch, and reproducible for a seed and
the same files.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings
from keel.errors import KeelError, ServiceUnavailableError

DRIFT_JOB = "keel_drift"
PREDICTION = "prediction"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> timedelta:
    m = re.fullmatch(r"([0-9]+)([smhd])", text.strip())
    if not m or int(m.group(1)) == 0:
        raise KeelError(f"invalid window '{text}': expected a positive duration like 30m, 1h or 7d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    detected: bool


@dataclass
class DriftResult:
    model: str
    version: str
    window_start: str
    window_end: str
    rows_in_window: int
    rows_degraded: int
    reference_rows: int
    current_rows: int
    features: list[ColumnDrift]
    prediction: ColumnDrift | None
    drift_share: float
    run_id: str | None = None
    pushed: bool = False
    finished: float = field(default_factory=time.time)

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.features if c.detected]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


class BottomK:
    """A uniform sample of at most ``k`` rows of a stream of DataFrames (see the module docstring)."""

    def __init__(self, k: int, seed: int) -> None:
        if k < 1:
            raise KeelError(f"invalid sample size {k}: expected a positive number of rows")
        self.k = k
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.rows: pd.DataFrame | None = None
        self.seen = 0

    def add(self, df: pd.DataFrame) -> None:
        if df.empty:
            return
        self.seen += len(df)
        keys = self.rng.random(len(df))
        rows = df if self.rows is None else pd.concat([self.rows, df], ignore_index=True)
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.k:
            keep = np.argpartition(keys, self.k - 1)[: self.k]
            keep.sort()
            rows, keys = rows.iloc[keep].reset_index(drop=True), keys[keep]
        self.rows, self.keys = rows, keys

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame() if self.rows is None else self.rows


def _window_files(uri: str, model: str, start: datetime, end: datetime) -> list[str]:
    import fsspec

    fs, _, (root,) = fsspec.get_fs_token_paths(uri.rstrip("/"))
    files: list[str] = []
    day = start.date()
    while day <= end.date():  # partition pruning: only the dates the window touches
        files += sorted(fs.glob(f"{root}/model={model}/date={day.isoformat()}/*.parquet"))
        day += timedelta(days=1)
    return files


def read_window(uri: str, model: str, columns: list[str], start: datetime, end: datetime, sample_size: int,
                seed: int, batch_rows: int = 65_536) -> tuple[pd.DataFrame, int, int, dict[str, int]]:
    """A bounded uniform sample of the window's primary, non-degraded records, the number of such
    records, the number of degraded ones left out, and the rows per serving version."""
    import fsspec
    import pyarrow.parquet as pq

    sampler = BottomK(sample_size, seed)
    degraded = 0
    versions: dict[str, int] = {}
    wanted = [*columns, "timestamp", "role", "degraded", "version"]
    for path in _window_files(uri, model, start, end):
        with fsspec.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            present = [c for c in wanted if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
                df = batch.to_pandas()
                ts = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
                keep = (ts >= start) & (ts < end)
                if "role" in df:
                    keep &= df["role"] == "primary"
                df = df[keep]
                if "degraded" in df:
                    bad = df["degraded"].astype(bool)
                    degraded += int(bad.sum())
                    df = df[~bad]
                for v, n in df["version"].astype(str).value_counts().items():
                    versions[str(v)] = versions.get(str(v), 0) + int(n)
                missing = [c for c in columns if c not in df]
                if missing:
                    raise KeelError(f"prediction log of '{model}' lacks column(s) {', '.join(missing)}")
                sampler.add(df[columns].reset_index(drop=True))
    return sampler.frame(), sampler.seen, degraded, versions


def _quiet_evidently() -> None:
    import warnings

    with warnings.catch_warnings():  # its import chain warns about numpy and litestar internals, not us
        warnings.simplefilter("ignore")
        import evidently  # noqa: F401


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> list[ColumnDrift]:
    """Each column's verdict, from the test Evidently's DataDriftPreset would pick for it (by type and
    size: K-S below 1,000 rows, normed Wasserstein above for numbers; chi-square / Jensen-Shannon for
    categories) and at its default threshold: the same call the preset makes per column, without the
    histograms, correlations and plots it also builds for every column (most of its time)."""
    _quiet_evidently()
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    out = []
    for c in columns:
        kind = ColumnType.Numerical if pd.api.types.is_numeric_dtype(reference[c]) else ColumnType.Categorical
        ref = reference[c].replace([-np.inf, np.inf], np.nan).dropna()
        cur = current[c].replace([-np.inf, np.inf], np.nan).dropna()
        if ref.empty or cur.empty:
            raise KeelError(f"column '{c}' has no finite values in the {'reference' if ref.empty else 'current'} "
                            "data: nothing to compare")
        test = get_stattest(ref, cur, kind, None)
        res = test(ref, cur, kind, None)
        out.append(ColumnDrift(c, test.display_name, float(res.drift_score), float(res.actual_threshold),
                               bool(res.drifted)))
    return out


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, verdicts: list[ColumnDrift],
                 always: tuple[str, ...] = (PREDICTION,)) -> Any:
    """Evidently's report, with its distribution plots, for the columns that drifted and for ``always``
    (the model's output): what someone paged by the alert opens. Every column's score is in the run's
    JSON, its MLflow metrics and Prometheus; plotting all fifty columns each hour costs more than the
    whole comparison and shows nothing the scores don't."""
    _quiet_evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    shown = [v.column for v in verdicts if v.detected or v.column in always]
    if not shown:
        return None
    numerical = [c for c in shown if pd.api.types.is_numeric_dtype(reference[c])]
    definition = DataDefinition(numerical_columns=numerical,
                                categorical_columns=[c for c in shown if c not in numerical])
    return Report([ValueDrift(column=c) for c in shown]).run(
        reference_data=Dataset.from_pandas(reference[shown], data_definition=definition),
        current_data=Dataset.from_pandas(current[shown], data_definition=definition))


def evidently_drift(reference: pd.DataFrame, current: pd.DataFrame,
                    columns: list[str]) -> tuple[list[ColumnDrift], Any]:
    """The comparison the drift job makes: every column's verdict, and the report of what drifted."""
    verdicts = column_drift(reference, current, columns)
    return verdicts, drift_report(reference, current, verdicts)


def _push(settings: Settings, result: DriftResult, interval_s: float) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    labels = ["model", "version", "feature", "method"]
    score = Gauge("keel_feature_drift_score", "Per-feature drift statistic", labels, registry=reg)
    detected = Gauge("keel_feature_drift_detected", "1 when the feature drifted", labels, registry=reg)
    for c in result.features:
        score.labels(result.model, result.version, c.column, c.method).set(c.score)
        detected.labels(result.model, result.version, c.column, c.method).set(int(c.detected))
    Gauge("keel_dataset_drift_share", "Share of features that drifted", ["model", "version"],
          registry=reg).labels(result.model, result.version).set(result.drift_share)
    if result.prediction is not None:
        Gauge("keel_prediction_drift_score", "Drift statistic of the model output", ["model", "version", "method"],
              registry=reg).labels(result.model, result.version, result.prediction.method).set(result.prediction.score)
    rows = Gauge("keel_drift_rows_compared", "Rows in the compared samples", ["model", "version", "dataset"],
                 registry=reg)
    rows.labels(result.model, result.version, "reference").set(result.reference_rows)
    rows.labels(result.model, result.version, "current").set(result.current_rows)
    Gauge("keel_drift_job_interval_seconds", "The drift job's schedule", ["model"],
          registry=reg).labels(result.model).set(interval_s)
    Gauge("keel_drift_job_last_success_timestamp_seconds", "When the drift job last finished", ["model"],
          registry=reg).labels(result.model).set(result.finished)
    try:
        push_to_gateway(settings.pushgateway_url.removeprefix("http://"), job=DRIFT_JOB,
                        grouping_key={"model": result.model}, registry=reg, timeout=10)
    except OSError as exc:
        raise ServiceUnavailableError(
            "Pushgateway", settings.pushgateway_url,
            f"the run is kept in KEEL_HOME/drift/{result.model}/ and its report in MLflow ({exc})") from None


def _log_to_mlflow(registry: Any, result: DriftResult, snapshot: Any) -> str:
    """A monitoring run linked both ways to the model version: the run carries the version's tags, the
    version carries the run id (``keel.last_drift_run``)."""
    import mlflow

    registry.client  # noqa: B018 - sets the tracking URI
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "creating experiment" is not news for the CLI
    mlflow.set_experiment(f"keel/{result.model}/monitoring")
    name = f"drift-{result.model}-v{result.version}"
    with contextlib.redirect_stdout(io.StringIO()), mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({"keel.kind": "drift", "keel.model": result.model, "keel.version": result.version,
                         "keel.window": f"{result.window_start} .. {result.window_end}"})
        mlflow.log_metrics({"dataset_drift_share": result.drift_share, "rows_current": result.current_rows,
                            **{f"drift_score.{c.column}": c.score for c in result.features}})
        with tempfile.TemporaryDirectory() as tmp:
            if snapshot is not None:
                html = Path(tmp) / "drift_report.html"
                snapshot.save_html(str(html))
                mlflow.log_artifact(str(html))
            (Path(tmp) / "drift.json").write_text(result.to_json())
            mlflow.log_artifact(str(Path(tmp) / "drift.json"))
    registry.client.set_model_version_tag(result.model, result.version, "keel.last_drift_run", run.info.run_id)
    return str(run.info.run_id)


def run(settings: Settings, model: str, window: str = "1h", predictions: str | None = None,
        sample_size: int = 50_000, seed: int = 0, interval: str | None = None, end: datetime | None = None,
        push: bool = True, progress: Callable[[str], None] | None = None) -> DriftResult:
    """Compare, push gauges, log the report; the result is also kept under KEEL_HOME/drift even when a
    later step (Pushgateway, MLflow) fails, so a run is never lost. ``progress`` gets a line per step."""
    from keel.registry import metrics as rm
    from keel.registry.client import Registry

    span = parse_window(window)
    interval_s = parse_window(interval).total_seconds() if interval else span.total_seconds()
    end = end or datetime.now(UTC)
    start = end - span
    say = progress or (lambda msg: None)
    registry = Registry(settings)
    say(f"reading '{model}' champion and its holdout from MLflow")
    champion = registry.resolve(model, "champion")  # validates the model name with the valid choices
    holdout = registry._holdout(champion)
    features = [f for f in champion.tags.get("keel.features", "").split(",") if f in holdout.columns]
    if not features:
        raise KeelError(f"model '{model}' v{champion.version} records no features (tag keel.features); "
                        f"register it with `keel train` or Registry.register")
    uri = predictions or settings.predictions_location
    say(f"reading the prediction log {start:%Y-%m-%d %H:%M} .. {end:%H:%M} UTC (sample of {sample_size:,} at most)")
    current, total, degraded, versions = read_window(uri, model, [*features, PREDICTION], start, end,
                                                     sample_size, seed)
    if current.empty:
        raise KeelError(f"no predictions of '{model}' in the window {start:%Y-%m-%d %H:%M} .. {end:%H:%M} UTC "
                        f"(prediction log: {uri}); serve traffic or widen --window")
    version = max(versions, key=lambda v: versions[v])  # the version that served most of the window
    served = champion if version == champion.version else registry.version(model, version)
    if served.version != champion.version:
        holdout = registry._holdout(served)
    reference = holdout[features]
    if len(reference) > sample_size:  # sampled before scoring: the model scores only the rows compared
        reference = reference.sample(n=sample_size, random_state=seed).reset_index(drop=True)
    reference = reference.copy()
    say(f"scoring {len(reference):,} reference rows with v{served.version}")
    # the model's output as the prediction log keeps it: a score or value, or the top class's index
    out = rm.scores(registry.load(served), reference[features], served.tags.get("keel.task", "binary"))
    reference[PREDICTION] = out.argmax(axis=1).astype("float64") if out.ndim == 2 else out
    say(f"Evidently: {len(reference):,} reference vs {len(current):,} served rows, {len(features) + 1} columns")
    cols, snapshot = evidently_drift(reference, current, [*features, PREDICTION])
    feats = [c for c in cols if c.column != PREDICTION]
    pred = next((c for c in cols if c.column == PREDICTION), None)
    share = sum(c.detected for c in feats) / len(feats) if feats else 0.0
    result = DriftResult(model, served.version, start.isoformat(), end.isoformat(), total, degraded,
                         len(reference), len(current), feats, pred, share)
    out = settings.home / "drift" / model
    out.mkdir(parents=True, exist_ok=True)
    record = out / f"{end:%Y%m%dT%H%M%S}.json"
    record.write_text(result.to_json())
    say("logging the report to MLflow")
    result.run_id = _log_to_mlflow(registry, result, snapshot)
    if push:
        say("pushing drift gauges to the Pushgateway")
        _push(settings, result, interval_s)
        result.pushed = True
    record.write_text(result.to_json())
    return result
