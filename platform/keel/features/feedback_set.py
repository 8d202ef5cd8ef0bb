"""Training sets from what was served: logged predictions that got an outcome.

Point-in-time correct by construction: each row's features are the values the server looked up and
scored at that moment (the prediction log keeps them), so no join against the offline store can leak a
later value into it. The label is the real outcome (``keel feedback``). Rows the server had to default
(``degraded``: the online store was down, features were missing) are left out — their features are the
training medians, not the entity's — and so are shadow rows (their request is the primary's, already in).

A spec selects it per model: ``training.source: feedback`` (only served rows) or ``both`` (the
labelled events' point-in-time join plus the served rows), over ``training.feedback_window``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from keel.config import Settings
from keel.errors import KeelError
from keel.features import store as fstore
from keel.features.training import TIMESTAMP, TrainingSet, frame_hash, write_snapshot


def served_rows(settings: Settings, model: str, since: datetime, until: datetime) -> pd.DataFrame:
    """Logged rows of ``model`` in [since, until) with every column the log kept (shadow rows left out)."""
    import fsspec

    from keel.monitoring.drift import _window_files

    frames = []
    for path in _window_files(settings.predictions_location, model, since, until):
        with fsspec.open(path, "rb") as fh:
            frames.append(pd.read_parquet(fh))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    if "row" not in df:  # logs written before rows were numbered
        df["row"] = df.groupby(["request_id", "role"]).cumcount()
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    df = df[(df["timestamp"] >= since) & (df["timestamp"] < until) & (df["role"] != "shadow")]
    return df.reset_index(drop=True)


def frame(settings: Settings, model: str, label: str, task: str, features: list[str], keys: list[str],
          since: datetime, until: datetime) -> tuple[pd.DataFrame, int, int]:
    """The served rows with outcomes as a training frame (event_timestamp, keys, features, label), and how
    many served rows and degraded rows there were."""
    from keel.monitoring.outcomes import read

    served = served_rows(settings, model, since, until)
    if served.empty:
        return pd.DataFrame(), 0, 0
    degraded = served["degraded"].astype(bool) if "degraded" in served else pd.Series(False, index=served.index)
    clean = served[~degraded]
    outcomes = read(settings.outcomes_location, model, since=since)
    if outcomes.empty:
        return pd.DataFrame(), len(served), int(degraded.sum())
    joined = clean.merge(outcomes[["request_id", "row", "label"]].astype({"row": "int64"}),
                         on=["request_id", "row"], how="inner", suffixes=("", "_outcome"))
    out = pd.DataFrame({TIMESTAMP: joined["timestamp"].astype("datetime64[us, UTC]")})
    for c in [*keys, *features]:
        out[c] = joined[c].to_numpy() if c in joined else np.nan  # a feature the served version did not use
    y = joined["label"]
    out[label] = y.astype("int64").to_numpy() if task == "binary" else y.to_numpy()
    return out, len(served), int(degraded.sum())


def build(settings: Settings, model: str, spec: object, window: str, base: TrainingSet | None = None,
          until: datetime | None = None) -> TrainingSet:
    """The feedback training set of ``model`` (its spec), or ``base`` (the labelled events' join) plus it."""
    from keel.monitoring.drift import parse_window

    until = until or datetime.now(UTC)
    since = until - parse_window(window)
    service_name = spec.feature_service  # type: ignore[attr-defined]
    with fstore.in_repo(settings):
        store = fstore.open_store(settings)
        service = fstore.feature_service(store, service_name)
        fvs, odfvs = fstore.service_views(store, service)
        keys = sorted({jk for fv in fvs for jk in fv.join_keys})
        request = sorted({f.name for od in odfvs for src in od.source_request_sources.values() for f in src.schema})
        features = [f.name for proj in service.feature_view_projections for f in proj.features]
        types = {f.name: str(f.dtype) for proj in service.feature_view_projections for f in proj.features}
        definition = fstore.definition_hash(store, service)
        views = sorted(p.name for p in service.feature_view_projections)
    label = spec.label  # type: ignore[attr-defined]
    df, served, degraded = frame(settings, model, label, spec.task, features,  # type: ignore[attr-defined]
                                 [*keys, *[r for r in request if r not in features]], since, until)
    if df.empty and base is None:
        raise KeelError(f"no served predictions of '{model}' with outcomes in the last {window} ({served} served rows, "
                        f"{degraded} degraded): send outcomes with `keel feedback`, or set training.source: labels")
    if base is not None:
        df = pd.concat([base.frame, df[[c for c in base.frame.columns if c in df.columns]]], ignore_index=True)
    df = df.sort_values([TIMESTAMP, *keys], kind="mergesort").reset_index(drop=True)
    digest = frame_hash(df)
    snapshot = write_snapshot(df, settings.snapshot_uri or settings.home / "training_sets",
                              f"{service_name}-{digest}.parquet")
    return TrainingSet(
        frame=df, feature_service=service_name, features=features, entity_keys=keys, label=label,
        snapshot=snapshot, snapshot_hash=digest, window_start=df[TIMESTAMP].min(), window_end=df[TIMESTAMP].max(),
        definition_hash=definition, feature_views=views,
        engine="feedback" if base is None else f"{base.engine}+feedback",
        request_fields=request, warnings=[] if base is None else list(base.warnings), feature_types=types,
    )
