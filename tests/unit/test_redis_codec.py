"""keel's encoders and decoders of Feast's Redis bytes, checked against Feast's own serializer, no Redis.

The same bytes are what lets Feast read what keel materialized (and the other way round); the
integration tests then check the stored hashes through a real Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from keel.features.redis import codec

rng = np.random.default_rng(0)
CASES = {
    codec.INT64: [0, 1, -1, 2**62, -(2**62), None, 300],
    codec.INT32: [0, 7, -7, 2**31 - 1, -(2**31), None],
    codec.DOUBLE: [0.0, -1.5, 1e300, float(rng.normal()), None, 3.25],
    codec.FLOAT: [0.0, 1.5, -2.25, None],
    codec.BOOL: [True, False, None, True],
    codec.STRING: ["", "bike", "ünïcödé", "x" * 300, None],
}


def _feast(values: list, vt: int) -> list[bytes]:
    return [p.SerializeToString() for p in python_values_to_proto_values(np.array(values, dtype=object),
                                                                         ValueType(vt))]


@pytest.mark.parametrize("vt", sorted(CASES))
def test_values_encode_as_feast_serializes_them(vt: int) -> None:
    values = CASES[vt]
    ours = codec.encode_values(pa.array(values), vt).to_pylist()
    theirs = _feast(values, vt)
    # Feast writes an empty proto for a null; keel too
    assert ours == [b"" if v is None else t for v, t in zip(values, theirs, strict=True)]


@pytest.mark.parametrize("vt", sorted(CASES))
def test_values_decode_to_what_feast_returns(vt: int) -> None:
    values = [v for v in CASES[vt] if v is not None]
    for raw, v in zip(_feast(values, vt), values, strict=True):
        got = codec.decode_value(raw, vt)
        assert got == pytest.approx(v) if isinstance(v, float) else got == v
    assert codec.decode_value(b"", vt) is None


@pytest.mark.parametrize(("keys", "columns"), [
    ([("customer_id", codec.INT64)], {"customer_id": [1, -5, 2**40]}),
    ([("courier_id", codec.STRING)], {"courier_id": ["c0001", "", "ü"]}),
    ([("merchant_id", codec.INT64), ("customer_id", codec.INT32)], {"merchant_id": [3, 4, 5],
                                                                    "customer_id": [1, 2, -3]}),
])
def test_entity_keys_are_feasts_serialize_entity_key_v3(keys: list, columns: dict) -> None:
    ours = codec.entity_keys("proj", keys, columns).to_pylist()
    names = sorted(k for k, _ in keys)
    types = dict(keys)
    for i, got in enumerate(ours):
        vals = [python_values_to_proto_values(np.array([columns[k][i]], dtype=object), ValueType(types[k]))[0]
                for k in names]
        want = serialize_entity_key(EntityKey(join_keys=names, entity_values=vals), 3) + b"proj"
        assert got == want
        assert codec.entity_key("proj", keys, {k: columns[k][i] for k in names}) == want


def test_timestamps_are_protobuf_timestamps() -> None:
    times = [datetime(2026, 11, 1, tzinfo=UTC), datetime(1970, 1, 1, 0, 0, 1, 500, tzinfo=UTC),
             datetime(2030, 5, 17, 3, 4, 5, 678901, tzinfo=UTC)]
    micros = codec.timestamp_micros(pa.array(times, pa.timestamp("us", tz="UTC")))
    ours = codec.encode_timestamps(micros).to_pylist()
    for t, got in zip(times, ours, strict=True):
        ts = Timestamp()
        ts.FromDatetime(t)
        assert got == ts.SerializeToString()
        assert codec.decode_timestamp_nanos(got) == int(t.timestamp()) * 10**9 + t.microsecond * 1000
