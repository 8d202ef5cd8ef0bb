"""Drift end to end: served traffic with drift injected on two named features -> `keel drift run` ->
Pushgateway -> Prometheus (gauges, then KeelDatasetDrift firing) -> Alertmanager; then every dashboard
panel and KEDA trigger query returns data from the same Prometheus."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from keel.config import Settings
from tests.conftest import build_fraud, free_ports, run_keel
from tests.integration.conftest import DATA_END

MODEL = "fraud_drift"
DRIFTED = {"txn_count_24h": ("customer_spend", 4.0), "merchant_fraud_rate_30d": ("merchant_risk", 5.0)}
# Exported only by the keel controller, which arrives with the retraining issue and is not in the stack yet.
NOT_YET_EXPORTED = ("keel_controller_triggers_pending",)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _query(settings: Settings, expr: str) -> list[dict[str, Any]]:
    url = f"{settings.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = _get(url)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def drifted_traffic(feature_data: dict[str, Path], training_set: Any, stack_settings: Settings,
                    deployer: Any) -> dict[str, Any]:
    """A model on fraud_model_lite (5 features) served locally; requests whose feature rows are the
    holdout's own rows (written to Redis under fresh entity ids), with two features multiplied."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel.monitoring.inject import replay
    from keel.registry.client import Registry
    from keel.train import time_split

    lite = build_fraud(stack_settings, "fraud_model_lite", pd.read_parquet(feature_data["transactions"]))
    trained = train_fraud_model(lite)
    reg = Registry(stack_settings)
    reg.register(trained.model, MODEL, lite, trained.holdout, trained.metrics)
    reg.promote(MODEL)

    _, holdout = time_split(training_set.frame)
    rows = holdout.sample(n=900, random_state=7)
    (port,) = free_ports(1)
    url = deployer(model=MODEL, port=port)

    def send(instances: list[dict[str, Any]]) -> dict[str, Any]:
        req = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict",
                                     data=json.dumps({"instances": instances}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    sent = replay(stack_settings, MODEL, rows, {f: factor for f, (_, factor) in DRIFTED.items()}, send)
    assert sent > 600
    from keel.serving.predlog import read

    _wait("the prediction log to be flushed", lambda: len(read(str(stack_settings.home / "predictions"),
                                                              MODEL)) >= sent, 60)
    return {"features": lite.features, "requests": sent}


def test_drift_job_finds_the_two_drifted_features_and_the_alert_reaches_alertmanager(
        drifted_traffic: dict[str, Any], stack_settings: Settings, tmp_path: Path) -> None:
    proc = run_keel(["drift", "run", MODEL, "--window", "1h", "-o", "json"], stack_settings)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    verdicts = {c["column"]: c["detected"] for c in result["features"]}
    assert verdicts == {f: f in DRIFTED for f in drifted_traffic["features"]}, verdicts
    assert result["current_rows"] == result["rows_in_window"] == drifted_traffic["requests"]
    assert result["drift_share"] == pytest.approx(2 / len(drifted_traffic["features"]))
    assert result["run_id"], "the drift run was not logged to MLflow"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack_settings.tracking_uri)
    assert {a.path for a in client.list_artifacts(result["run_id"])} == {"drift_report.html", "drift.json"}
    html = Path(client.download_artifacts(result["run_id"], "drift_report.html", str(tmp_path))).read_text()
    assert all(f"Drift in column '{f}'" in html for f in [*DRIFTED, "prediction"]), "a drifted column is not plotted"

    series = _wait("drift gauges in Prometheus", lambda: _query(
        stack_settings, f'keel_feature_drift_detected{{model="{MODEL}"}}'), 30)
    in_prom = {s["metric"]["feature"]: s["value"][1] == "1" for s in series}
    assert in_prom == verdicts
    scores = {s["metric"]["feature"]: float(s["value"][1]) for s in _query(
        stack_settings, f'keel_feature_drift_score{{model="{MODEL}"}}')}
    thresholds = {c["column"]: c["threshold"] for c in result["features"]}
    assert all((scores[f] >= thresholds[f]) == (f in DRIFTED) for f in scores), scores

    def firing() -> list[dict[str, Any]]:
        alerts = _get(f"{stack_settings.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "KeelDatasetDrift"
                and a["labels"]["model"] == MODEL and a["state"] == "firing"]

    (alert,) = _wait("KeelDatasetDrift to fire (for: 1m)", firing, 150)
    assert alert["labels"]["category"] == "drift" and alert["annotations"]["runbook_url"].endswith("#keeldatasetdrift")

    def routed() -> list[dict[str, Any]]:
        return [a for a in _get(f"{stack_settings.alertmanager_url}/api/v2/alerts")
                if a["labels"]["alertname"] == "KeelDatasetDrift" and a["labels"]["model"] == MODEL]

    (am,) = _wait("the alert in Alertmanager", routed, 30)
    assert "keel-controller" in {r["name"] for r in am["receivers"]}
    cli = run_keel(["alerts"], stack_settings)
    assert cli.returncode == 0 and "KeelDatasetDrift" in cli.stdout and MODEL in cli.stdout


