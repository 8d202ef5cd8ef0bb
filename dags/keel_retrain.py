"""keel's Airflow DAGs, generated from the project spec (keel.yaml, named by KEEL_PROJECT, else the
keel.yaml beside this file, as the chart's dags ConfigMap carries it): `keel_retrain__<model>` per model,
`keel_batch_score__<model>` per model with a `batch_score` job, `keel_performance__<model>` per model (the
performance job: outcomes joined to the prediction log; on the spec's performance.schedule, else when
triggered; local executor only: on a cluster it is the chart's CronJob), and `keel_materialize`. Thin on purpose:
every step is a function in keel.retrain / keel.batch / keel.features, run in the core venv (local) or as a
pod of the platform image (kubernetes), never in Airflow's own venv. Only
the spec's model names, schedules and training resources are read here (Airflow's venv has no keel); the
tasks read and validate the rest.

Pods start from the template the chart renders beside this file (keel_pod.json, or KEEL_POD_TEMPLATE):
the platform image, the release's settings (envFrom its "<fullname>-env" ConfigMap) and Secrets, the
pipeline ServiceAccount. Where that template is, the steps run as pods unless KEEL_DAG_EXECUTOR=local."""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import dag, task

HERE = Path(__file__).resolve().parent
POD_TEMPLATE = Path(os.environ.get("KEEL_POD_TEMPLATE", str(HERE / "keel_pod.json")))


def _project() -> dict[str, Any]:
    path = os.environ.get("KEEL_PROJECT")
    p = Path(path) if path else HERE / "keel.yaml"
    p = p / "keel.yaml" if p.is_dir() else p
    if not path and not p.exists():
        return {}
    return yaml.safe_load(p.read_text()) or {}


SPEC = _project()
CONFIG = SPEC.get("airflow") or {}
EXECUTOR = os.environ.get("KEEL_DAG_EXECUTOR") or ("kubernetes" if POD_TEMPLATE.exists()
                                                   else CONFIG.get("executor", "local"))
CORE_PYTHON = os.environ.get("KEEL_CORE_PYTHON", str(HERE.parent / ".venv" / "bin" / "python"))
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True,
           "max_retry_delay": timedelta(minutes=10)}
if EXECUTOR not in ("local", "kubernetes"):
    raise ValueError(f"keel DAGs: executor {EXECUTOR!r} is not one of: local, kubernetes")
if EXECUTOR == "kubernetes" and not POD_TEMPLATE.exists():
    raise FileNotFoundError(f"keel DAGs: executor kubernetes needs the pod template the keel chart renders "
                            f"({POD_TEMPLATE} not found; mount the chart's '<release>-dags' ConfigMap as the "
                            "dags folder, or set KEEL_POD_TEMPLATE)")
TEMPLATE: dict[str, Any] = json.loads(POD_TEMPLATE.read_text()) if EXECUTOR == "kubernetes" else {}


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


def _batch_score(model: str, date: str) -> dict[str, Any]:
    from keel.batch import run_scheduled
    from keel.config import load_settings

    return run_scheduled(load_settings(), model, date)


def _performance(model: str) -> dict[str, Any]:
    from keel.config import load_settings
    from keel.monitoring.performance import run

    r = run(load_settings(), model)
    return {"versions": [{"version": v.version, "labelled_rows": v.labelled_rows, "decay": v.decay}
                         for v in r.versions]}


def _local(fn: Any, task_id: str) -> Any:
    return task.external_python(python=CORE_PYTHON, task_id=task_id, expect_airflow=False, **RETRIES)(fn)


