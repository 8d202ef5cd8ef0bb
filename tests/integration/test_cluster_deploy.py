"""`keel deploy/status/undeploy --target kserve|rayserve` through the Kubernetes API of a real API server
(kcp): server-side apply with keel's field manager, the version pinned from the registry alias, a wait on
the Ready condition. There is no operator: where KServe or KubeRay would report readiness, the test writes
that status through the status subresource (``operator_reports``), and says so."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from keel.config import Settings
from tests.conftest import FRAUD, KEEL, keel_env, run_keel
from tests.kubeapi import api

KINDS = {"kserve": ("serving.kserve.io/v1beta1", "InferenceService"), "rayserve": ("ray.io/v1", "RayService")}


@pytest.fixture(scope="module")
def plain_model(stack, stack_settings: Settings) -> str:
    """A model registered without keel (raw-feature mode), versions 1 and 2, champion on 1."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age": rng.uniform(18, 80, 200), "income": rng.uniform(1, 9, 200)})
    clf = LogisticRegression().fit(X, (X.age > 40).astype(int))
    mlflow.set_tracking_uri(stack_settings.tracking_uri)
    for _ in range(2):
        with mlflow.start_run():
            mlflow.sklearn.log_model(clf, name="model", registered_model_name="cluster_lr",
                                     signature=mlflow.models.infer_signature(X, clf.predict(X)))
    mlflow.MlflowClient().set_registered_model_alias("cluster_lr", "champion", "1")
    return "cluster_lr"


def env(settings: Settings, kubeconfig: Path, namespace: str, timeout: float = 60) -> dict[str, str]:
    return {"KUBECONFIG": str(kubeconfig), "KEEL_RELEASE": "keel", "KEEL_NAMESPACE": namespace,
            "KEEL_START_TIMEOUT": str(timeout)}


def dynamic(kubeconfig: Path) -> Any:
    from kubernetes.dynamic import DynamicClient

    return DynamicClient(api(kubeconfig))


