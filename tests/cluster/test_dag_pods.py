"""The retraining and materialization DAGs on a cluster: the pods the real DAG file builds (Airflow's
KubernetesPodOperator, in Airflow's own venv) from the dags ConfigMap a real `helm install` stored are
submitted to the API server as a server-side dry run — validated, defaulted and admitted (the
ServiceAccount must exist) for real — and carry the release's settings, its Secrets and the model's spec."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.test_helm_lifecycle import install
from tests.conftest import ROOT
from tests.kubeapi import api

AIRFLOW_PY = ROOT / ".venv-airflow" / "bin" / "python"
SPEC = """\
# a project keel did not make: two models, one trained on a big pod with a GPU
name: lending
feature_repo: features
models:
  churn:
    feature_service: churn_v3
    label: churned
    labels: s3://lending-data/labels/churn.parquet
    task: binary
    train: lending.churn:fit
    retrain_schedule: "@daily"
    training: {cpu: "4", memory: 12Gi, gpus: 1}
    serving: {runtime: ray}
    batch_score: {entities: "s3://lending-data/customers.parquet", out: "s3://lending-data/churn-{date}.parquet",
                  schedule: "@daily"}
  default_risk:
    feature_service: risk_v1
    label: defaulted
    labels: s3://lending-data/labels/risk.parquet
    task: regression
    train: lending.risk:fit
airflow:
  executor: local   # what the laptop uses; the chart's pod template makes the steps pods on the cluster
  materialize_schedule: "*/15 * * * *"
