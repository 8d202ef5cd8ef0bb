"""Cluster deploy targets (``kserve``, ``rayserve``): the Helm chart's own templates, rendered for one model.

The SDK does not keep a second copy of the chart's objects: it runs ``helm template`` on ``charts/keel``
with that model as the only entry of ``models`` and keeps the objects labelled with it, so
``keel deploy --target kserve`` and ``helm install`` cannot drift apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from keel.config import PROJECT_ROOT, Settings
from keel.errors import KeelError

CHART = PROJECT_ROOT / "charts" / "keel"
RUNTIME_OF_TARGET = {"kserve": "kserve", "rayserve": "ray"}
MODEL_LABEL = "keel.dev/model"


def model_values(spec: Any, target: str, priority_class: str | None = None) -> dict[str, Any]:
    """The chart's ``models[]`` entry for a ServeSpec."""
    if spec.shadow_alias:
        raise KeelError(f"--shadow is served by the local target only; target '{target}' supports --canary")
    entry: dict[str, Any] = {"name": spec.model, "runtime": RUNTIME_OF_TARGET[target], "alias": spec.alias,
                             "minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas}
    if target == "kserve" and spec.min_replicas == 0:
        entry["serverless"] = True  # scale to zero on KServe is its Serverless mode (Knative holds requests)
    if spec.version:
        entry["version"] = str(spec.version)
    if priority_class:
        entry["priorityClassName"] = priority_class
    if spec.canary_alias:
        entry["canary"] = {"alias": spec.canary_alias, "percent": round(spec.canary_weight * 100, 6),
                           **({} if spec.sticky else {"sticky": False}),
                           **({"stickyKey": spec.sticky_key} if spec.sticky_key else {})}
    if target == "rayserve" and spec.num_gpus:
        entry["numGpus"] = spec.num_gpus
    elif target == "kserve" and spec.gpu:
        entry["gpu"] = {"enabled": True, "count": max(1, int(spec.num_gpus or 1))}
    return entry


def _helm() -> str:
    found = shutil.which("helm") or str(PROJECT_ROOT / ".keel" / "bin" / "helm")
    if not Path(found).exists():
        raise KeelError("helm is not installed; run `make setup` (it installs helm into .keel/bin)")
    return found


def render(settings: Settings, spec: Any, target: str, values_files: tuple[Path, ...] = (),
           priority_class: str | None = None) -> list[dict[str, Any]]:
    """The chart's objects for this one model, as the release ``settings.release`` in ``settings.namespace``
    would have them (``values_files``: the release's own values, so shared settings match)."""
    if target not in RUNTIME_OF_TARGET:
        raise KeelError(f"unknown cluster target '{target}'; valid choices: {', '.join(RUNTIME_OF_TARGET)}")
    for f in values_files:
        if not f.is_file():
            raise KeelError(f"--values {f}: no such file")
    with tempfile.TemporaryDirectory(prefix="keel-helm-") as tmp:
        model_file = Path(tmp) / "model.yaml"
        model_file.write_text(yaml.safe_dump({"models": [model_values(spec, target, priority_class)]}))
        env = {**os.environ, "HELM_CACHE_HOME": f"{tmp}/c", "HELM_CONFIG_HOME": f"{tmp}/g",
               "HELM_DATA_HOME": f"{tmp}/d"}
        args = [_helm(), "template", settings.release, str(CHART), "--namespace", settings.namespace]
        for f in (*values_files, model_file):  # the model last: it replaces any models[] in the release values
            args += ["-f", str(f)]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "symbolic link" not in ln]
        raise KeelError(f"helm template failed: {lines[-1] if lines else proc.returncode}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return [d for d in docs if d.get("metadata", {}).get("labels", {}).get(MODEL_LABEL) == spec.model]


def to_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)
