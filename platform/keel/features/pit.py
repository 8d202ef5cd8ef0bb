"""keel's point-in-time join: Feast's DuckDB offline-store semantics, computed in one sort per view.

Feast 0.67's DuckDB store (``feast.infra.offline_stores.ibis.point_in_time_join``) joins every feature
row to every labelled event of the same key, filters, then keeps the best per event with a window:
correct, but its work grows with events x feature rows per key (on 2 cores, 2M rows and 200k events:
about keel's time at 10 rows per key, 11x keel's at 1,000). This module returns the same rows and dtypes
with work that grows with rows + events, reading each view's parquet file directly with DuckDB.

What Feast computes, per feature view and event (entity key k, event time t), read from its source:
    eligible = rows with key k and  ts <= t  and  created <= t (``filter_by_created_timestamp``)
                                    and  ts + ttl >= t (when the view's ttl is truthy: both ends inclusive)
    best     = the eligible row with the greatest (ts, created); none gives nulls.
Rows whose key, ts or created is null are never eligible (SQL comparisons with NULL are not true).
Full ties on (key, ts, created) are broken arbitrarily by Feast, and arbitrarily here.

Why not a plain ASOF JOIN: with the created filter the eligible set is two-dimensional
(ts <= t and created <= t). An ASOF on ts returns a row that may not have arrived yet; an ASOF on
arrival time ``greatest(ts, created)`` returns the latest arrival, which can be older than a row that
arrived before it (a late correction). ``ts <= t and created <= t`` is ``greatest(ts, created) <= t``,
so the eligible set only grows with t: one window over the union of feature rows (at their arrival
time) and events, per key in time order, keeps a running arg-max of (ts, created) and hands each
event its best row. TTL only needs the best row: if it is expired, every eligible row is.

Everything around the join mirrors Feast so the frames are identical: feature references, view order
and ODFV dependencies come from Feast's own helpers; the entity frame goes through ibis' conversion
and DuckDB as in Feast; columns are cast to the schema ibis would give; and the returned job is a
Feast ``RetrievalJob``, so ``to_df()`` applies on-demand views exactly as Feast does. Requests this
engine cannot reproduce exactly (other stores, non-parquet sources, name clashes...) go to Feast.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    import duckdb
    from feast import FeatureService, FeatureStore
    from feast.infra.offline_stores.offline_store import RetrievalJob

log = logging.getLogger("keel.features.pit")

ENGINES = ("keel", "feast")
_RID = "__keel_rid"
_ENTITIES = "__keel_entities"
_US = timedelta(microseconds=1)


class Unsupported(Exception):
    """This request is outside what the keel engine reproduces exactly; Feast answers it instead."""


@dataclass(frozen=True)
class ViewPlan:
    """One feature view's part of the join, with names as Feast sees them after field mapping."""

    name: str
    path: str
    source_col: dict[str, str]   # name after field mapping -> column in the parquet file
    join: dict[str, str]         # feature-side join column -> entity-frame column
    ts: str
    created: str | None
    ttl_us: int | None           # None: the view has no (truthy) ttl, so rows never expire
    features: list[str]
    feature_types: dict[str, str]  # DuckDB type of each feature column, as ibis reads the file


@dataclass(frozen=True)
class Plan:
    entity_df: pd.DataFrame      # prepared as Feast prepares it (tz-aware, UTC)
    event_ts: str
    views: list[ViewPlan]
    odfvs: list[Any]
    feature_refs: list[str]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def get_historical_features(store: FeatureStore, entity_df: pd.DataFrame,
                            features: FeatureService | list[str],
                            filter_by_created_timestamp: bool = True) -> RetrievalJob:
    """Drop-in for ``store.get_historical_features(entity_df=..., features=..., filter_by_created_timestamp=...)``:
    the keel engine where it reproduces Feast exactly, Feast's own job otherwise."""
    try:
        plan = make_plan(store, entity_df, features, filter_by_created_timestamp)
    except Unsupported as why:
        log.info("point-in-time join by Feast: %s", why)
        return store.get_historical_features(entity_df=entity_df, features=features,
                                             filter_by_created_timestamp=filter_by_created_timestamp)
    return retrieval_job(plan)


