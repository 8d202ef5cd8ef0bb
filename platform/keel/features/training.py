"""Point-in-time training sets from a feature service, snapshotted to parquet under a content hash.

The hash is over the rows in a canonical order, so the same labelled events and the same feature data
give the same hash on any machine; it is what lineage records and what drift/retraining refer to.

The join itself is keel's (``keel.features.pit``: DuckDB over the views' parquet, one sort per view)
unless ``engine="feast"``; both give the same frame, so the same hash, and keel's engine hands
anything it cannot reproduce exactly back to Feast.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from keel.config import Settings
from keel.errors import KeelError
from keel.features import pit
from keel.features import store as fstore

TIMESTAMP = "event_timestamp"


@dataclass(frozen=True)
class TrainingSet:
    frame: pd.DataFrame
    feature_service: str
    features: list[str]          # model input columns, in the feature service's order
    entity_keys: list[str]
    label: str | None
    snapshot: Path
    snapshot_hash: str
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    definition_hash: str
    feature_views: list[str]
    engine: str                  # what computed the join: "keel", or "feast" (asked for, or fallen back to)


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash, independent of row order and of pandas' index."""
    cols = sorted(df.columns)
    canon = df[cols].sort_values(cols, kind="mergesort").reset_index(drop=True)
    h = hashlib.sha256()
    h.update(repr([(c, str(canon[c].dtype)) for c in cols]).encode())
    h.update(pd.util.hash_pandas_object(canon, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _load_labels(labels: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(labels, pd.DataFrame):
        return labels
    path = fstore.resolve_repo_path(labels)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, parse_dates=[TIMESTAMP])


def build(settings: Settings, feature_service: str, labels: pd.DataFrame | str | Path,
          label: str | None = "is_fraud", out_dir: Path | None = None, engine: str = "keel") -> TrainingSet:
    """Join labelled events to features as of each event's timestamp, with Feast's DuckDB offline-store
    semantics: computed by keel's engine (default) or by Feast itself (``engine="feast"``)."""
    if engine not in pit.ENGINES:
        raise KeelError(f"unknown engine '{engine}'; valid choices: {', '.join(pit.ENGINES)}")
    events = _load_labels(labels)
    store = fstore.open_store(settings)
    service = fstore.feature_service(store, feature_service)
    fvs, odfvs = fstore.service_views(store, service)
    entity_keys = sorted({jk for fv in fvs for jk in fv.join_keys})
    request_cols = sorted({f.name for od in odfvs for src in od.source_request_sources.values()
                           for f in src.schema})
    needed = [TIMESTAMP, *entity_keys, *request_cols] + ([label] if label else [])
    missing = [c for c in needed if c not in events.columns]
    if missing:
        raise KeelError(f"labelled events lack column(s) {', '.join(missing)} needed by feature service "
                        f"'{feature_service}'; expected columns: {', '.join(needed)}")
    if events.empty:
        raise KeelError("labelled events are empty; nothing to join")
    events = events.copy()
    events[TIMESTAMP] = pd.to_datetime(events[TIMESTAMP], utc=True)

    # filter_by_created_timestamp: a feature row that *arrived* after the event was not in the online
    # store when the event was scored, so using it in training would leak the future.
    if engine == "keel":
        job = pit.get_historical_features(store, events, service, filter_by_created_timestamp=True)
    else:
        job = store.get_historical_features(entity_df=events, features=service, filter_by_created_timestamp=True)
    df = job.to_df()
    features = [f.name for proj in service.feature_view_projections for f in proj.features]
    df = df.sort_values([TIMESTAMP, *entity_keys], kind="mergesort").reset_index(drop=True)
    digest = frame_hash(df)
    out = out_dir or settings.home / "training_sets"
    out.mkdir(parents=True, exist_ok=True)
    snapshot = out / f"{feature_service}-{digest}.parquet"
    if not snapshot.exists():
        tmp = snapshot.with_suffix(".tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(snapshot)
    return TrainingSet(
        frame=df, feature_service=feature_service, features=features, entity_keys=entity_keys,
        label=label, snapshot=snapshot, snapshot_hash=digest,
        window_start=events[TIMESTAMP].min(), window_end=events[TIMESTAMP].max(),
        definition_hash=fstore.definition_hash(store, service),
        feature_views=sorted(p.name for p in service.feature_view_projections),
        engine="keel" if pit.is_keel_job(job) else "feast",
    )
