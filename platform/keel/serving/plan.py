"""How a registered version is served, decided before anything starts.

A version keel registered carries its feature service, features and task as tags: serving looks the
features up. A version registered without keel (plain ``mlflow.sklearn.log_model``) is served in
raw-feature mode: the request carries the inputs its MLflow signature names, typed as the signature
says; or, with ``--feature-service``, those inputs are looked up from that service instead. A version
that can be served neither way, or whose logged requirements the serving environment lacks, is refused
here, in seconds, with one line, before a server is started (and could crash-loop or hang).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from typing import Any

import yaml

from keel.errors import KeelError

log = logging.getLogger("keel.serving")

# MLflow ColSpec types -> request kinds
SIGNATURE_KINDS = {"double": "float", "float": "float", "long": "int", "integer": "int", "string": "str",
                   "boolean": "bool", "datetime": "str", "binary": "str"}
NATIVE = ("xgboost", "lightgbm", "sklearn", "pytorch")
# packages that name the same distribution differently in requirements files
ALIASES = {"sklearn": "scikit-learn"}


class ServeRefusedError(KeelError):
    """The version cannot be served as asked; the message says why and what would make it servable."""


@dataclass(frozen=True)
class ServePlan:
    keel: bool                          # registered by keel (lineage tags present)
    feature_service: str | None         # looked up from this service; None: raw-feature mode
    features: list[str]                 # the model's input columns, in order
    inputs: dict[str, str]              # raw mode: request field -> kind
    task: str | None                    # binary | multiclass | regression; None: infer from the model
    flavor: str
    warnings: list[str] = field(default_factory=list)

    def examples(self, registry: Any, v: Any, n: int = 20) -> Any:
        """A few holdout rows (keel versions) for warm-up and smoke traffic; None otherwise."""
        if not self.keel:
            return None
        try:
            return registry._holdout(v).head(n)
        except Exception as exc:  # an old version without a holdout still serves; it just warms less
            log.warning("no holdout rows for warm-up of v%s: %s", getattr(v, "version", "?"), exc)
            return None


def _flavors(mlmodel: str | None) -> dict[str, Any]:
    if not mlmodel:
        return {}
    data = yaml.safe_load(mlmodel) or {}
    return data if isinstance(data, dict) else {}


def _signature_inputs(mlmodel: dict[str, Any]) -> dict[str, str] | None:
    """Named, typed inputs of the MLmodel's signature; None when it has none or they are unnamed tensors."""
    import json

    sig = (mlmodel.get("signature") or {}).get("inputs")
    if not sig:
        return None
    cols = json.loads(sig) if isinstance(sig, str) else sig
    if not cols or any("name" not in c or c.get("type") == "tensor" for c in cols):
        return None
    return {c["name"]: SIGNATURE_KINDS.get(str(c.get("type")), "object") for c in cols}


def check_requirements(requirements: str | None, name: str, version: str) -> list[str]:
    """Refuse when a pinned requirement is not installed here; warn when its major version differs."""
    warnings = []
    for line in (requirements or "").splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(==|>=|~=|<=|<|>)?\s*([^;\s]*)", line)
        if not m or line.startswith("-"):
            continue
        pkg, op, want = ALIASES.get(m.group(1), m.group(1)), m.group(2), m.group(3)
        try:
            have = installed_version(pkg)
        except PackageNotFoundError:
            raise ServeRefusedError(
                f"model '{name}' v{version} needs '{line}' (its logged requirements), which is not installed "
                f"where keel serves; add it to the serving environment (pip install '{line}') and deploy again"
            ) from None
        if op == "==" and want and have.split(".")[0] != want.split(".")[0]:
            warnings.append(f"model '{name}' v{version} was logged with {pkg}=={want}; serving has {have}")
    return warnings