"""
# what each step's pod pushed (KubernetesPodOperator's XCom sidecar), as the next step reads it
XCOMS = {"validate": {"params": {}, "canary_percent": 10.0, "smoke_requests": 20, "labels": None},
         "train": {"version": "7", "reused": False}, "gate": {"promoted": True, "champion": "7", "previous": "6"}}


def dag_pods(kubeconfig: Path, dags: Path, tmp: Path, conf: dict[str, Any]) -> list[dict[str, Any]]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "KUBECONFIG": str(kubeconfig)}
    env = {k: v for k, v in env.items() if not k.startswith("KEEL_")}  # only what the ConfigMap carries
    proc = subprocess.run([str(AIRFLOW_PY), str(ROOT / "tests" / "cluster" / "dag_pods.py"), str(dags),
                           json.dumps(conf), json.dumps(XCOMS)], capture_output=True, text=True, env=env,
                          timeout=180, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dag_built_pods_are_admitted_and_carry_the_release_and_the_model(kubeconfig: Path, namespace: str,
                                                                         tmp_path: Path) -> None:
    if not AIRFLOW_PY.exists():
        pytest.skip("the Airflow venv is missing; `make setup` creates it")
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from keel import retrain

    spec_file = tmp_path / "keel.yaml"
    spec_file.write_text(SPEC)
    docs = install(kubeconfig, tmp_path, "lend", namespace, "minimal", "--set-file", f"airflow.spec={spec_file}")
    core = client.CoreV1Api(api(kubeconfig))
    # the dags folder exactly as the API server stores the chart's ConfigMap (what Airflow mounts)
    cm = core.read_namespaced_config_map("lend-keel-dags", namespace)
    dags = tmp_path / "dags"
    dags.mkdir()
    for name, text in cm.data.items():
        (dags / name).write_text(text)
    assert set(cm.data) == {"keel_retrain.py", "keel.yaml", "keel_pod.json"}

    conf = {"params": {"max_depth": 5}, "canary_percent": 25}
    pods = dag_pods(kubeconfig, dags, tmp_path, conf)
    by = {(p["dag"], p["task"]): p["pod"] for p in pods}
    steps = ["validate", "train", "gate", "rollout"]
    assert set(by) == {*((f"keel_retrain__{m}", s) for m in ("churn", "default_risk") for s in steps),
                       ("keel_materialize", "materialize"), ("keel_batch_score__churn", "batch_score")}

    settings = core.read_namespaced_config_map("lend-keel-env", namespace).data
    assert settings["KEEL_RELEASE"] == "lend" and settings["KEEL_NAMESPACE"] == namespace
    assert settings["KEEL_DEPLOY_TARGET"] == "cluster"
    for (dag, task), pod in by.items():
        accepted = core.create_namespaced_pod(namespace, pod, dry_run="All", field_validation="Strict")
        assert accepted.metadata.namespace == namespace and accepted.spec.service_account_name == "lend-keel-pipeline"
        base = next(c for c in accepted.spec.containers if c.name == "base")
        assert base.image == "ghcr.io/keel-ml/keel-platform:0.1.0"
        assert [e.config_map_ref.name for e in base.env_from] == ["lend-keel-env"]
        secrets = {e.name: e.value_from.secret_key_ref.name for e in base.env if e.value_from}
        assert secrets == {"KEEL_REDIS_PASSWORD": "keel-redis", "KEEL_POSTGRES_PASSWORD": "keel-postgres",
                           "MLFLOW_TRACKING_USERNAME": "keel-mlflow-auth",
                           "MLFLOW_TRACKING_PASSWORD": "keel-mlflow-auth"}
        plain = {e.name: e.value for e in base.env if not e.value_from}
        assert plain["KEEL_AUDIT_DB"].endswith(f"@lend-keel-postgres.{namespace}.svc.cluster.local:5432/keel")
        assert accepted.metadata.labels["keel.dev/step"] == task
        # snapshots on the release's shared volume, never on the pod's own disk
        assert plain["KEEL_SNAPSHOT_URI"] == "/var/lib/keel/training-sets"
        assert {(v.name, v.persistent_volume_claim.claim_name) for v in accepted.spec.volumes
                if v.persistent_volume_claim} == {("training-sets", "lend-keel-training-sets")}
        assert "/var/lib/keel/training-sets" in [m.mount_path for m in base.volume_mounts]
        # the chart's RayJob, for a model with training.ray (keel.rayjob reads it there)
        assert plain["KEEL_RAYJOB_TEMPLATE"] == "/etc/keel/rayjob/rayjob.json"
        assert {(v.name, v.config_map.name) for v in accepted.spec.volumes if v.config_map} == {
            ("rayjob", "lend-keel-rayjob")}
        assert "/etc/keel/rayjob" in [m.mount_path for m in base.volume_mounts]
        if dag == "keel_materialize":
            assert base.command + base.args == ["keel", "features", "materialize"]
            continue
        if dag == "keel_batch_score__churn":  # the spec's job for the run's logical date, on the release's pod
            assert base.command + base.args == ["keel", "batch-score", "churn", "--date", "2026-12-02"]
            assert accepted.metadata.labels["keel.dev/model"] == "churn"
            continue
        model = dag.removeprefix("keel_retrain__")
        assert base.command == ["python", "-m", "keel.retrain"] and base.args[0] == task
        parsed = retrain.parser().parse_args(base.args)  # what the pod's `python -m keel.retrain` will read
        assert (parsed.step, parsed.model, parsed.xcom) == (task, model, True)  # xcom: for the operator's sidecar
        args = {"--model": parsed.model, "--conf": parsed.conf, "--input": parsed.input}
        assert args["--model"] == model and accepted.metadata.labels["keel.dev/model"] == model
        assert json.loads(args["--conf"]) == (conf if task == "validate" else XCOMS["validate"] if task != "gate"
                                              else {})
        if task in ("gate", "rollout"):
            assert json.loads(args["--input"]) == XCOMS["train" if task == "gate" else "gate"]

    # the model's spec: churn trains on its own resources, the other steps and models on the chart's
    train = next(c for c in by[("keel_retrain__churn", "train")]["spec"]["containers"] if c["name"] == "base")
    assert train["resources"] == {"requests": {"cpu": "4", "memory": "12Gi"},
                                  "limits": {"cpu": "4", "memory": "12Gi", "nvidia.com/gpu": "1"}}
    chart = yaml.safe_load((ROOT / "charts" / "keel" / "values.yaml").read_text())["airflow"]["pipelines"]["resources"]
    for key in (("keel_retrain__churn", "gate"), ("keel_retrain__default_risk", "train")):
        base = next(c for c in by[key]["spec"]["containers"] if c["name"] == "base")
        assert base["resources"] == chart, key
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] ==
                 "lend-keel-training-sets")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    # and the dry run is a real check: a pod whose ServiceAccount is not there is refused
    broken = json.loads(json.dumps(by[("keel_materialize", "materialize")]))
    broken["spec"]["serviceAccountName"] = "lend-keel-nobody"
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, broken, dry_run="All")
    assert refused.value.status in (403, 422) and "lend-keel-nobody" in refused.value.body