def make_plan(store: FeatureStore, entity_df: pd.DataFrame, features: FeatureService | list[str],
              filter_by_created_timestamp: bool = True) -> Plan:
    """Resolve views and features as ``FeatureStore.get_historical_features`` and Feast's ibis PIT do."""
    from feast import utils
    from feast.infra.offline_stores import offline_utils
    from feast.on_demand_feature_view import OnDemandFeatureView

    from keel.compat import feast as compat

    if store.config.offline_store.type != "duckdb":
        raise Unsupported(f"offline store '{store.config.offline_store.type}' (keel reproduces 'duckdb')")
    if not isinstance(entity_df, pd.DataFrame):
        raise Unsupported("entity_df is not a pandas DataFrame")

    refs, all_fvs, all_odfvs = compat.resolve_features(store, features)
    all_odfvs = copy.deepcopy(all_odfvs)
    for od in all_odfvs:
        od.write_to_online_store = False
    fvs, odfv_groups = compat.group_feature_refs(refs, all_fvs, all_odfvs)
    # ODFV inputs not requested themselves are still retrieved (and returned), as Feast does.
    provider_refs = list(refs)
    seen = set(refs)
    for view, feats in fvs:
        for feat in feats:
            ref = f"{view.projection.name_to_use()}:{feat}"
            if ref not in seen:
                provider_refs.append(ref)
                seen.add(ref)

    df = utils.make_df_tzaware(entity_df) if store.config.coerce_tz_aware else entity_df.copy()
    for od, _ in odfv_groups:
        missing = [n for n in od.get_request_data_schema() if n not in df.columns]
        if missing:
            raise Unsupported(f"request data {missing} missing (Feast reports it)")
    compat.validate_feature_refs(refs)
    event_ts = offline_utils.infer_event_timestamp_from_entity_df(dict(zip(df.columns, df.dtypes, strict=True)))
    df = compat.to_utc(df, event_ts)

    times = df[event_ts].dropna()
    if len(times) and max(abs(times.min().year - 1970), abs(times.max().year - 1970)) > 140_000:
        raise Unsupported("event times beyond the +-2**62 microseconds keel's sort key holds")

    odfvs = OnDemandFeatureView.get_requested_odfvs(provider_refs, store.project, store.registry)
    if any(od.mode == "substrait" for od in odfvs):
        raise Unsupported("a substrait on-demand view")
    if "entity_row_id" in df.columns or _RID in df.columns:
        raise Unsupported("the entity frame has a column Feast or keel uses internally")
    if not filter_by_created_timestamp:
        raise Unsupported("filter_by_created_timestamp=False")

    views = [_view_plan(view, provider_refs) for view, _ in fvs]
    names = list(df.columns)
    for v in views:
        missing = [c for c in v.join.values() if c not in df.columns]
        if missing:
            raise Unsupported(f"entity frame lacks join key(s) {missing} of '{v.name}' (Feast reports it)")
        names += v.features
    if len(set(names)) != len(names):
        raise Unsupported("a feature name repeats or equals an entity-frame column (Feast renames it)")
    return Plan(entity_df=df, event_ts=event_ts, views=views, odfvs=[od for od in odfvs if od.mode != "substrait"],
                feature_refs=provider_refs)


