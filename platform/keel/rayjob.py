"""A model's train step as a KubeRay RayJob, where its spec says ``training.ray`` and the chart's RayJob
template is mounted (``KEEL_RAYJOB_TEMPLATE``, in every DAG step pod).

The step's pod does not train: it fills the chart's template in for the run (the entrypoint is the same
``python -m keel.retrain train ...`` the pod would have run, the worker count and resources are the
spec's), creates the RayJob, and follows its status until KubeRay reports it finished. Inside the job
the training function runs on the head with the job's own Ray cluster (KEEL_RAY_ADDRESS=auto), registers
the version with the run id as its idempotency key, and the step then finds that version in the registry:
no logs are parsed, and a re-run of the step re-attaches to its run's job instead of starting another.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keel.config import Settings
from keel.errors import KeelError
from keel.project import RayTrainingSpec

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
NAME_MAX = 47  # KubeRay refuses longer RayJob names: it derives its RayCluster's and Services' names from it
FINISHED = ("Complete", "Failed", "ValidationFailed")  # jobDeploymentStatus values after which nothing changes
RUN_ANNOTATION = "keel.dev/run-id"  # run ids ("manual__2026-12-03T10:00:00+00:00") are not label values


def job_name(model: str, run_id: str) -> str:
    """``keel-train-<model>-<hash of the run>``: one per run, DNS-1123, at most 47 characters."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-") or "model"
    return f"keel-train-{slug[:NAME_MAX - len('keel-train--') - len(digest)].rstrip('-')}-{digest}"


def load_template(settings: Settings) -> dict[str, Any]:
    path = settings.rayjob_template
    if path is None or not Path(path).is_file():
        raise KeelError(f"no RayJob template at {path} (KEEL_RAYJOB_TEMPLATE): the keel chart mounts it in "
                        "every DAG step pod")
    template = json.loads(Path(path).read_text())
    if template.get("kind") != "RayJob":
        raise KeelError(f"{path} is a {template.get('kind')!r}, not the chart's RayJob template")
    return template


def build(template: dict[str, Any], model: str, run_id: str, conf: dict[str, Any],
          ray: RayTrainingSpec) -> dict[str, Any]:
    """The run's RayJob: the template with this run's name, entrypoint, workers and their resources."""
    job = copy.deepcopy(template)
    meta = job.setdefault("metadata", {})
    meta["name"] = job_name(model, run_id)
    meta.setdefault("labels", {}).update({"keel.dev/model": model, "keel.dev/step": "train"})
    meta.setdefault("annotations", {})[RUN_ANNOTATION] = run_id
    spec = job["spec"]
    spec["entrypoint"] = shlex.join(["python", "-m", "keel.retrain", "train", "--model", model, "--run-id", run_id,
                                     "--conf", json.dumps(conf, sort_keys=True)])
    cluster = spec["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    if len(groups) != 1:
        raise KeelError(f"the RayJob template has {len(groups)} worker groups; keel fills in exactly one")
    group = groups[0]
    group["replicas"] = group["minReplicas"] = group["maxReplicas"] = ray.workers
    amounts = {"cpu": ray.cpu, "memory": ray.memory}
    limits = {**amounts, **({"nvidia.com/gpu": str(ray.gpus)} if ray.gpus else {})}
    workers_env = {"name": "KEEL_TRAIN_WORKERS", "value": str(ray.workers)}
    for pod in (cluster["headGroupSpec"]["template"], group["template"]):
        for c in pod["spec"]["containers"]:
            c["env"] = [e for e in c.get("env", []) if e["name"] != workers_env["name"]] + [workers_env]
    worker = group["template"]["spec"]["containers"][0]
    worker["resources"] = {"requests": dict(amounts), "limits": limits}
    # Ray counts what the pod may use, not what the node has
    group["rayStartParams"] = {**group.get("rayStartParams", {}), "num-gpus": str(ray.gpus)}
    return job


def _state(job: dict[str, Any]) -> tuple[str, str, str]:
    status = job.get("status") or {}
    return (status.get("jobDeploymentStatus") or "", status.get("jobStatus") or "",
            status.get("message") or status.get("reason") or "")


class RayJobs:
    """The RayJobs of one namespace through the API server (the chart's pipeline ServiceAccount may
    create, get and delete them there)."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        from kubernetes import client as k8s

        from keel.serving.kube import api_client

        if not settings.namespace:
            raise KeelError("KEEL_NAMESPACE is not set: the namespace to run the RayJob in")
        self.namespace = settings.namespace
        self.api = k8s.CustomObjectsApi(client or api_client(settings))

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job)

    def delete(self, name: str, wait_s: float = 120.0) -> None:
        """Delete and wait until it is gone (KubeRay's finalizer stops the Ray job first; its RayCluster,
        owned by it, is removed by the garbage collector after)."""
        from kubernetes.client.rest import ApiException

        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                     propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
        deadline = time.monotonic() + wait_s
        while self.get(name) is not None:
            if time.monotonic() > deadline:
                raise KeelError(f"RayJob {self.namespace}/{name} is still being deleted after {wait_s:.0f} s")
            time.sleep(1.0)


def submit(settings: Settings, model: str, run_id: str, conf: dict[str, Any], ray: RayTrainingSpec, *,
           jobs: RayJobs | None = None, poll_s: float = 5.0, timeout_s: float | None = None,
           on_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Create the run's RayJob (or re-attach to it; a failed one is replaced: a retry means run again) and
    wait until it finishes. Returns its name and final status; a failed job raises with KubeRay's message."""
    from kubernetes.client.rest import ApiException

    jobs = jobs or RayJobs(settings)
    job = build(load_template(settings), model, run_id, conf, ray)
    name = job["metadata"]["name"]
    where = f"RayJob {jobs.namespace}/{name} ({model}, run {run_id})"
    current = jobs.get(name)
    if current is not None:
        deployment, status, _ = _state(current)
        if deployment in FINISHED and status != "SUCCEEDED":
            jobs.delete(name)
            current = None
    if current is None:
        try:
            jobs.create(job)
        except ApiException as exc:
            if exc.status == 409:  # another try of this step created it meanwhile: follow that one
                pass
            else:
                raise KeelError(f"{where} was refused by the API server ({exc.status}): "
                                f"{_api_message(exc)}") from None
    timeout_s = settings.rayjob_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        current = jobs.get(name)
        if current is None:
            raise KeelError(f"{where} was deleted while the train step waited for it")
        deployment, status, message = _state(current)
        if (deployment, status) != seen:
            seen = (deployment, status)
            if on_status:
                on_status(f"{where}: {deployment or 'New'} / {status or '-'}")
        if deployment in FINISHED:
            if status == "SUCCEEDED":
                return {"ray_job": name, "job_status": status}
            raise KeelError(f"{where} ended {deployment} (Ray job {status or 'never started'}): "
                            f"{message or 'no message from KubeRay'}")
        if time.monotonic() > deadline:
            raise KeelError(f"{where} has not finished after {timeout_s:.0f} s "
                            f"(now {deployment or 'New'} / {status or '-'}); it is left running")
        time.sleep(poll_s)


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)
