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

    def trigger(self, dag: str, run_id: str, conf: dict[str, Any]) -> str:
        if not self.up:
            raise AirflowError("Airflow at http://127.0.0.1:1 is unreachable (connection refused)")
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
    assert call(f"{url}/v1/alerts", ignored)[1] == {"triggers": []}
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
