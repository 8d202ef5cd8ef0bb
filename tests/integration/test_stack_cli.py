"""`keel up | status | logs | down` as a user runs them: real services, nothing left behind."""

from __future__ import annotations

import json
import socket

from keel.config import Settings
from keel.infra.probes import port_in_use
from keel.stack.supervisor import _group_members
from tests.conftest import run_keel


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
    assert proc.stderr.startswith("keel: error: mlflow failed to start (not healthy after 0s); last log lines:")
    assert list((tmp_settings.home / "run").glob("*.json")) == []
    assert not port_in_use("127.0.0.1", tmp_settings.mlflow_port)


def test_unwritable_state_is_a_clear_error(tmp_settings: Settings) -> None:
    (tmp_settings.home / "alertmanager").mkdir(parents=True)
    (tmp_settings.home / "alertmanager" / "data").write_text("a file where a directory belongs")
    proc = run_keel(["up", "alertmanager"], tmp_settings)
    assert proc.returncode == 2
    assert proc.stderr.startswith("keel: error: alertmanager: cannot write its files under ")
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
