"""Feast's Redis online-store layout, written and read by keel directly (the fast path).

Why: Feast builds one Python ``ValueProto`` object per value, both to materialize (about a thousand
rows/s at 50 features) and to serve (1-2 ms of Python per request). The bytes it stores are
deterministic, so keel produces and parses exactly those bytes itself, column at a time with
numpy/pyarrow, and talks to Redis over a pipelined connection. Feast stays the owner of the
definitions and keeps reading what keel writes (and the other way round); the integration tests
compare the stored hashes byte for byte.

The layout (Feast 0.67, ``online_store.type: redis``, ``entity_key_serialization_version: 3``):

- key: ``serialize_entity_key`` v3 of the view's join keys sorted by name, then the project name:
  ``<u32 n> (<u32 STRING=2> <u32 len> name)* (<u32 value type> <u32 len> value)* project``, where an
  INT64 value is 8 little-endian bytes, INT32 4, a string its UTF-8 bytes.
- one hash per entity key, shared by every view with those join keys. A feature's field is
  ``murmur3_32("<view>:<feature>")`` as 4 little-endian bytes; its value the serialized ``ValueProto``
  (``b""`` for a null: Feast writes an empty proto for None and NaN). ``_ts:<view>`` holds the row's
  event time as a serialized ``google.protobuf.Timestamp`` (microsecond precision, as Feast writes it).
  ``<view>`` is the view's name, with ``_v<N>`` when the registry enables online view versioning.
- ``key_ttl_seconds`` in the store config: EXPIRE on the key after each write.
- a write is skipped when the stored ``_ts:<view>`` is the same instant or newer (Feast's check);
  reads do not filter by the view's TTL (Feast's ``get_online_features`` does not either).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

# Feast's ValueType numbers (feast/types/Value.proto): fixed by the proto, so the hot path needs no Feast import.
BYTES, STRING, INT32, INT64, DOUBLE, FLOAT, BOOL = 1, 2, 3, 4, 5, 6, 7
# ValueProto's oneof field tags, (field number << 3) | wire type.
_TAG = {STRING: 0x12, INT32: 0x18, INT64: 0x20, DOUBLE: 0x29, FLOAT: 0x35, BOOL: 0x38}
_FIXED = {DOUBLE: 8, FLOAT: 4, BOOL: 1}  # payload width of the fixed-size scalars
_U8 = np.uint8
_CHUNK_ROWS = 4096  # entities per pipeline round trip: big enough to amortize it, small enough to bound memory


class Unsupported(Exception):
    """This view or store is outside the fast path; Feast's own path handles it."""


# -- encoders --------------------------------------------------------------------------------------

def field_name(view: str, feature: str) -> bytes:
    """A feature's hash field: Feast's ``_mmh3`` (murmur3_32, unsigned, 4 little-endian bytes)."""
    return mmh3.hash(f"{view}:{feature}", signed=False).to_bytes(4, "little")


def ts_field(view: str) -> bytes:
    """The hash field holding a view's event timestamp."""
    return f"_ts:{view}".encode()


