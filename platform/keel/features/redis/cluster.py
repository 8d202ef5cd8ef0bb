"""Redis Cluster routing for keel's reader and writer: commands grouped by the master that owns each
key's hash slot, one pipeline per master, sent to all before any reply is read.

Routing uses redis-py's ``RedisCluster`` (the client Feast built for ``redis_type: redis_cluster``): its
slot map and its per-node ``Redis`` clients, so the timeouts, password and TLS stay Feast's. A node that
fails (a master down, a slot moved while a replica takes over) fails the call like a single Redis
would, and the slot map is refreshed, at most once a second, so the next call goes to the new owner.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

_REFRESH_EVERY_S = 1.0
_refreshed: dict[int, float] = {}
_lock = threading.Lock()


def by_node(client: Any, keys: Sequence[bytes]) -> dict[str, tuple[Any, list[int]]]:
    """Per master (by name): its node and the indexes of the keys it owns."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, k in enumerate(keys):
        node = client.get_node_from_key(k)
        entry = groups.get(node.name)
        if entry is None:
            entry = groups[node.name] = (node, [])
        entry[1].append(i)
    return groups


def node_client(client: Any, node: Any) -> Any:
    """The ``redis.Redis`` of one cluster node (created by redis-py with the cluster's connection settings)."""
    return client.get_redis_connection(node)


def round_trip(client: Any, keys: Sequence[bytes], commands: Sequence[bytes]) -> list[Any]:
    """Each packed command sent to the master of its key; the replies, in the commands' order."""
    groups = by_node(client, keys)
    sent: list[tuple[Any, Any, list[int]]] = []
    replies: list[Any] = [None] * len(commands)
    try:
        for node, idx in groups.values():
            pool = node_client(client, node).connection_pool
            conn = pool.get_connection()
            sent.append((pool, conn, idx))
            conn.send_packed_command([b"".join(commands[i] for i in idx)], check_health=False)
        for _, conn, idx in sent:
            for i in idx:
                replies[i] = conn.read_response()
    except BaseException:
        for _, conn, _ in sent:
            conn.disconnect()
        refresh(client)
        raise
    finally:
        for pool, conn, _ in sent:
            pool.release(conn)
    return replies


def refresh(client: Any) -> None:
    """Re-read the slot map (after a failover the replica that took over owns the slots)."""
    now = time.monotonic()
    with _lock:
        if now - _refreshed.get(id(client), 0.0) < _REFRESH_EVERY_S:
            return
        _refreshed[id(client)] = now
    with contextlib.suppress(Exception):  # every node unreachable: the next failing call tries again
        client.nodes_manager.initialize()
