"""Load shedding's admission logic (keel.serving.shed) on a stand-in ASGI app whose requests stay in
flight until released: the bound, the 503 with Retry-After, the per-class shares and the counter."""

from __future__ import annotations

import asyncio
import json

import pytest

from keel.serving.shed import SHED, LoadShed


class Held:
    """An app whose prediction requests wait until released: in flight for as long as the test says."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _scope(path: str = "/v1/models/m:predict", method: str = "POST", priority: str | None = None) -> dict:
    headers = [(b"content-type", b"application/json")]
    if priority is not None:
        headers.append((b"X-Keel-Priority", priority.encode()))
    return {"type": "http", "path": path, "method": method, "headers": headers}


async def _call(app, scope: dict) -> tuple[int, dict, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(body or b"{}")


def _shed(model: str, cls: str) -> float:
    return SHED.labels(model, cls)._value.get()


def test_past_the_bound_requests_are_refused_at_once_with_retry_after() -> None:
    async def run() -> None:
        inner = Held()
        app = LoadShed(inner, "m1", max_inflight=2)
        held = [asyncio.create_task(_call(app, _scope())) for _ in range(2)]
        await asyncio.sleep(0)  # both admitted, both waiting
        assert app.inflight == 2
        before = _shed("m1", "default")
        status, headers, body = await asyncio.wait_for(_call(app, _scope(path="/v2/models/m/infer")), 1)
        assert status == 503 and headers[b"retry-after"] == b"1" and body["shed"] is True
        assert "2 requests in flight" in body["error"] and _shed("m1", "default") == before + 1
        # health, metadata and metrics are never shed
        inner_ok = Held()
        inner_ok.release.set()
        assert (await _call(LoadShed(inner_ok, "m1", 1), _scope(path="/v2/health/ready", method="GET")))[0] == 200
        inner.release.set()
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
        assert app.inflight == 0
        assert (await _call(app, _scope()))[0] == 200  # room again

    asyncio.run(run())


def test_a_lower_class_is_shed_while_a_higher_one_is_still_served() -> None:
    async def run() -> None:
        inner = Held()
        app = LoadShed(inner, "m2", max_inflight=4, shares={"critical": 1.0, "default": 0.5, "batch": 0.25})
        assert app.limits == {"critical": 4, "default": 2, "batch": 1}
        held = [asyncio.create_task(_call(app, _scope(priority="batch")))]
        await asyncio.sleep(0)
        assert (await _call(app, _scope(priority="batch")))[0] == 503  # batch's one slot is taken
        held.append(asyncio.create_task(_call(app, _scope())))  # no header: the default class
        await asyncio.sleep(0)
        assert (await _call(app, _scope()))[0] == 503  # default's two are taken
        held += [asyncio.create_task(_call(app, _scope(priority="critical"))) for _ in range(2)]
        await asyncio.sleep(0)
        assert app.inflight == 4
        status, _, body = await _call(app, _scope(priority="critical"))
        assert status == 503 and "priority 'critical'" in body["error"]
        inner.release.set()
        assert [r[0] for r in await asyncio.gather(*held)] == [200] * 4

    asyncio.run(run())


def test_an_unknown_priority_is_a_400_naming_the_classes_and_bad_settings_are_refused() -> None:
    async def run() -> None:
        inner = Held()
        inner.release.set()
        status, _, body = await _call(LoadShed(inner, "m3", 4, {"critical": 1.0}), _scope(priority="urgent"))
        assert status == 400 and body["field"] == "x-keel-priority"
        assert "expected one of critical, default" in body["error"]

    asyncio.run(run())
    with pytest.raises(ValueError, match="max_inflight=0"):
        LoadShed(Held(), "m", 0)
    with pytest.raises(ValueError, match=r"'low': 1\.5"):
        LoadShed(Held(), "m", 4, {"low": 1.5})


def test_the_spec_checks_its_bound_and_shares() -> None:
    from keel.errors import KeelError
    from keel.project import ServingSpec
    from keel.serving.spec import ServeSpec

    with pytest.raises(KeelError, match="invalid max_inflight 0"):
        ServeSpec(model="m", max_inflight=0)
    with pytest.raises(KeelError, match="invalid priorities"):
        ServeSpec(model="m", priorities={"low": 0.0})
    assert ServingSpec().max_inflight == 32
    with pytest.raises(ValueError, match="priorities"):
        ServingSpec(priorities={"low": 2.0})
