"""keel's DAG files load in Airflow's own venv without import errors (a broken DAG fails the suite)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

AIRFLOW_PY = ROOT / ".venv-airflow" / "bin" / "python"
PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag({dags!r})
print(json.dumps({{"errors": {{k: str(v)[-500:] for k, v in bag.import_errors.items()}},
                  "dags": {{d.dag_id: [t.task_id for t in d.tasks] for d in bag.dags.values()}}}}))
"""


def test_dags_import_cleanly_one_retrain_dag_per_model(tmp_path: Path) -> None:
    if not AIRFLOW_PY.exists():
        pytest.skip("the Airflow venv is missing; `make setup` creates it")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "KEEL_PROJECT": str(ROOT / "examples" / "fraud")}
    proc = subprocess.run([str(AIRFLOW_PY), "-c", PROBE.format(dags=str(ROOT / "dags"))], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    models = yaml.safe_load((ROOT / "examples" / "fraud" / "keel.yaml").read_text())["models"]
    expected = {f"keel_retrain__{m}": ["validate", "train", "gate", "rollout"] for m in models}
    expected |= {f"keel_batch_score__{m}": ["batch_score"] for m, spec in models.items() if spec.get("batch_score")}
    expected |= {f"keel_performance__{m}": ["performance"] for m in models}
    assert "keel_batch_score__fraud" in expected
    assert out["dags"] == {**expected, "keel_materialize": ["materialize"]}


def test_kubernetes_executor_without_the_charts_pod_template_is_a_clear_import_error(tmp_path: Path) -> None:
    if not AIRFLOW_PY.exists():
        pytest.skip("the Airflow venv is missing; `make setup` creates it")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "KEEL_PROJECT": str(ROOT / "examples" / "fraud"), "KEEL_DAG_EXECUTOR": "kubernetes",
           "KEEL_POD_TEMPLATE": str(tmp_path / "missing.json")}
    proc = subprocess.run([str(AIRFLOW_PY), "-c", PROBE.format(dags=str(ROOT / "dags"))], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (error,) = json.loads(proc.stdout.strip().splitlines()[-1])["errors"].values()
    assert "executor kubernetes needs the pod template the keel chart renders" in error
    assert "missing.json" in error
