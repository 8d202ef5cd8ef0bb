"""The closed loop with real services: a drift alert in the real Alertmanager -> the keel controller ->
Airflow's REST API -> the retraining DAG (tasks in the core venv) -> registered, gated, promoted ->
canary, smoke check, full rollout -> the new champion answers. Also: a worse challenger is refused, an
Airflow outage keeps the trigger, duplicate alerts make one run, and a re-run registers nothing new."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from keel.config import Settings
from keel.stack import Stack
from keel.stack.supervisor import _group_members
from tests.conftest import build_fraud, isolated_settings, run_keel

MODEL = "fraud"  # examples/fraud/keel.yaml declares it, so Airflow has its DAG
END = datetime(2026, 11, 1, tzinfo=UTC)


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(2.0)


def _json(url: str, body: Any = None, token: str | None = None, method: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers,
                                 method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Its own stack with Airflow and the controller; fraud v1 trained, promoted and served."""
    from examples.fraud.fraud_data import GenSpec, generate, write
    from examples.fraud.fraud_model import train_fraud_model

    from keel.features import store
    from keel.registry.client import Registry
    from keel.serving.deploy import LocalTarget
    from keel.serving.spec import ServeSpec

    s = isolated_settings(tmp_path_factory.mktemp("loop") / "keel", retraining=True, retrain_cooldown_s=0.0,
                          actor="pytest", start_timeout=180.0)
    st = Stack(s)
    st.up()
    pgids = st.pgids()
    try:
        paths = write(generate(GenSpec(transactions=8_000, customers=400, merchants=40, days=7, end=END)),
                      s.data_dir)
        store.apply(s)
        store.materialize(s, end=END)
        ts = build_fraud(s, "fraud_model_v1", pd.read_parquet(paths["transactions"]))
        first = train_fraud_model(ts)
        reg = Registry(s)
        reg.register(first.model, MODEL, ts, first.holdout, first.metrics)
        reg.promote(MODEL)
        LocalTarget(s).deploy(ServeSpec(model=MODEL, port=s.serving_port))
        yield s
    finally:
        for model in LocalTarget(s).specs():
            LocalTarget(s).undeploy(model)
        st.down()
    assert not [p for g in pgids for p in _group_members(g)], "services left running after down()"


def _triggers(s: Settings) -> list[dict[str, Any]]:
    return _json(f"{s.controller_url}/v1/triggers?model={MODEL}", token=s.token())


def _post_alert(s: Settings, fingerprint_hint: str, version: str = "1") -> None:
    """A drift alert as the drift job raises it: labelled with the served version. Alertmanager groups by
    (alertname, model, version), and a new alert in a group that already fired waits for the group's next
    flush (group_interval, 1m) — so an alert about a new champion is a new group, sent after group_wait."""
    now = datetime.now(UTC)
    alert = {"labels": {"alertname": "KeelDatasetDrift", "category": "drift", "model": MODEL, "version": version,
                        "severity": "ticket", "test": fingerprint_hint},
             "annotations": {"summary": f"Data drift on {MODEL} v1"},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=30)).isoformat()}
    _json(f"{s.alertmanager_url}/api/v2/alerts", [alert], method="POST")


def _finished(s: Settings, n: int) -> list[dict[str, Any]] | None:
    t = _triggers(s)
    return t if len(t) >= n and all(x["state"] in ("done", "failed") for x in t) else None


def _actions(s: Settings) -> list[str]:
    return [json.loads(line)["action"] for line in s.audit_log.read_text().splitlines()]


def test_drift_alert_retrains_promotes_and_serves_the_new_champion(loop: Settings) -> None:
    from keel.registry.client import Registry
    from keel.serving.deploy import predict_local

    s = loop
    t0 = time.time()
    _post_alert(s, "a")
    _post_alert(s, "a")  # the same alert twice: one run
    (trigger,) = _wait("the retrain to finish", lambda: _finished(s, 1), 420)
    assert (trigger["state"], trigger["outcome"]) == ("done", "promoted"), trigger
    reg = Registry(s)
    assert reg.resolve(MODEL, "champion").version == "2"
    answer = predict_local(s, MODEL, [{"customer_id": 1, "merchant_id": 1, "amount": 10.0}])
    assert answer["version"] == "2"
    actions = _actions(s)
    for step in ("retrain-requested", "retrain-triggered", "register", "promote", "retrain-completed"):
        assert step in actions, actions
    last_promote = len(actions) - 1 - actions[::-1].index("promote")
    assert actions.index("retrain-requested") < actions.index("retrain-triggered") < last_promote \
        < actions.index("retrain-completed")
    print(f"loop time alert -> new champion serving: {time.time() - t0:.0f}s")
    runs = run_keel(["runs", MODEL, "-o", "json"], s)
    assert runs.returncode == 0 and json.loads(runs.stdout)[0]["state"] == "done"


