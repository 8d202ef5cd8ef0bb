"""Feast's Redis online-store layout, written and read by keel directly (the fast path).

Modules: ``codec`` (values, keys and timestamps to and from Feast's bytes, no Redis), ``layout`` (where a
view's fields live, and Feast's client for the store), ``writer`` (materialization), ``reader`` (serving).

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

from keel.features.redis.codec import (
    BOOL,
    BYTES,
    DOUBLE,
    FLOAT,
    INT32,
    INT64,
    STRING,
    Unsupported,
    decode_value,
    encode_values,
    entity_key,
    entity_keys,
)
from keel.features.redis.layout import ViewLayout, field_name, redis_client, ts_field
from keel.features.redis.reader import Reader, read
from keel.features.redis.writer import WriteStats, check_supported, materialize_view, source_path, write_frame

__all__ = [
    "BOOL", "BYTES", "DOUBLE", "FLOAT", "INT32", "INT64", "STRING", "Reader", "Unsupported", "ViewLayout",
    "WriteStats", "check_supported", "decode_value", "encode_values", "entity_key", "entity_keys", "field_name",
    "materialize_view", "read", "redis_client", "source_path", "ts_field", "write_frame",
]