def _view_plan(fv: Any, provider_refs: list[str]) -> ViewPlan:
    import duckdb
    from feast.data_format import ParquetFormat
    from feast.infra.offline_stores.file_source import FileSource

    src = fv.batch_source
    if type(src) is not FileSource:
        raise Unsupported(f"'{fv.name}' has a {type(src).__name__}, not a FileSource")
    path = src.path
    fmt = src.file_format
    if not (isinstance(fmt, ParquetFormat) or (fmt is None and path.endswith(".parquet"))):
        raise Unsupported(f"'{fv.name}' is not parquet")
    # Feast (ibis.read_parquet) resolves a relative path from the CWD; so does os.path here.
    if "://" in path or any(ch in path for ch in "*?[") or not os.path.isfile(path):
        raise Unsupported(f"'{fv.name}' source {path} is not one local parquet file")

    with duckdb.connect() as con:  # the types ibis sees: it reads the file as SELECT * FROM read_parquet(path)
        described = con.sql(f"DESCRIBE SELECT * FROM read_parquet({_lit(path)})").fetchall()
    file_types = {row[0]: row[1] for row in described}
    # Feast renames a mapped column only when the file has it (ibis rename {new: old}).
    source_col = {c: c for c in file_types}
    for old, new in src.field_mapping.items():
        if old in source_col:
            del source_col[old]
            source_col[new] = old
    types = {name: file_types[col] for name, col in source_col.items()}

    prefix = fv.projection.name_to_use()
    feats = [r.split(":")[1] for r in provider_refs if r.startswith(f"{prefix}:")]
    join = fv.projection.join_key_map or {e.name: e.name for e in fv.entity_columns}
    ts, created = src.timestamp_field, src.created_timestamp_column or None
    needed = [*join, ts, *([created] if created else []), *feats]
    missing = [c for c in needed if c not in types]
    if missing:
        raise Unsupported(f"'{fv.name}' source lacks {missing} (Feast reports it)")
    if any(f.endswith("_y") for f in feats):
        raise Unsupported(f"'{fv.name}' has a feature ending in _y (Feast drops such columns)")
    if {"__row", "__ts", _RID} & set(feats):
        raise Unsupported(f"'{fv.name}' has a feature named like a column keel uses internally")
    if len(set(join.values())) != len(join):
        raise Unsupported(f"'{fv.name}' maps two join keys to one entity column")
    ttl_us = fv.ttl // _US if fv.ttl else None
    return ViewPlan(name=fv.name, path=path, source_col=source_col, join=dict(join), ts=ts, created=created,
                    ttl_us=ttl_us, features=feats, feature_types={f: types[f] for f in feats})


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _view_sql(v: ViewPlan, event_ts: str, t_min: int, t_max: int) -> str:
    """One query per view: (rid, features) for each event that has a best row, TTL applied.

    The window runs over the union of feature rows (at their arrival time) and events, per key in time
    order, feature rows before events at equal times (both bounds are inclusive). Its running arg-max
    of (ts, created) gives each event its best row's file row number; features are then fetched by
    that number from a second scan of the file.
    """
    col = v.source_col
    keys = list(v.join)
    part = ", ".join(f"__k{i}" for i in range(len(keys)))
    fkeys = ", ".join(f"{_q(col[k])} AS __k{i}" for i, k in enumerate(keys))
    ekeys = ", ".join(f"{_q(v.join[k])} AS __k{i}" for i, k in enumerate(keys))
    ts = f"CAST({_q(col[v.ts])} AS TIMESTAMPTZ)"  # as Feast casts them
    where = [f"{_q(col[k])} IS NOT NULL" for k in keys] + [f"{_q(col[v.ts])} IS NOT NULL"]
    if v.created:
        cr = f"CAST({_q(col[v.created])} AS TIMESTAMPTZ)"
        where.append(f"{_q(col[v.created])} IS NOT NULL")
        # ts <= t and created <= t  <=>  greatest(ts, created) <= t. (ts, created) is packed into one
        # HUGEINT that orders lexicographically (created shifted to be non-negative).
        arrival = f"greatest({ts}, {cr})"
        rank = (f"epoch_us({ts})::HUGEINT * 18446744073709551616::HUGEINT"
                f" + (epoch_us({cr})::HUGEINT + 9223372036854775808::HUGEINT)")
    else:
        arrival, rank = ts, f"epoch_us({ts})"
    # Rows that arrive after the last event, or expire before the first, can serve no event, and
    # dropping them changes no answer (an expired best row only ever beats other expired rows).
    where.append(f"epoch_us({arrival}) <= {t_max}")
    if v.ttl_us is not None:
        where.append(f"epoch_us({ts}) + {v.ttl_us} >= {t_min}")
    e_where = " AND ".join([f"{_q(c)} IS NOT NULL" for c in v.join.values()] + [f"{_q(event_ts)} IS NOT NULL"])
    # Only rows of keys some event has can be anyone's best row: a semi join against the events' keys,
    # probed while the file streams past, keeps what DuckDB holds for the window to the events' keys'
    # rows. For a partition of the events by key (keel.features.pit_ray) that is the partition's share.
    on = " AND ".join(f"s.{_q(col[k])} = e.__k{i}" for i, k in enumerate(keys))
    # t: time in microseconds, doubled, +1 for events, so one integer sorts feature rows before events
    # at equal times. Events carry a null rank (ignored by arg_max) and their row id in p.
    alive = "TRUE" if v.ttl_us is None else f"epoch_us(f.__ts) + {v.ttl_us} >= (b.t - 1) // 2"  # ts + ttl >= t
    feats = ", ".join(f"CASE WHEN {alive} THEN f.{_q(f)} END AS {_q(f)}" for f in v.features)
    fcols = ", ".join(f"{_q(col[f])} AS {_q(f)}" for f in v.features)
    return f"""
        WITH best AS (
            SELECT p AS rid, t, ptr FROM (
                SELECT r, p, t, arg_max(p, r) OVER (PARTITION BY {part} ORDER BY t ROWS UNBOUNDED PRECEDING) AS ptr
                FROM (
                    SELECT {fkeys}, epoch_us({arrival}) * 2 AS t, {rank} AS r, file_row_number AS p
                    FROM read_parquet({_lit(v.path)}, file_row_number = true) s
                    SEMI JOIN (SELECT DISTINCT {ekeys} FROM {_ENTITIES} WHERE {e_where}) e ON {on}
                    WHERE {" AND ".join(where)}
                    UNION ALL
                    SELECT {ekeys}, epoch_us(CAST({_q(event_ts)} AS TIMESTAMPTZ)) * 2 + 1, NULL, {_RID}
                    FROM {_ENTITIES} WHERE {e_where}
                )
            ) WHERE r IS NULL AND ptr IS NOT NULL
        )
        SELECT b.rid AS {_RID}{", " if feats else ""}{feats}
        FROM best b JOIN (
            SELECT file_row_number AS __row, {ts} AS __ts{", " if fcols else ""}{fcols}
            FROM read_parquet({_lit(v.path)}, file_row_number = true)
        ) f ON f.__row = b.ptr"""


