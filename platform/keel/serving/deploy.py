"""Deploy targets behind one small interface, selected by name (Feast-online-store style).

``local`` runs a serving process under the local stack's supervisor, so it joins `keel up/down/status`.
The cluster targets (``kserve``, ``rayserve``) live in ``keel.serving.cluster``: they render the Helm
chart's own templates.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from keel.config import Settings
from keel.errors import KeelError, NotFoundError, ServiceUnavailableError
from keel.serving.spec import ServeSpec
from keel.stack.services import DEPLOYMENT_PREFIX

TARGETS = ("local",)


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

    def deploy(self, spec: ServeSpec) -> Deployed:
        from keel.registry.client import Registry
        from keel.stack import Stack

        reg = Registry(self.settings)  # fail fast, with the valid choices, before starting anything
        v = reg.version(spec.model, spec.version) if spec.version else reg.resolve(spec.model, spec.alias)
        for other in (spec.canary_alias, spec.shadow_alias):
            if other:
                reg.resolve(spec.model, other)
        for name, existing in self.specs().items():
            if name != spec.model and existing.port == spec.port:
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
        return Deployed(spec.model, v.version, f"http://{self.settings.host}:{spec.port}", spec.runtime)

    def _scrape_target(self, spec: ServeSpec | None, model: str = "") -> None:
        """Tell the local Prometheus (file_sd) to scrape this deployment's /metrics."""
        d = self.settings.home / "prometheus" / "targets"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{DEPLOYMENT_PREFIX}{spec.model if spec else model}.json"
        if spec is None:
            path.unlink(missing_ok=True)
            return
        path.write_text(json.dumps([{"targets": [f"{self.settings.host}:{spec.port}"],
                                     "labels": {"deployment": spec.model, "runtime": spec.runtime}}]))

    def undeploy(self, model: str) -> bool:
        from keel.stack import Stack

        path = self._path(model)
        if not path.exists():
            raise NotFoundError("deployment", model, self.specs())
        Stack(self.settings).stop(DEPLOYMENT_PREFIX + model)
        path.unlink()
        self._scrape_target(None, model)
        return True


def target(settings: Settings, name: str) -> DeployTarget:
    if name == "local":
        return LocalTarget(settings)
    if name in ("kserve", "rayserve"):
        raise KeelError(f"target '{name}' deploys with `keel deploy --target {name}`; undeploy it with "
                        f"`helm`/`kubectl delete` (the objects carry the label keel.dev/model)")
    raise NotFoundError("deploy target", name, [*TARGETS, "kserve", "rayserve"])


def predict_local(settings: Settings, model: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """POST to a local deployment; a 4xx comes back as a KeelError carrying the server's message."""
    local = LocalTarget(settings)
    specs = local.specs()
    if model not in specs:
        raise NotFoundError("deployment", model, specs)
    url = f"http://{settings.host}:{specs[model].port}/v1/models/{model}:predict"
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
        raise ServiceUnavailableError(f"deployment '{model}'", url, "start it with `keel up`") from None
