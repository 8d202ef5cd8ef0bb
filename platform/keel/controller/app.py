"""The controller's HTTP service and its worker.

``POST /v1/alerts`` takes Alertmanager's webhook payload; firing ``KeelDatasetDrift`` (drift) and
``KeelModelPerformanceDecay`` (performance on real outcomes) alerts become retraining triggers whose
reason starts with the alert's category (deduplicated per model, see ``queue``). ``POST /v1/retrain`` is
the CLI's manual path into the same queue; ``POST /v1/feedback`` takes outcomes (``feedback``). All
need ``Authorization: Bearer <token>``; ``/healthz`` and ``/metrics`` do not. A worker thread submits
due triggers to Airflow (backing off while it is down) and follows the runs to their end; every step is
an audit record.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from keel.controller.airflow import Airflow, AirflowError
from keel.controller.queue import Trigger, TriggerQueue
from keel.registry.audit import AuditRecord, AuditStore

log = logging.getLogger("keel.controller")
MAX_BODY = 4_000_000  # 10,000 outcomes of ~100 bytes fit; an alert batch is far smaller
# KeelDriftJobStale is category drift too, but retraining won't fix it
RETRAIN_ALERTS = ("KeelDatasetDrift", "KeelModelPerformanceDecay")


class TooLarge(ValueError):
    """A body past the bound: 413, read no further."""


def dag_id(model: str) -> str:
    return f"keel_retrain__{model}"


class Controller:
    def __init__(self, queue: TriggerQueue, airflow: Airflow, audit: AuditStore, actor: str = "keel-controller",
                 known_models: Any = None, max_refusals: int = 5, feedback: Any = None) -> None:
        self.queue, self.airflow, self.audit, self.actor = queue, airflow, audit, actor
        self.feedback = feedback  # keel.controller.feedback.Feedback, or None: /v1/feedback answers 503
        self.known_models = known_models  # callable returning model names, or None to accept any
        self.max_refusals = max_refusals  # permanent Airflow refusals (4xx) before a trigger is given up
        self.metrics = CollectorRegistry()
        self.alerts = Counter("keel_controller_alerts_total", "Alerts received, by what came of them", ["outcome"],
                              registry=self.metrics)
        self.submissions = Counter("keel_controller_submissions_total", "DAG-run submissions to Airflow",
                                   ["outcome"], registry=self.metrics)
        self.runs = Counter("keel_retrain_runs_total", "Retraining DAG runs by outcome", ["model", "outcome"],
                            registry=self.metrics)
        self.promotions = Counter("keel_promotions_total", "Champion changes by retraining", ["model"],
                                  registry=self.metrics)
        self.rollbacks = Counter("keel_rollbacks_total", "Champion rollbacks after a failed smoke check", ["model"],
                                 registry=self.metrics)
        self.outcomes = Counter("keel_feedback_outcomes_total", "Outcomes sent to /v1/feedback, by what came of "
                                "them", ["model", "result"], registry=self.metrics)
        self.feedback_refused = Counter("keel_feedback_requests_refused_total", "Feedback calls refused whole, "
                                        "by HTTP code", ["code"], registry=self.metrics)
        Gauge("keel_controller_triggers_pending", "Triggers waiting for Airflow", registry=self.metrics
              ).set_function(self.queue.pending_count)
        self._stop = threading.Event()

    # -- requests ------------------------------------------------------------------------------
    def request(self, model: str, reason: str, source: str, fingerprint: str, actor: str) -> tuple[Trigger, bool]:
        trigger, new = self.queue.offer(model, reason, source, fingerprint)
        self.alerts.labels("queued" if new else "duplicate").inc()
        self.audit.append(AuditRecord(action="retrain-requested" if new else "retrain-deduplicated", model=model,
                                      alias="", from_version=None, to_version=None, actor=actor, reason=reason,
                                      details={"trigger": trigger.id, "source": source, "fingerprint": fingerprint}))
        return trigger, new

    def known(self) -> list[str] | None:
        """The registered models, or None when they cannot be told (no check configured, or the registry
        is down: then an alert is queued rather than lost, and Airflow's answer decides)."""
        if self.known_models is None:
            return None
        try:
            return list(self.known_models())
        except Exception as exc:
            log.warning("cannot list registered models (%s); accepting the request unchecked", exc)
            return None

    def on_alerts(self, payload: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Queue the firing retraining alerts; returns what was queued and, per alert for a model that is
        not registered, why it was rejected."""
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise ValueError("body: expected Alertmanager's webhook payload with an 'alerts' list")
        wanted = []
        for i, alert in enumerate(payload["alerts"]):
            labels = alert.get("labels") if isinstance(alert, dict) else None
            if not isinstance(labels, dict):
                raise ValueError(f"alerts[{i}].labels: expected an object")
            name, model = labels.get("alertname"), labels.get("model")
            if alert.get("status") != "firing" or name not in RETRAIN_ALERTS or not model:
                self.alerts.labels("ignored").inc()
                continue
            wanted.append((i, alert, str(name), str(model)))
        known = self.known() if wanted else None
        out, rejected = [], []
        for i, alert, name, model in wanted:
            if known is not None and model not in known:
                self.alerts.labels("unknown_model").inc()
                rejected.append(f"alerts[{i}].labels.model: unknown model '{model}'; registered: "
                                f"{', '.join(sorted(known)) or '(none)'}")
                continue
            summary = (alert.get("annotations") or {}).get("summary", name)
            category = str((alert.get("labels") or {}).get("category") or "alert")
            trigger, new = self.request(model, f"{category}: {name}: {summary}", "alertmanager",
                                        str(alert.get("fingerprint", "")), self.actor)
            out.append({"model": model, "trigger": trigger.id, "new": new, "state": trigger.state})
        return out, rejected

    # -- worker --------------------------------------------------------------------------------
    def work_once(self) -> None:
        for t in self.queue.due():
            try:
                self.airflow.trigger(dag_id(t.model), t.run_id, {"reason": t.reason, "trigger": t.id})
            except AirflowError as exc:
                if exc.permanent and t.refusals + 1 >= self.max_refusals:
                    self._give_up(t, exc)
                    continue
                delay = self.queue.retry_later(t, str(exc), refused=exc.permanent)
                self.submissions.labels("retry").inc()
                log.warning("trigger %s for %s kept; retrying in %.0fs: %s", t.id, t.model, delay, exc)
                continue
            self.queue.submitted(t)
            self.submissions.labels("accepted").inc()
            self.audit.append(AuditRecord(action="retrain-triggered", model=t.model, alias="", from_version=None,
                                          to_version=None, actor=self.actor, reason=t.reason,
                                          details={"trigger": t.id, "dag_run_id": t.run_id, "dag": dag_id(t.model)}))
        for t in self.queue.running():
            try:
                state = self.airflow.run_state(dag_id(t.model), t.run_id)
            except AirflowError:
                continue
            if state in ("success", "failed"):
                outcome = self._outcome(t) if state == "success" else "failed"
                self.queue.finished(t, "done" if state == "success" else "failed", outcome)
                self.runs.labels(t.model, outcome).inc()
                if outcome == "promoted":
                    self.promotions.labels(t.model).inc()
                elif outcome == "rolled_back":
                    self.rollbacks.labels(t.model).inc()
                self.audit.append(AuditRecord(action=f"retrain-{'completed' if state == 'success' else 'failed'}",
                                              model=t.model, alias="", from_version=None, to_version=None,
                                              actor=self.actor, reason=t.reason,
                                              details={"trigger": t.id, "dag_run_id": t.run_id, "outcome": outcome}))

    def _give_up(self, t: Trigger, exc: AirflowError) -> None:
        error = f"Airflow refused the run {t.refusals + 1} times: {exc}"
        self.queue.give_up(t, error)
        self.submissions.labels("rejected").inc()
        self.runs.labels(t.model, "rejected").inc()
        log.error("trigger %s for %s given up: %s", t.id, t.model, error)
        self.audit.append(AuditRecord(action="retrain-failed", model=t.model, alias="", from_version=None,
                                      to_version=None, actor=self.actor, reason=t.reason,
                                      details={"trigger": t.id, "dag": dag_id(t.model), "outcome": "rejected",
                                               "error": error[:500]}))

    def _outcome(self, t: Trigger) -> str:
        """promoted, refused or rolled_back: what the rollout task returned."""
        try:
            value = self.airflow.result(dag_id(t.model), t.run_id, "rollout")
        except AirflowError:
            return "completed"
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return "completed"
        return str(value.get("outcome", "completed")) if isinstance(value, dict) else "completed"

    def run_worker(self, every_s: float = 2.0) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.work_once()
                except Exception:  # the worker must outlive any one bad round
                    log.exception("controller worker round failed")

        thread = threading.Thread(target=loop, name="keel-controller-worker", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def make_handler(controller: Controller, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "keel-controller"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            ok = given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())
            if not ok:
                self._send(401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"})
            return ok

        def _json(self) -> Any:
            raw = (self.headers.get("Content-Length") or "0").strip()
            if not raw.isdigit():  # "-1" or "abc" would make the read hang or fail after the fact
                raise ValueError(f"Content-Length: {raw!r} is not a byte count; expected a non-negative integer")
            n = int(raw)
            if n > MAX_BODY:
                if n <= 16 * MAX_BODY:  # read it off the socket so the client gets the answer, not a reset
                    left = n
                    while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                        left -= len(chunk)
                raise TooLarge(f"body: {n} bytes is too large (at most {MAX_BODY}; split the batch)")
            try:
                return json.loads(self.rfile.read(n) or b"null")
            except json.JSONDecodeError as exc:
                raise ValueError(f"body: not JSON ({exc.msg} at position {exc.pos})") from None

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/healthz":
                self._send(200, {"status": "ok", "pending": controller.queue.pending_count()})
            elif url.path == "/metrics":
                self._send(200, generate_latest(controller.metrics), "text/plain; version=0.0.4")
            elif url.path == "/v1/triggers":
                if self._authorized():
                    model = (parse_qs(url.query).get("model") or [None])[0]
                    self._send(200, [t.__dict__ | {"run_id": t.run_id} for t in controller.queue.all(model)])
            else:
                self._send(404, {"error": f"no route {url.path}; try /healthz, /metrics, /v1/alerts, /v1/retrain"})

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            if path not in ("/v1/alerts", "/v1/retrain", "/v1/feedback"):
                self._send(404, {"error": f"no route {path}"})
                return
            if not self._authorized():
                return
            try:
                body = self._json()
                if path == "/v1/feedback":
                    self._feedback(body)
                    return
                if path == "/v1/alerts":
                    queued, rejected = controller.on_alerts(body)
                    if rejected and not queued:  # 4xx: Alertmanager does not retry it, and it says why
                        self._send(422, {"error": "; ".join(rejected), "triggers": []})
                    else:
                        self._send(202, {"triggers": queued, "rejected": rejected})
                    return
                if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
                    raise ValueError("model: expected a non-empty string")
                known = controller.known()
                if known is not None and body["model"] not in known:
                    self._send(404, {"error": f"unknown model '{body['model']}'; valid choices: "
                                              f"{', '.join(sorted(known)) or '(none registered)'}"})
                    return
                trigger, new = controller.request(body["model"], str(body.get("reason") or "manual retrain"),
                                                  "cli", "", str(body.get("actor") or "unknown"))
                self._send(202 if new else 200, {"trigger": trigger.id, "new": new, "state": trigger.state,
                                                 "run_id": trigger.run_id})
            except TooLarge as exc:
                controller.feedback_refused.labels("413").inc()
                self.close_connection = True  # the unread body must not be taken for the next request
                self._send(413, {"error": str(exc)})
            except ValueError as exc:
                self._send(400, {"error": str(exc)})

        def _feedback(self, body: Any) -> None:
            from keel.errors import NotFoundError
            from keel.monitoring.outcomes import FeedbackError

            if controller.feedback is None:
                self._send(503, {"error": "this controller takes no feedback (no outcome store configured)"})
                return
            try:
                result = controller.feedback.accept(body)
            except FeedbackError as exc:
                controller.feedback_refused.labels(str(exc.status)).inc()
                self._send(exc.status, {"error": str(exc), "problems": exc.problems[:100]})
                return
            except NotFoundError as exc:
                controller.feedback_refused.labels("404").inc()
                self._send(404, {"error": str(exc)})
                return
            for what, n in (("accepted", result.accepted), ("duplicate", result.duplicates),
                            ("corrected", result.corrected)):
                if n:
                    controller.outcomes.labels(result.model, what).inc(n)
            self._send(200, result.as_dict())

    return Handler


def serve(controller: Controller, host: str, port: int, token: str) -> ThreadingHTTPServer:
    if not token:
        raise ValueError("the controller needs a bearer token (KEEL_CONTROLLER_TOKEN or KEEL_HOME/controller/token)")
    server = ThreadingHTTPServer((host, port), make_handler(controller, token))
    server.daemon_threads = True
    return server


def wait_forever(server: ThreadingHTTPServer, controller: Controller) -> None:
    """Serve until SIGTERM/SIGINT, then stop the worker and close the queue."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = controller.run_worker()
    threading.Thread(target=server.serve_forever, name="keel-controller-http", daemon=True).start()
    stop.wait()
    server.shutdown()
    controller.stop()
    worker.join(timeout=10)
    controller.queue.close()
    time.sleep(0)
