"""The controller's logic over real HTTP and a real SQLite queue; Airflow is a stand-in here (the real
one is in tests/integration/test_retraining.py)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.controller.airflow import AirflowError
from keel.controller.app import Controller, dag_id, serve
from keel.controller.queue import TriggerQueue
from keel.registry.audit import AuditLog

TOKEN = "t0ken-for-tests-only"


class StandInAirflow:
    def __init__(self) -> None:
        self.up = True
        self.runs: dict[str, str] = {}
        self.refusal: int | None = None  # an HTTP 4xx Airflow answers every submission with

    def trigger(self, dag: str, run_id: str, conf: dict[str, Any]) -> str:
        if not self.up:
            raise AirflowError("Airflow at http://127.0.0.1:1 is unreachable (connection refused)")
        if self.refusal:
            raise AirflowError(f"POST /api/v2/dags/{dag}/dagRuns: HTTP {self.refusal} not found", permanent=True)
        self.runs.setdefault(run_id, "running")
        return run_id

    def run_state(self, dag: str, run_id: str) -> str:
        return self.runs[run_id]

    def result(self, dag: str, run_id: str, task_id: str) -> Any:
        return {"outcome": "promoted", "champion": "2"}


def drift_alert(model: str = "fraud", fingerprint: str = "abc", status: str = "firing") -> dict[str, Any]:
    return {"status": status, "fingerprint": fingerprint,
            "labels": {"alertname": "KeelDatasetDrift", "category": "drift", "model": model, "version": "1"},
            "annotations": {"summary": f"Data drift on {model} v1"}}


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[tuple[Controller, StandInAirflow, str]]:
    airflow = StandInAirflow()
    ctl = Controller(TriggerQueue(tmp_path / "q.db", cooldown_s=600), airflow,  # type: ignore[arg-type]
                     AuditLog(tmp_path / "audit.jsonl"), known_models=lambda: ["fraud", "churn"])
    server = serve(ctl, "127.0.0.1", 0, TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ctl, airflow, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    ctl.queue.close()


def call(url: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text.startswith((b"{", b"[")) else text.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_unauthenticated_calls_get_401_and_health_is_open(controller: Any) -> None:
    _, _, url = controller
    assert call(f"{url}/v1/alerts", {"alerts": []}, token=None)[0] == 401
    assert call(f"{url}/v1/alerts", {"alerts": []}, token="wrong")[0] == 401
    assert call(f"{url}/v1/triggers", token=None)[0] == 401
    assert call(f"{url}/healthz", token=None)[0] == 200
    status, text = call(f"{url}/metrics", token=None)
    assert status == 200 and "keel_controller_triggers_pending" in text


@pytest.mark.parametrize(("body", "raw", "needle"), [
    (None, b"{not json", "body: not JSON"),
    ({"nope": 1}, None, "'alerts' list"),
    ({"alerts": [{"labels": "x"}]}, None, "alerts[0].labels"),
])
def test_bad_alert_payloads_get_400_naming_the_problem(controller: Any, body: Any, raw: bytes | None,
                                                       needle: str) -> None:
    status, out = call(f"{controller[2]}/v1/alerts", body, raw=raw)
    assert status == 400 and needle in out["error"]


def test_identical_alerts_make_one_trigger_and_one_run(controller: Any) -> None:
    ctl, airflow, url = controller
    for _ in range(3):
        assert call(f"{url}/v1/alerts", {"alerts": [drift_alert()]})[0] == 202
    ignored = {"alerts": [drift_alert(status="resolved"), {**drift_alert(), "labels": {"alertname": "Other"}}]}
    assert call(f"{url}/v1/alerts", ignored)[1] == {"triggers": [], "rejected": []}
    assert len(ctl.queue.all("fraud")) == 1
    ctl.work_once()
    ctl.work_once()
    assert list(airflow.runs) == [ctl.queue.all("fraud")[0].run_id]
    actions = [json.loads(line)["action"] for line in Path(ctl.audit.path).read_text().splitlines()]
    assert actions == ["retrain-requested", "retrain-deduplicated", "retrain-deduplicated", "retrain-triggered"]


def test_a_trigger_survives_an_airflow_outage_and_a_restart(controller: Any, tmp_path: Path) -> None:
    ctl, airflow, url = controller
    airflow.up = False
    call(f"{url}/v1/alerts", {"alerts": [drift_alert()]})
    ctl.work_once()
    (t,) = ctl.queue.all()
    assert (t.state, t.attempts) == ("pending", 1) and t.next_attempt > t.created and "unreachable" in t.error
    reopened = TriggerQueue(tmp_path / "q.db")  # a controller restart reads the same file
    assert [x.id for x in reopened.all()] == [t.id]
    reopened.close()
    airflow.up = True
    ctl.queue.retry_later(t, "forced due now", now=t.created - 120)  # make it due without waiting
    ctl.work_once()
    assert ctl.queue.all()[0].state == "running" and list(airflow.runs) == [t.run_id]
    airflow.runs[t.run_id] = "success"
    ctl.work_once()
    assert (ctl.queue.all()[0].state, ctl.queue.all()[0].outcome) == ("done", "promoted")
    _, text = call(f"{url}/metrics", token=None)
    assert 'keel_retrain_runs_total{model="fraud",outcome="promoted"} 1.0' in text
    assert 'keel_promotions_total{model="fraud"} 1.0' in text


def test_cooldown_and_one_open_retrain_per_model(tmp_path: Path) -> None:
    q = TriggerQueue(tmp_path / "q.db", 600)
    first, new = q.offer("fraud", "r", "alertmanager", "a", now=1000.0)
    assert new
    assert q.offer("fraud", "r", "alertmanager", "b", now=5000.0) == (first, False)  # still pending
    assert q.offer("churn", "r", "cli", "", now=1000.0)[1]  # other models are independent
    q.submitted(first)
    q.finished(first, "done", "promoted")
    assert not q.offer("fraud", "r", "cli", "", now=1500.0)[1]  # within the cool-down
    assert q.offer("fraud", "r", "cli", "", now=1700.0)[1]
    q.close()


def test_manual_retrain_validates_the_model(controller: Any) -> None:
    _, _, url = controller
    status, out = call(f"{url}/v1/retrain", {"model": "nosuch"})
    assert status == 404 and out["error"] == "unknown model 'nosuch'; valid choices: churn, fraud"
    assert call(f"{url}/v1/retrain", {"model": ""})[0] == 400
    status, out = call(f"{url}/v1/retrain", {"model": "churn", "reason": "new labels"})
    assert status == 202 and out["new"] and out["run_id"].startswith("keel__churn__")
    assert dag_id("churn") == "keel_retrain__churn"


def test_a_negative_content_length_is_refused_at_once(controller: Any) -> None:
    import socket

    port = int(controller[2].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"POST /v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: -1\r\n\r\n{}".encode())
        answer = b""
        while chunk := sock.recv(4096):  # headers and body may come apart; the server closes (HTTP/1.0)
            answer += chunk  # within the 5 s timeout, not when the client gives up
        answer = answer.decode()
    assert answer.startswith("HTTP/1.0 400") and "Content-Length: '-1' is not a byte count" in answer


def test_alerts_for_unregistered_models_are_rejected_with_422(controller: Any) -> None:
    ctl, _, url = controller
    status, out = call(f"{url}/v1/alerts", {"alerts": [drift_alert("ghost")]})
    assert status == 422 and out["error"] == "alerts[0].labels.model: unknown model 'ghost'; registered: churn, fraud"
    status, out = call(f"{url}/v1/alerts", {"alerts": [drift_alert("ghost"), drift_alert("fraud")]})
    assert status == 202 and [t["model"] for t in out["triggers"]] == ["fraud"] and "'ghost'" in out["rejected"][0]
    assert [t.model for t in ctl.queue.all()] == ["fraud"]


def test_an_unreachable_registry_queues_the_alert_rather_than_losing_it(tmp_path: Path) -> None:
    def down() -> list[str]:
        raise ConnectionError("MLflow at http://127.0.0.1:1 is unreachable")

    ctl = Controller(TriggerQueue(tmp_path / "q.db"), StandInAirflow(), AuditLog(tmp_path / "a.jsonl"),  # type: ignore[arg-type]
                     known_models=down)
    assert ctl.on_alerts({"alerts": [drift_alert()]})[0][0]["new"]
    ctl.queue.close()


def test_a_trigger_airflow_keeps_refusing_is_given_up_and_recorded(controller: Any) -> None:
    ctl, airflow, url = controller
    call(f"{url}/v1/alerts", {"alerts": [drift_alert()]})
    airflow.up = False  # outages do not count towards giving up
    for _ in range(3):
        ctl.work_once()
        ctl.queue.retry_later(ctl.queue.all()[0], "forced due now", now=0)
    airflow.up, airflow.refusal = True, 404
    for _ in range(ctl.max_refusals):
        (t,) = ctl.queue.all()
        assert t.state == "pending"
        ctl.work_once()
        if ctl.queue.all()[0].state == "pending":
            ctl.queue.retry_later(ctl.queue.all()[0], ctl.queue.all()[0].error or "", now=0)
    (t,) = ctl.queue.all()
    assert (t.state, t.outcome, t.refusals) == ("failed", "rejected", ctl.max_refusals)
    assert t.error.startswith(f"Airflow refused the run {ctl.max_refusals} times") and "HTTP 404" in t.error
    last = json.loads(Path(ctl.audit.path).read_text().splitlines()[-1])
    assert (last["action"], last["details"]["outcome"]) == ("retrain-failed", "rejected")
    ctl.work_once()
    assert not airflow.runs
