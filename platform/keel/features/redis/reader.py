"""Serving reads of Feast's layout: one pipelined HMGET per entity key, decoded as Feast would."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.features.redis.codec import INT32, INT64, STRING, decode_value, entity_key
from keel.features.redis.layout import ViewLayout, field_name, is_cluster, redis_client
from keel.features.redis.writer import _bulk

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore


# -- reading ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Group:
    """The views of one entity key: a single HMGET fetches all their features."""

    project: str
    join_keys: tuple[tuple[str, int], ...]
    fields: bytes                             # the HMGET arguments after the key, RESP-encoded
    count: int                                # number of fields
    outputs: tuple[tuple[str, int], ...]      # (output name, ValueType) per field


class Reader:
    """A prepared read of fixed feature refs (``view:feature``) from Feast's Redis layout.

    Built once from the registry; a request then costs one pipelined HMGET per distinct entity key
    (views sharing join keys share a hash, so one command reads them all) and a decode per value.
    Returns what ``FeatureStore.get_online_features(refs, rows).to_dict()`` returns: the join keys
    given, then each feature (None where the entity or the value is missing). Like Feast's online
    read, values older than the view's TTL are returned, not filtered.
    """

    def __init__(self, store: FeatureStore, refs: Sequence[str], client: redis.Redis | None = None,
                 full_feature_names: bool = False) -> None:
        self.client = client if client is not None else redis_client(store)
        self.cluster = is_cluster(self.client)
        views: dict[str, list[str]] = {}
        for ref in refs:
            view, _, feature = ref.partition(":")
            views.setdefault(view, []).append(feature)
        groups: dict[tuple[tuple[str, int], ...], list[tuple[bytes, str, int]]] = {}
        self.join_types: dict[str, int] = {}
        seen: set[str] = set()
        for view, features in views.items():
            fv = view_named(store, view)
            layout = ViewLayout.of(fv, store.config)
            types = dict(layout.features)
            key = tuple(sorted(layout.join_keys))
            self.join_types.update(key)
            for f in features:
                if f not in types:
                    raise KeyError(f"feature '{f}' is not in view '{view}'")
                out = f"{view}__{f}" if full_feature_names else f
                if out in seen:
                    raise ValueError(f"feature name '{out}' is requested twice; use full_feature_names")
                seen.add(out)
                groups.setdefault(key, []).append((field_name(layout.name, f), out, types[f]))
        self.project = store.project
        self.groups = [
            _Group(self.project, key, b"".join(_bulk(f) for f, _, _ in fields), len(fields),
                   tuple((out, vt) for _, out, vt in fields))
            for key, fields in groups.items()]
        self.names = [out for g in self.groups for out, _ in g.outputs]

    def fetch(self, entity_rows: Sequence[Mapping[str, Any]]) -> list[list[list[bytes | None]]]:
        """Raw replies: per group, per row, the field values. One round trip for everything; a
        connection error or timeout raises (redis-py's, with the client's timeouts and no retry)."""
        plan: list[list[int]] = []   # per group: the command answering each row
        commands: list[bytes] = []
        keys: list[bytes] = []
        for g in self.groups:
            index: dict[bytes, int] = {}
            rows_to_cmd = []
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (g.count + 2)
            for row in entity_rows:
                k = entity_key(g.project, g.join_keys, row)
                i = index.get(k)
                if i is None:
                    i = index[k] = len(commands)
                    commands.append(head + _bulk(k) + g.fields)
                    keys.append(k)
                rows_to_cmd.append(i)
            plan.append(rows_to_cmd)
        if not commands:
            return [[] for _ in plan]
        if self.cluster:
            from keel.features.redis import cluster

            replies = cluster.round_trip(self.client, keys, commands)
            return [[replies[i] for i in rows_to_cmd] for rows_to_cmd in plan]
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(commands)], check_health=False)
            replies = [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return [[replies[i] for i in rows_to_cmd] for rows_to_cmd in plan]

    def read(self, entity_rows: Sequence[Mapping[str, Any]], join_keys: bool = True) -> dict[str, list[Any]]:
        """Feast's ``to_dict()`` shape: the join keys given (as Feast converts them; left out with
        ``join_keys=False``), then the features."""
        out: dict[str, list[Any]] = {}
        for k, vt in self.join_types.items() if join_keys else ():
            if entity_rows and k in entity_rows[0]:
                conv = int if vt in (INT64, INT32) else (str if vt == STRING else (lambda v: v))
                out[k] = [conv(r[k]) for r in entity_rows]
        for g, per_row in zip(self.groups, self.fetch(entity_rows), strict=True):
            for j, (name, vt) in enumerate(g.outputs):
                out[name] = [decode_value(values[j], vt) for values in per_row]
        return out

    def read_floats(self, entity_rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The features as float64 columns, NaN where missing (serving's numeric models): one array
        built per entity key group rather than one per feature."""
        out: dict[str, np.ndarray] = {}
        for g, per_row in zip(self.groups, self.fetch(entity_rows), strict=True):
            mat = _all_doubles(per_row, g.count)
            if mat is not None:
                for j, (name, _) in enumerate(g.outputs):
                    out[name] = mat[:, j]
                continue
            types = [vt for _, vt in g.outputs]
            mat = np.array([[decode_value(v, vt) for v, vt in zip(values, types, strict=True)] for values in per_row],
                           dtype=np.float64).reshape(len(per_row), g.count)
            for j, (name, _) in enumerate(g.outputs):
                out[name] = mat[:, j]
        return out


def _all_doubles(per_row: list[list[bytes | None]], count: int) -> np.ndarray | None:
    """Rows × fields as float64 when every value is a stored double (tag 0x29 + 8 bytes, the common
    case for numeric features): one join and one view instead of a decode per value. None otherwise."""
    flat = [v for values in per_row for v in values]
    if not flat or None in flat or set(map(len, flat)) != {9}:
        return None
    raw = np.frombuffer(b"".join(flat), dtype=np.uint8).reshape(len(flat), 9)
    if not (raw[:, 0] == 0x29).all():
        return None
    return raw[:, 1:].copy().view("<f8").reshape(len(per_row), count)


def read(store: FeatureStore, feature_refs: Sequence[str], entity_rows: Sequence[Mapping[str, Any]],
         client: redis.Redis | None = None) -> dict[str, list[Any]]:
    """One-off read (builds a Reader; keep a Reader for repeated reads of the same refs)."""
    return Reader(store, feature_refs, client).read(entity_rows)


def view_named(store: FeatureStore, name: str) -> Any:
    """A feature view or a stream feature view (its rows are in the online store the same way)."""
    stream = {v.name: v for v in store.list_stream_feature_views()}
    return stream[name] if name in stream else store.get_feature_view(name)
