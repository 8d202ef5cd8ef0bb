"""The cluster deploy targets (``kserve``, ``rayserve``) through the Kubernetes API: no kubectl.

The objects are the chart's own (``keel.serving.cluster.render``: one source of truth with ``helm
install``), with the version the alias points at *now* pinned in, so a deploy is a change the API server
records and a rollback is another one. They are applied server-side with keel's field manager (fields
another manager owns, e.g. a replica count an autoscaler sets, stay theirs unless keel sets them too),
then keel waits on the serving object's ``Ready`` condition, which the operator (KServe, KubeRay) sets.

The API client comes from ``KUBECONFIG``/``~/.kube/config``, or the pod's service account in a cluster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from keel.config import Settings
from keel.errors import KeelError
from keel.serving.cluster import MODEL_LABEL, RUNTIME_OF_TARGET, render
from keel.serving.deploy import Deployed, DeployTarget
from keel.serving.spec import ServeSpec

FIELD_MANAGER = "keel"
SERVING_KINDS = {"kserve": ("serving.kserve.io/v1beta1", "InferenceService"), "rayserve": ("ray.io/v1", "RayService")}
# every kind the chart renders for one model, in the order undeploy removes them (scalers first)
MODEL_KINDS = (("keda.sh/v1alpha1", "ScaledObject"), ("batch/v1", "CronJob"), *SERVING_KINDS.values())


def api_client(settings: Settings) -> Any:
    """The Kubernetes API client: in a pod its service account, else the kubeconfig."""
    from kubernetes import config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
            from kubernetes import client

            return client.ApiClient()
        # KUBECONFIG as it is now: the client library reads it once, at its import
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    except config.ConfigException as exc:
        raise KeelError(f"no Kubernetes API to deploy to: {exc} (set KUBECONFIG, or run in a pod)") from None


@dataclass(frozen=True)
class ObjectStatus:
    kind: str
    name: str
    ready: bool
    reason: str          # the Ready condition's message, or what is missing
    version: str | None  # the model version the object pins


class ClusterTarget(DeployTarget):
    """A model's InferenceService or RayService (and its scaler and drift CronJob) in the release's
    namespace (``settings.namespace``), named as the chart names them."""

    def __init__(self, settings: Settings, target: str, values_files: tuple[Any, ...] = (),
                 priority_class: str | None = None, client: Any = None) -> None:
        super().__init__(settings)
        if target not in SERVING_KINDS:
            raise KeelError(f"unknown cluster target '{target}'; valid choices: {', '.join(SERVING_KINDS)}")
        self.target, self.values_files, self.priority_class = target, values_files, priority_class
        self._client = client

    @property
    def dynamic(self) -> Any:
        from kubernetes.dynamic import DynamicClient

        if self._client is None:
            self._client = api_client(self.settings)
        return DynamicClient(self._client)

    def _resource(self, api_version: str, kind: str) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise KeelError(f"the cluster has no {kind} ({api_version}): install its operator's CRDs first "
                            "(`make cluster-prereqs`)") from None

    # -- deploy -----------------------------------------------------------------------------------
    def objects(self, spec: ServeSpec) -> list[dict[str, Any]]:
        return render(self.settings, spec, self.target, tuple(self.values_files), self.priority_class)

    def deploy(self, spec: ServeSpec, wait: bool = True) -> Deployed:
        """Pin the alias's version now (refusing an unservable one in seconds), apply, wait for Ready."""
        from keel.serving.plan import check_deployable

        if spec.runtime != RUNTIME_OF_TARGET[self.target]:
            spec = replace(spec, runtime=RUNTIME_OF_TARGET[self.target])
        version = spec.version
        if version is None:
            version, _ = check_deployable(self.settings, spec.model, spec.alias, None)
            spec = replace(spec, version=version)
        applied = self.apply(self.objects(spec))
        serving = next(d for d in applied if (d["apiVersion"], d["kind"]) == SERVING_KINDS[self.target])
        name = serving["metadata"]["name"]
        if wait:
            self.wait_ready(name)
        return Deployed(spec.model, str(version), f"{self.target}://{self.settings.namespace}/{name}", spec.runtime)

    def apply(self, docs: list[dict[str, Any]], dry_run: bool = False) -> list[dict[str, Any]]:
        """Server-side apply of each object, as keel's field manager; what the API server stored."""
        from kubernetes.client.exceptions import ApiException

        out = []
        for doc in docs:
            res = self._resource(doc["apiVersion"], doc["kind"])
            try:
                stored = self.dynamic.server_side_apply(res, body=doc, namespace=self.settings.namespace,
                                                        field_manager=FIELD_MANAGER, force_conflicts=True,
                                                        **({"dry_run": "All"} if dry_run else {}))
            except ApiException as exc:
                raise KeelError(f"the API server refused {doc['kind']} {doc['metadata']['name']}: "
                                f"{_reason(exc)}") from None
            out.append(stored.to_dict())
        return out

    def wait_ready(self, name: str, timeout_s: float | None = None) -> None:
        """Until the operator reports the object Ready for this generation; a clear error at the timeout."""
        timeout_s = self.settings.start_timeout if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        kind = SERVING_KINDS[self.target][1]
        state = ObjectStatus(kind, name, False, "not created", None)
        while time.monotonic() < deadline:
            state = self._status_of(self._get(name))
            if state.ready:
                return
            time.sleep(1.0)  # the operator's reconcile loop: seconds
        raise KeelError(f"{kind} {self.settings.namespace}/{name} is not Ready after {timeout_s:.0f} s: "
                        f"{state.reason}; see `kubectl -n {self.settings.namespace} describe {kind.lower()} {name}`")

    def _get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return self.dynamic.get(self._resource(*SERVING_KINDS[self.target]), name=name,
                                    namespace=self.settings.namespace).to_dict()
        except NotFoundError:
            return None

    def _status_of(self, obj: dict[str, Any] | None) -> ObjectStatus:
        kind = SERVING_KINDS[self.target][1]
        if obj is None:
            return ObjectStatus(kind, "?", False, "not found", None)
        meta, status = obj["metadata"], obj.get("status") or {}
        version = _pinned_version(obj)
        observed = status.get("observedGeneration")
        if observed is not None and observed < meta.get("generation", 0):
            return ObjectStatus(kind, meta["name"], False, "the operator has not seen this change yet", version)
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is None:
            return ObjectStatus(kind, meta["name"], False, "no Ready condition yet", version)
        ok = ready.get("status") == "True"
        return ObjectStatus(kind, meta["name"], ok, "" if ok else ready.get("message") or ready.get("reason") or "",
                            version)

    # -- rollouts -----------------------------------------------------------------------------------
    def name_of(self, model: str) -> str:
        """The model's object, as the chart names it (``keel.modelObject``)."""
        return f"{self.settings.prefix}-{model.replace('_', '-')}"

    def current(self, model: str) -> dict[str, Any] | None:
        """The ServeSpec the model's object runs now; None when the release does not serve it here."""
        obj = self._get(self.name_of(model))
        return serve_spec_of(obj) if obj is not None else None

    def pin(self, model: str, version: str, canary_alias: str | None = None, canary_weight: float = 0.0,
            wait: bool = True) -> None:
        """Patch the model's live object to serve ``version`` (with ``canary_alias`` taking ``canary_weight``
        of the traffic), keeping everything else the release set (resources, images, log URI), then wait
        until the operator reports the new generation Ready. Needs only get and patch (the controller's
        Role). A concurrent change makes the patch fail on its resourceVersion; it is re-read and retried."""
        from kubernetes.client.exceptions import ApiException

        name = self.name_of(model)
        res = self._resource(*SERVING_KINDS[self.target])
        for _ in range(5):
            obj = self._get(name)
            if obj is None:
                raise KeelError(f"model '{model}' is not deployed on {self.target} in namespace "
                                f"{self.settings.namespace} ({SERVING_KINDS[self.target][1]} {name})")
            spec = serve_spec_of(obj) or {}
            spec.update(version=str(version), canary_alias=canary_alias, canary_weight=canary_weight if canary_alias
                        else 0.0)
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "spec": _with_serve_spec(obj, spec)}
            try:
                self.dynamic.patch(res, name=name, namespace=self.settings.namespace, body=body,
                                   content_type="application/merge-patch+json", field_manager=FIELD_MANAGER)
                break
            except ApiException as exc:
                if exc.status != 409:
                    raise KeelError(f"the API server refused the patch of {name}: {_reason(exc)}") from None
        else:
            raise KeelError(f"{name} kept changing under keel's patch (5 conflicts); try again")
        if wait:
            self.wait_ready(name)

    def endpoint(self, model: str) -> str:
        """Where the model's server answers inside the cluster (smoke checks go through it)."""
        name = self.name_of(model)
        if self.settings.serving_endpoint:
            return self.settings.serving_endpoint.format(name=name, namespace=self.settings.namespace,
                                                         model=model).rstrip("/")
        if self.target == "kserve":
            return f"http://{name}-predictor.{self.settings.namespace}.svc.cluster.local"
        return f"http://{name}-serve-svc.{self.settings.namespace}.svc.cluster.local:8000"

    # -- status / undeploy ------------------------------------------------------------------------
    def status(self) -> list[ObjectStatus]:
        """Every model this release serves on this target, with its readiness."""
        res = self._resource(*SERVING_KINDS[self.target])
        found = self.dynamic.get(res, namespace=self.settings.namespace, label_selector=self._selector())
        return [self._status_of(o.to_dict()) for o in found.items]

    def undeploy(self, model: str) -> bool:
        from kubernetes.dynamic.exceptions import NotFoundError as KubeNotFound

        selector = self._selector(model)
        deleted = 0
        for api_version, kind in MODEL_KINDS:
            res = self._resource(api_version, kind)
            for obj in self.dynamic.get(res, namespace=self.settings.namespace, label_selector=selector).items:
                try:
                    self.dynamic.delete(res, name=obj.metadata.name, namespace=self.settings.namespace)
                    deleted += 1
                except KubeNotFound:
                    continue  # deleted meanwhile
        if not deleted:
            raise KeelError(f"model '{model}' is not deployed on {self.target} in namespace "
                            f"{self.settings.namespace} (release {self.settings.release})")
        return True

    def _selector(self, model: str | None = None) -> str:
        return f"app.kubernetes.io/instance={self.settings.release}," + (
            f"{MODEL_LABEL}={model}" if model else MODEL_LABEL)


