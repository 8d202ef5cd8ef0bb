"""The Ray Serve runtime as a real Ray cluster on loopback: same answers as the core, adaptive batching."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from keel.config import Settings
from keel.serving.core import Predictor
from keel.serving.predlog import read
from keel.stack import Stack
from tests.conftest import ROOT, free_ports

MODEL = "fraud_serve"


@pytest.fixture(scope="module")
def ray_url(deployer, served_model: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    log_dir = tmp_path_factory.mktemp("predlog-ray")
    return deployer(model=MODEL, runtime="ray", port=free_ports(1)[0], predlog_uri=str(log_dir),
                    batch_max_size=16, batch_wait_s=0.05)


def test_ray_answers_like_the_core(ray_url: str, stack_settings: Settings, served_model: dict[str, str]) -> None:
    instances = [{"customer_id": c, "merchant_id": c % 60, "amount": 12.5 * c} for c in range(1, 9)]
    r = httpx.post(f"{ray_url}/v1/models/{MODEL}:predict", json={"instances": instances}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == served_model["champion"] and body["degraded"] is False
    core = Predictor.from_registry(stack_settings, MODEL).predict(instances)
    assert body["predictions"] == pytest.approx(core.scores, abs=1e-9)
    ready = httpx.get(f"{ray_url}/v1/models/{MODEL}").json()
    assert ready == {"name": MODEL, "ready": True, "version": served_model["champion"], "alias": "champion",
                     "device": "cpu"}
    # the same request in V2 (Open Inference Protocol), through the protocol module KServe's runtime uses
    meta = httpx.get(f"{ray_url}/v2/models/{MODEL}").json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("customer_id", "INT64"), ("merchant_id", "INT64"), ("amount", "FP64")]
    cols = {k: [i[k] for i in instances] for k in ("customer_id", "merchant_id", "amount")}
    v2 = {"id": "r1", "inputs": [{"name": k, "datatype": "FP64" if k == "amount" else "INT64", "shape": [len(v)],
                                  "data": v} for k, v in cols.items()]}
    r2 = httpx.post(f"{ray_url}/v2/models/{MODEL}/infer", json=v2, timeout=30)
    assert r2.status_code == 200, r2.text
    out = {o["name"]: o for o in r2.json()["outputs"]}
    assert r2.json()["id"] == "r1" and out["score"]["data"] == pytest.approx(core.scores, abs=1e-9)
    bad = httpx.post(f"{ray_url}/v2/models/{MODEL}/infer", json={"inputs": [{**v2["inputs"][0], "datatype": "BYTES"}]})
    assert bad.status_code == 400 and "customer_id" in bad.json()["field"]


def test_concurrent_requests_are_batched(ray_url: str) -> None:
    def one(i: int) -> httpx.Response:
        return httpx.post(f"{ray_url}/v1/models/{MODEL}:predict",
                          json={"instances": [{"customer_id": i, "merchant_id": i % 60, "amount": 30.0}]}, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(96)))
    assert {r.status_code for r in responses} == {200}
    text = httpx.get(f"{ray_url}/metrics").text
    count = float(re.search(rf'keel_batch_size_count{{model="{MODEL}",version="\d+"}} (\S+)', text).group(1))
    total = float(re.search(rf'keel_batch_size_sum{{model="{MODEL}",version="\d+"}} (\S+)', text).group(1))
    assert total / count > 1.5, f"mean batch {total / count:.2f}: concurrent requests should share model calls"


def test_bad_input_is_a_4xx_naming_the_field(ray_url: str) -> None:
    cases = [("{oops", 400, "body"), (json.dumps({"instances": [{"customer_id": 1.5, "merchant_id": 1,
                                                                 "amount": 1}]}), 400, "instances[0].customer_id"),
             (json.dumps({"nope": 1}), 400, "instances")]
    for content, status, field in cases:
        r = httpx.post(f"{ray_url}/v1/models/{MODEL}:predict", content=content, timeout=30)
        assert r.status_code == status and r.json()["field"] == field, r.text
    assert httpx.post(f"{ray_url}/v1/models/other:predict", json={"instances": []}).status_code == 404


def test_oversized_bodies_are_413_before_parsing(ray_url: str) -> None:
    from tests.integration.bodylimit import assert_bodies_bounded

    for path in (f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"):
        assert_bodies_bounded(ray_url, path)
    # still serving (a readiness call: the graceful-stop test counts the predictions logged here)
    assert httpx.get(f"{ray_url}/v1/models/{MODEL}", timeout=30).status_code == 200


# Ray 2.60's own internal servers listen on every interface whatever node address they are given (gRPC:
# GCS, raylet, object manager, core workers of the driver and each actor; the agents and the autoscaler
# monitor's metrics): documented in the README ("Local security"). Everything keel serves does not.
RAY_INTERNAL = ("/ray/core/src/ray/", "ray::", "/ray/dashboard/", "/ray/autoscaler/", "/ray/_private/")


def test_every_listener_of_the_ray_runtime_is_on_loopback(ray_url: str, stack_settings: Settings) -> None:
    """Serve's HTTP proxy (what keel serves) and every other service of the stack listen on 127.0.0.1;
    what Ray's own processes open on other interfaces is only the documented list above."""
    from tests.listeners import listeners, off_loopback

    pgids = Stack(stack_settings).pgids()
    port = int(ray_url.rsplit(":", 1)[1])
    found = listeners(pgids)
    assert [addr for _, _, addr, p in found if p == port] == ["127.0.0.1"], found
    assert len(found) > 3, found  # Ray's own servers are seen, not only the proxy
    ray_driver = {pid for pid, cmd, _, _ in found if "keel.serving.ray_runtime" in cmd}
    outside = [x for x in off_loopback(pgids) if not any(k in x[1] for k in RAY_INTERNAL) and x[0] not in ray_driver]
    assert not outside, outside
    assert all(p != port for *_, p in off_loopback(pgids))
    from keel.serving.ray_ingress import haproxy_binary

    if haproxy_binary() is not None:  # direct ingress: HAProxy answers the port, and none of its listeners is wide
        assert any(p == port and "haproxy" in cmd for _, cmd, _, p in found), found
        haproxy = [(addr, p) for _, cmd, addr, p in found if "haproxy" in cmd]
        assert len(haproxy) >= 3 and all(addr == "127.0.0.1" for addr, _ in haproxy), haproxy


