"""Feast's stored bytes, produced and parsed column at a time (numpy/pyarrow): values, entity keys,
timestamps. No Redis here, so it is unit-tested against Feast's own serializer alone."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