def serve_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ServeSpec an object runs: the KServe container's ``--spec`` argument, or the Ray Serve
    application's ``args`` in ``serveConfigV2``."""
    import json

    import yaml

    spec = obj.get("spec") or {}
    if obj.get("kind") == "RayService":
        apps = (yaml.safe_load(spec.get("serveConfigV2") or "{}") or {}).get("applications") or []
        return apps[0].get("args") if apps else None
    for c in (spec.get("predictor") or {}).get("containers") or []:
        args = c.get("args") or []
        if "--spec" in args[:-1]:
            return json.loads(args[args.index("--spec") + 1])
    return None


def _with_serve_spec(obj: dict[str, Any], serve: dict[str, Any]) -> dict[str, Any]:
    """A copy of the object's spec with ``serve`` as its ServeSpec (where ``serve_spec_of`` reads it)."""
    import copy
    import json

    import yaml

    spec = copy.deepcopy(obj.get("spec") or {})
    if obj.get("kind") == "RayService":
        config = yaml.safe_load(spec.get("serveConfigV2") or "{}") or {}
        config["applications"][0]["args"] = serve
        spec["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
        return spec
    for c in spec["predictor"]["containers"]:
        args = c.get("args") or []
        if "--spec" in args[:-1]:
            args[args.index("--spec") + 1] = json.dumps(serve)
    return spec


def _pinned_version(obj: dict[str, Any]) -> str | None:
    spec = serve_spec_of(obj)
    return str(spec["version"]) if spec and spec.get("version") is not None else None


def _reason(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message"))
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"
