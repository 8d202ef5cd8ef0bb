"""The local multi-node Ray cluster `keel up` starts (a head and two worker nodes, each its own raylet)
and batch scoring fanned out over it with Ray Data: the same scores as in-process, from both workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from keel.config import Settings
from keel.stack import Stack
from keel.stack.ray_cluster import temp_dir
from tests.conftest import free_block, free_ports
from tests.integration.test_batch_score import _fresh_entities

RAY = ["ray-head", "ray-worker-1", "ray-worker-2"]


def _ray_processes(s: Settings) -> list[int]:
    mark = str(temp_dir(s)).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def ray_settings(stack: Stack, stack_settings: Settings) -> Iterator[Settings]:
    s = stack_settings.model_copy(update={"ray_workers": 2, "ray_port": free_block(4), "ray_worker_cpus": 1,
                                          "ray_object_store_mb": 128, "ray_serve_port": free_ports(1)[0]})
    cluster = Stack(s)
    try:
        states = {st.name: st.state for st in cluster.up(RAY)}
        assert states == dict.fromkeys(RAY, "healthy"), states
        yield s
    finally:
        import ray

        ray.shutdown()
        cluster.down(RAY)
    assert not _ray_processes(s), "Ray processes outlived `keel down`"
    assert not temp_dir(s).exists(), "Ray's session files outlived `keel down`"


def test_the_local_cluster_has_a_head_and_two_worker_nodes(ray_settings: Settings) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=ray_settings.ray_cluster, log_to_driver=False, configure_logging=False)
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 3
    assert sorted(n["Resources"].get("CPU", 0) for n in alive) == [0, 1, 1]  # the head schedules no work


def test_batch_scores_on_ray_equal_in_process_and_use_both_workers(
        ray_settings: Settings, served_model: dict[str, str], feature_data: dict[str, Path]) -> None:
    from keel import batch

    rows = _fresh_entities(feature_data, 40)
    local = batch.score(ray_settings, served_model["name"], rows, engine="local")
    on_ray = batch.score(ray_settings, served_model["name"], rows, chunk_rows=5, engine="ray")  # 8 blocks
    assert on_ray.nodes == 2
    assert on_ray.frame[["customer_id", "merchant_id"]].equals(rows[["customer_id", "merchant_id"]])
    np.testing.assert_allclose(on_ray.frame["score"].to_numpy(dtype="float64"),
                               local.frame["score"].to_numpy(dtype="float64"), rtol=0, atol=1e-9)
    assert not on_ray.frame["degraded"].any() and on_ray.version == local.version


def test_a_training_set_joined_on_ray_equals_the_single_process_join(
        ray_settings: Settings, feature_data: dict[str, Path]) -> None:
    import pandas as pd

    from keel.features import training

    events = pd.read_parquet(feature_data["transactions"]).head(6000)
    single = training.build(ray_settings, "fraud_model_v1", events, label="is_fraud")
    on_ray = training.build(ray_settings, "fraud_model_v1", events, label="is_fraud", engine="ray")
    assert on_ray.engine == "ray" and single.engine == "keel"
    pd.testing.assert_frame_equal(on_ray.frame, single.frame)
    assert on_ray.snapshot_hash == single.snapshot_hash  # the same content, so the same snapshot

    # split by customer (the larger view's key) into ~6 partitions, one task each: still row for row equal
    from keel.features import pit, pit_ray
    from keel.features import store as fstore

    assert pit_ray.partition_keys(ray_settings, "fraud_model_v1", list(events.columns)) == ["customer_id"]
    split = pit_ray.join(ray_settings, "fraud_model_v1", events, partition_rows=1000).frame
    with fstore.in_repo(ray_settings):
        fs = fstore.open_store(ray_settings)
        alone = pit.get_historical_features(fs, events, fstore.feature_service(fs, "fraud_model_v1")).to_df()
    pd.testing.assert_frame_equal(split, alone)


def test_a_model_trained_with_ray_train_registers_gates_and_serves(
        ray_settings: Settings, training_set, served_model: dict[str, str]) -> None:
    import xgboost as xgb

    from keel.registry.client import Registry
    from keel.train import evaluate
    from keel.train_ray import fit_xgboost

    trained = fit_xgboost(training_set, params={"max_depth": 4}, num_boost_round=40, workers=2,
                          settings=ray_settings)
    assert trained.params["workers"] == 2 and trained.params["trainer"] == "ray.train.xgboost"
    # quality within 0.02 AUC of the same XGBoost trained in one process on the same rows
    features, label = training_set.features, training_set.label
    alone = xgb.XGBClassifier(max_depth=4, learning_rate=0.1, n_estimators=40, n_jobs=1).fit(
        trained.train[features], trained.train[label])
    single = evaluate(alone, trained.holdout, features, label, "binary")["roc_auc"]
    assert abs(trained.metrics["roc_auc"] - single) <= 0.02, (trained.metrics, single)

    reg = Registry(ray_settings)
    v = reg.register(trained.model, "fraud_ray_train", training_set, trained.holdout, trained.metrics).version
    assert reg.gate("fraud_ray_train").passed  # no champion yet: the first version passes
    reg.promote("fraud_ray_train", reason="trained with Ray Train")
    _served_on_the_cluster(ray_settings, {"fraud_ray_train": v, served_model["name"]: served_model["champion"]})


def _replica_nodes() -> dict[str, int]:
    """Each Serve replica's application -> the node manager port of the raylet that started it (Ray's
    worker processes are their node's raylet's children): which node each model runs on, from the OS."""
    import re

    found: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not title.startswith(b"ray::ServeReplica:"):
                continue
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except OSError:
            continue
        port = re.search(rb"--node_manager_port=(\d+)", parent)
        app = title.split(b"\0")[0].removeprefix(b"ray::ServeReplica:").split(b":")[0].decode()
        found[app] = int(port.group(1)) if port else -1
    return found


def _served_on_the_cluster(s: Settings, versions: dict[str, str]) -> None:
    """Both models deployed with the Ray runtime become applications of the cluster's one Serve instance:
    one proxy port, each model under /<model>, replicas on the worker nodes (the head has no CPUs)."""
    import httpx

    from keel.client import Client
    from keel.errors import KeelError
    from keel.serving.core import Predictor

    client = Client(s)
    with pytest.raises(KeelError, match="KEEL_RAY_SERVE_PORT"):
        client.deploy("fraud_ray_train", runtime="ray", port=free_ports(1)[0])  # refused up front
    try:
        urls = {m: client.deploy(m, runtime="ray").url for m in versions}
        assert urls == {m: f"http://127.0.0.1:{s.ray_serve_port}/{m}" for m in versions}
        rows = [{"customer_id": c, "merchant_id": c % 60, "amount": 10.0 * c} for c in range(1, 6)]
        for m, v in versions.items():
            r = httpx.post(f"{urls[m]}/v1/models/{m}:predict", json={"instances": rows}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["version"] == v and body["degraded"] is False
            core = Predictor.from_registry(s, m).predict(rows)
            assert body["predictions"] == pytest.approx(core.scores, abs=1e-9)
            # the model's name checked inside its own application too
            other = next(o for o in versions if o != m)
            assert httpx.post(f"{urls[m]}/v1/models/{other}:predict", json={"instances": rows}).status_code == 404
        workers = {s.ray_port + 1 + i for i in range(1, s.ray_workers + 1)}
        nodes = _replica_nodes()
        assert set(nodes) == set(versions) and set(nodes.values()) <= workers, (nodes, workers)
        gone = next(iter(versions))
        client.undeploy(gone)  # one model leaves; the other keeps answering on the same proxy
        assert httpx.get(f"{urls[gone]}/healthz").status_code == 404
        still = next(m for m in versions if m != gone)
        assert client.predict(still, rows[:1])["version"] == versions[still]
    finally:
        from keel.serving.deploy import LocalTarget

        target = LocalTarget(s)
        for m in versions:
            if m in target.specs():
                target.undeploy(m)
