"""Deploy targets behind one small interface, selected by name (Feast-online-store style).

``local`` runs a serving process under the local stack's supervisor, so it joins `keel up/down/status`.
The cluster targets (``kserve``, ``rayserve``) live in ``keel.serving.kube``: the Helm chart's own
templates (``keel.serving.cluster``), applied through the Kubernetes API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from keel.config import Settings
from keel.errors import KeelError, NotFoundError, ServiceUnavailableError
from keel.serving.spec import ServeSpec
from keel.stack.services import DEPLOYMENT_PREFIX

TARGETS = ("local",)
# a model served under /<name> on the shared Ray cluster's proxy: a name that is one URL path segment as is
PATH_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Deployed:
    model: str
    version: str
    url: str
    runtime: str


class DeployTarget(ABC):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def deploy(self, spec: ServeSpec) -> Deployed: ...

    @abstractmethod
    def undeploy(self, model: str) -> bool: ...


class LocalTarget(DeployTarget):
    def _path(self, model: str) -> Any:
        return self.settings.home / "deployments" / f"{model}.json"

    def specs(self) -> dict[str, ServeSpec]:
        d = self.settings.home / "deployments"
        return {p.stem: ServeSpec.from_json(p.read_text()) for p in sorted(d.glob("*.json"))}

    def placed(self, spec: ServeSpec) -> ServeSpec:
        """Where a spec runs: a Ray runtime model goes onto the shared Ray cluster when one is configured
        (KEEL_RAY_WORKERS or KEEL_RAY_ADDRESS), as an application of its one Serve instance: Ray allows one
        HTTP proxy per cluster, so models share its port and each answers under /<model>."""
        if spec.runtime != "ray" or not self.settings.ray_cluster:
            return replace(spec, route_prefix="") if spec.route_prefix else spec
        if not PATH_SAFE.fullmatch(spec.model):
            raise KeelError(f"model name '{spec.model}' cannot be served on the shared Ray cluster: it answers "
                            "under /<model>, so the name must be letters, digits, '_', '.' or '-'")
        from keel.config import ray_host_port
        from keel.infra.probes import port_in_use

        address = self.settings.ray_cluster
        host, port = ray_host_port(address)
        if port.isdigit() and not port_in_use(host, int(port)):  # refused in seconds, not after a crash loop
            hint = "start it with `keel up`" if not self.settings.ray_address else "check KEEL_RAY_ADDRESS"
            raise ServiceUnavailableError("the Ray cluster", address, hint)
        return replace(spec, port=self.settings.ray_serve_port, route_prefix=f"/{spec.model}")

    def deploy(self, spec: ServeSpec) -> Deployed:
        from keel.serving.plan import check_deployable
        from keel.stack import Stack

        spec = self.placed(spec)
        # fail fast, with the valid choices, before starting anything: an unservable version is refused
        # here in seconds (MLflow's REST API, no `import mlflow`), never by a crash loop or a hang
        version, plan = check_deployable(self.settings, spec.model, spec.alias, spec.version, spec.feature_service)
        for other in (spec.canary_alias, spec.shadow_alias):
            if other:
                check_deployable(self.settings, spec.model, other, None, spec.feature_service)
        if plan.feature_service and spec.feature_service:
            _check_feature_service(self.settings, plan.feature_service, plan.features, spec.model, version)
        if spec.fallback:
            _check_fallback(self.settings, spec, version, plan)
        if spec.canary_alias and spec.sticky and spec.sticky_key:
            carried = _request_inputs(self.settings, plan)
            if spec.sticky_key not in carried:
                raise KeelError(f"sticky key '{spec.sticky_key}' is not a field of requests to {spec.model} v{version};"
                                f" valid choices: {', '.join(sorted(carried)) or '(none)'}")
        for w in plan.warnings:
            logging.getLogger("keel.serving").warning(w)
        for name, existing in self.specs().items():
            if name != spec.model and existing.port == spec.port and not (existing.route_prefix and spec.route_prefix):
                raise KeelError(f"port {spec.port} is already used by the deployment of '{name}'; choose --port")
        path = self._path(spec.model)
        stack = Stack(self.settings)
        stack.stop(DEPLOYMENT_PREFIX + spec.model)  # redeploy: the pinned version changes only here
        previous = path.read_text() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec.to_json())
        try:
            Stack(self.settings).up([DEPLOYMENT_PREFIX + spec.model])
        except KeelError:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(previous)
            raise
        self._scrape_target(spec)
        return Deployed(spec.model, version, spec.base_url(self.settings), spec.runtime)

    def _scrape_target(self, spec: ServeSpec | None, model: str = "") -> None:
        """Tell the local Prometheus (file_sd) to scrape this deployment's /metrics."""
        d = self.settings.home / "prometheus" / "targets"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{DEPLOYMENT_PREFIX}{spec.model if spec else model}.json"
        if spec is None:
            path.unlink(missing_ok=True)
            return
        labels = {"deployment": spec.model, "runtime": spec.runtime}
        if spec.route_prefix:  # through the shared proxy, to one of the model's replicas
            labels["__metrics_path__"] = f"{spec.route_prefix}/metrics"
        host = self.settings.ray_serve_host if spec.route_prefix else self.settings.host
        path.write_text(json.dumps([{"targets": [f"{host}:{spec.port}"], "labels": labels}]))

    def undeploy(self, model: str) -> bool:
        from keel.stack import Stack

        path = self._path(model)
        if not path.exists():
            raise NotFoundError("deployment", model, self.specs())
        Stack(self.settings).stop(DEPLOYMENT_PREFIX + model)
        path.unlink()
        self._scrape_target(None, model)
        return True