def get(kubeconfig: Path, target: str, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.dynamic.exceptions import NotFoundError

    d = dynamic(kubeconfig)
    try:
        return d.get(d.resources.get(api_version=KINDS[target][0], kind=KINDS[target][1]), name=name,
                     namespace=namespace).to_dict()
    except NotFoundError:
        return None


def operator_reports(kubeconfig: Path, target: str, namespace: str, name: str, ready: bool,
                     message: str = "") -> None:
    """What KServe/KubeRay would do: write the Ready condition for the object's current generation."""
    d = dynamic(kubeconfig)
    res = d.resources.get(api_version=KINDS[target][0], kind=KINDS[target][1])
    gen = d.get(res, name=name, namespace=namespace).metadata.generation
    cond = {"type": "Ready", "status": "True" if ready else "False", "message": message,
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if target == "rayserve":
        cond["reason"] = "Ready" if ready else "NotReady"
    d.patch(res.subresources["status"], name=name, namespace=namespace,
            body={"status": {"observedGeneration": gen, "conditions": [cond]}},
            content_type="application/merge-patch+json")


def deploy_while_operator_reports(settings: Settings, kubeconfig: Path, namespace: str, target: str,
                                  model: str, name: str, generation_after: int) -> subprocess.CompletedProcess[str]:
    """Run `keel deploy` (it waits for Ready); once the API server holds the new generation, report Ready."""
    proc = subprocess.Popen([KEEL, "deploy", model, "--target", target],
                            env=keel_env(settings, **env(settings, kubeconfig, namespace)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            obj = get(kubeconfig, target, namespace, name)
            if obj is not None and obj["metadata"]["generation"] >= generation_after:
                operator_reports(kubeconfig, target, namespace, name, ready=True)
                break
            time.sleep(0.2)  # waiting on keel's apply, which follows the registry lookup
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_deploy_pins_applies_waits_for_ready_and_undeploys(plain_model: str, stack_settings: Settings,
                                                           kubeconfig: Path, namespace: str) -> None:
    from mlflow import MlflowClient

    s, name, target = stack_settings, "keel-cluster-lr", "kserve"
    done = deploy_while_operator_reports(s, kubeconfig, namespace, target, plain_model, name, 1)
    assert done.returncode == 0, done.stderr
    assert f"serving cluster_lr v1 on {target}://{namespace}/{name} (Ready)" in done.stdout
    obj = get(kubeconfig, target, namespace, name)
    assert obj is not None
    assert {m["manager"] for m in obj["metadata"]["managedFields"]} >= {"keel"}
    rows = json.loads(run_keel(["status", "--target", target, "-o", "json"], s,
                               **env(s, kubeconfig, namespace)).stdout)
    assert [(r["name"], r["version"], r["ready"]) for r in rows] == [(name, "1", True)]

    # the alias moves: a new deploy pins v2 (a new generation) and waits until the operator has seen it
    MlflowClient(s.tracking_uri).set_registered_model_alias("cluster_lr", "champion", "2")
    done = deploy_while_operator_reports(s, kubeconfig, namespace, target, plain_model, name, 2)
    assert done.returncode == 0 and "v2" in done.stdout, done.stderr
    rows = json.loads(run_keel(["status", "--target", target, "-o", "json"], s,
                               **env(s, kubeconfig, namespace)).stdout)
    assert [(r["version"], r["ready"]) for r in rows] == [("2", True)]

    # an operator that reports failure: the deploy ends at the timeout with its message, one line, not a hang
    operator_reports(kubeconfig, target, namespace, name, ready=False, message="predictor CrashLoopBackOff")
    t0 = time.monotonic()
    stuck = run_keel(["deploy", plain_model, "--target", target], s, **env(s, kubeconfig, namespace, timeout=3))
    assert stuck.returncode != 0 and len(stuck.stderr.strip().splitlines()) == 1, stuck.stderr
    assert "not Ready after 3 s: predictor CrashLoopBackOff" in stuck.stderr
    assert time.monotonic() - t0 < 30

    assert run_keel(["undeploy", plain_model, "--target", target], s, **env(s, kubeconfig, namespace)).returncode == 0
    assert get(kubeconfig, target, namespace, name) is None
    again = run_keel(["undeploy", plain_model, "--target", target], s, **env(s, kubeconfig, namespace))
    assert again.returncode == 2 and "is not deployed" in again.stderr, again.stderr
    MlflowClient(s.tracking_uri).set_registered_model_alias("cluster_lr", "champion", "1")


def test_rayserve_target_applies_a_rayservice_and_waits_for_ready(plain_model: str, stack_settings: Settings,
                                                                  kubeconfig: Path, namespace: str) -> None:
    s, name = stack_settings, "keel-cluster-lr"
    done = deploy_while_operator_reports(s, kubeconfig, namespace, "rayserve", plain_model, name, 1)
    assert done.returncode == 0 and f"on rayserve://{namespace}/{name} (Ready)" in done.stdout, done.stderr
    obj = get(kubeconfig, "rayserve", namespace, name)
    assert obj is not None and obj["kind"] == "RayService"
    from keel.serving.kube import serve_spec_of

    assert serve_spec_of(obj)["version"] == "1" and serve_spec_of(obj)["runtime"] == "ray"
    assert run_keel(["undeploy", plain_model, "--target", "rayserve"], s,
                    **env(s, kubeconfig, namespace)).returncode == 0
    assert get(kubeconfig, "rayserve", namespace, name) is None


class Operator:
    """KServe's part, in a thread: each time the API server holds a generation of the model's object the
    operator has not reported, record the ServeSpec it would roll out and report it Ready."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, target: str = "kserve") -> None:
        import threading

        self.kubeconfig, self.namespace, self.name, self.target = kubeconfig, namespace, name, target
        self.seen: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from keel.serving.kube import serve_spec_of

        while not self.stop.is_set():
            obj = get(self.kubeconfig, self.target, self.namespace, self.name)
            if obj is not None and (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
                self.seen.append(serve_spec_of(obj) or {})
                operator_reports(self.kubeconfig, self.target, self.namespace, self.name, ready=True)
            self.stop.wait(0.2)

    def __enter__(self) -> Operator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_a_promotion_rolls_out_on_the_inference_service_canary_smoke_full(
        training_set: Any, deployer: Any, stack_settings: Settings, kubeconfig: Path,
        namespace: str, postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retraining DAG's rollout step with KEEL_DEPLOY_TARGET=kserve: the live InferenceService is patched
    to the canary (previous version, new champion at 20%), smoke-checked through the model's endpoint (a
    real local serving process stands in for the predictor pod), then patched to the new version alone;
    a failing smoke check rolls the registry and the object back. The audit records land in the platform
    database (a real Postgres, KEEL_AUDIT_DB), as they do from the pods of a release."""
    from examples.fraud.fraud_model import train_fraud_model

    from keel import retrain
    from keel.registry.audit import AuditDB
    from keel.registry.client import Registry
    from keel.serving.kube import ClusterTarget
    from keel.serving.spec import ServeSpec
    from tests.conftest import free_ports

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    model = "fraud_cluster"
    audited = stack_settings.model_copy(update={"audit_db": SecretStr(postgres)})
    reg = Registry(audited)
    first = train_fraud_model(training_set)
    v1 = reg.register(first.model, model, training_set, first.holdout, first.metrics).version
    reg.promote(model)
    second = train_fraud_model(training_set, n_estimators=40, max_depth=2, seed=1)
    v2 = reg.register(second.model, model, training_set, second.holdout, second.metrics).version
    port = free_ports(1)[0]
    stand_in = deployer(model=model, alias="champion", port=port)  # the "predictor pod"
    s = audited.model_copy(update={"deploy_target": "kserve", "release": "keel", "namespace": namespace,
                                          "serving_endpoint": stand_in, "start_timeout": 30.0})
    target = ClusterTarget(s, "kserve")
    name = target.name_of(model)
    try:
        with Operator(kubeconfig, namespace, name) as op:
            target.deploy(ServeSpec(model=model, version=v1))  # v1 in production on the cluster
            reg.promote(model, force=True, reason="test: the DAG's gate step")  # v2 is champion now
            decision = {"promoted": True, "champion": v2, "previous": v1}
            out = retrain.rollout(s, model, "run-1", decision, {"canary_percent": 20, "smoke_requests": 5})
            assert out["outcome"] == "promoted" and out["champion"] == v2 and out["object"] == name, out
            steps = [(x["version"], x.get("canary_alias"), x.get("canary_weight") or 0.0) for x in op.seen]
            assert steps == [(v1, None, 0.0), (v1, "champion", 0.2), (v2, None, 0.0)], steps
            assert target.current(model)["version"] == v2

            # a smoke check that fails (the endpoint answers nothing): registry and object go back to v1
            broken = s.model_copy(update={"serving_endpoint": f"http://127.0.0.1:{free_ports(1)[0]}"})
            # (v2 is still the champion just promoted, v1 the previous one: the DAG's rollout step is re-run)
            back = retrain.rollout(broken, model, "run-2", {"promoted": True, "champion": v2, "previous": v1},
                                   {"canary_percent": 20, "smoke_requests": 5})
            assert back["outcome"] == "rolled_back" and "is keel-" in back["smoke"], back
            assert reg.resolve(model, "champion").version == v1
            assert target.current(model)["version"] == v1 and op.seen[-1]["version"] == v1

        # the same promotion on a RayService, chosen by configuration: KEEL_DEPLOY_TARGET=cluster and the
        # model's own runtime in the project spec (ray), as the chart configures the DAG pods
        spec = yaml.safe_load((FRAUD / "keel.yaml").read_text())
        spec["feature_repo"] = str(FRAUD / "feature_repo")
        spec["models"][model] = {**spec["models"]["fraud"], "serving": {"runtime": "ray"}}
        (tmp_path / "keel.yaml").write_text(yaml.safe_dump(spec))
        ray = s.model_copy(update={"deploy_target": "cluster", "project": tmp_path / "keel.yaml"})
        ray._spec = None  # read the project named now, not the copied settings' cached one
        # (the decision is the gate step's output: v2 promoted over v1; the rollout itself moves no alias)
        ray_target = ClusterTarget(ray, "rayserve")
        with Operator(kubeconfig, namespace, ray_target.name_of(model), "rayserve") as rop:
            ray_target.deploy(ServeSpec(model=model, version=v1, runtime="ray", port=8000))
            out = retrain.rollout(ray, model, "run-3", {"promoted": True, "champion": v2, "previous": v1},
                                  {"canary_percent": 50, "smoke_requests": 5})
            assert out["outcome"] == "promoted" and out["target"] == "rayserve", out
            steps = [(x["version"], x.get("canary_alias"), x.get("canary_weight") or 0.0) for x in rop.seen]
            assert steps == [(v1, None, 0.0), (v1, "champion", 0.5), (v2, None, 0.0)], steps

        trail = [(r.action, r.from_version, r.to_version, r.actor) for r in AuditDB(postgres).records(model)]
        me = audited.actor
        assert trail == [("register", None, v1, me), ("promote", None, v1, me), ("register", None, v2, me),
                         ("force-promote", v1, v2, me), ("rollback", v2, v1, "airflow")], trail
        assert "smoke check failed" in AuditDB(postgres).records(model)[-1].reason
        assert not stack_settings.audit().records(model)  # nothing in the pod-local file
    finally:
        target.undeploy(model)  # every object of the model: the InferenceService and the RayService