def test_graceful_stop_flushes_the_prediction_log(ray_url: str, deployer, stack_settings: Settings) -> None:
    spec = deployer.target.specs()[MODEL]
    for i in range(25):
        assert httpx.post(f"{ray_url}/v1/models/{MODEL}:predict",
                          json={"instances": [{"customer_id": i, "merchant_id": 1, "amount": 1.0}]}).status_code == 200
    deployer.target.undeploy(MODEL)
    log = read(spec.predlog_uri, MODEL)
    assert len(log) == 8 + 8 + 96 + 25  # every answered instance (V1 and V2), none twice, after a graceful stop


@pytest.mark.parametrize("name", ["ray_serve_config.yaml", "ray_serve_config.gpu.yaml"])
def test_serve_config_files_are_valid(name: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    from keel.serving.ray_runtime import app_builder

    cfg = yaml.safe_load((ROOT / "serving" / name).read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    app = schema.applications[0]
    assert app.import_path == "keel.serving.ray_runtime:app_builder"
    assert app_builder(app.args) is not None  # the builder accepts exactly these args
    actor = cfg["applications"][0]["deployments"][0]["ray_actor_options"]
    assert actor.get("num_gpus", 0) == app.args.get("num_gpus", 0)


def test_deployment_options_carry_fractional_gpus_and_autoscaling(tmp_path: Path) -> None:
    from keel.serving.ray_runtime import deployment_options
    from keel.serving.spec import ServeSpec

    opts = deployment_options(ServeSpec(model="m", runtime="ray", num_gpus=0.25, gpu=True, min_replicas=0,
                                        max_replicas=4))
    assert opts["ray_actor_options"]["num_gpus"] == 0.25
    assert opts["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 16}
    assert deployment_options(ServeSpec(model="m", runtime="ray"))["num_replicas"] == 1
