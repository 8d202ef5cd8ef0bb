"""Point-in-time training sets from a feature service, snapshotted to parquet under a content hash.

The hash is over the rows in a canonical order, so the same labelled events and the same feature data
give the same hash on any machine; it is what lineage records and what drift/retraining refer to.

The join itself is keel's (``keel.features.pit``: DuckDB over the views' parquet, one sort per view)
unless ``engine="feast"``; both give the same frame, so the same hash, and keel's engine hands
anything it cannot reproduce exactly back to Feast.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from keel.config import Settings
from keel.errors import KeelError
from keel.features import pit
from keel.features import store as fstore

TIMESTAMP = "event_timestamp"
NULLED_WARN_SHARE = 0.10   # warn when the created-timestamp rule alone leaves this share of rows without features
log = logging.getLogger("keel.features")


@dataclass(frozen=True)
class TrainingSet:
    frame: pd.DataFrame
    feature_service: str
    features: list[str]          # model input columns, in the feature service's order
    entity_keys: list[str]
    label: str | None
    snapshot: Path | str         # a local file, or an fsspec URI (KEEL_SNAPSHOT_URI: s3://..., shared)
    snapshot_hash: str
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    definition_hash: str
    feature_views: list[str]
    engine: str                  # what computed the join: "keel", or "feast" (asked for, or fallen back to)
    request_fields: list[str] = field(default_factory=list)  # request-time values the service reads
    created_filter: bool = True  # Feast's filter_by_created_timestamp: feature rows created after the event dropped
    created_filter_reason: str = ""  # why it was turned off, recorded in lineage
    warnings: list[str] = field(default_factory=list)
    feature_types: dict[str, str] = field(default_factory=dict)  # feature -> Feast type, e.g. Float64, Map

    @property
    def unservable(self) -> dict[str, str]:
        """Features keel's servers cannot look up and validate (Map, Struct, Json, arrays): a model trained
        on them registers, and is refused at deploy with this list."""
        return {f: t for f, t in self.feature_types.items() if t not in SERVABLE_TYPES}


# Feast types keel's servers look up, validate in requests and fill with training defaults
SERVABLE_TYPES = frozenset({"Int32", "Int64", "Float32", "Float64", "Bool", "String", "Bytes", "UnixTimestamp"})


def _hashable(col: pd.Series) -> pd.Series:
    """Map, Struct and Json values (dicts, lists, arrays) as canonical JSON text: a snapshot of them can
    be sorted and hashed like any other column."""
    if col.dtype != object:
        return col

    def canon(v: Any) -> Any:
        if hasattr(v, "tolist") and not isinstance(v, str):
            v = v.tolist()
        if isinstance(v, dict | list | tuple):
            return json.dumps(v, sort_keys=True, default=str)
        return v

    return col.map(canon)


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash, independent of row order and of pandas' index."""
    cols = sorted(df.columns)
    canon = pd.DataFrame({c: _hashable(df[c]) for c in cols})
    canon = canon.sort_values(cols, kind="mergesort", na_position="first").reset_index(drop=True)
    h = hashlib.sha256()
    h.update(repr([(c, str(canon[c].dtype)) for c in cols]).encode())
    h.update(pd.util.hash_pandas_object(canon, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def load_events(labels: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(labels, pd.DataFrame):
        return labels
    path = fstore.resolve_repo_path(labels)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, parse_dates=[TIMESTAMP])


def build(settings: Settings, feature_service: str, labels: pd.DataFrame | str | Path,
          label: str | None = None, out_dir: Path | None = None, engine: str = "keel",
          filter_by_created_timestamp: bool = True, reason: str = "") -> TrainingSet:
    """Join labelled events to features as of each event's timestamp, with Feast's DuckDB offline-store
    semantics: computed by keel's engine (default), by keel's engine on partitions fanned out over the
    Ray cluster (``engine="ray"``) or by Feast itself (``engine="feast"``).

    The created-timestamp rule (a feature row that *arrived* after the event was not there when the
    event was scored) stays on by default, because it is right for late data. When it alone leaves a
    large share of rows without features (a backfill, whose ``created`` column is its load time), the
    training set says so loudly; ``filter_by_created_timestamp=False`` turns it off, with a ``reason``
    that lineage records."""
    engines = (*pit.ENGINES, "ray")
    if engine not in engines:
        raise KeelError(f"unknown engine '{engine}'; valid choices: {', '.join(engines)}")
    if engine == "ray" and not settings.ray_cluster:
        raise KeelError("engine 'ray' needs a Ray cluster: KEEL_RAY_ADDRESS, or KEEL_RAY_WORKERS > 0 and `keel up`")
    if not filter_by_created_timestamp and not reason.strip():
        raise KeelError("turning off the created-timestamp filter needs a reason (recorded in lineage)")
    events = load_events(labels)
    with fstore.in_repo(settings):
        return _build(settings, feature_service, events, label, out_dir, engine, filter_by_created_timestamp,
                      reason)


def _build(settings: Settings, feature_service: str, events: pd.DataFrame, label: str | None,
           out_dir: Path | None, engine: str, created_filter: bool, reason: str) -> TrainingSet:
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

    def join(created: bool) -> tuple[Any, pd.DataFrame]:
        if engine == "ray":  # keel's engine on partitions of the events, as Ray tasks across the cluster
            from keel.features import pit_ray

            return None, pit_ray.join(settings, feature_service, events, created).frame
        if engine == "keel":
            job = pit.get_historical_features(store, events, service, filter_by_created_timestamp=created)
        else:
            job = store.get_historical_features(entity_df=events, features=service,
                                                filter_by_created_timestamp=created)
        return job, job.to_df()

    job, df = join(created_filter)
    stored = [f.name for fv in fvs for p in service.feature_view_projections if p.name == fv.name
              for f in p.features]
    features = [f.name for proj in service.feature_view_projections for f in proj.features]
    types = {f.name: str(f.dtype) for proj in service.feature_view_projections for f in proj.features}
    warnings: list[str] = []
    nulled = _all_null_share(df, stored)
    if created_filter and nulled >= NULLED_WARN_SHARE:
        without = _all_null_share(join(False)[1], stored)
        if nulled - without >= NULLED_WARN_SHARE / 2:
            msg = (f"training set '{feature_service}': {nulled:.0%} of {len(df):,} rows have no stored feature; "
                   f"without the created-timestamp rule {without:.0%} would. The feature rows were created "
                   "after the events they describe (a backfill whose 'created' column is its load time?). If "
                   "so, build with filter_by_created_timestamp=False and a reason "
                   "(CLI: --no-created-filter --reason ...)")
            warnings.append(msg)
            log.warning(msg)
    df = df.sort_values([TIMESTAMP, *entity_keys], kind="mergesort").reset_index(drop=True)
    digest = frame_hash(df)
    snapshot = write_snapshot(df, out_dir or settings.snapshot_uri or settings.home / "training_sets",
                              f"{feature_service}-{digest}.parquet")
    return TrainingSet(
        frame=df, feature_service=feature_service, features=features, entity_keys=entity_keys,
        label=label, snapshot=snapshot, snapshot_hash=digest,
        window_start=events[TIMESTAMP].min(), window_end=events[TIMESTAMP].max(),
        definition_hash=fstore.definition_hash(store, service),
        feature_views=sorted(p.name for p in service.feature_view_projections),
        engine="ray" if engine == "ray" else "keel" if pit.is_keel_job(job) else "feast",
        request_fields=request_cols, created_filter=created_filter, created_filter_reason=reason,
        warnings=warnings, feature_types=types,
    )


def _all_null_share(df: pd.DataFrame, columns: list[str]) -> float:
    """Share of rows where every stored feature is null (what the created-timestamp rule can cause)."""
    cols = [c for c in columns if c in df.columns]
    if df.empty or not cols:
        return 0.0
    return float(df[cols].isna().all(axis=1).mean())


def write_snapshot(df: pd.DataFrame, where: Path | str, name: str) -> Path | str:
    """Write the snapshot once under its content hash: to a local directory (a ReadWriteMany volume on a
    cluster), or to an fsspec URI (``s3://bucket/prefix``) that every pod of a release reaches — never
    only to a pod's own disk. The name is the hash, so an existing snapshot is the same bytes."""
    text = str(where)
    if "://" not in text or text.startswith("file://"):
        out = Path(text.removeprefix("file://"))
        out.mkdir(parents=True, exist_ok=True)
        snapshot = out / name
        if not snapshot.exists():
            tmp = snapshot.with_suffix(".tmp")
            df.to_parquet(tmp, index=False)
            tmp.replace(snapshot)
        return snapshot
    import fsspec

    try:
        fs, _, (root,) = fsspec.get_fs_token_paths(text.rstrip("/"))
    except (ImportError, ValueError) as exc:
        raise KeelError(f"KEEL_SNAPSHOT_URI={text}: no filesystem for it ({exc}); expected a directory or a "
                        "URI whose fsspec backend is installed (s3:// needs s3fs)") from None
    path = f"{root}/{name}"
    if not fs.exists(path):
        fs.makedirs(root, exist_ok=True)
        with fs.open(f"{path}.tmp", "wb") as fh:
            df.to_parquet(fh, index=False)
        fs.mv(f"{path}.tmp", path)
    return f"{text.rstrip('/')}/{name}"
