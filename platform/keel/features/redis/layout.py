"""Where a view's features live in Feast's Redis layout, and Feast's own client for the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mmh3

from keel.features.redis.codec import Unsupported

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore, FeatureView
    from feast.repo_config import RepoConfig
    from redis.cluster import RedisCluster


def field_name(view: str, feature: str) -> bytes:
    """A feature's hash field: Feast's ``_mmh3`` (murmur3_32, unsigned, 4 little-endian bytes)."""
    return mmh3.hash(f"{view}:{feature}", signed=False).to_bytes(4, "little")


def ts_field(view: str) -> bytes:
    """The hash field holding a view's event timestamp."""
    return f"_ts:{view}".encode()


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
        from keel.compat.feast import versioned_view_name

        if config.online_store.type != "redis" or config.entity_key_serialization_version != 3:
            raise Unsupported("online store is not redis with entity key serialization v3")
        join_keys = tuple((c.name, c.dtype.to_value_type().value) for c in fv.entity_columns)
        if not join_keys:
            raise Unsupported(f"view '{fv.name}' has no entities")
        src = fv.batch_source
        return cls(name=versioned_view_name(fv, config), project=config.project, join_keys=join_keys,
                   features=tuple((f.name, f.dtype.to_value_type().value) for f in fv.features),
                   key_ttl_s=getattr(config.online_store, "key_ttl_seconds", None) or None,
                   timestamp_field=getattr(src, "timestamp_field", None) or "event_timestamp",
                   created_field=getattr(src, "created_timestamp_column", None) or None)


def redis_client(store: FeatureStore) -> redis.Redis | RedisCluster:
    """Feast's own redis-py client for the store, so keel uses the same connection settings (and, for a
    store opened with ``open_store(serving=True)``, the same timeouts and no retries): a ``Redis``, or
    for ``redis_type: redis_cluster`` a ``RedisCluster``, whose nodes keel's reader and writer address
    by hash slot."""
    from keel.compat.feast import online_client

    check_redis(store.config)
    return _checked_client(online_client(store))


def store_client(online_store: object, config: RepoConfig) -> redis.Redis | RedisCluster:
    """The same, from Feast's online store object and its repo config (what a batch engine holds)."""
    from keel.compat.feast import store_client as client_of

    check_redis(config)
    return _checked_client(client_of(online_store, config))


def check_redis(config: RepoConfig) -> None:
    cfg = config.online_store
    kind = getattr(cfg, "redis_type", "redis")
    if getattr(cfg, "type", None) != "redis" or getattr(kind, "value", kind) not in ("redis", "redis_cluster"):
        raise Unsupported("online store is not a Redis or a Redis Cluster (sentinel uses Feast's path)")
    if getattr(getattr(cfg, "client", "redis"), "value", getattr(cfg, "client", "redis")) != "redis":
        raise Unsupported("online store reads through a client other than redis-py")


def is_cluster(client: object) -> bool:
    from redis.cluster import RedisCluster as Cluster

    return isinstance(client, Cluster)


def _checked_client(client: object) -> redis.Redis | RedisCluster:
    import redis as redis_py

    if not isinstance(client, redis_py.Redis) and not is_cluster(client):
        raise Unsupported("online store client is not redis-py's Redis or RedisCluster")
    return client  # type: ignore[return-value]
