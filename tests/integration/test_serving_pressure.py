"""Serving under pressure, on the real runtimes: a replica full of prediction requests answers 503 with
Retry-After at once (never a timeout pile-up or another 5xx), counted in keel_requests_shed_total, and a
higher priority class is still served while a lower one is shed.

A request whose body is still arriving is in flight: a client that has sent its headers and part of its
body holds one slot for as long as the test keeps the socket open, with no sleep and nothing to time."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import free_ports

MODEL = "fraud_serve"
ROW = {"instances": [{"customer_id": 7, "merchant_id": 3, "amount": 42.0}]}
SHARES = {"critical": 1.0, "default": 0.5}  # of max_inflight=2: default may fill 1 slot, critical 2


@pytest.fixture(scope="module", params=["kserve", "ray"])
def url(request: pytest.FixtureRequest, deployer, served_model: dict[str, str]) -> Iterator[str]:
    base = deployer(model=MODEL, runtime=request.param, port=free_ports(1)[0], max_inflight=2, priorities=SHARES)
    yield base
    deployer.target.undeploy(MODEL)


@contextmanager
def _held(base: str, priority: str | None = None) -> Iterator[socket.socket]:
    """A prediction request with its headers sent and its body not: one slot, until the block ends."""
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            + (f"X-Keel-Priority: {priority}\r\n" if priority else "")
            + "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"instances\": [")
    sock.sendall(head.encode())
    try:
        yield sock
    finally:
        sock.close()


def _predict(base: str, priority: str | None = None) -> httpx.Response:
    headers = {"X-Keel-Priority": priority} if priority else {}
    return httpx.post(f"{base}/v1/models/{MODEL}:predict", json=ROW, headers=headers, timeout=30)


def _until(status: int, base: str, priority: str | None = None, within: float = 20.0) -> httpx.Response:
    """Predict until the answer has this status (the server sees a held request's headers a moment after
    they are sent, and a closed one's end a moment after the close); any status but 200/503 fails."""
    deadline = time.monotonic() + within
    while True:
        r = _predict(base, priority)
        assert r.status_code in (200, 503), r.text
        if r.status_code == status or time.monotonic() > deadline:
            return r


def _shed_total(base: str, cls: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.findall(rf'^keel_requests_shed_total{{[^}}]*model="{MODEL}"[^}}]*priority="{cls}"[^}}]*}} (\S+)$',
                       text, re.M)
    found += re.findall(rf'^keel_requests_shed_total{{[^}}]*priority="{cls}"[^}}]*model="{MODEL}"[^}}]*}} (\S+)$',
                        text, re.M)
    return sum(float(v) for v in found)


def test_a_full_replica_sheds_the_lower_class_first_with_503_and_retry_after(url: str) -> None:
    assert _predict(url).status_code == 200
    before = _shed_total(url, "default")
    with _held(url):
        shed = _until(503, url)  # the held request fills the default class's one slot
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1", shed.text
        assert shed.json()["shed"] is True and "priority 'default'" in shed.json()["error"]
        critical = _predict(url, "critical")  # the second slot is critical traffic's
        assert critical.status_code == 200 and critical.json()["predictions"], critical.text
        with _held(url, "critical"):  # (a default one would be shed itself, unseen)
            again = _until(503, url, "critical")  # both slots held: even critical is refused, at once
            assert again.status_code == 503 and "priority 'critical'" in again.json()["error"]
        assert _until(200, url, "critical").status_code == 200
    assert _until(200, url).status_code == 200  # the slot came back when the client went away
    assert _shed_total(url, "default") >= before + 1


def test_an_unknown_priority_is_a_400_naming_the_classes(url: str) -> None:
    r = _predict(url, "urgent")
    assert r.status_code == 400 and "expected one of critical, default" in r.json()["error"]
