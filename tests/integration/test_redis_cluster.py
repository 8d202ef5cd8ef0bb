"""The online store on a real Redis Cluster (3 masters + 3 replicas on loopback, created with
``redis-cli --cluster create``): materialized and read through keel, served, and equal to what the single
Redis of the session stack holds."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from pydantic import SecretStr

from keel.config import Settings
from keel.features import store
from keel.infra.probes import wait_until
from tests.integration.conftest import DATA_END
from tests.rediscluster import Nodes, cluster_ok, replicas_synced
from tests.rediscluster import redis_cluster as start_cluster


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """Six cluster nodes (tests/rediscluster.py); all stopped at the end."""
    with start_cluster(tmp_path_factory.mktemp("redis-cluster")) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def cluster_settings(redis_cluster: Nodes, stack_settings: Settings, feature_data: dict[str, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's repo and data, its online store on the cluster (and a registry of its own)."""
    registry = tmp_path_factory.mktemp("cluster-registry") / "registry.db"
    s = stack_settings.model_copy(update={
        "redis_type": "redis_cluster", "feast_registry": SecretStr(str(registry)),
        "redis_address": redis_cluster.address})
    store.apply(s)
    store.materialize(s, end=DATA_END)
    return s


REFS = ["customer_spend:txn_count_24h", "customer_spend:amount_mean_7d", "merchant_risk:merchant_fraud_rate_30d",
        "customer_profile:account_age_days"]
ROWS = [{"customer_id": c, "merchant_id": m} for c, m in zip(range(1, 41), range(1, 41), strict=True)]


def _cluster_report(ports: list[int], root: Path | None = None) -> str:
    """What each live node thinks of the cluster (and the tail of each log): the drill's failure message."""
    lines = []
    for p in ports:
        try:
            nodes = _cluster_nodes(p)
            state = redis.Redis(port=p, socket_timeout=1).cluster("info").get("cluster_state")
            lines.append(f"--- {p} (state {state}):\n{nodes}")
        except redis.RedisError as exc:
            lines.append(f"--- {p}: {type(exc).__name__}: {exc}")
        log = root / str(p) / "redis.log" if root else None
        if log and log.exists():
            lines.append("\n".join(log.read_text(errors="replace").splitlines()[-12:]))
    return "\n".join(lines)


def _cluster_nodes(port: int) -> str:
    """CLUSTER NODES as the node prints it (redis-py would parse it into a dict)."""
    return subprocess.run(["redis-cli", "-p", str(port), "cluster", "nodes"], capture_output=True, text=True,
                          timeout=10).stdout


def _a_master(ports: list[int]) -> int:
    """The port of a master that serves slots now (which node is master is the cluster's, not the fixture's)."""
    listing = _cluster_nodes(ports[1])
    for line in listing.splitlines():
        fields = line.split()
        if "master" in fields[2].split(",") and "fail" not in fields[2] and len(fields) > 8:
            return int(fields[1].split("@")[0].rsplit(":", 1)[1])
    raise AssertionError(f"no master with slots in:\n{listing}")


def _masters_flushed(ports: list[int]) -> None:
    for p in ports[:3]:
        redis.Redis(port=p).flushall()
    assert sum(redis.Redis(port=p).dbsize() for p in ports[:3]) == 0


def test_keel_writes_and_reads_the_cluster_byte_compatibly_with_feast(cluster_settings: Settings,
                                                                     stack_settings: Settings,
                                                                     redis_cluster: list[int]) -> None:
    from keel.features.redis import Reader

    single = store.open_store(stack_settings).get_online_features(features=REFS, entity_rows=ROWS).to_dict()
    assert sum(v is not None for v in single["txn_count_24h"]) > 20
    fs = store.open_store(cluster_settings)
    assert fs.config.online_store.redis_type.value == "redis_cluster"
    reader = Reader(fs, REFS)
    assert reader.cluster  # keel's own pipelined path, routed by hash slot (not Feast's fallback)

    # keel's engine wrote the cluster (cluster_settings): Feast's own read and keel's agree with the single Redis
    assert fs.get_online_features(features=REFS, entity_rows=ROWS).to_dict() == single
    assert reader.read(ROWS) == single
    per_master = [redis.Redis(port=p).dbsize() for p in redis_cluster[:3]]
    assert all(n > 0 for n in per_master), per_master  # spread by slot, not piled on one node

    # and the other way: what Feast's own engine writes, keel's reader reads
    _masters_flushed(redis_cluster)
    assert all(v is None for v in reader.read(ROWS)["txn_count_24h"])
    store.materialize(cluster_settings, end=DATA_END, full=True, engine="feast")
    assert reader.read(ROWS) == single
    _masters_flushed(redis_cluster)
    store.materialize(cluster_settings, end=DATA_END, full=True)  # back to keel's bytes for the next test
    assert reader.read(ROWS) == single


