"""The KServe runtime as a real process on loopback, against real MLflow, Redis and Feast."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.config import Settings
from keel.registry.client import Registry
from keel.stack.services import DEPLOYMENT_PREFIX
from tests.conftest import build_fraud, free_ports, run_keel
from tests.integration.conftest import DATA_END

MODEL = "fraud_serve"


@pytest.fixture(scope="module")
def kserve_url(deployer, served_model: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    log_dir = tmp_path_factory.mktemp("predlog-kserve")
    return deployer(model=MODEL, runtime="kserve", port=free_ports(1)[0], predlog_uri=str(log_dir), max_batch=64)


def _post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=30)


def test_train_serve_consistency(kserve_url: str, feature_data: dict[str, Path], stack_settings: Settings,
                                 served_model: dict[str, str]) -> None:
    """Served features equal the materialized values, and the served score equals the model's score on
    the offline (point-in-time) row for the same entity and moment."""
    spend = pd.read_parquet(feature_data["customer_spend"])
    fresh = spend[spend["event_timestamp"] > pd.Timestamp(DATA_END) - pd.Timedelta(hours=20)]["customer_id"].unique()
    rng = np.random.default_rng(0)
    customers = rng.choice(fresh, 30, replace=False)
    instances = [{"customer_id": int(c), "merchant_id": int(rng.integers(0, 60)),
                  "amount": round(float(rng.uniform(5, 400)), 2)} for c in customers]
    served = _post(kserve_url, {"instances": instances})
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["model"] == MODEL and body["version"] == served_model["champion"] and body["degraded"] is False

    events = pd.DataFrame(instances).assign(event_timestamp=pd.Timestamp(DATA_END) + pd.Timedelta(hours=1),
                                            is_fraud=0)
    offline = build_fraud(stack_settings, "fraud_model_v1", events, out_dir=stack_settings.home / "tmp")
    reg = Registry(stack_settings)
    v = reg.version(MODEL, served_model["champion"])
    model = reg.load(v)
    rows = offline.frame.set_index("customer_id").loc[customers.tolist()]
    expected = model.predict_proba(rows[offline.features])[:, 1]
    np.testing.assert_allclose(body["predictions"], expected, rtol=0, atol=1e-6)


def test_v2_protocol_with_kserves_own_client(kserve_url: str, served_model: dict[str, str]) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def go() -> tuple:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            ready = await client.is_model_ready(kserve_url, MODEL)
            inputs = [InferInput("customer_id", [3], "INT64", [1, 2, 3]),
                      InferInput("merchant_id", [3], "INT64", [4, 5, 6]),
                      InferInput("amount", [3], "FP64", [10.0, 250.0, 3000.0])]
            res = await client.infer(kserve_url, InferRequest(MODEL, inputs, request_id="req-1"), model_name=MODEL)
            return ready, res
        finally:
            await client.close()

    ready, res = asyncio.run(go())
    assert ready is True
    scores = res.outputs[0]
    assert scores.name == "score" and scores.shape == [3] and len(scores.data) == 3
    assert all(0.0 <= s <= 1.0 for s in scores.data)
    # KServe's REST client drops model_version when parsing; keel repeats it in parameters
    assert res.parameters["model_version"] == served_model["champion"] and res.id == "req-1"
    v1 = _post(kserve_url, {"instances": [{"customer_id": 1, "merchant_id": 4, "amount": 10.0}]}).json()
    assert v1["predictions"][0] == pytest.approx(scores.data[0])
    meta = httpx.get(f"{kserve_url}/v2/models/{MODEL}").json()
    assert [i["name"] for i in meta["inputs"]] == ["customer_id", "merchant_id", "amount"]
    assert httpx.get(f"{kserve_url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("v1", "{not json", 400, "Unrecognized request format"),
        ("v1", {"instances": [{"merchant_id": 1, "amount": 1.0}]}, 400, "instances[0].customer_id: missing"),
        ("v1", {"instances": [{"customer_id": "7", "merchant_id": 1, "amount": 1.0}]}, 400,
         "instances[0].customer_id: expected a 64-bit integer"),
        ("v1", {"instances": [{"customer_id": 7, "merchant_id": 1, "amount": "x"}]}, 400,
         "instances[0].amount: expected a finite number"),
        ("v1", {"instances": [{"customer_id": 7, "merchant_id": 1, "amount": 1.0}] * 65}, 400,
         "batch of 65 exceeds the maximum of 64"),
        ("v1", {"instances": []}, 400, "instances: expected at least one instance"),
        ("v1", {"rows": []}, 400, "instances: missing"),
        ("v2", {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [2], "data": [1]},
                           {"name": "merchant_id", "datatype": "INT64", "shape": [1], "data": [1]},
                           {"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, 400,
         "inputs.customer_id.shape"),
        ("v2", {"inputs": [{"name": "customer_id", "datatype": "FP64", "shape": [1], "data": [1.5]},
                           {"name": "merchant_id", "datatype": "INT64", "shape": [1], "data": [1]},
                           {"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, 400,
         "inputs.customer_id.datatype"),
        ("v2", {"inputs": [{"name": "merchant_id", "datatype": "INT64", "shape": [1], "data": [1]},
                           {"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, 400,
         "inputs.customer_id: missing"),
        ("unknown", {"instances": [{"customer_id": 1, "merchant_id": 1, "amount": 1.0}]}, 404, "nosuch"),
        ("v2", "Infinity", 400, "body"),  # found by the fuzz test: FastAPI's echo of inf made it a 500
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(kserve_url: str, path: str, body: object, status: int,
                                             needle: str) -> None:
    url = {"v1": f"{kserve_url}/v1/models/{MODEL}:predict", "v2": f"{kserve_url}/v2/models/{MODEL}/infer",
           "unknown": f"{kserve_url}/v1/models/nosuch:predict"}[path]
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                             max_size=4), max_leaves=12)
near_instance = st.fixed_dictionaries(
    {}, optional={"customer_id": json_value | st.integers(-5, 10**6), "merchant_id": json_value | st.integers(0, 70),
                  "amount": json_value | st.floats(allow_nan=True, allow_infinity=True)})
valid_instance = st.fixed_dictionaries({"customer_id": st.integers(-(2**63), 2**63 - 1),
                                        "merchant_id": st.integers(0, 100),
                                        "amount": st.floats(-1e12, 1e12, allow_nan=False)})
v1_body = st.one_of(json_value, st.fixed_dictionaries({"instances": json_value | st.lists(near_instance, max_size=5)}),
                    st.fixed_dictionaries({"instances": st.lists(valid_instance, min_size=1, max_size=5)}))
tensor = st.fixed_dictionaries({"name": st.sampled_from(["customer_id", "merchant_id", "amount", "x"]),
                                "datatype": st.sampled_from(["INT64", "FP64", "BOOL", "BYTES", "FP16", "Q"]),
                                "shape": st.lists(st.integers(-2, 4), max_size=3),
                                "data": st.lists(json_leaf, max_size=4)})
v2_body = st.one_of(json_value, st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=4)}))
raw = st.binary(max_size=40)


def test_oversized_bodies_are_413_before_parsing(kserve_url: str) -> None:
    from tests.integration.bodylimit import assert_bodies_bounded

    for path in (f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"):
        assert_bodies_bounded(kserve_url, path)
    assert _post(kserve_url, {"instances": [{"customer_id": 1, "merchant_id": 1, "amount": 1.0}]}).status_code == 200


def test_fuzz_http_api_never_5xx(kserve_url: str) -> None:
    """≥1,000 generated requests over V1 and V2 (valid, near-valid and garbage): never a 5xx."""
    seen: list[int] = []
    with httpx.Client(timeout=30) as client:

        @settings(max_examples=1100, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(kind=st.sampled_from(["v1", "v2", "raw"]), b1=v1_body, b2=v2_body, b3=raw)
        def case(kind: str, b1: object, b2: object, b3: bytes) -> None:
            if kind == "raw":
                r = client.post(f"{kserve_url}/v1/models/{MODEL}:predict", content=b3,
                                headers={"Content-Type": "application/json"})
            else:
                url = f"{kserve_url}/v1/models/{MODEL}:predict" if kind == "v1" else \
                    f"{kserve_url}/v2/models/{MODEL}/infer"
                r = client.post(url, content=json.dumps(b1 if kind == "v1" else b2),
                                headers={"Content-Type": "application/json"})
            seen.append(r.status_code)
            assert r.status_code < 500, (kind, r.status_code, r.text[:300])

        case()
    assert len(seen) >= 1000
    assert any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)
    assert httpx.get(f"{kserve_url}/v2/health/ready").status_code == 200  # still alive


def test_metrics_exposed(kserve_url: str, served_model: dict[str, str]) -> None:
    _post(kserve_url, {"instances": [{"customer_id": 3, "merchant_id": 3, "amount": 3.0}]})
    text = httpx.get(f"{kserve_url}/metrics").text
    v = served_model["champion"]
    for needle in (f'keel_requests_total{{code="200",model="{MODEL}",version="{v}"}}',
                   f'keel_request_duration_seconds_bucket{{le="0.005",model="{MODEL}",stage="features",version="{v}"}}',
                   'stage="model"', 'stage="total"', f'keel_feature_breaker_state{{model="{MODEL}",version="{v}"}} 0.0',
                   "keel_batch_size_bucket", 'keel_requests_total{code="400"'):
        assert needle in text, needle


def test_deployment_joins_status_and_cli_predict(kserve_url: str, stack_settings: Settings) -> None:
    status = {r["service"]: r for r in json.loads(run_keel(["status", "-o", "json"], stack_settings).stdout)}
    assert status[DEPLOYMENT_PREFIX + MODEL]["state"] == "healthy"
    proc = run_keel(["predict", MODEL, "--entity", "customer_id=3", "--entity", "merchant_id=3",
                     "--entity", "amount=3.0", "-o", "json"], stack_settings)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == MODEL
    bad = run_keel(["predict", MODEL, "--entity", "merchant_id=3", "--entity", "amount=3"], stack_settings)
    assert bad.returncode == 2 and "answered 400" in bad.stderr and "customer_id" in bad.stderr
    nodeploy = run_keel(["predict", "nosuch", "--entity", "customer_id=1"], stack_settings)
    assert nodeploy.returncode == 2 and "unknown deployment 'nosuch'" in nodeploy.stderr
