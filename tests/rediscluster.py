"""A real Redis Cluster on loopback (3 masters + 3 replicas, ``redis-server --cluster-enabled yes`` and
``redis-cli --cluster create``) for the tests and the benchmarks; every node stopped on the way out,
even after a failure."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from keel.infra.probes import redis_ok, wait_until
from tests.conftest import free_ports

# long enough that a busy CI machine (a materialization next door) does not fail masters over by itself
NODE_TIMEOUT_MS = 3000


class Nodes(list[int]):
    """The ports of the cluster's nodes (masters first, as `--cluster create` assigns them), and the
    directory of their files (logs, nodes.conf)."""

    root: Path

    @property
    def address(self) -> str:
        """The masters, as KEEL_REDIS_ADDRESS takes them."""
        return ",".join(f"127.0.0.1:{p}" for p in self[:3])


def replicas_synced(ports: list[int]) -> bool:
    """Every replica has finished its first sync with its master. Until then a replica is not eligible to
    take over (its data is of unknown age), so a master killed earlier is never failed over: state ok
    alone does not say the cluster survives a master's loss."""
    replicas = 0
    for p in ports:
        try:
            info = redis.Redis(port=p, socket_timeout=1).info("replication")
        except redis.RedisError:
            return False
        if info.get("role") == "slave":
            replicas += 1
            if info.get("master_link_status") != "up" or int(info.get("master_sync_in_progress", 0)):
                return False
    return replicas == len(ports) // 2


def cluster_ok(ports: list[int]) -> bool:
    for p in ports:
        try:
            info = redis.Redis(port=p, socket_timeout=1).cluster("info")
        except redis.RedisError:
            return False
        if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
            return False
    return True


@contextlib.contextmanager
def redis_cluster(root: Path, taskset: list[int] | None = None) -> Iterator[Nodes]:
    picked = free_ports(12)  # bus ports given too: port + 10000 may not exist or be free
    ports, bus = picked[:6], picked[6:]
    prefix = ["taskset", "-c", ",".join(map(str, taskset))] if taskset else []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for p, b in zip(ports, bus, strict=True):
            d = root / str(p)
            d.mkdir(parents=True)
            with open(d / "redis.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [*prefix, "redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-port", str(b), "--cluster-config-file", str(d / "nodes.conf"),
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dir", str(d),
                     "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        for p in ports:
            if not wait_until(lambda p=p: redis_ok("127.0.0.1", p), 30):
                raise RuntimeError(f"cluster node on {p} did not start (log: {root / str(p) / 'redis.log'})")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        if not wait_until(lambda: cluster_ok(ports), 60, interval=0.5):
            raise RuntimeError("the Redis Cluster did not reach state ok")
        if not wait_until(lambda: replicas_synced(ports), 60, interval=0.5):
            raise RuntimeError(f"the Redis Cluster's replicas did not finish their first sync (logs: {root})")
        nodes = Nodes(ports)
        nodes.root = root
        yield nodes
    finally:
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