def test_worse_challenger_is_refused_and_serving_is_unchanged(loop: Settings) -> None:
    from keel.controller.airflow import Airflow
    from keel.registry.client import Registry
    from keel.serving.deploy import predict_local

    s = loop
    reg = Registry(s)
    before = reg.resolve(MODEL, "champion").version
    af = Airflow(s.airflow_api, s.airflow_username, s.airflow_secret)
    run_id = f"weak__{int(time.time())}"
    af.trigger(f"keel_retrain__{MODEL}", run_id, {"params": {"n_estimators": 1, "max_depth": 1}})
    state = _wait("the weak run to end", lambda: (st := af.run_state(f"keel_retrain__{MODEL}", run_id))
                  in ("success", "failed") and st, 420)
    assert state == "success"
    assert reg.resolve(MODEL, "champion").version == before
    assert predict_local(s, MODEL, [{"customer_id": 1, "merchant_id": 1, "amount": 10.0}])["version"] == before
    assert "promote-refused" in _actions(s)
    # re-running the same run registers nothing new: clear it and let Airflow run it again
    versions = {v.version for v in reg.client.search_model_versions(f"name='{MODEL}'")}
    af._call("POST", f"/api/v2/dags/keel_retrain__{MODEL}/clearTaskInstances",
             {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True})
    _wait("the re-run to end", lambda: af.run_state(f"keel_retrain__{MODEL}", run_id) in ("success", "failed"), 420)
    assert {v.version for v in reg.client.search_model_versions(f"name='{MODEL}'")} == versions


def test_an_alert_during_an_airflow_outage_fires_once_airflow_is_back(loop: Settings) -> None:
    s = loop
    st = Stack(s)
    # the earlier tests' triggers must be closed first: one the controller still sees running (it polls
    # Airflow for the run's end, which it cannot do while Airflow is down) would make this alert a duplicate
    n = len(_triggers(s))
    _wait("earlier triggers to finish", lambda: _finished(s, n) is not None, 120)
    from keel.registry.client import Registry

    st.stop("airflow")
    _post_alert(s, "outage", Registry(s).resolve(MODEL, "champion").version)
    try:
        # Alertmanager delivers within group_wait for a new group, but within group_interval (1m) when the
        # champion's group already fired (run alone, this test alerts on v1 as the first test did)
        _wait("the alert to reach the controller", lambda: len(_triggers(s)) > n, 90)
        pending = _wait("the trigger to be queued and retried", lambda: [
            t for t in _triggers(s)[n:] if t["state"] == "pending" and t["attempts"] >= 1], 30)
    except AssertionError as exc:  # say what the controller holds, not only that it timed out
        raise AssertionError(f"{exc}; the controller's triggers for {MODEL}: {_triggers(s)}") from None
    assert "unreachable" in pending[0]["error"] or "HTTP" in pending[0]["error"]
    # the manual path (the README's `keel retrain`) checks the model against the real registry, then
    # meets the same queue: one open retrain per model
    manual = run_keel(["retrain", MODEL, "--reason", "new labels"], s)
    assert manual.returncode == 0, manual.stderr
    assert manual.stdout.strip() == (f"retrain of {MODEL} already pending (deduplicated): trigger {pending[0]['id']},"
                                     f" DAG run {pending[0]['run_id']}")
    ghost = run_keel(["retrain", "ghost"], s)
    assert ghost.returncode != 0 and len(ghost.stderr.strip().splitlines()) == 1, ghost.stderr
    assert "unknown model 'ghost'" in ghost.stderr and MODEL in ghost.stderr
    st.up(["airflow"])
    done = _wait("the kept trigger to run", lambda: _finished(s, n + 1), 480)
    assert done[-1]["id"] == pending[0]["id"] and done[-1]["state"] == "done"