def test_serving_on_the_cluster_answers_as_on_the_single_redis(cluster_settings: Settings, stack_settings: Settings,
                                                               served_model: dict[str, str]) -> None:
    from keel.serving.core import Predictor

    instances = [{"customer_id": c, "merchant_id": c % 50 + 1, "amount": 10.0 + c} for c in range(1, 30)]
    on_cluster = Predictor.from_registry(cluster_settings, served_model["name"]).predict(instances)
    on_single = Predictor.from_registry(stack_settings, served_model["name"]).predict(instances)
    assert not any(on_cluster.degraded) and not any(on_single.degraded)
    np.testing.assert_allclose(on_cluster.scores, on_single.scores, rtol=0, atol=1e-7)


def test_a_master_killed_under_load_fails_over_without_a_failed_request(
        cluster_settings: Settings, served_model: dict[str, str], redis_cluster: Nodes,
        caplog: pytest.LogCaptureFixture) -> None:
    """Last in the module: it kills a master. Requests keep coming at ~100/s; answers may be degraded
    (training defaults) while the replica takes over, none may fail, and all are whole again after."""
    import os
    import signal

    from keel.serving.core import Predictor

    # a generous store timeout: a dead master refuses connections at once, and on a loaded CI machine a
    # 100 ms timeout alone degrades stray answers, which would hide when the failover is really over
    calm = cluster_settings.model_copy(update={"feature_timeout_ms": 1000.0})
    predictor = Predictor.from_registry(calm, served_model["name"])
    instances = [[{"customer_id": c, "merchant_id": c % 50 + 1, "amount": 25.0}] for c in range(1, 200)]
    assert wait_until(lambda: cluster_ok(redis_cluster), 30, interval=0.5), _cluster_report(redis_cluster)
    # a replica still in its first sync is not eligible to take over: the master would never fail over
    assert wait_until(lambda: replicas_synced(redis_cluster), 30, interval=0.5), _cluster_report(redis_cluster)
    victim_port = _a_master(redis_cluster)
    victim = redis.Redis(port=victim_port)
    pid = int(victim.info("server")["process_id"])
    results: list[tuple[float, bool, str | None]] = []
    t0 = time.monotonic()
    killed_at = None
    i = 0

    def whole_again() -> bool:  # 2 s of undegraded answers since the last degraded one, after the kill
        last = max((r[0] for r in results if r[1]), default=None)
        return last is not None and time.monotonic() - t0 - last > 2.0

    while time.monotonic() - t0 < 30.0 and not (killed_at is not None and whole_again()):
        if killed_at is None and time.monotonic() - t0 >= 1.5:
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic() - t0
        try:
            degraded = any(predictor.predict(instances[i % len(instances)]).degraded)
            results.append((time.monotonic() - t0, degraded, None))
        except Exception as exc:  # what the runtime would answer 5xx
            results.append((time.monotonic() - t0, True, f"{type(exc).__name__}: {exc}"))
        i += 1
        time.sleep(0.01)
    assert killed_at is not None
    failed = [r for r in results if r[2] is not None]
    assert not failed, failed[:3]
    before = [r for r in results if r[0] < killed_at]
    assert before and not any(r[1] for r in before)
    degraded = [r[0] for r in results if r[1]]
    assert degraded, "killing a master degraded nothing: was it serving these keys?"
    assert whole_again(), (f"still degraded {time.monotonic() - t0 - killed_at:.0f} s after killing the master on "
                           f"{victim_port}; the last store failure: {caplog.messages[-1:]}\n"
                           + _cluster_report([p for p in redis_cluster if p != victim_port], redis_cluster.root))
    tail = [r for r in results if r[0] > degraded[-1]]
    assert len(tail) > 50 and not any(r[1] for r in tail)
    print(f"failover: {len(results)} requests, 0 failed, {len(degraded)} degraded, "
          f"whole again {degraded[-1] - killed_at:.2f} s after the kill")