def _binary(mat: np.ndarray, lengths: np.ndarray | None = None) -> pa.Array:
    """A binary array from a row-per-value byte matrix; ``lengths`` keeps each row's first bytes only."""
    n, w = mat.shape
    if lengths is None:
        offsets = np.arange(0, (n + 1) * w, w, dtype=np.int32)
        data = np.ascontiguousarray(mat)
    else:
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        data = mat[np.arange(w) < lengths[:, None]]
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _varints(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf base-128 varints of uint64 values: (n × 10 byte matrix, length per row)."""
    u = u.astype(np.uint64, copy=True)
    n = len(u)
    mat = np.zeros((n, 10), dtype=_U8)
    lengths = np.ones(n, dtype=np.int64)
    seven = np.uint64(7)
    for i in range(10):
        mat[:, i] = (u & np.uint64(0x7F)).astype(_U8)
        u >>= seven
        more = u != 0
        if not more.any():
            break
        mat[:, i] |= more.astype(_U8) << 7
        lengths += more
    return mat, lengths


def _tagged_varints(tag: int, u: np.ndarray, null: np.ndarray) -> pa.Array:
    mat, lengths = _varints(u)
    full = np.empty((len(u), 11), dtype=_U8)
    full[:, 0] = tag
    full[:, 1:] = mat
    return _binary(full, np.where(null, 0, lengths + 1))


def _as_arrow(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, from_pandas=True)  # pandas/numpy: NaN and None become nulls


def _null_mask(arr: pa.Array) -> np.ndarray:
    """Rows Feast stores as null: missing values, and NaN (Feast tests ``pd.isnull``)."""
    if pa.types.is_floating(arr.type):
        return pc.is_null(arr, nan_is_null=True).to_numpy(zero_copy_only=False)
    if arr.null_count == 0:
        return np.zeros(len(arr), dtype=bool)
    return pc.is_null(arr).to_numpy(zero_copy_only=False)


def _ints(arr: pa.Array) -> np.ndarray:
    """int64 of each value as Feast's ``int(x)`` gives it (floats truncate); nulls read 0."""
    if pa.types.is_floating(arr.type):
        x = pc.fill_null(arr, 0.0).to_numpy(zero_copy_only=False)
        return np.trunc(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int64)
    if pa.types.is_boolean(arr.type):
        return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(np.int64)
    return pc.fill_null(arr, 0).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _floats(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)


def _fast_kind(arr: pa.Array, value_type: int) -> bool:
    t = arr.type
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
    if value_type in (INT64, INT32, DOUBLE, FLOAT, BOOL):
        return numeric
    if value_type == STRING:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
    return False


def encode_values(values: Any, value_type: int) -> pa.Array:
    """Serialized ``ValueProto`` per row, byte-identical to Feast's ``python_values_to_proto_values``
    (as materialization calls it) followed by ``SerializeToString``; a null is ``b""``.

    Scalars Float64/Float32/Int64/Int32/Bool/String are encoded here with numpy; other types (and
    columns whose arrow type needs Feast's coercions, e.g. ints declared as String) go through Feast.
    One deliberate difference: Feast reads an int column that has nulls through float64, so it rounds
    integers beyond 2**53 in such a column; keel writes them exactly.
    """
    arr = _as_arrow(values)
    n = len(arr)
    if not _fast_kind(arr, value_type):
        return _feast_encode(arr, value_type)
    null = _null_mask(arr)
    if value_type == DOUBLE:
        mat = np.empty((n, 9), dtype=_U8)
        mat[:, 0] = _TAG[DOUBLE]
        mat[:, 1:] = _floats(arr).astype("<f8").view(_U8).reshape(n, 8)
        return _binary(mat, np.where(null, 0, 9)) if null.any() else _binary(mat)
    if value_type == FLOAT:
        mat = np.empty((n, 5), dtype=_U8)
        mat[:, 0] = _TAG[FLOAT]
        with np.errstate(over="ignore"):
            mat[:, 1:] = _floats(arr).astype("<f4").view(_U8).reshape(n, 4)
        return _binary(mat, np.where(null, 0, 5)) if null.any() else _binary(mat)
    if value_type == BOOL:
        mat = np.empty((n, 2), dtype=_U8)
        mat[:, 0] = _TAG[BOOL]
        mat[:, 1] = _ints(arr) != 0
        return _binary(mat, np.where(null, 0, 2)) if null.any() else _binary(mat)
    if value_type in (INT64, INT32):
        ints = _ints(arr)
        if value_type == INT32 and ((ints < -(2**31)) | (ints >= 2**31))[~null].any():
            raise ValueError("Int32 feature value out of range")
        # negative int32 and int64 are both sign-extended to 64 bits on the wire
        return _tagged_varints(_TAG[value_type], ints.view(np.uint64), null)
    # STRING: tag, varint length, UTF-8 bytes
    data = pc.fill_null(arr.cast(pa.string()), "").cast(pa.binary())
    mat, lengths = _varints(pc.binary_length(data).to_numpy(zero_copy_only=False).astype(np.uint64))
    head = np.empty((n, 11), dtype=_U8)
    head[:, 0] = _TAG[STRING]
    head[:, 1:] = mat
    out = pc.binary_join_element_wise(_binary(head, lengths + 1), data, b"")
    if null.any():
        out = pc.if_else(pa.array(null), pa.scalar(b"", pa.binary()), out)
    return out


def _feast_encode(arr: pa.Array, value_type: int) -> pa.Array:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    protos = python_values_to_proto_values(arr.to_numpy(zero_copy_only=False), ValueType(value_type))
    return pa.array([p.SerializeToString() for p in protos], pa.binary())


def timestamp_micros(values: Any) -> np.ndarray:
    """UTC microseconds since the epoch per row (a naive timestamp is taken as UTC, as Feast does).
    Finer units are floored to microseconds: Feast goes through ``datetime``, which has no nanoseconds."""
    arr = _as_arrow(values)
    if arr.null_count:
        raise ValueError("null event timestamp")
    if not pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("us", tz="UTC"))
    per_us = {"s": None, "ms": None, "us": 1, "ns": 1000}[arr.type.unit]
    raw = arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if per_us is None:
        return raw * (1_000_000 if arr.type.unit == "s" else 1000)
    return raw // per_us