def _resources(training: dict[str, Any] | None) -> Any:
    """The template's resources with the model's ``training`` (cpu, memory, gpus) over them, or None
    (the template's as they are) when the spec names none."""
    from kubernetes.client import models as k8s

    training = training or {}
    if not any(training.get(k) for k in ("cpu", "memory", "gpus")):
        return None
    res = copy.deepcopy(TEMPLATE["spec"]["containers"][0].get("resources") or {})
    requests, limits = res.setdefault("requests", {}), res.setdefault("limits", {})
    if training.get("cpu"):
        requests["cpu"] = limits["cpu"] = str(training["cpu"])
    if training.get("memory"):
        requests["memory"] = limits["memory"] = str(training["memory"])
    if training.get("gpus"):
        limits["nvidia.com/gpu"] = str(int(training["gpus"]))
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _pod(task_id: str, model: str | None, cmds: list[str], arguments: list[str], xcom: bool = True,
         resources: Any = None) -> Any:
    """One step as a pod of the chart's template: the operator adds the command, the step's labels and
    (train) the model's resources."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    meta, base = TEMPLATE["metadata"], TEMPLATE["spec"]["containers"][0]
    labels = {"keel.dev/step": task_id, **({"keel.dev/model": model} if model else {})}
    return KubernetesPodOperator(
        task_id=task_id, name=f"keel-{task_id}-{model or 'features'}".replace("_", "-"),
        namespace=meta.get("namespace"), pod_template_dict=TEMPLATE, image=base["image"],
        service_account_name=TEMPLATE["spec"].get("serviceAccountName"), cmds=cmds, arguments=arguments,
        labels=labels, container_resources=resources, do_xcom_push=xcom,
        xcom_sidecar_container_security_context=base.get("securityContext"),
        on_finish_action="delete_succeeded_pod", **RETRIES)


def retrain_dag(model: str, spec: dict[str, Any]) -> Any:
    pods = EXECUTOR == "kubernetes"

    @dag(dag_id=f"keel_retrain__{model}", schedule=spec.get("retrain_schedule"), start_date=datetime(2026, 1, 1),
         catchup=False, max_active_runs=1, render_template_as_native_obj=not pods, tags=["keel", "retrain"],
         doc_md=f"Retrain `{model}`: training set -> train -> register (challenger) -> gate -> promote -> "
                "canary -> smoke check -> full rollout (or rollback). Triggered by the keel controller.")
    def pipeline() -> None:
        if pods:
            def step(name: str, conf: str, upstream: str | None = None, resources: Any = None) -> Any:
                args = [name, "--model", model, "--run-id", "{{ run_id }}", "--conf", conf, "--xcom"]
                if upstream:
                    args += ["--input", f"{{{{ ti.xcom_pull(task_ids='{upstream}') | tojson }}}}"]
                return _pod(name, model, ["python", "-m", "keel.retrain"], args, resources=resources)

            valid = "{{ ti.xcom_pull(task_ids='validate') | tojson }}"  # the conf as validate checked it
            (step("validate", "{{ dag_run.conf | tojson }}")
             >> step("train", valid, resources=_resources(spec.get("training")))
             >> step("gate", "{}", "train") >> step("rollout", valid, "gate"))
            return
        conf = "{{ dag_run.conf }}"
        valid = _local(_validate, "validate")(model, "{{ run_id }}", conf)
        trained = _local(_train, "train")(model, "{{ run_id }}", valid)
        decision = _local(_gate, "gate")(model, "{{ run_id }}", trained)
        _local(_rollout, "rollout")(model, "{{ run_id }}", decision, valid)

    return pipeline()


def batch_score_dag(model: str, job: dict[str, Any]) -> Any:
    @dag(dag_id=f"keel_batch_score__{model}", schedule=job.get("schedule"), start_date=datetime(2026, 1, 1),
         catchup=False, max_active_runs=1, tags=["keel", "batch"],
         doc_md=f"Batch-score `{model}`: the spec's entities, point-in-time features as of each row, the "
                "serving code's model, written where the spec says ({date}: the run's logical date).")
    def pipeline() -> None:
        if EXECUTOR == "kubernetes":
            _pod("batch_score", model, ["keel"], ["batch-score", model, "--date", "{{ ds }}"], xcom=False)
            return
        _local(_batch_score, "batch_score")(model, "{{ ds }}")

    return pipeline()


def performance_dag(model: str, perf: dict[str, Any]) -> Any:
    @dag(dag_id=f"keel_performance__{model}", schedule=perf.get("schedule"), start_date=datetime(2026, 1, 1),
         catchup=False, max_active_runs=1, tags=["keel", "monitoring"],
         doc_md=f"Measure `{model}` on its real outcomes (`keel feedback`): served rows joined to outcomes, the "
                "task's metrics per version, label coverage and delay pushed to the Pushgateway, where "
                "KeelModelPerformanceDecay watches them.")
    def pipeline() -> None:
        _local(_performance, "performance")(model)

    return pipeline()


@dag(dag_id="keel_materialize", schedule=CONFIG.get("materialize_schedule"), start_date=datetime(2026, 1, 1),
     catchup=False, max_active_runs=1, tags=["keel", "features"],
     doc_md="Incremental materialization of every online feature view into Redis.")
def keel_materialize() -> None:
    if EXECUTOR == "kubernetes":
        _pod("materialize", None, ["keel"], ["features", "materialize"], xcom=False)
        return
    _local(_materialize, "materialize")()


for _name, _model in (SPEC.get("models") or {}).items():
    globals()[f"keel_retrain__{_name}"] = retrain_dag(_name, _model or {})
    if EXECUTOR == "local":  # on a cluster the chart's CronJob runs it, with the prediction log mounted
        globals()[f"keel_performance__{_name}"] = performance_dag(_name, (_model or {}).get("performance") or {})
    if (_model or {}).get("batch_score"):
        globals()[f"keel_batch_score__{_name}"] = batch_score_dag(_name, _model["batch_score"])
keel_materialize()