def free_port(settings: Settings, target: LocalTarget, model: str) -> int:
    """The model's current port when it is deployed, else the first port from KEEL_SERVING_PORT that no
    other local deployment (nor the shared Ray cluster's Serve proxy) uses: models are served side by side."""
    specs = target.specs()
    if model in specs and not specs[model].route_prefix:
        return specs[model].port
    taken = {sp.port for sp in specs.values()} | ({settings.ray_serve_port} if settings.ray_cluster else set())
    return next(p for p in range(settings.serving_port, settings.serving_port + 100) if p not in taken)


def _check_feature_service(settings: Settings, name: str, features: list[str], model: str, version: str) -> None:
    """--feature-service for a model registered without keel: the service must exist and serve every
    input the model's signature names, each of a type keel serves."""
    from keel.features.store import feature_service, open_store, service_views
    from keel.features.training import SERVABLE_TYPES
    from keel.serving.plan import refuse_unservable

    store = open_store(settings)
    svc = feature_service(store, name)
    _, odfvs = service_views(store, svc)
    served = {f.name for p in svc.feature_view_projections for f in p.features}
    served |= {f.name for od in odfvs for src in od.source_request_sources.values() for f in src.schema}
    missing = [f for f in features if f not in served]
    if missing:
        raise KeelError(f"feature service '{name}' does not serve the model's input(s) {', '.join(missing)}; "
                        f"it serves: {', '.join(sorted(served))}")
    odd = [f"{f.name}:{f.dtype}" for p in svc.feature_view_projections for f in p.features
           if f.name in features and str(f.dtype) not in SERVABLE_TYPES]
    refuse_unservable(model, version, ",".join(odd), name)


def _check_fallback(settings: Settings, spec: ServeSpec, version: str, plan: Any) -> None:
    """The fallback version exists, is another version, answers the same task and needs only inputs that
    requests to the served version carry: refused here, before a server starts, with what was expected."""
    from keel.serving.plan import check_deployable

    fallback = spec.fallback or ""
    by_version = fallback.isdigit()
    fb_version, fb_plan = check_deployable(settings, spec.model, None if by_version else fallback,
                                           fallback if by_version else None)
    if fb_version == version:
        raise KeelError(f"fallback '{fallback}' is v{version}, the version being served; expected a simpler "
                        "version of the model (fewer or no online features)")
    if plan.task and fb_plan.task and plan.task != fb_plan.task:
        raise KeelError(f"fallback '{fallback}' (v{fb_version}) is a {fb_plan.task} model; expected the task of "
                        f"v{version}: {plan.task}")
    have, need = _request_inputs(settings, plan), _request_inputs(settings, fb_plan)
    extra = sorted(need - have)
    if extra:
        raise KeelError(f"fallback '{fallback}' (v{fb_version}) needs input(s) {', '.join(extra)} that requests to "
                        f"v{version} do not carry; expected a version whose inputs are among: "
                        f"{', '.join(sorted(have)) or '(none)'}")


def _request_inputs(settings: Settings, plan: Any) -> set[str]:
    """What a request to a version carries: its feature service's entity keys and request fields, or the
    raw inputs its signature names."""
    if not plan.feature_service:
        return set(plan.inputs)
    from keel.features.store import feature_service, open_store, service_views

    store = open_store(settings)
    fvs, odfvs = service_views(store, feature_service(store, plan.feature_service))
    return ({jk for fv in fvs for jk in fv.join_keys}
            | {f.name for od in odfvs for src in od.source_request_sources.values() for f in src.schema})


def target(settings: Settings, name: str) -> DeployTarget:
    if name == "local":
        return LocalTarget(settings)
    if name in ("kserve", "rayserve"):
        from keel.serving.kube import ClusterTarget

        return ClusterTarget(settings, name)
    raise NotFoundError("deploy target", name, [*TARGETS, "kserve", "rayserve"])


KIND_OF_V2 = {"INT64": "int", "INT32": "int", "FP64": "float", "FP32": "float", "BYTES": "str", "BOOL": "bool"}


def input_kinds(settings: Settings, model: str) -> dict[str, str]:
    """Each input's kind from a local deployment's V2 metadata; empty when it has none (Ray runtime)."""
    specs = LocalTarget(settings).specs()
    if model not in specs:
        raise NotFoundError("deployment", model, specs)
    url = f"{specs[model].base_url(settings)}/v2/models/{model}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # loopback URL we built
            meta = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {i["name"]: KIND_OF_V2.get(i.get("datatype", ""), "float") for i in meta.get("inputs", [])}


def predict_local(settings: Settings, model: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """POST to a local deployment; a 4xx comes back as a KeelError carrying the server's message."""
    local = LocalTarget(settings)
    specs = local.specs()
    if model not in specs:
        raise NotFoundError("deployment", model, specs)
    return predict_at(specs[model].base_url(settings), model, instances)


def predict_at(base: str, model: str, instances: list[dict[str, Any]],
               hint: str = "start it with `keel up`") -> dict[str, Any]:
    """POST instances to a model server's V1 endpoint under ``base``; a 4xx is a KeelError carrying the
    server's message, an unreachable server a ServiceUnavailableError."""
    url = f"{base}/v1/models/{model}:predict"
    req = urllib.request.Request(url, data=json.dumps({"instances": instances}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # loopback URL we built
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(body).get("error", body)
        raise KeelError(f"{model} answered {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError):
        raise ServiceUnavailableError(f"deployment '{model}'", url, hint) from None
