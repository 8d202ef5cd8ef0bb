"""A model with ``training.ray`` trains as a KubeRay RayJob: the chart a real `helm install` stored on the
API server (kcp) gives the template, keel fills it in for the run and creates it, the API server admits
it (schema, strict fields), and the train step follows it to the end and finds what it registered.

There is no KubeRay operator here. Where it would start the job's Ray cluster and run the entrypoint on
its head, ``Operator`` runs that entrypoint, exactly as the RayJob states it, in a process of the local
stack, and reports through the status subresource what KubeRay reports (Running, then Complete or Failed).
The training itself, on a real multi-node Ray cluster, is tests/integration/test_ray_cluster.py."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel import rayjob, retrain
from keel.config import Settings
from keel.errors import KeelError
from tests.cluster.test_helm_lifecycle import install
from tests.conftest import FRAUD, ROOT, keel_env
from tests.kubeapi import api

PYTHON = ROOT / ".venv" / "bin" / "python"
MODEL = "fraud_rayjob"


class Operator:
    """KubeRay's part for one RayJob name: wait for it, run its entrypoint (or fail it), report the status."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, env: dict[str, str],
                 fail_with: str | None = None) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api(kubeconfig))
        self.namespace, self.name, self.env, self.fail_with = namespace, name, env, fail_with
        self.ran: list[list[str]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Operator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=300)

    def _report(self, deployment: str, status: str, message: str = "") -> None:
        self.api.patch_namespaced_custom_object_status(
            "ray.io", "v1", self.namespace, "rayjobs", self.name,
            {"status": {"jobDeploymentStatus": deployment, "jobStatus": status, "message": message}})

    def _run(self) -> None:
        from kubernetes.client.rest import ApiException

        try:
            while not self._stop.is_set():
                try:
                    job = self.api.get_namespaced_custom_object("ray.io", "v1", self.namespace, "rayjobs", self.name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    self._stop.wait(0.2)
                    continue
                if job.get("status"):  # reported on already (an earlier run of this name)
                    self._stop.wait(0.2)
                    continue
                self._report("Initializing", "")
                self._report("Running", "RUNNING")
                if self.fail_with:
                    self._report("Failed", "FAILED", self.fail_with)
                    return
                head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                argv = shlex.split(job["spec"]["entrypoint"])  # Ray runs the entrypoint as a shell line
                self.ran.append(argv)
                env = {**self.env, **{e["name"]: e["value"] for e in head["env"] if e["name"] == "KEEL_TRAIN_WORKERS"}}
                assert argv[0] == "python"
                proc = subprocess.run([str(PYTHON), *argv[1:]], env=env, capture_output=True, text=True,
                                      timeout=600, stdin=subprocess.DEVNULL, check=False)
                if proc.returncode == 0:
                    self._report("Complete", "SUCCEEDED")
                else:
                    self._report("Failed", "FAILED", proc.stderr[-1500:])
                return
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc


@pytest.fixture(scope="module")
def ray_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fraud example as a team's own copy, its model trained on Ray (3 workers of 2 CPUs, 6 GiB)."""
    root = tmp_path_factory.mktemp("rayjob-project") / "fraud"
    shutil.copytree(FRAUD, root, ignore=shutil.ignore_patterns("__pycache__", "data"))
    spec = (root / "keel.yaml").read_text()
    spec = spec.replace("  model: fraud\n", f"  model: {MODEL}\n").replace(
        "  fraud:\n    feature_service:",
        f"  {MODEL}:\n    training: {{ray: {{workers: 3, cpu: \"2\", memory: 6Gi}}}}\n    feature_service:")
    assert f"  {MODEL}:\n    training:" in spec
    (root / "keel.yaml").write_text(spec)
    return root


@pytest.fixture
def released(kubeconfig: Path, namespace: str, tmp_path: Path, ray_project: Path, stack_settings: Settings,
             feature_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A release installed with the team's spec; the settings of its train step's pod (the RayJob
    template read back from the API server, as the pod mounts it), on the local stack."""
    from kubernetes import client

    install(kubeconfig, tmp_path, "lend", namespace, "minimal", "--set-file",
            f"airflow.spec={ray_project / 'keel.yaml'}")
    cm = client.CoreV1Api(api(kubeconfig)).read_namespaced_config_map("lend-keel-rayjob", namespace)
    template = tmp_path / "rayjob.json"
    template.write_text(cm.data["rayjob.json"])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield stack_settings.model_copy(update={"project": ray_project, "rayjob_template": template,
                                            "namespace": namespace})


def _rayjobs(kubeconfig: Path, namespace: str) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api(kubeconfig))


def test_the_rayjob_is_admitted_trains_registers_and_a_rerun_reattaches(released: Settings, kubeconfig: Path,
                                                                       namespace: str) -> None:
    from keel.registry.client import Registry

    spec = released.spec().model(MODEL)
    conf = retrain.validate_conf({"params": {"n_estimators": 30}}, spec)
    run_id = "manual__2026-12-03T10:00:00+00:00"
    name = rayjob.job_name(MODEL, run_id)

    # the API server's own check first: schema, defaults, unknown fields refused
    job = rayjob.build(rayjob.load_template(released), MODEL, run_id, conf, spec.training.ray)
    admitted = _rayjobs(kubeconfig, namespace).create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayjobs", job, dry_run="All", field_validation="Strict")
    assert admitted["spec"]["submissionMode"] == "HTTPMode" and admitted["spec"]["shutdownAfterJobFinishes"]
    assert admitted["metadata"]["annotations"][rayjob.RUN_ANNOTATION] == run_id

    head_env = keel_env(released, KEEL_PROJECT=str(released.project), KEEL_RAY_ADDRESS="auto")
    with Operator(kubeconfig, namespace, name, head_env) as op:
        out = retrain.train(released, MODEL, run_id, conf)
    assert op.error is None, op.error
    assert len(op.ran) == 1 and op.ran[0][3:5] == ["train", "--model"]
    assert out["ray_job"] == name and out["job_status"] == "SUCCEEDED"
    version = Registry(released).version(MODEL, out["version"])
    assert version.tags["keel.idempotency_key"] == run_id
    assert version.tags["keel.training_set_hash"] == out["training_set_hash"] and out["rows"] > 1000

    live = _rayjobs(kubeconfig, namespace).get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
    group = live["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 3
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    assert live["metadata"]["labels"]["keel.dev/model"] == MODEL
    assert live["status"]["jobStatus"] == "SUCCEEDED"

    # a re-run of the step (Airflow's retry) finds the run's version: no second job, no second version
    again = retrain.train(released, MODEL, run_id, conf)
    assert again["version"] == out["version"] and "ray_job" not in again
    later = _rayjobs(kubeconfig, namespace).get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
    assert later["metadata"]["uid"] == live["metadata"]["uid"]


def test_a_failed_rayjob_fails_the_step_with_kuberays_message_and_a_retry_replaces_it(
        released: Settings, kubeconfig: Path, namespace: str) -> None:
    spec = released.spec().model(MODEL).training.ray
    run_id = "scheduled__2026-12-02T00:00:00+00:00"
    name = rayjob.job_name(MODEL, run_id)
    with Operator(kubeconfig, namespace, name, {}, fail_with="Job entrypoint command failed with exit code 1") as op, \
            pytest.raises(KeelError) as failed:
        rayjob.submit(released, MODEL, run_id, {}, spec, poll_s=0.2, timeout_s=60)
    assert op.error is None, op.error
    assert f"RayJob {namespace}/{name}" in str(failed.value) and "ended Failed (Ray job FAILED)" in str(failed.value)
    assert "exit code 1" in str(failed.value)
    jobs = _rayjobs(kubeconfig, namespace)
    first = jobs.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)["metadata"]["uid"]

    # Airflow's retry: the failed job is deleted and the run starts over in a new one
    done = threading.Event()

    def succeed_the_new_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                obj = jobs.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
            except Exception:  # deleted, not yet created again
                time.sleep(0.1)
                continue
            if obj["metadata"]["uid"] != first and not obj.get("status"):
                jobs.patch_namespaced_custom_object_status("ray.io", "v1", namespace, "rayjobs", name, {
                    "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}})
                done.set()
                return
            time.sleep(0.1)

    t = threading.Thread(target=succeed_the_new_one, daemon=True)
    t.start()
    assert rayjob.submit(released, MODEL, run_id, {}, spec, poll_s=0.2, timeout_s=60)["job_status"] == "SUCCEEDED"
    t.join(timeout=70)
    assert done.is_set()

    # and a job that never finishes is given up at the step's timeout, named, and left to KubeRay's deadline
    slow = "manual__slow"
    with pytest.raises(KeelError, match=r"has not finished after 1 s \(now New / -\); it is left running"):
        rayjob.submit(released, MODEL, slow, {}, spec, poll_s=0.2, timeout_s=1)
    assert jobs.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", rayjob.job_name(MODEL, slow))
