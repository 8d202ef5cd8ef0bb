"""Online feature lookup for serving, with a timeout, a circuit breaker and defaults.

Base features come from Feast's online store (Redis); on-demand features are computed here with the
feature view's own transformation, on either the fetched values or the defaults, so the normal and
the degraded paths produce the same columns in the same way. An entity the store does not know gets
nulls, exactly as it would have in the point-in-time training set; only a failing store triggers
defaults (the training median of each feature, stored with the model) and ``degraded``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from keel.serving.breaker import CircuitBreaker

log = logging.getLogger("keel.serving")


NUMERIC = frozenset({"Int32", "Int64", "Float32", "Float64", "Bool"})
KIND_OF_VALUE_TYPE = {"INT64": "int", "INT32": "int", "STRING": "str", "BOOL": "bool", "FLOAT": "float",
                      "DOUBLE": "float", "BYTES": "str"}


def kind_of(dtype: Any) -> str:
    """A Feast type (``feast.types``) as a request kind: int, float, str, bool or object (Map/Struct/...)."""
    name = str(dtype)
    return {"Int32": "int", "Int64": "int", "Float32": "float", "Float64": "float", "Bool": "bool",
            "String": "str"}.get(name, "object")


@dataclass
class Lookup:
    columns: dict[str, np.ndarray]  # per name, one value per entity: float64 for numbers, object otherwise
    degraded: np.ndarray            # bool per row: defaults (or stale cached values) were used
    reason: str | None              # why, when any row is degraded
    hits: int = 0                   # rows answered from the feature cache (fresh)
    misses: int = 0                 # rows looked up in the store (or that would have been)
    stale: int = 0                  # rows given stale cached values because the store failed
    defaulted: np.ndarray | None = None  # bool per row: the training defaults stand in for its features

    @property
    def frame(self) -> pd.DataFrame:
        """The columns as a DataFrame: for models that take one (building it costs more than the Redis
        round trip for a single entity, so the XGBoost path never asks)."""
        return pd.DataFrame(self.columns, copy=False)

    def matrix(self, names: list[str], dtype: str = "float32") -> np.ndarray:
        """Rows × ``names``, in that order, without pandas."""
        n = len(self.degraded)
        out = np.empty((n, len(names)), dtype=dtype)
        for j, name in enumerate(names):
            out[:, j] = self.columns[name]
        return out


class FeatureCache:
    """The hot entities' base features, in process: an LRU of at most ``max_items`` entities.

    Why: on a skewed key distribution (a few accounts or users take most requests) most lookups
    repeat within a second, and a hit costs a dict lookup instead of a Redis round trip. An entry is
    fresh for ``ttl_s`` (a value materialized or pushed since is served at most that late); past it, it
    is only used while the online store is failing (stale-if-error), up to ``stale_s`` old, and such
    rows are flagged degraded: the last known values beat the training medians.
    """

    def __init__(self, ttl_s: float, max_items: int = 10_000, stale_s: float = 300.0,
                 clock: Any = time.monotonic) -> None:
        if ttl_s <= 0 or max_items < 1 or stale_s < 0:
            raise ValueError("ttl_s > 0, max_items >= 1 and stale_s >= 0 are required")
        self.ttl_s, self.max_items, self.stale_s = ttl_s, max_items, max(stale_s, ttl_s)
        self._clock = clock
        self._data: OrderedDict[tuple, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple, stale: bool = False) -> dict[str, Any] | None:
        """The entity's values if fresh (or, with ``stale``, no older than ``stale_s``), else None."""
        with self._lock:
            hit = self._data.get(key)
            if hit is None or self._clock() - hit[0] > (self.stale_s if stale else self.ttl_s):
                return None
            self._data.move_to_end(key)
            return hit[1]

    def put(self, key: tuple, value: dict[str, Any]) -> None:
        with self._lock:
            self._data[key] = (self._clock(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)


class OnlineFeatures:
    def __init__(self, store: Any, service_name: str, defaults: dict[str, float | None],
                 breaker: CircuitBreaker | None = None, cache_ttl_s: float = 0.0, cache_size: int = 10_000,
                 cache_stale_s: float = 300.0) -> None:
        from keel.features.store import feature_service, service_views

        self.store = store
        self.service = feature_service(store, service_name)
        fvs, odfvs = service_views(store, self.service)
        by_name = {p.name: p for p in self.service.feature_view_projections}
        self.entity_keys = sorted({jk for fv in fvs for jk in fv.join_keys})
        self.refs: list[str] = []
        self.base: list[str] = []
        for fv in fvs:
            for f in by_name[fv.name].features:
                self.refs.append(f"{fv.name}:{f.name}")
                self.base.append(f.name)
        self.odfvs = odfvs
        self.request_fields = sorted({f.name for od in odfvs for src in od.source_request_sources.values()
                                      for f in src.schema})
        # how each input is typed, as the repo declares it: entity keys by their entity's value type,
        # request fields by their RequestSource schema
        self.types: dict[str, str] = {}
        for fv in fvs:
            for col in fv.entity_columns:
                self.types[col.name] = kind_of(col.dtype)
        for od in odfvs:
            for src in od.source_request_sources.values():
                for f in src.schema:
                    self.types[f.name] = kind_of(f.dtype)
        # an on-demand view may read base features the service does not serve itself
        needed = {f.name: f"{p.name}:{f.name}" for od in odfvs for p in od.source_feature_view_projections.values()
                  for f in p.features}
        for name, ref in needed.items():
            if name not in self.base:
                self.refs.append(ref)
                self.base.append(name)
        # which base and on-demand outputs are numbers (float64 columns) and which are kept as objects
        schema = {f.name: str(f.dtype) for fv in fvs for f in fv.schema}
        schema.update({f.name: str(f.dtype) for od in odfvs for f in od.features})
        self.numeric = {name for name, t in schema.items() if t in NUMERIC}
        self.all_numeric = all(name in self.numeric for name in self.base)
        self.defaults = defaults
        self.breaker = breaker or CircuitBreaker()
        self.cache = FeatureCache(cache_ttl_s, cache_size, cache_stale_s) if cache_ttl_s > 0 else None
        self.reader = self._fast_reader(store)

    def _fast_reader(self, store: Any) -> Any:
        """keel's direct read of Feast's Redis layout (one HMGET per entity key, ~10x less Python than
        get_online_features), on Feast's own client for the store: the timeouts and no-retry policy of
        ``open_store(serving=True)`` apply unchanged. None (Feast's SDK path) for what it does not cover:
        another online store, aliased or join-key-mapped projections."""
        from keel.features.redis import Reader, Unsupported

        if any(p.name_alias or p.join_key_map for p in self.service.feature_view_projections):
            return None
        try:
            return Reader(store, self.refs)
        except Unsupported as exc:
            log.info("online features through Feast's SDK: %s", exc)
            return None

    def _column(self, name: str, values: list[Any]) -> np.ndarray:
        return _floats(values) if name in self.numeric else _objects(values)

    def _from_store(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if self.reader is not None:
            if self.all_numeric:
                got = self.reader.read_floats(rows)
                return {name: got[name] for name in self.base}
            raw = self.reader.read(rows, join_keys=False)
            return {name: self._column(name, raw[name]) for name in self.base}
        keys = [{k: r[k] for k in self.entity_keys} for r in rows]
        out = self.store.get_online_features(features=self.refs, entity_rows=keys).to_dict()
        return {name: self._column(name, out[name]) for name in self.base}

    def _defaults(self, n: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self.base:
            d = self.defaults.get(name)
            if name in self.numeric:
                out[name] = np.full(n, np.nan if d is None else d, dtype="float64")
            else:
                out[name] = np.full(n, d, dtype=object)
        return out

    def _columns(self, base: dict[str, np.ndarray], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Base + request + on-demand columns (pandas only for pandas-mode on-demand views)."""
        data = dict(base)
        for f in self.request_fields:
            if self.types.get(f) in ("int", "float", "bool"):
                data[f] = np.fromiter((float(r[f]) for r in rows), dtype="float64", count=len(rows))
            else:
                data[f] = _objects([r[f] for r in rows])
        inputs: Any = None
        for od in self.odfvs:
            if od.mode == "python":  # dict of lists in and out: no pandas on the request path
                out = od.feature_transformation.udf({k: v.tolist() for k, v in data.items()})
                for col, values in out.items():
                    data[col] = self._column(col, list(values))
            else:
                if inputs is None:
                    inputs = pd.DataFrame(data, copy=False)
                frame_out = od.feature_transformation.udf(inputs.copy())
                for col in frame_out.columns:
                    values = frame_out[col]
                    data[col] = values.to_numpy(dtype="float64") if col in self.numeric else _objects(list(values))
        return data

    def fetch(self, rows: list[dict[str, Any]]) -> Lookup:
        n = len(rows)
        degraded = np.zeros(n, dtype=bool)
        defaulted = None
        reason = None
        cache = self.cache
        cached: dict[int, dict[str, Any]] = {}
        keys: list[tuple] = []
        if cache is not None:
            keys = [tuple(r[k] for k in self.entity_keys) for r in rows]
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is not None:
                    cached[i] = hit
        hits = len(cached)
        missing = [i for i in range(n) if i not in cached]
        stale = 0
        fetched: dict[str, np.ndarray] | None = None
        if missing:
            if self.breaker.allow():
                try:
                    fetched = self._from_store([rows[i] for i in missing] if cached else rows)
                    self.breaker.success()
                except Exception as exc:  # any store failure degrades; it must never fail the request
                    self.breaker.failure()
                    reason = "error"
                    log.warning("online store failed (%s: %s); serving defaults", type(exc).__name__, exc)
            else:
                reason = "breaker_open"
            if fetched is None:
                if cache is not None:  # stale-if-error: the last known values, flagged, before the medians
                    for i in missing:
                        old = cache.get(keys[i], stale=True)
                        if old is not None:
                            cached[i] = old
                            degraded[i] = True
                            stale += 1
                    missing = [i for i in missing if i not in cached]
                    if stale and not missing:
                        reason = "stale"
                fetched = self._defaults(len(missing))
                degraded[missing] = True
                defaulted = np.zeros(n, dtype=bool)
                defaulted[missing] = True
            elif cache is not None:
                for j, i in enumerate(missing):
                    cache.put(keys[i], {name: col[j] for name, col in fetched.items()})
        if cached:
            base = {name: np.empty(n, dtype="float64" if name in self.numeric else object) for name in self.base}
            for name in self.base:
                column = base[name]
                for i, hit in cached.items():
                    column[i] = hit[name]
                if missing:
                    column[missing] = fetched[name]
        else:
            base = fetched or {}
        return Lookup(self._columns(base, rows), degraded, reason, hits, n - hits, stale, defaulted)


def _floats(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype="float64")


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # element by element: a list value must stay one element
        out[i] = v
    return out


class RawFeatures:
    """Raw-feature mode, for a version registered without keel: the request carries the model's inputs
    (named and typed by its MLflow signature); nothing is looked up, nothing degrades."""

    def __init__(self, types: dict[str, str]) -> None:
        self.entity_keys: list[str] = []
        self.request_fields = list(types)
        self.types = dict(types)
        self.base: list[str] = []
        self.numeric = {k for k, t in types.items() if t in ("int", "float", "bool")}
        self.breaker = CircuitBreaker()
        self.odfvs: list[Any] = []

    def fetch(self, rows: list[dict[str, Any]]) -> Lookup:
        cols = {k: (_floats([r[k] for r in rows]) if k in self.numeric else _objects([r[k] for r in rows]))
                for k in self.request_fields}
        return Lookup(cols, np.zeros(len(rows), dtype=bool), None)
