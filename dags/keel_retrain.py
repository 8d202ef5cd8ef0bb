"""keel's Airflow DAGs, generated from the project spec (keel.yaml, named by KEEL_PROJECT):
`keel_retrain__<model>` per model and `keel_materialize`. Thin on purpose: every step is a function in
keel.retrain / keel.features, run in the core venv (local) or the platform image (kubernetes), never in
Airflow's own venv. Only the spec's model names and schedules are read here (Airflow's venv has no keel);
the tasks read and validate the rest."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import dag, task

HERE = Path(__file__).resolve().parent


def _project() -> dict[str, Any]:
    path = os.environ.get("KEEL_PROJECT")
    if not path:
        return {}
    p = Path(path)
    p = p / "keel.yaml" if p.is_dir() else p
    return yaml.safe_load(p.read_text()) or {}


SPEC = _project()
CONFIG = SPEC.get("airflow") or {}
EXECUTOR = os.environ.get("KEEL_DAG_EXECUTOR", CONFIG.get("executor", "local"))
CORE_PYTHON = os.environ.get("KEEL_CORE_PYTHON", str(HERE.parent / ".venv" / "bin" / "python"))
IMAGE = os.environ.get("KEEL_PLATFORM_IMAGE", "ghcr.io/keel-ml/keel-platform:0.1.0")
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True,
           "max_retry_delay": timedelta(minutes=10)}


# Parameter names avoid Airflow's context keys (run_id, conf, ...), which it reserves.
def _validate(model: str, rid: str, run_conf: dict[str, Any]) -> dict[str, Any]:
    from keel.config import load_settings
    from keel.retrain import validate_conf

    return validate_conf(run_conf, load_settings().spec().model(model))


def _train(model: str, rid: str, run_conf: dict[str, Any]) -> dict[str, Any]:
    from keel.config import load_settings
    from keel.retrain import train

    return train(load_settings(), model, rid, run_conf)


def _gate(model: str, rid: str, trained: dict[str, Any]) -> dict[str, Any]:
    from keel.config import load_settings
    from keel.retrain import gate

    return gate(load_settings(), model, rid, trained["version"])


def _rollout(model: str, rid: str, decision: dict[str, Any], run_conf: dict[str, Any]) -> dict[str, Any]:
    from keel.config import load_settings
    from keel.retrain import rollout

    return rollout(load_settings(), model, rid, decision, run_conf)


def _materialize() -> str:
    from keel.config import load_settings
    from keel.features.store import materialize

    return materialize(load_settings()).isoformat()


def _local(fn: Any, task_id: str) -> Any:
    return task.external_python(python=CORE_PYTHON, task_id=task_id, expect_airflow=False, **RETRIES)(fn)


def retrain_dag(model: str, schedule: str | None) -> Any:
    @dag(dag_id=f"keel_retrain__{model}", schedule=schedule, start_date=datetime(2026, 1, 1), catchup=False,
         max_active_runs=1, render_template_as_native_obj=True, tags=["keel", "retrain"],
         doc_md=f"Retrain `{model}`: training set -> train -> register (challenger) -> gate -> promote -> "
                "canary -> smoke check -> full rollout (or rollback). Triggered by the keel controller.")
    def pipeline() -> None:
        if EXECUTOR == "kubernetes":
            from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

            def pod(step: str, upstream: str | None) -> Any:
                args = ["python", "-m", "keel.retrain", step, "--model", model, "--run-id", "{{ run_id }}",
                        "--conf", "{{ dag_run.conf | tojson }}", "--xcom"]
                if upstream:
                    args += ["--input", f"{{{{ ti.xcom_pull(task_ids='{upstream}') | tojson }}}}"]
                return KubernetesPodOperator(task_id=step, name=f"keel-{step}-{model}", image=IMAGE,
                                             cmds=args[:1], arguments=args[1:], do_xcom_push=True,
                                             env_from=[], **RETRIES)

            pod("validate", None) >> pod("train", None) >> pod("gate", "train") >> pod("rollout", "gate")
            return
        conf = "{{ dag_run.conf }}"
        valid = _local(_validate, "validate")(model, "{{ run_id }}", conf)
        trained = _local(_train, "train")(model, "{{ run_id }}", valid)
        decision = _local(_gate, "gate")(model, "{{ run_id }}", trained)
        _local(_rollout, "rollout")(model, "{{ run_id }}", decision, valid)

    return pipeline()


@dag(dag_id="keel_materialize", schedule=CONFIG.get("materialize_schedule"), start_date=datetime(2026, 1, 1),
     catchup=False, max_active_runs=1, tags=["keel", "features"],
     doc_md="Incremental materialization of every online feature view into Redis.")
def keel_materialize() -> None:
    _local(_materialize, "materialize")()


for _name, _model in (SPEC.get("models") or {}).items():
    globals()[f"keel_retrain__{_name}"] = retrain_dag(_name, (_model or {}).get("retrain_schedule"))
keel_materialize()