def test_every_dashboard_panel_and_keda_trigger_returns_data(drifted_traffic: dict[str, Any],
                                                            stack_settings: Settings, tmp_path: Path) -> None:
    from keel.features.store import materialize
    from keel.monitoring.dashboards import build_all, panel_queries
    from keel.serving import cluster
    from keel.serving.spec import ServeSpec

    # pushes the feature-freshness series; up to DATA_END only, so the session's store is not moved on
    materialize(stack_settings, end=DATA_END)
    _wait("materialization gauges", lambda: _query(stack_settings, "keel_materialization_duration_seconds"), 30)
    _wait("drift gauges", lambda: _query(stack_settings, f'keel_dataset_drift_share{{model="{MODEL}"}}'), 30)
    empty = []
    for name, dash in build_all().items():
        if name == "keel-performance.json":  # needs outcomes: test_feedback.py and test_retraining.py fill it
            continue
        for title, expr in panel_queries(dash):
            if any(m in expr for m in NOT_YET_EXPORTED) or "keel_stream_" in expr:  # test_stream.py has them
                continue
            if not _query(stack_settings, expr):
                empty.append(f"{name}: {title}: {expr}")
    spec = ServeSpec(model=MODEL, max_replicas=3)
    scaled = [d for d in cluster.render(stack_settings, spec, "kserve") if d["kind"] == "ScaledObject"]
    for trig in scaled[0]["spec"]["triggers"]:
        # the local stack's series carry no namespace label (a cluster's scrape adds it)
        expr = trig["metadata"]["query"].replace(f'namespace="{stack_settings.namespace}",', "")
        if not _query(stack_settings, expr):
            empty.append(f"KEDA {trig['name']}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_drift_job_failures_exit_non_zero_with_one_line(drifted_traffic: dict[str, Any], stack_settings: Settings,
                                                        tmp_path: Path) -> None:
    unknown = run_keel(["drift", "run", "nosuch"], stack_settings)
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr
    empty = run_keel(["drift", "run", MODEL, "--predictions", str(tmp_path / "none")], stack_settings)
    assert empty.returncode == 2 and "no predictions of 'fraud_drift'" in empty.stderr
    (dead,) = free_ports(1)
    before = set((stack_settings.home / "drift" / MODEL).glob("*.json"))
    down = run_keel(["drift", "run", MODEL], stack_settings, KEEL_PUSHGATEWAY=f"http://127.0.0.1:{dead}")
    assert down.returncode != 0 and "Pushgateway" in down.stderr
    for proc in (unknown, empty, down):
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    kept = set((stack_settings.home / "drift" / MODEL).glob("*.json")) - before
    assert kept, "the failed run was not recorded locally"
    assert json.loads(next(iter(kept)).read_text())["pushed"] is False