def test_a_model_without_a_dag_is_refused_then_given_up(loop: Settings) -> None:
    """A registered model with no retraining DAG (not in the spec): Airflow answers 404; the trigger is
    retried a bounded number of times, then closed as rejected with Airflow's answer, and audited. An
    alert for a model that is not registered at all is refused up front with 422."""
    from keel.registry.client import Registry

    s = loop
    Registry(s).client.create_registered_model("orphan")
    queued = run_keel(["retrain", "orphan"], s)
    assert queued.returncode == 0 and "queued" in queued.stdout, queued.stderr
    closed = _wait("the refused trigger to be given up", lambda: [
        t for t in _json(f"{s.controller_url}/v1/triggers?model=orphan", token=s.token()) if t["state"] == "failed"],
        120)
    assert closed[0]["outcome"] == "rejected" and "HTTP 404" in closed[0]["error"], closed
    assert "retrain-failed" in _actions(s)
    alert = {"alerts": [{"status": "firing", "labels": {"alertname": "KeelDatasetDrift", "model": "ghost"}}]}
    try:
        _json(f"{s.controller_url}/v1/alerts", alert, token=s.token(), method="POST")
        raise AssertionError("an alert for an unregistered model was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 422 and "unknown model 'ghost'" in json.loads(exc.read())["error"]


def test_the_stack_home_is_private_and_no_log_holds_a_secret(loop: Settings) -> None:
    """KEEL_HOME is 0700; what the services wrote (their databases, logs, the password file, prediction
    logs) is the owner's only; neither the Airflow password nor the controller's token is in any log."""
    import stat

    s = loop
    assert stat.S_IMODE(s.home.stat().st_mode) == 0o700
    written = [s.home / "airflow" / "simple_auth_manager_passwords.json.generated", s.home / "airflow" / "airflow.db",
               s.home / "controller" / "triggers.db", s.home / "mlflow" / "mlflow.db", s.audit_log,
               *(s.home / "logs").glob("*.log"), *(s.home / "predictions").rglob("*.parquet")]
    assert len(written) > 12, written
    readable = {str(p.relative_to(s.home)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written
                if p.stat().st_mode & 0o077}
    assert not readable, f"readable by others: {readable}"
    secrets = {"the Airflow password": s.airflow_secret(), "the controller token": s.token()}
    for log in [*(s.home / "logs").glob("*.log"), *(s.home / "airflow" / "logs").rglob("*.log")]:
        text = log.read_text(errors="replace")
        for what, value in secrets.items():
            assert value not in text, f"{what} is printed in {log.relative_to(s.home)}"


def test_every_listener_of_the_stack_is_on_loopback(loop: Settings) -> None:
    """All of the stack (Airflow's API server, scheduler, triggerer and DAG processor, the controller,
    MLflow, Redis, Prometheus, Alertmanager, the Pushgateway, a KServe deployment) listens on 127.0.0.1
    only; Airflow's log servers (which would bind every interface) are not started."""
    from tests.listeners import listeners, off_loopback

    s = loop
    pgids = Stack(s).pgids()
    ports = {port for _, _, _, port in listeners(pgids)}
    assert {s.airflow_port, s.controller_port, s.mlflow_port, s.redis_port, s.prometheus_port} <= ports, ports
    assert not off_loopback(pgids), off_loopback(pgids)
    assert not {s.airflow_port + 1, s.airflow_port + 2} & ports, "Airflow's log servers are running"


def test_airflow_dags_test_of_each_dag(loop: Settings, tmp_path: Path) -> None:
    """`airflow dags test` (no scheduler, its own SQLite) runs each DAG's tasks in the core venv against
    the loop's stack."""
    import subprocess

    from tests.conftest import ROOT, keel_env

    airflow = str(ROOT / ".venv-airflow" / "bin" / "airflow")
    env = {**keel_env(loop), "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "KEEL_CORE_PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    # the retraining DAG is run this way by test_projects (the delivery example's); here the materialize
    # DAG and the fraud spec's nightly batch-scoring job
    for dag in ("keel_materialize", "keel_batch_score__fraud"):
        proc = subprocess.run([airflow, "dags", "test", dag], env=env, capture_output=True, text=True,
                              timeout=480, check=False)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        runs = subprocess.run([airflow, "dags", "list-runs", dag, "-o", "json"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert runs.returncode == 0, runs.stderr[-2000:]
        states = [r["state"] for r in json.loads(runs.stdout[runs.stdout.index("["):])]
        assert states == ["success"], (proc.stdout + proc.stderr)[-3000:]
    # the job scored every transaction of the loop's data, as of its own time, with the champion
    from keel.registry.client import Registry

    (scored,) = (loop.home / "scores").glob("fraud-*.parquet")
    frame = pd.read_parquet(scored)
    assert len(frame) == len(pd.read_parquet(loop.data_dir / "transactions.parquet"))
    assert frame["score"].between(0, 1).all() and frame["request_id"].is_unique
    assert set(frame["version"]) == {Registry(loop).resolve(MODEL, "champion").version}


def test_a_model_that_decays_on_real_outcomes_is_retrained_for_performance(loop: Settings, tmp_path: Path) -> None:
    """A deliberately degraded champion (trained with the labels of high-amount transactions flipped, so it
    looks fine on its own holdout) serves traffic; the real outcomes come later, half by request id through
    the CLI, half by entity key + time through the SDK; the performance job (the Airflow DAG) pushes a
    decay past the threshold; KeelModelPerformanceDecay fires and reaches the controller, which retrains
    with reason "performance"; the new version is gated against the degraded one and served."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel.client import Client
    from keel.controller.airflow import Airflow
    from keel.monitoring.dashboard_performance import performance
    from keel.monitoring.dashboards import panel_queries
    from keel.registry.client import Registry
    from keel.serving import predlog
    from keel.serving.deploy import LocalTarget, predict_local
    from keel.serving.spec import ServeSpec
    from tests.integration.test_drift import _query

    s = loop
    reg = Registry(s)
    n = len(_triggers(s))
    _wait("earlier triggers to finish", lambda: _finished(s, n) is not None, 300)
    tx = pd.read_parquet(s.data_dir / "transactions.parquet")
    flipped = tx.assign(is_fraud=np.where(tx["amount"] >= tx["amount"].median(), 1 - tx["is_fraud"], tx["is_fraud"]))
    ts = build_fraud(s, "fraud_model_v1", flipped)
    bad = train_fraud_model(ts)
    degraded = reg.register(bad.model, MODEL, ts, bad.holdout, bad.metrics)
    reg.promote(MODEL, force=True, reason="test: a deliberately degraded model", actor="pytest")
    current = LocalTarget(s).specs()[MODEL]
    LocalTarget(s).deploy(ServeSpec(model=MODEL, port=current.port, predlog_uri=current.predlog_uri))
    # traffic: 60 fraudulent and 240 genuine transactions of the last day, one request each
    recent = tx[tx["event_timestamp"] >= tx["event_timestamp"].max() - pd.Timedelta(days=2)]
    sample = pd.concat([recent[recent["is_fraud"] == 1].sample(60, random_state=1),
                        recent[recent["is_fraud"] == 0].sample(240, random_state=1)]).sample(frac=1, random_state=2)
    answers = []
    for row in sample.itertuples():
        inst = {"customer_id": int(row.customer_id), "merchant_id": int(row.merchant_id), "amount": float(row.amount)}
        sent = datetime.now(UTC)
        out = predict_local(s, MODEL, [inst])
        assert out["version"] == degraded.version
        answers.append((inst, sent, out["request_id"], int(row.is_fraud)))
    logged = lambda: predlog.read(s.predictions_location, MODEL)  # noqa: E731
    _wait("the prediction log to be flushed", lambda: (df := logged()).empty is False
          and set(r for _, _, r, _ in answers) <= set(df["request_id"]), 60)
    # the outcomes, later: half by request id (CLI, a CSV with the spec's label name), half by entity + time (SDK)
    half = len(answers) // 2
    csv = tmp_path / "outcomes.csv"
    pd.DataFrame([{"request_id": r, "is_fraud": y} for _, _, r, y in answers[:half]]).to_csv(csv, index=False)
    cli = run_keel(["feedback", MODEL, str(csv)], s)
    assert cli.returncode == 0 and f"{half} stored, 0 duplicates" in cli.stdout, cli.stdout + cli.stderr
    by_entity = [{"customer_id": i["customer_id"], "merchant_id": i["merchant_id"], "event_timestamp": t.isoformat(),
                  "label": y} for i, t, _, y in answers[half:]]
    assert Client(s).feedback(MODEL, by_entity)["accepted"] == len(answers) - half
    # the performance job, as Airflow runs it locally
    af = Airflow(s.airflow_api, s.airflow_username, s.airflow_secret)
    run_id = f"perf__{int(time.time())}"
    af.trigger(f"keel_performance__{MODEL}", run_id, {})
    state = _wait("the performance DAG run", lambda: (st := af.run_state(f"keel_performance__{MODEL}", run_id))
                  in ("success", "failed") and st, 300)
    assert state == "success"
    decay = _wait("the decay gauge", lambda: _query(s, f'keel_model_performance_decay{{model="{MODEL}",'
                                                       f'version="{degraded.version}"}}'), 60)
    assert float(decay[0]["value"][1]) > 0.05, decay
    try:
        (trigger,) = _wait("the performance alert's retrain to finish", lambda: (t := _triggers(s)[n:])
                           and all(x["state"] in ("done", "failed") for x in t) and t, 480)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; triggers: {_triggers(s)[n:]}") from None
    assert trigger["reason"].startswith("performance: KeelModelPerformanceDecay"), trigger
    assert (trigger["state"], trigger["outcome"]) == ("done", "promoted"), trigger
    champion = reg.resolve(MODEL, "champion").version
    assert int(champion) > int(degraded.version)
    assert predict_local(s, MODEL, [answers[0][0]])["version"] == champion
    records = [json.loads(line) for line in s.audit_log.read_text().splitlines()]
    assert any(r["action"] == "retrain-requested" and r["reason"].startswith("performance:") for r in records)
    empty = [f"{title}: {expr}" for title, expr in panel_queries(performance())
             if "feedback_outcomes" not in expr and not _query(s, expr)]
    assert not empty, "Model quality panels without data:\n" + "\n".join(empty)
