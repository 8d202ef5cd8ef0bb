"""`keel demo` (what `make demo` runs) from an empty state directory, then `keel down`."""

from __future__ import annotations

import json
from pathlib import Path

from keel.stack.supervisor import _group_members
from tests.conftest import isolated_settings, run_keel


def test_demo_end_to_end_then_down(tmp_path: Path) -> None:
    tmp_settings = isolated_settings(tmp_path / "keel", retraining=True, start_timeout=180.0)
    try:  # from before the demo starts: a demo that times out must not leave its stack running
        proc = run_keel(["demo", "--rows", "20000"], tmp_settings, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "promoted v1 to champion" in out
        assert f"MLflow UI        http://127.0.0.1:{tmp_settings.mlflow_port}/#/models/fraud" in out
        for key in ("feature_service          fraud_model_v1", "training_set_hash", "feature_definition_hash",
                    "git_sha", "keel_version             0.1.0"):
            assert key in out
        models = json.loads(run_keel(["models", "list", "-o", "json"], tmp_settings).stdout)
        # drift -> alert -> controller -> Airflow retrained, gated and promoted v2, which now serves
        assert "KeelDatasetDrift" in out and "new version answering" in out and "(v2)" in out, out[-3000:]
        assert [(m["name"], m["champion"]) for m in models] == [("fraud", "2")]
        audit = json.loads(run_keel(["audit", "-o", "json"], tmp_settings).stdout)
        actions = [a["action"] for a in audit if a["model"] == "fraud"]
        assert actions[:2] == ["register", "promote"] and actions[-1] == "retrain-completed", actions
        assert "customer_id=" in out and "serving          http://127.0.0.1:" in out
        # the closing summary shows the state at the end: v2, promoted by the retraining loop
        assert "model            fraud v2 (champion), first trained as v1" in out, out[-3000:]
        status = json.loads(run_keel(["status", "-o", "json"], tmp_settings).stdout)
        assert {s["service"]: s["state"] for s in status} == {
            "mlflow": "healthy", "redis": "healthy", "prometheus": "healthy", "pushgateway": "healthy",
            "alertmanager": "healthy", "airflow": "healthy", "controller": "healthy", "serve-fraud": "healthy"}
    finally:
        pgids = [json.loads(p.read_text())["pgid"] for p in (tmp_settings.home / "run").glob("*.json")]
        down = run_keel(["down"], tmp_settings)
    assert down.returncode == 0
    assert len(pgids) == 8
    assert [p for g in pgids for p in _group_members(g)] == []
