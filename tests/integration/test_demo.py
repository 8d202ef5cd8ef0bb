"""`keel demo` (what `make demo` runs) from an empty state directory, then `keel down`."""

from __future__ import annotations

import json

from keel.config import Settings
from keel.stack.supervisor import _group_members
from tests.conftest import run_keel


def test_demo_end_to_end_then_down(tmp_settings: Settings) -> None:
    proc = run_keel(["demo", "--transactions", "20000"], tmp_settings, timeout=600)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "promoted v1 to champion" in out
        assert f"MLflow UI        http://127.0.0.1:{tmp_settings.mlflow_port}/#/models/fraud" in out
        for key in ("feature_service          fraud_model_v1", "training_set_hash", "feature_definition_hash",
                    "git_sha", "keel_version             0.1.0"):
            assert key in out
        models = json.loads(run_keel(["models", "list", "-o", "json"], tmp_settings).stdout)
        assert [(m["name"], m["champion"]) for m in models] == [("fraud", "1")]
        audit = json.loads(run_keel(["audit", "-o", "json"], tmp_settings).stdout)
        assert [a["action"] for a in audit] == ["register", "promote"]
        assert "-> fraud probability" in out and "serving          http://127.0.0.1:" in out
        status = json.loads(run_keel(["status", "-o", "json"], tmp_settings).stdout)
        assert {s["service"]: s["state"] for s in status} == {
            "mlflow": "healthy", "redis": "healthy", "prometheus": "healthy", "pushgateway": "healthy",
            "alertmanager": "healthy", "serve-fraud": "healthy"}
    finally:
        pgids = [json.loads(p.read_text())["pgid"] for p in (tmp_settings.home / "run").glob("*.json")]
        down = run_keel(["down"], tmp_settings)
    assert down.returncode == 0
    assert len(pgids) == 6
    assert [p for g in pgids for p in _group_members(g)] == []
