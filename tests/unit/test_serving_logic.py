"""Pure serving logic with stand-ins for the store and the model: validation, routing, spec parsing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from keel.errors import KeelError
from keel.serving.breaker import CircuitBreaker
from keel.serving.core import InputError, ModelRunner, Predictor, pick_device
from keel.serving.features import Lookup
from keel.serving.router import Router
from keel.serving.spec import ServeSpec


class FakeOnline:
    def __init__(self) -> None:
        self.entity_keys = ["customer_id"]
        self.request_fields = ["amount"]
        self.types = {"customer_id": "int", "amount": "float"}
        self.breaker = CircuitBreaker()

    def fetch(self, rows: list[dict[str, Any]]) -> Lookup:
        frame = pd.DataFrame({"f": [float(r["customer_id"]) for r in rows], "amount": [r["amount"] for r in rows]})
        return Lookup(frame, np.zeros(len(rows), dtype=bool), None)


class Half:
    def __init__(self, value: float) -> None:
        self.value = value

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.column_stack([1 - np.full(len(X), self.value), np.full(len(X), self.value)])


def predictor(version: str = "1", value: float = 0.25, max_batch: int = 10) -> Predictor:
    return Predictor("m", version, ModelRunner(Half(value), "sklearn", "cpu"), FakeOnline(),  # type: ignore[arg-type]
                     ["f", "amount"], max_batch=max_batch)


@pytest.mark.parametrize(
    ("instances", "field"),
    [
        ("x", "instances"),
        ([], "instances"),
        ([{"customer_id": 1, "amount": 1.0}] * 11, "instances"),
        ([3], "instances[0]"),
        ([{"amount": 1.0}], "instances[0].customer_id"),
        ([{"customer_id": True, "amount": 1.0}], "instances[0].customer_id"),
        ([{"customer_id": 2**63, "amount": 1.0}], "instances[0].customer_id"),
        ([{"customer_id": 1.0, "amount": 1.0}], "instances[0].customer_id"),
        ([{"customer_id": 1}], "instances[0].amount"),
        ([{"customer_id": 1, "amount": float("nan")}], "instances[0].amount"),
        ([{"customer_id": 1, "amount": "1"}], "instances[0].amount"),
    ],
)
def test_validation_names_the_field(instances: Any, field: str) -> None:
    with pytest.raises(InputError) as err:
        predictor().validate(instances)
    assert err.value.field == field and err.value.body()["field"] == field


def test_predict_returns_scores_version_and_flags() -> None:
    r = predictor().predict([{"customer_id": 1, "amount": 3}, {"customer_id": 2, "amount": 4.5}])
    assert r.scores == [0.25, 0.25] and r.version == "1" and r.degraded == [False, False]
    assert r.as_dict()["degraded"] is False


def test_canary_weight_zero_and_one() -> None:
    a, b = predictor("1", 0.1), predictor("2", 0.9)
    inst = [{"customer_id": 1, "amount": 1.0}]
    assert {Router(a, b, "canary", 0.0, seed=1).predict(inst).version for _ in range(50)} == {"1"}
    assert {Router(a, b, "canary", 1.0, seed=1).predict(inst).version for _ in range(50)} == {"2"}


def test_predict_many_batches_per_version_and_isolates_bad_requests() -> None:
    a = predictor("1", 0.1)
    router = Router(a)
    calls: list[int] = []
    original = a.predict

    def counting(instances: Any, role: str = "primary", request_id: str | None = None,
                 row_ids: list[str] | None = None) -> Any:
        calls.append(len(instances))
        return original(instances, role, request_id, row_ids)

    a.predict = counting  # type: ignore[method-assign]
    out = router.predict_many([[{"customer_id": 1, "amount": 1.0}], [{"customer_id": "bad"}],
                               [{"customer_id": 2, "amount": 2.0}, {"customer_id": 3, "amount": 3.0}]])
    assert calls == [3]  # one model call for the three valid instances
    assert out[0].scores == [0.1] and isinstance(out[1], InputError) and out[2].scores == [0.1, 0.1]


def test_router_rejects_bad_modes() -> None:
    with pytest.raises(ValueError):
        Router(predictor(), None, "shadow")
    with pytest.raises(ValueError):
        Router(predictor(), predictor(), "blue-green")


@pytest.mark.parametrize("text", ["challenger", "challenger:x", ":10", "challenger:150", "challenger:-1"])
def test_bad_canary_spec(text: str) -> None:
    with pytest.raises(KeelError, match="invalid --canary"):
        ServeSpec.parse_canary(text)


def test_spec_round_trip_and_checks() -> None:
    spec = ServeSpec(model="m", canary_alias="challenger", canary_weight=0.1, runtime="ray", num_gpus=0.5)
    assert ServeSpec.from_json(spec.to_json()) == spec
    assert ServeSpec.parse_canary("challenger:10") == ("challenger", 0.1)
    with pytest.raises(KeelError, match="unknown runtime 'triton'; valid choices: kserve, ray"):
        ServeSpec(model="m", runtime="triton")
    with pytest.raises(KeelError, match="not both"):
        ServeSpec(model="m", canary_alias="a", shadow_alias="b")


def test_no_gpu_means_cpu_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    assert pick_device(False) == "cpu"
    with caplog.at_level("WARNING", logger="keel.serving"):
        device = pick_device(True)
    if device == "cpu":  # machines without a GPU (CI): say so
        assert "running the model on CPU" in caplog.text


def test_batched_requests_keep_their_own_request_ids_in_answers_and_log() -> None:
    class Log:
        dropped = 0

        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def sampled(self) -> bool:
            return True

        def add(self, recs: list[dict[str, Any]]) -> None:
            self.records.extend(recs)

    p = predictor()
    p.predlog = Log()  # type: ignore[assignment]
    out = Router(p).predict_many([[{"customer_id": 1, "amount": 1.0}],
                                  [{"customer_id": 2, "amount": 2.0}, {"customer_id": 3, "amount": 3.0}]])
    ids = [r.request_id for r in out]  # type: ignore[union-attr]
    assert len(set(ids)) == 2
    assert [r["request_id"] for r in p.predlog.records] == [ids[0], ids[1], ids[1]]  # type: ignore[attr-defined]
    assert [r["customer_id"] for r in p.predlog.records] == [1, 2, 3]  # type: ignore[attr-defined]


def test_a_ray_model_on_the_shared_cluster_answers_under_its_name_on_the_proxy(tmp_path: Path) -> None:
    """Ray allows one Serve proxy per cluster: on a shared cluster every Ray runtime model takes its port and
    a route prefix of its own name; without one (or with the KServe runtime) a model keeps its own port."""
    from keel.client import Client
    from keel.config import Settings
    from keel.serving.deploy import LocalTarget, free_port

    head = socket.create_server(("127.0.0.1", 0))  # stands in for the Ray head's port: placed() checks it
    shared = Settings(home=tmp_path, ray_workers=2, ray_serve_port=9480, ray_port=head.getsockname()[1])
    target = LocalTarget(shared)
    with head:
        ray = target.placed(ServeSpec(model="fraud-v2.x", runtime="ray", port=8085))
        with pytest.raises(KeelError, match="model name 'a b'"):
            target.placed(ServeSpec(model="a b", runtime="ray"))
    with pytest.raises(KeelError, match=r"the Ray cluster is not reachable at 127.0.0.1:\d+; start it with `keel up`"):
        target.placed(ServeSpec(model="fraud", runtime="ray"))
    assert (ray.port, ray.route_prefix, ray.base_url(shared)) == (9480, "/fraud-v2.x", "http://127.0.0.1:9480/fraud-v2.x")
    assert target.placed(ServeSpec(model="fraud", port=8085)).route_prefix == ""  # KServe: a port of its own
    alone = Settings(home=tmp_path)
    assert LocalTarget(alone).placed(ray).route_prefix == "" and ray.base_url(shared).endswith("/fraud-v2.x")
    with pytest.raises(KeelError, match="route prefix '/other'"):
        ServeSpec(model="fraud", runtime="ray", route_prefix="/other")
    assert free_port(Settings(home=tmp_path, ray_workers=2, ray_serve_port=8085), target, "m") == 8086
    with pytest.raises(KeelError, match=r"--port 8090: .*9480 \(KEEL_RAY_SERVE_PORT\)"):
        Client(shared).deploy("fraud", runtime="ray", port=8090)
    remote = Settings(home=tmp_path, ray_address="ray://10.0.0.7:10001")
    assert remote.ray_serve_host == "10.0.0.7"