def build_plan(name: str, version: str, tags: dict[str, str], mlmodel_text: str | None,
               requirements: str | None, feature_service: str | None) -> ServePlan:
    keel_made = "keel.feature_service" in tags and "keel.features" in tags
    mlmodel = _flavors(mlmodel_text)
    flavor = tags.get("keel.flavor") or next((f for f in NATIVE if f in (mlmodel.get("flavors") or {})), "pyfunc")
    warnings = check_requirements(requirements, name, version)
    task = tags.get("keel.task") or ("binary" if keel_made else None)
    refuse_unservable(name, version, tags.get("keel.unservable_features", ""), tags.get("keel.feature_service"))
    if keel_made and not feature_service:
        return ServePlan(True, tags["keel.feature_service"], tags["keel.features"].split(","), {}, task, flavor,
                         warnings)
    inputs = _signature_inputs(mlmodel) if mlmodel_text is not None else None
    if feature_service:
        features = list(inputs) if inputs else (tags["keel.features"].split(",") if keel_made else [])
        if not features:
            raise ServeRefusedError(f"model '{name}' v{version} has no signature naming its inputs, so keel cannot "
                                    f"tell which features of '{feature_service}' it takes; log it with a "
                                    "signature (mlflow.models.infer_signature)")
        return ServePlan(keel_made, feature_service, features, {}, task, flavor, warnings)
    if mlmodel_text is not None and not inputs:
        raise ServeRefusedError(
            f"model '{name}' v{version} cannot be served: it was registered without keel and its MLflow "
            "signature names no inputs; log it with a signature (mlflow.models.infer_signature(X, y)) for "
            "raw-feature serving, or deploy with --feature-service NAME to look its inputs up")
    if inputs is None:
        raise ServeRefusedError(f"model '{name}' v{version} cannot be served: its MLmodel file is unreadable")
    return ServePlan(False, None, list(inputs), inputs, task, flavor, warnings)


def refuse_unservable(name: str, version: str, recorded: str, service: str | None) -> None:
    """A model that takes Map, Struct, Json or array features (recorded at registration as
    ``feature:Type,...``) is refused: keel's servers look up, validate and default scalar features only."""
    pairs = [p.rsplit(":", 1) for p in recorded.split(",") if ":" in p]
    if pairs:
        listed = ", ".join(f"'{f}' ({t})" for f, t in pairs)
        raise ServeRefusedError(
            f"model '{name}' v{version} cannot be served by keel: it takes non-scalar feature(s) {listed}; keel "
            "serves Int32/Int64/Float32/Float64/Bool/String/Bytes/UnixTimestamp features. Flatten them into "
            f"scalar features (or drop them) in feature service '{service or '?'}' and retrain")


def plan_for(registry: Any, v: Any, feature_service: str | None = None) -> ServePlan:
    """The plan for a loaded registry version (inside a serving process: MLflow is imported anyway)."""
    import mlflow

    keel_made = "keel.feature_service" in v.tags and "keel.features" in v.tags
    mlmodel_text = requirements = None
    if not keel_made or feature_service:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            mlmodel_text = Path(mlflow.artifacts.download_artifacts(f"{v.uri}/MLmodel", dst_path=tmp)).read_text()
    return build_plan(v.name, v.version, v.tags, mlmodel_text, requirements, feature_service)


def check_deployable(settings: Any, name: str, alias: str | None, version: str | None,
                     feature_service: str | None = None) -> tuple[str, ServePlan]:
    """(version, plan) for a deploy, through MLflow's REST API (no ``import mlflow``: seconds, not tens).
    Feature-service names are checked against the Feast registry by the caller that has it open."""
    from keel.registry.rest import RestRegistry

    rest = RestRegistry(settings.tracking_uri)
    v = rest.version(name, version, None if version else (alias or "champion"))
    keel_made = "keel.feature_service" in v.tags and "keel.features" in v.tags
    mlmodel = requirements = None
    if not keel_made or feature_service:
        mlmodel = rest.model_file(v, "MLmodel")
        requirements = rest.model_file(v, "requirements.txt")
        if mlmodel is None:
            return v.version, _plan_with_mlflow(settings, name, v.version, v.tags, feature_service)
    return v.version, build_plan(name, v.version, v.tags, mlmodel, requirements, feature_service)


def _plan_with_mlflow(settings: Any, name: str, version: str, tags: dict[str, str],
                      feature_service: str | None) -> ServePlan:
    """Artifacts outside MLflow's proxy (s3://, a local path): read them with MLflow itself."""
    import tempfile
    from pathlib import Path

    from keel.registry.client import Registry

    Registry(settings).client  # noqa: B018 - sets the tracking URI
    import mlflow

    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel = Path(mlflow.artifacts.download_artifacts(f"{uri}/MLmodel", dst_path=tmp)).read_text()
        try:
            req = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt", dst_path=tmp)).read_text()
        except Exception:
            req = None
    return build_plan(name, version, tags, mlmodel, req, feature_service)