def encode_timestamps(micros: np.ndarray) -> pa.Array:
    """Serialized ``google.protobuf.Timestamp`` per row, as ``Timestamp.FromDatetime`` then
    ``SerializeToString`` give it: seconds (field 1) and nanos (field 2), each left out when zero."""
    micros = np.asarray(micros, dtype=np.int64)
    secs, rem = np.divmod(micros, 1_000_000)
    nanos = rem * 1000
    n = len(micros)
    s_mat, s_len = _varints(secs.view(np.uint64))
    n_mat, n_len = _varints(nanos.astype(np.uint64))
    mat = np.zeros((n, 17), dtype=_U8)
    mat[:, 0] = 0x08
    mat[:, 1:11] = s_mat
    s_len = np.where(secs == 0, 0, s_len + 1)
    n_len = np.where(nanos == 0, 0, n_len + 1)
    tail = np.zeros((n, 6), dtype=_U8)
    tail[:, 0] = 0x10
    tail[:, 1:] = n_mat[:, :5]
    return pc.binary_join_element_wise(_binary(mat, s_len), _binary(tail, n_len), b"")


def entity_keys(project: str, join_keys: Sequence[tuple[str, int]], columns: Mapping[str, Any]) -> pa.Array:
    """Redis keys per row, byte-identical to Feast's ``serialize_entity_key(v3) + project``.

    ``join_keys`` are (name, ValueType); ``columns`` maps each name to its values. Int64/Int32 and
    String keys are encoded here; any other type goes through Feast's own serializer.
    """
    keys = sorted(join_keys)
    head = struct.pack("<I", len(keys)) + b"".join(
        struct.pack("<II", STRING, len(k.encode())) + k.encode() for k, _ in keys)
    parts: list[Any] = [pa.scalar(head, pa.binary())]
    for name, vt in keys:
        arr = _as_arrow(columns[name])
        if arr.null_count:
            raise ValueError(f"null value in join key '{name}'")
        n = len(arr)
        if vt in (INT64, INT32) and (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            width = 8 if vt == INT64 else 4
            ints = _ints(arr)
            mat = np.empty((n, 8 + width), dtype=_U8)
            mat[:, :8] = np.frombuffer(struct.pack("<II", vt, width), dtype=_U8)
            mat[:, 8:] = ints.astype("<i8" if vt == INT64 else "<i4").view(_U8).reshape(n, width)
            parts.append(_binary(mat))
        elif vt == STRING and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            data = arr.cast(pa.string()).cast(pa.binary())
            lens = pc.binary_length(data).to_numpy(zero_copy_only=False).astype("<u4")
            mat = np.empty((n, 8), dtype=_U8)
            mat[:, :4] = np.frombuffer(struct.pack("<I", STRING), dtype=_U8)
            mat[:, 4:] = lens.view(_U8).reshape(n, 4)
            parts += [_binary(mat), data]
        else:
            return _feast_keys(project, keys, columns)
    parts.append(pa.scalar(project.encode(), pa.binary()))
    return pc.binary_join_element_wise(*parts, b"")


def _feast_keys(project: str, keys: Sequence[tuple[str, int]], columns: Mapping[str, Any]) -> pa.Array:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    names = [k for k, _ in keys]
    protos = [python_values_to_proto_values(_as_arrow(columns[k]).to_numpy(zero_copy_only=False), ValueType(vt))
              for k, vt in keys]
    tail = project.encode()
    return pa.array([serialize_entity_key(EntityKey(join_keys=names, entity_values=list(vals)), 3) + tail
                     for vals in zip(*protos, strict=True)], pa.binary())


def entity_key(project: str, join_keys: Sequence[tuple[str, int]], row: Mapping[str, Any]) -> bytes:
    """One entity's Redis key, for the read path (no arrays for a single row)."""
    keys = sorted(join_keys)
    out = [struct.pack("<I", len(keys))]
    for k, _ in keys:
        kb = k.encode()
        out.append(struct.pack("<II", STRING, len(kb)) + kb)
    for k, vt in keys:
        v = row[k]
        if vt == INT64:
            out.append(struct.pack("<IIq", INT64, 8, int(v)))
        elif vt == INT32:
            out.append(struct.pack("<IIi", INT32, 4, int(v)))
        elif vt == STRING:
            b = str(v).encode()
            out.append(struct.pack("<II", STRING, len(b)) + b)
        else:
            return _feast_keys(project, keys, {name: [row[name]] for name, _ in keys})[0].as_py()
    out.append(project.encode())
    return b"".join(out)


# -- decoders ------------------------------------------------------------------------------------

def _varint_at(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7


def decode_value(b: bytes | None, value_type: int | None = None) -> Any:
    """A stored ``ValueProto`` as Feast's ``get_online_features(...).to_dict()`` returns it: None for
    a missing field or a null, else int/float/bool/str; other kinds through Feast's own decoder."""
    if not b:
        return None
    tag = b[0]
    try:
        if tag == 0x29 and len(b) == 9:
            return struct.unpack_from("<d", b, 1)[0]
        if tag == 0x20 or tag == 0x18:
            v, end = _varint_at(b, 1)
            if end == len(b):
                if tag == 0x18:
                    v &= 0xFFFFFFFF
                    return v - (1 << 32) if v >= 1 << 31 else v
                return v - (1 << 64) if v >= 1 << 63 else v
        elif tag == 0x35 and len(b) == 5:
            return struct.unpack_from("<f", b, 1)[0]
        elif tag == 0x38 and len(b) == 2:
            return b[1] != 0
        elif tag == 0x12:
            n, start = _varint_at(b, 1)
            if start + n == len(b):
                return b[start:].decode()
    except IndexError:
        pass
    return _feast_decode(b, value_type)


def _feast_decode(b: bytes, value_type: int | None) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type
    from feast.value_type import ValueType

    return feast_value_type_to_python_type(Value.FromString(b), ValueType(value_type) if value_type else None)


def decode_timestamp_nanos(b: bytes | None) -> int:
    """A stored ``_ts`` Timestamp as nanoseconds since the epoch (0 when absent, as Feast treats it)."""
    if not b:
        return 0
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp.FromString(b)
    return ts.seconds * 1_000_000_000 + ts.nanos


# -- layout of a view ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewLayout:
    """What keel needs to know to write or read one feature view in Feast's layout."""

    name: str                               # stored name (versioned when the registry says so)
    project: str
    join_keys: tuple[tuple[str, int], ...]  # (join key, ValueType)
    features: tuple[tuple[str, int], ...]   # (feature, ValueType), schema order
    key_ttl_s: int | None
    timestamp_field: str = "event_timestamp"  # the view's event time column (after field mapping)
    created_field: str | None = None          # its created time column, the tie-breaker, if any

    @classmethod
    def of(cls, fv: FeatureView, config: RepoConfig) -> ViewLayout:
        from feast.infra.online_stores.redis import _versioned_fv_name

        if config.online_store.type != "redis" or config.entity_key_serialization_version != 3:
            raise Unsupported("online store is not redis with entity key serialization v3")
        join_keys = tuple((c.name, c.dtype.to_value_type().value) for c in fv.entity_columns)
        if not join_keys:
            raise Unsupported(f"view '{fv.name}' has no entities")
        src = fv.batch_source
        return cls(name=_versioned_fv_name(fv, config), project=config.project, join_keys=join_keys,
                   features=tuple((f.name, f.dtype.to_value_type().value) for f in fv.features),
                   key_ttl_s=getattr(config.online_store, "key_ttl_seconds", None) or None,
                   timestamp_field=getattr(src, "timestamp_field", None) or "event_timestamp",
                   created_field=getattr(src, "created_timestamp_column", None) or None)


def redis_client(store: FeatureStore) -> redis.Redis:
    """Feast's own redis-py client for the store, so keel uses the same connection settings (and, for a
    store opened with ``open_store(serving=True)``, the same timeouts and no retries)."""
    import redis as redis_py

    cfg = store.config.online_store
    kind = getattr(cfg, "redis_type", "redis")
    if cfg.type != "redis" or getattr(kind, "value", kind) != "redis":
        raise Unsupported("online store is not a single Redis (cluster and sentinel use Feast's path)")
    client = store._get_provider().online_store._get_client(cfg)
    if not isinstance(client, redis_py.Redis):
        raise Unsupported("online store client is not redis.Redis")
    return client


# -- writing ---------------------------------------------------------------------------------------

def _bulks(arr: pa.Array) -> pa.Array:
    """Each value as a RESP bulk string, ``$<len>\\r\\n<value>\\r\\n``."""
    lens = pc.binary_length(arr).cast(pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(b"$", lens, b"\r\n", arr, b"\r\n", b"")


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


@dataclass
class WriteStats:
    rows: int = 0        # rows offered (after keeping the latest per entity)
    written: int = 0     # entities whose hash was written
    skipped: int = 0     # entities Redis already held at the same or a newer event time


class _Pipe:
    """One pooled connection, fed packed commands; replies are drained in order, so a chunk's writes
    travel while the next chunk is encoded.

    Replies are parsed by a hiredis reader of our own straight off the connection's socket when
    hiredis is installed: redis-py's per-reply ``read_response`` costs ~2.5 µs of Python each, a
    quarter of the CPU of a 50-feature write that shares two cores with Redis. redis-py still opens
    the connection (AUTH, SELECT, TLS) and gets it back only when every reply was read."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.conn = self.pool.get_connection()
        self.pending = 0  # replies of earlier writes still to read
        try:
            import hiredis

            # the pool hands out a connection only with nothing left to read, so both parsers start clean
            self.sock, self.reader = self.conn._sock, hiredis.Reader()
        except (ImportError, AttributeError):
            self.sock = self.reader = None

    def send(self, payload: Any) -> None:
        self.conn.send_packed_command([memoryview(payload)], check_health=False)

    def _replies(self, n: int) -> list[Any]:
        if self.reader is None:
            read = self.conn.read_response
            return [read() for _ in range(n)]
        import redis as redis_py

        out: list[Any] = []
        gets = self.reader.gets
        while len(out) < n:
            reply = gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise redis_py.ConnectionError("Redis closed the connection")
                self.reader.feed(data)
            elif isinstance(reply, Exception):
                raise redis_py.ResponseError(str(reply))
            else:
                out.append(reply)
        return out

    def drain(self) -> None:
        if self.pending:
            self._replies(self.pending)
            self.pending = 0

    def read(self, n: int) -> list[Any]:
        self.drain()
        return self._replies(n)

    def close(self, ok: bool) -> None:
        try:
            if ok:
                self.drain()
        finally:
            if not ok or self.pending or (self.reader is not None and self.reader.has_data()):
                self.conn.disconnect()  # replies may still be in flight: never hand this socket back
            self.pool.release(self.conn)


def _buffer(arr: pa.Array) -> memoryview:
    """The concatenated bytes of a binary array's values (its data buffer), without copying."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    return memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]]


def write_frame(client: redis.Redis, layout: ViewLayout, frame: Any, *, latest_only: bool = False,
                chunk_rows: int = _CHUNK_ROWS) -> WriteStats:
    """Write the latest row per entity of ``frame`` (pandas or pyarrow) into Redis in Feast's layout.

    Same semantics as Feast's ``online_write_batch``: an entity whose stored ``_ts:<view>`` is the same
    instant or newer keeps what it has (checked with one pipelined HGET per entity, read while the
    values are encoded); a write sets every feature of the view and its ``_ts`` field, then EXPIREs the
    key when the store sets ``key_ttl_seconds``. Like Feast, the check and the write are not atomic: a
    concurrent writer of a newer row can lose between the two. ``latest_only`` says the frame already
    holds one row per entity (materialize_view's query ensures it).
    """
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    if not latest_only:
        table = _latest(table, [k for k, _ in layout.join_keys], layout.timestamp_field, layout.created_field)
    stats = WriteStats(rows=table.num_rows)
    if table.num_rows == 0:
        return stats
    pipe = _Pipe(client)
    ok = False
    try:
        for batch in table.to_batches(max_chunksize=chunk_rows):
            _write_chunk(pipe, layout, batch, stats)
        ok = True
    finally:
        pipe.close(ok)
    return stats


def _write_batches(client: redis.Redis, layout: ViewLayout, batches: Iterator[pa.RecordBatch]) -> WriteStats:
    stats = WriteStats()
    pipe = _Pipe(client)
    ok = False
    try:
        for batch in batches:
            stats.rows += batch.num_rows
            if batch.num_rows:
                _write_chunk(pipe, layout, batch, stats)
        ok = True
    finally:
        pipe.close(ok)
    return stats


def _write_chunk(pipe: _Pipe, layout: ViewLayout, batch: pa.RecordBatch | pa.Table, stats: WriteStats) -> None:
    n = batch.num_rows
    keys = entity_keys(layout.project, layout.join_keys, {k: batch.column(k) for k, _ in layout.join_keys})
    key_bulks = _bulks(keys)
    ts_name = ts_field(layout.name)
    # 1. ask for the stored event times; Redis answers while the values are encoded below
    pipe.send(_buffer(pc.binary_join_element_wise(b"*3\r\n$4\r\nHGET\r\n", key_bulks, _bulk(ts_name), b"")))
    micros = timestamp_micros(batch.column(layout.timestamp_field))
    parts: list[Any] = [b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(layout.features) + 1)), key_bulks]
    fixed: list[tuple[bytes, np.ndarray]] = []
    for feature, vt in layout.features:
        col = _as_arrow(batch.column(feature))
        if vt in _FIXED and _fast_kind(col, vt) and not _null_mask(col).any():
            fixed.append((field_name(layout.name, feature), _fixed_bytes(col, vt)))
        else:
            parts += [_bulk(field_name(layout.name, feature)), _bulks(encode_values(col, vt))]
    if fixed:
        parts.append(_fixed_block(fixed))
    parts += [_bulk(ts_name), _bulks(encode_timestamps(micros))]
    if layout.key_ttl_s:
        parts += [b"*3\r\n$6\r\nEXPIRE\r\n", key_bulks, _bulk(str(int(layout.key_ttl_s)).encode())]
    # 2. keep only entities whose stored time is older (Feast: skip when new <= stored, a stored 0 is none)
    stored = pipe.read(n)
    keep = np.ones(n, dtype=bool)
    new_ns = micros * 1000
    for i, b in enumerate(stored):
        if b:
            prev = decode_timestamp_nanos(b)
            if prev and new_ns[i] <= prev:
                keep[i] = False
    commands = pc.binary_join_element_wise(*parts, b"")
    kept = int(keep.sum())
    if kept < n:
        commands = commands.filter(pa.array(keep))
    stats.written += kept
    stats.skipped += n - kept
    if kept:
        pipe.send(_buffer(commands))
        pipe.pending += kept * (2 if layout.key_ttl_s else 1)


def _fixed_bytes(arr: pa.Array, vt: int) -> np.ndarray:
    """The payload bytes after the tag of a fixed-width ValueProto, one row each (no nulls)."""
    n = len(arr)
    if vt == DOUBLE:
        return _floats(arr).astype("<f8").view(_U8).reshape(n, 8)
    if vt == FLOAT:
        with np.errstate(over="ignore"):
            return _floats(arr).astype("<f4").view(_U8).reshape(n, 4)
    return (_ints(arr) != 0).astype(_U8).reshape(n, 1)


def _fixed_block(columns: list[tuple[bytes, np.ndarray]]) -> pa.Array:
    """Field/value RESP pairs of the fixed-width, null-free columns, as one byte matrix per row.

    HSET takes its field/value pairs in any order, so these columns go together: one numpy template
    row, with each row's value bytes written into it, instead of an arrow kernel per column."""
    template, slots = bytearray(), []
    for field, values in columns:
        w = values.shape[1]
        template += _bulk(field) + b"$%d\r\n" % (w + 1) + bytes([_TAG[{8: DOUBLE, 4: FLOAT, 1: BOOL}[w]]])
        slots.append(len(template))
        template += bytes(w) + b"\r\n"
    n = len(columns[0][1])
    mat = np.empty((n, len(template)), dtype=_U8)
    mat[:] = np.frombuffer(bytes(template), dtype=_U8)
    for (_, values), at in zip(columns, slots, strict=True):
        mat[:, at:at + values.shape[1]] = values
    return _binary(mat)


def _latest(table: pa.Table, join_keys: list[str], ts: str, created: str | None) -> pa.Table:
    """The latest row per entity, by event time then created time (Feast's materialization dedup)."""
    cols = [*join_keys, ts] + ([created] if created and created in table.column_names else [])
    idx = table.select(cols).to_pandas()
    if not idx.duplicated(join_keys).any():
        return table
    order = [ts, *cols[len(join_keys) + 1:]]
    idx["__row"] = np.arange(len(idx))
    last = idx.sort_values(order, kind="stable", na_position="first").drop_duplicates(join_keys, keep="last")
    return table.take(pa.array(np.sort(last["__row"].to_numpy())))


# -- materialization -------------------------------------------------------------------------------

def source_path(fv: FeatureView) -> Path:
    """The local parquet file behind a view, or Unsupported (Feast materializes anything else)."""
    from feast import FileSource
    from feast.data_format import ParquetFormat

    src = fv.batch_source
    if not isinstance(src, FileSource):
        raise Unsupported(f"view '{fv.name}': source is not a file source")
    if src.file_format is not None and not isinstance(src.file_format, ParquetFormat):
        raise Unsupported(f"view '{fv.name}': source is not parquet")
    path = Path(src.path.removeprefix("file://"))
    if "://" in src.path.removeprefix("file://") or not path.is_absolute() or not path.is_file():
        raise Unsupported(f"view '{fv.name}': source {src.path} is not a local parquet file (absolute path)")
    for attr in ("aggregations", "feature_transformation", "filter"):
        if getattr(fv, attr, None):
            raise Unsupported(f"view '{fv.name}' has {attr}")
    if getattr(fv, "enable_validation", False):
        raise Unsupported(f"view '{fv.name}' validates its input")
    return path


def check_supported(store: FeatureStore, fv: FeatureView) -> ViewLayout:
    """The view's layout when keel can materialize it itself; Unsupported says why not."""
    source_path(fv)
    redis_client(store)
    for svc in store.list_feature_services():
        if getattr(svc, "precompute_online", False) and any(p.name == fv.name for p in svc.feature_view_projections):
            raise Unsupported(f"feature service '{svc.name}' precomputes vectors from '{fv.name}'")
    return ViewLayout.of(fv, store.config)


def materialize_view(store: FeatureStore, fv: FeatureView, start: datetime, end: datetime,
                     client: redis.Redis | None = None, record: bool = True) -> WriteStats:
    """Load the latest row per entity with event time in [start, end) from the view's parquet source
    into Redis, as ``FeatureStore.materialize`` would, then record the interval in the registry (which
    incremental materialization resumes from). Raises Unsupported for views Feast must handle.

    The latest row is chosen in DuckDB by event time, then created time (nulls last), as Feast's
    materialization does; Feast's window includes ``end`` itself, keel's stops before it, so
    consecutive incremental windows never load the same row twice.
    """
    import duckdb

    layout = check_supported(store, fv)
    path = source_path(fv)
    src = fv.batch_source
    reverse = {v: k for k, v in (src.field_mapping or {}).items()}

    def col(name: str) -> str:
        return f'"{reverse.get(name, name)}" AS "{name}"'

    ts, created = src.timestamp_field, src.created_timestamp_column or None
    ts_src, created_src = reverse.get(ts, ts), reverse.get(created, created) if created else None
    names = [k for k, _ in layout.join_keys] + [f for f, _ in layout.features] + [ts]
    order = f'"{ts_src}" DESC' + (f', "{created_src}" DESC NULLS LAST' if created_src else "")
    partition = ", ".join(f'"{reverse.get(k, k)}"' for k, _ in layout.join_keys)
    query = (f"SELECT {', '.join(col(c) for c in names)} FROM read_parquet(?) "
             f'WHERE "{ts_src}" >= ? AND "{ts_src}" < ? '
             f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {order}) = 1")
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        reader = con.sql(query, params=[str(path), _utc(start), _utc(end)]).to_arrow_reader(_CHUNK_ROWS)
        stats = _write_batches(client or redis_client(store), layout, iter(reader))
    finally:
        con.close()
    if record:
        store.registry.apply_materialization(fv, store.project, _utc(start), _utc(end))
    return stats


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


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
        views: dict[str, list[str]] = {}
        for ref in refs:
            view, _, feature = ref.partition(":")
            views.setdefault(view, []).append(feature)
        groups: dict[tuple[tuple[str, int], ...], list[tuple[bytes, str, int]]] = {}
        self.join_types: dict[str, int] = {}
        seen: set[str] = set()
        for view, features in views.items():
            fv = store.get_feature_view(view)
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
                rows_to_cmd.append(i)
            plan.append(rows_to_cmd)
        if not commands:
            return [[] for _ in plan]
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
