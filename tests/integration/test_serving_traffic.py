"""Traffic behaviour of a served model: Redis failing mid-stream, canary split, shadow, prediction log."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx

from keel.config import Settings
from keel.serving.predlog import read
from keel.stack import Stack
from tests.conftest import free_ports

MODEL = "fraud_serve"
BODY = {"instances": [{"customer_id": 5, "merchant_id": 5, "amount": 25.0},
                      {"customer_id": 6, "merchant_id": 6, "amount": 900.0}]}


def _counter(url: str, name: str, **labels: str) -> float:
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_redis_down_mid_stream_degrades_to_the_last_known_values_without_errors(
        deployer, served_model: dict[str, str], stack: Stack, stack_settings: Settings, tmp_path: Path) -> None:
    """The feature cache is on by default (1 s fresh): while Redis is down the entities it has seen get
    their last known values (stale-if-error, flagged degraded), an entity it has not seen gets the
    training medians, and no request fails."""
    url = deployer(model=MODEL, runtime="kserve", port=free_ports(1)[0], predlog_uri=str(tmp_path))
    predict = f"{url}/v1/models/{MODEL}:predict"
    results: list[tuple[float, int, bool | None, list[float] | None]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = c.post(predict, json=BODY)
                ok = r.status_code == 200
                results.append((time.monotonic(), r.status_code, r.json()["degraded"] if ok else None,
                                r.json()["predictions"] if ok else None))
                time.sleep(0.01)

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        time.sleep(1.0)
        before = _counter(url, "keel_feature_fallback_total")
        stopping_at = time.monotonic()
        stack.down(["redis"])  # returns once Redis has exited
        down_at = time.monotonic()
        time.sleep(3.0)
        during = _counter(url, "keel_feature_fallback_total")
        unseen = httpx.post(predict, json={"instances": [{"customer_id": 7, "merchant_id": 7, "amount": 25.0}]},
                            timeout=10).json()
        restart_at = time.monotonic()
        stack.up(["redis"])  # returns once Redis answers PING
        back_at = time.monotonic()
        time.sleep(6.0)
    finally:
        stop.set()
        worker.join(30)
    codes = {code for _, code, _, _ in results}
    assert codes == {200}, f"non-200 answers during the outage: {codes}"
    calm = [p for t, _, _, p in results if t < stopping_at]
    assert calm and all(p == calm[0] for p in calm)
    # past the 1 s the cache holds them fresh, every answer is flagged, and still the last known scores
    outage = [(d, p) for t, _, d, p in results if down_at + 1.5 < t < restart_at]
    assert outage and all(d for d, _ in outage), "every answer during the outage is flagged degraded"
    assert all(p == calm[0] for _, p in outage), "stale-if-error: the last known values, not the medians"
    assert during > before, "the fallback counter rises"
    assert _counter(url, "keel_feature_fallback_total", reason="stale") > 0
    assert _counter(url, "keel_feature_cache_total", result="stale") > 0
    assert _counter(url, "keel_feature_cache_total", result="hit") > 0
    assert unseen["degraded"] is True  # never seen: nothing to be stale with, so the medians
    recovered = [t for t, _, d, _ in results if t > back_at and d is False]
    assert recovered, "service returned to normal after Redis came back"
    assert recovered[0] - back_at < 5.0
    assert all(d is False for t, _, d, _ in results if t > recovered[0] + 0.5)
    assert not any(d for t, _, d, _ in results if t < stopping_at)


def test_a_fallback_version_scores_what_redis_cannot_and_is_checked_before_a_server_starts(
        deployer, training_set, stack: Stack, stack_settings: Settings, tmp_path: Path) -> None:
    """Spec-declared fallback: a plain model on the request's own amount (no online features) scores the
    rows while Redis is down, flagged in the answer and counted; a fallback that cannot stand in is
    refused at deploy, in seconds, before any server starts."""
    import mlflow
    import numpy as np
    import pytest
    from examples.fraud.fraud_model import train_fraud_model
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from keel.errors import KeelError
    from keel.infra.probes import wait_until
    from keel.registry.client import Registry

    name = "fraud_fallback"
    reg = Registry(stack_settings)
    full = train_fraud_model(training_set)
    served = reg.register(full.model, name, training_set, full.holdout, full.metrics).version
    reg.promote(name)
    X = training_set.frame[["amount"]].astype("float64")
    simple = LogisticRegression().fit(X, training_set.frame[training_set.label])
    mlflow.set_tracking_uri(stack_settings.tracking_uri)
    with mlflow.start_run():
        mlflow.sklearn.log_model(simple, name="model", registered_model_name=name,
                                 signature=mlflow.models.infer_signature(X, simple.predict_proba(X)[:, 1]))
        with_age = X.assign(age=1.0)  # needs an input the fraud requests do not carry
        mlflow.sklearn.log_model(LogisticRegression().fit(with_age, training_set.frame[training_set.label]),
                                 name="needs_age", registered_model_name=name,
                                 signature=mlflow.models.infer_signature(with_age, simple.predict(X)))
    client = MlflowClient()
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    fb_version, needs_age = str(versions[-2]), str(versions[-1])
    client.set_registered_model_alias(name, "fallback", fb_version)

    port = free_ports(1)[0]
    for bad, why in (("nosuch", "nosuch"), (served, "the version being served"),
                     (needs_age, "needs input(s) age")):
        t0 = time.monotonic()
        with pytest.raises(KeelError, match=re.escape(why)):
            deployer(model=name, runtime="kserve", port=port, fallback=bad)
        assert time.monotonic() - t0 < 15.0
    body = {"instances": [{"customer_id": 5, "merchant_id": 5, "amount": 25.0},
                          {"customer_id": 6, "merchant_id": 6, "amount": 900.0}]}
    want = simple.predict_proba(np.array([[25.0], [900.0]]))[:, 1]
    for runtime in ("kserve", "ray"):  # the Ray runtime batches requests: each answer keeps its own rows' flags
        url = deployer(model=name, runtime=runtime, port=port, fallback="fallback", cache_ttl_s=0.0,
                       predlog_uri=str(tmp_path))
        predict = f"{url}/v1/models/{name}:predict"
        calm = httpx.post(predict, json=body, timeout=10).json()
        assert calm["degraded"] is False and "fallback_rows" not in calm
        assert _counter(url, "keel_fallback_model_predictions_total") == 0  # exported at 0
        stack.down(["redis"])
        try:
            answers = [httpx.post(predict, json=body, timeout=10) for _ in range(8)]
        finally:
            stack.up(["redis"])  # returns once Redis answers PING
        assert {r.status_code for r in answers} == {200}, runtime
        for r in answers:
            out = r.json()
            assert out["degraded"] is True and out["fallback_rows"] == [True, True], (runtime, out)
            assert out["fallback_version"] == fb_version
            assert np.allclose(out["predictions"], want, atol=1e-9), (runtime, out["predictions"], want)
        assert _counter(url, "keel_fallback_model_predictions_total", fallback_version=fb_version) == 16
        answer: dict = {}

        def whole(answer: dict = answer, predict: str = predict) -> bool:
            answer.clear()
            answer.update(httpx.post(predict, json=body, timeout=10).json())
            return answer["degraded"] is False

        assert wait_until(whole, 10), answer  # the breaker lets a probe through within its 1 s cool-down
        assert "fallback_rows" not in answer and np.allclose(answer["predictions"], calm["predictions"])


def test_canary_split_matches_the_weight(deployer, served_model: dict[str, str], tmp_path: Path) -> None:
    """Unsticky: a coin flip per request, so one entity's requests split by the weight (the sticky split, by
    entity, is test_ab.py's)."""
    url = deployer(model=MODEL, runtime="kserve", port=free_ports(1)[0], canary_alias="challenger",
                   canary_weight=0.3, predlog_uri=str(tmp_path), sample_rate=0.0, sticky=False)
    versions = []
    with httpx.Client(timeout=10) as c:
        for _ in range(2000):
            r = c.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": BODY["instances"][:1]})
            assert r.status_code == 200
            versions.append(r.json()["version"])
    share = versions.count(served_model["challenger"]) / len(versions)
    assert set(versions) == {served_model["champion"], served_model["challenger"]}
    assert abs(share - 0.3) <= 0.05, share