def join(plan: Plan) -> pa.Table:
    """The point-in-time joined table, before on-demand views: entity columns, then each view's features,
    with the arrow types Feast's DuckDB store returns, rows in the entity frame's order."""
    import duckdb
    import ibis
    from ibis.backends.duckdb.converter import DuckDBPyArrowData
    from ibis.backends.sql.datatypes import DuckDBType

    # The entity frame reaches DuckDB the way ibis sends Feast's memtable there.
    op = ibis.memtable(plan.entity_df).op()
    entity_schema = op.schema
    try:
        entities = op.data.to_pyarrow_dataset(entity_schema).to_table()
    except AttributeError:
        entities = op.data.to_pyarrow(entity_schema)
    n = entities.num_rows
    schema = dict(entity_schema.items())
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")  # as ibis' DuckDB backend: naive times read as UTC
        con.register(_ENTITIES, entities.append_column(_RID, pa.array(np.arange(n, dtype=np.int64))))
        out = con.sql(f"SELECT * EXCLUDE ({_RID}) FROM {_ENTITIES} ORDER BY {_RID}").to_arrow_table()
        t_min, t_max = con.sql(f"SELECT epoch_us(min(t)), epoch_us(max(t)) FROM (SELECT CAST({_q(plan.event_ts)} "
                               f"AS TIMESTAMPTZ) AS t FROM {_ENTITIES})").fetchall()[0]
        for v in plan.views:
            if t_min is None:  # no event has a time: nothing is eligible
                found = con.sql(f"SELECT NULL::BIGINT AS {_RID} WHERE FALSE").to_arrow_table()
            else:
                found = con.sql(_view_sql(v, plan.event_ts, t_min, t_max)).to_arrow_table()
            # scatter to entity order; events without a (live) best row get nulls
            at = np.full(n, -1, dtype=np.int64)
            at[found[_RID].to_numpy()] = np.arange(found.num_rows, dtype=np.int64)
            picked = pa.array(at, mask=at < 0)
            for f in v.features:
                column = found[f] if f in found.column_names else pa.nulls(0, type=_arrow_type(con, v, f))
                out = out.append_column(f, column.take(picked))
                schema[f] = DuckDBType.from_string(v.feature_types[f], nullable=True)
    finally:
        con.close()
    return DuckDBPyArrowData.convert_table(out, ibis.schema(schema))


def _arrow_type(con: duckdb.DuckDBPyConnection, v: ViewPlan, feature: str) -> pa.DataType:
    t: pa.DataType = con.sql(f"SELECT {_q(v.source_col[feature])} FROM read_parquet({_lit(v.path)}) LIMIT 0"
                             ).to_arrow_table().schema.field(0).type
    return t


def retrieval_job(plan: Plan) -> RetrievalJob:
    """The job for a plan; like Feast's, it runs when asked for its frame (``to_df``/``to_arrow``)."""
    job: RetrievalJob = _job_class()(plan)
    return job


def is_keel_job(job: object) -> bool:
    """Whether a job came from keel's engine (rather than from Feast, asked for or fallen back to)."""
    return _JOB is not None and isinstance(job, _JOB)


_JOB: type | None = None


def _job_class() -> type:
    """A Feast RetrievalJob over :func:`join`, so Feast's own ``to_arrow``/``to_df`` apply the on-demand
    views, choose their columns and convert to pandas exactly as for its own jobs."""
    global _JOB
    if _JOB is not None:
        return _JOB
    from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata

    class _KeelJob(RetrievalJob):
        def __init__(self, plan: Plan) -> None:
            self._plan = plan
            ts = plan.entity_df[plan.event_ts]
            self._metadata = RetrievalMetadata(
                features=plan.feature_refs, keys=list(set(plan.entity_df.columns) - {plan.event_ts}),
                min_event_timestamp=ts.min().to_pydatetime() if len(ts) else None,
                max_event_timestamp=ts.max().to_pydatetime() if len(ts) else None)

        def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
            return join(self._plan)

        def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
            return self._to_arrow_internal(timeout).to_pandas()

        @property
        def full_feature_names(self) -> bool:
            return False

        @property
        def on_demand_feature_views(self) -> list[Any]:
            return self._plan.odfvs

        @property
        def metadata(self) -> Any:
            return self._metadata

        def persist(self, storage: Any, allow_overwrite: bool = False, timeout: int | None = None) -> None:
            raise NotImplementedError("keel's point-in-time job is not persisted; save its frame instead")

    _JOB = _KeelJob
    return _JOB
