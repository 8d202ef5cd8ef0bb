"""`keel up | status | logs | down` as a user runs them: real services, nothing left behind."""

from __future__ import annotations

import json
import re
import socket
import sys
import textwrap
import time

import pytest

from keel.config import Settings
from keel.errors import KeelError
from keel.infra.probes import port_in_use
from keel.stack import Stack
from keel.stack.services import Service
from keel.stack.supervisor import IDLE_S, _group_members
from tests.conftest import free_ports, run_keel


def _pgids(settings: Settings) -> list[int]:
    return [json.loads(p.read_text())["pgid"] for p in (settings.home / "run").glob("*.json")]


def test_up_status_logs_down_leaves_nothing(tmp_settings: Settings) -> None:
    up = run_keel(["up", "mlflow", "redis", "pushgateway"], tmp_settings)
    assert up.returncode == 0, up.stderr
    pgids = _pgids(tmp_settings)
    assert len(pgids) == 3
    status = {r["service"]: r for r in json.loads(run_keel(["status", "-o", "json"], tmp_settings).stdout)}
    assert {n: status[n]["state"] for n in status} == {
        "mlflow": "healthy", "redis": "healthy", "prometheus": "stopped", "pushgateway": "healthy",
        "alertmanager": "stopped"}
    assert status["mlflow"]["url"] == f"http://127.0.0.1:{tmp_settings.mlflow_port}"
    # MLflow runs workers in its process group: more than one process to stop
    assert len(_group_members(json.loads((tmp_settings.home / "run" / "mlflow.json").read_text())["pgid"])) > 1

    again = run_keel(["up", "redis"], tmp_settings)  # idempotent: running and healthy is fine
    assert again.returncode == 0 and _pgids(tmp_settings) == pgids

    assert "Ready to accept connections" in run_keel(["logs", "redis", "-n", "200"], tmp_settings).stdout

    down = run_keel(["down"], tmp_settings)
    assert down.returncode == 0, down.stderr
    assert [p for g in pgids for p in _group_members(g)] == []
    for port in (tmp_settings.mlflow_port, tmp_settings.redis_port, tmp_settings.pushgateway_port):
        assert not port_in_use("127.0.0.1", port)
    assert list((tmp_settings.home / "run").glob("*.json")) == []
    assert "nothing was running" in run_keel(["down"], tmp_settings).stdout


def test_port_taken_by_another_program(tmp_settings: Settings) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", tmp_settings.redis_port))
        other.listen()
        proc = run_keel(["up", "redis"], tmp_settings)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"keel: error: port {tmp_settings.redis_port} for redis is already in use by "
                                   "another program; stop it or choose another port with KEEL_REDIS_PORT")


def test_a_service_that_does_not_become_healthy_is_stopped(tmp_settings: Settings) -> None:
    proc = run_keel(["up", "mlflow"], tmp_settings, KEEL_START_TIMEOUT="0.5")
    assert proc.returncode == 2, proc.stdout
    assert re.match(r"keel: error: mlflow failed to start, twice \(not healthy after \d+s; then not healthy "
                    r"after \d+s\); last log lines:", proc.stderr), proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # the restart is in mlflow's log, not on the terminal
    assert "[keel] mlflow not healthy after" in (tmp_settings.home / "logs" / "mlflow.log").read_text()
    assert list((tmp_settings.home / "run").glob("*.json")) == []
    assert not port_in_use("127.0.0.1", tmp_settings.mlflow_port)


SERVE = """
import http.server, sys
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def _script_service(settings: Settings, name: str, script: str, serve: bool = True) -> Stack:
    """A Stack with one extra service: a Python script, then (``serve``) an HTTP server on its port."""
    port = free_ports(1)[0]
    stack = Stack(settings)
    code = textwrap.dedent(script) + (SERVE if serve else "")
    stack.services[name] = Service(name, port, f"http://127.0.0.1:{port}", [sys.executable, "-c", code, str(port)],
                                   "http:/")
    return stack




def test_a_start_that_fails_once_is_restarted_once(tmp_settings: Settings) -> None:
    # the first start exits (a lock or port another process held a moment ago); the second serves
    stack = _script_service(tmp_settings, "flaky", """
        import pathlib, sys
        marker = pathlib.Path("flaky.started")
        if not marker.exists():
            marker.write_text("1")
            print("first start: giving up", flush=True)
            sys.exit(3)
    """)
    try:
        assert [s.state for s in stack.up(["flaky"])] == ["healthy"]
        log = stack.tail("flaky", 20)
        assert "first start: giving up" in log and "[keel] flaky exited with code 3; starting it once more" in log
    finally:
        stack.down(["flaky"])
    assert list((tmp_settings.home / "run").glob("*.json")) == []


def test_a_slow_start_that_is_still_working_gets_more_time(tmp_settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # busy for 3 s of CPU before it listens, with a 2 s start timeout: slow (a loaded machine), not stuck
    monkeypatch.setattr("keel.stack.supervisor.PROGRESS_EVERY_S", 1.0)
    tmp_settings = tmp_settings.model_copy(update={"start_timeout": 2.0})
    stack = _script_service(tmp_settings, "slow", """
        import time
        end = time.process_time() + 3.0
        while time.process_time() < end:
            pass
    """)
    seen: list[str] = []
    stack.on_wait = seen.append
    try:
        assert [s.state for s in stack.up(["slow"])] == ["healthy"]
        assert "[keel]" not in stack.tail("slow", 20)  # no restart was needed
        assert seen and all(re.fullmatch(r"waiting for slow: \d+s so far \((still starting|idle); start timeout 2s\)",
                                         line) for line in seen), seen
        assert "still starting" in seen[0]
    finally:
        stack.down(["slow"])


def test_an_idle_start_is_given_up_at_the_timeout(tmp_settings: Settings) -> None:
    tmp_settings = tmp_settings.model_copy(update={"start_timeout": 1.0})
    stack = _script_service(tmp_settings, "stuck", "import time; time.sleep(600)", serve=False)
    t0 = time.monotonic()
    with pytest.raises(KeelError, match=r"stuck failed to start, twice \(not healthy after \d+s; then not "
                                        r"healthy after \d+s\)"):
        stack.up(["stuck"])
    # idle: each attempt ends IDLE_S after it began at most, not at BUSY_FACTOR x the timeout
    assert time.monotonic() - t0 < 2 * (IDLE_S + 3)
    assert list((tmp_settings.home / "run").glob("*.json")) == []


def test_unwritable_state_is_a_clear_error(tmp_settings: Settings) -> None:
    (tmp_settings.home / "alertmanager").mkdir(parents=True)
    (tmp_settings.home / "alertmanager" / "data").write_text("a file where a directory belongs")
    proc = run_keel(["up", "alertmanager"], tmp_settings)
    assert proc.returncode == 2
    assert proc.stderr.startswith("keel: error: alertmanager: cannot write its files under ")
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