def test_shadow_is_logged_never_returned_and_sigterm_loses_nothing(deployer, served_model: dict[str, str],
                                                                   tmp_path: Path) -> None:
    url = deployer(model=MODEL, runtime="kserve", port=free_ports(1)[0], shadow_alias="challenger",
                   predlog_uri=str(tmp_path))
    n = 137
    answered = []
    with httpx.Client(timeout=10) as c:
        for i in range(n):
            r = c.post(f"{url}/v1/models/{MODEL}:predict",
                       json={"instances": [{"customer_id": i, "merchant_id": i % 50, "amount": 10.0 + i}]})
            assert r.status_code == 200
            answered.append(r.json())
    assert {a["version"] for a in answered} == {served_model["champion"]}
    deployer.target.undeploy(MODEL)  # SIGTERM: drain, finish shadow work, flush
    log = read(str(tmp_path), MODEL)
    primary = log[log["role"] == "primary"]
    shadow = log[log["role"] == "shadow"]
    assert len(primary) == n, "exactly N records after a graceful stop"
    assert set(primary["version"]) == {served_model["champion"]}
    assert set(shadow["version"]) == {served_model["challenger"]}
    assert set(shadow["request_id"]) <= set(primary["request_id"])
    assert len(shadow) >= n * 0.9  # shadow work is bounded and may shed load; here it keeps up
    by_id = {a["request_id"]: a["predictions"][0] for a in answered}
    assert all(by_id[r] == p for r, p in zip(primary["request_id"], primary["prediction"], strict=True))
    assert primary["amount_mean_24h"].notna().any() and "merchant_fraud_rate_30d" in log.columns
