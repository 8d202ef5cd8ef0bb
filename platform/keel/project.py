"""The project spec (``keel.yaml``): a team's contract with the platform.

One typed file at a project's root names the Feast repo and, per model, its feature service, label and
labelled events, task, training entry point, gate, rollout, serving and drift settings. The CLI, the
retraining DAGs (one per model), the drift job and the chart's per-model values all read this file, so
platform code never names a domain concept.

Found through ``KEEL_PROJECT`` (the file, or a directory holding it), else ``keel.yaml`` in the working
directory or one of its parents (as git finds its repository). Relative paths in it resolve from the
file's directory, never from the working directory. ``${VAR}`` in a path expands from the environment,
with ``KEEL_HOME`` always set to keel's state directory.
"""

from __future__ import annotations

import importlib
import os
import string
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keel.errors import KeelError, NotFoundError

FILENAME = "keel.yaml"
PROJECT_ENV = "KEEL_PROJECT"
Task = Literal["binary", "multiclass", "regression"]
Runtime = Literal["kserve", "ray"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateSpec(_Strict):
    """The promotion gate: the challenger may be worse than the champion by at most ``tolerance`` on
    ``metric`` (default: the task's), measured on the same holdout rows. Direction comes from the metric
    (lower is better for rmse, mae, log_loss) unless ``greater_is_better`` says otherwise."""

    metric: str | None = None
    tolerance: float = Field(0.0, ge=0.0)
    greater_is_better: bool | None = None
    # also require the A/B test on real outcomes (the challenger as a sticky canary beside the champion): the
    # challenger at worst ``tolerance`` behind at the pessimistic end of the interval (keel.monitoring.ab)
    ab: bool = False


class RolloutSpec(_Strict):
    """``canary_percent`` of the traffic goes to the new version. With ``sticky`` the split is by a hash
    of the request's entity key (``sticky_key``, default the first entity key of the feature service):
    the same entity always meets the same variant, which is what makes an A/B comparison on outcomes
    mean something. Unsticky, each request is a coin flip."""

    canary_percent: float = Field(10.0, ge=0.0, le=100.0)
    smoke_requests: int = Field(20, ge=1, le=1000)
    sticky: bool = True
    sticky_key: str | None = Field(None, min_length=1)


class ServingSpec(_Strict):
    runtime: Runtime = "kserve"
    max_batch: int = Field(1000, ge=1)
    # hot-entity feature cache: fresh for cache_ttl_s (0: off), cache_size entities at most, and the last
    # known values served (flagged degraded) up to cache_stale_s old while the online store fails
    cache_ttl_s: float = Field(1.0, ge=0.0, le=3600.0)
    cache_size: int = Field(10_000, ge=1, le=10_000_000)
    cache_stale_s: float = Field(300.0, ge=0.0, le=86_400.0)
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: float = Field(0.0, ge=0.0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    # Ray runtime batching: requests one model call takes at most, and how long a batch waits for more once
    # its first request is there (0: only what queued while the batch slots were busy; no wait at low load)
    batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_ms: float = Field(0.0, ge=0.0, le=1000.0)
    # load shedding (keel.serving.shed): prediction requests one replica holds at once, 503 past it
    max_inflight: int = Field(32, ge=1, le=100_000)
    # priority class (the X-Keel-Priority header's value) -> the share of max_inflight it may fill
    priorities: dict[str, float] = Field(default_factory=dict)
    # a simpler version of the same model (alias or version number) for rows whose features had to be
    # defaulted (online store down, breaker open, features missing); the training medians stay the last resort
    fallback: str | None = Field(None, min_length=1, pattern=r"^\S+$")

    @field_validator("priorities")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 < v <= 1.0 or not k.strip()}
        if bad:
            raise ValueError(f"priorities {bad}: each class needs a name and a share of max_inflight in (0, 1]")
        return value


CPU = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"
MEMORY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"


class RayTrainingSpec(_Strict):
    """The train step as a KubeRay RayJob (on a cluster): a Ray cluster of its own, ``workers`` worker
    pods of these resources each, created for the run and removed after it. The training function
    reaches it through keel.train_ray (KEEL_RAY_ADDRESS=auto there); ``KEEL_TRAIN_WORKERS`` tells it how
    many workers there are."""

    workers: int = Field(2, ge=1, le=64)
    cpu: str = Field("2", pattern=CPU)
    memory: str = Field("4Gi", pattern=MEMORY)
    gpus: int = Field(0, ge=0)


class TrainingSpec(_Strict):
    """Resources of the model's train step where it runs as a pod (a DAG with executor: kubernetes);
    unset values keep the chart's airflow.pipelines.resources. Written in Kubernetes quantities, checked
    here so that a typo fails when the spec loads, not when the API server refuses the pod. With ``ray``
    the step's pod only submits a RayJob and waits: the resources are the Ray workers', per worker."""

    cpu: str | None = Field(None, pattern=CPU)
    memory: str | None = Field(None, pattern=MEMORY)
    gpus: int = Field(0, ge=0)
    ray: RayTrainingSpec | None = None
    # where training rows come from: the labelled events joined point-in-time (labels), the served rows that
    # got an outcome, with the features as they were served (feedback: keel.features.feedback_set), or both
    source: Literal["labels", "feedback", "both"] = "labels"
    feedback_window: str = Field("30d", pattern=r"^[0-9]+[smhd]$")

    @model_validator(mode="after")
    def _one_place_for_resources(self) -> TrainingSpec:
        if self.ray is not None and (self.cpu or self.memory or self.gpus):
            raise ValueError("with training.ray, give cpu, memory and gpus per worker under training.ray, "
                             "not beside it (the step's own pod only submits the RayJob)")
        return self


class DriftSpec(_Strict):
    window: str = "1h"
    sample_size: int = Field(50_000, ge=100)
    schedule: str | None = None


class PerformanceSpec(_Strict):
    """The performance job: real outcomes (``keel feedback``) joined to the prediction log.

    ``window``: how far back predictions are scored; ``min_labels``: below this many labelled rows the
    metrics are pushed but no decay verdict is; ``decay_tolerance``: how far the live gate metric may fall
    behind the version's holdout baseline (absolute, direction-aware) before KeelModelPerformanceDecay;
    ``threshold``: the serving threshold for precision/recall of a binary model; ``match_tolerance_s``:
    an outcome given by entity key and event time belongs to that entity's prediction nearest in time,
    at most this far apart."""

    window: str = "7d"
    schedule: str | None = None
    min_labels: int = Field(100, ge=1)
    decay_tolerance: float = Field(0.05, ge=0.0)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    match_tolerance_s: float = Field(300.0, gt=0.0, le=30 * 86_400.0)


class CardSpec(_Strict):
    """What a model card says beyond what the registry knows: the intended use, in the team's words,
    and a column of the holdout to break its metrics down by (``slice``)."""

    intended_use: str | None = None
    slice: str | None = Field(None, min_length=1)


class BatchScoreSpec(_Strict):
    """A scheduled batch-scoring job (DAG ``keel_batch_score__<model>``): ``entities`` scored with
    ``alias``, written to ``out``, where ``{date}`` is the run's logical date (YYYY-MM-DD)."""

    entities: str
    out: str
    alias: str = "champion"
    schedule: str | None = None
    chunk_rows: int = Field(50_000, ge=1)

    @field_validator("out")
    @classmethod
    def _format(cls, v: str) -> str:
        if not v.endswith((".parquet", ".csv")):
            raise ValueError(f"'{v}': expected a path ending in .parquet or .csv")
        return v


class ModelSpec(_Strict):
    """One model of the project. ``labels`` is a parquet/CSV path (relative to the spec) or URI."""

    name: str = ""
    feature_service: str
    label: str
    labels: str
    task: Task
    train: str
    params: dict[str, Any] = Field(default_factory=dict)
    timestamp: str = "event_timestamp"
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    gate: GateSpec = GateSpec()
    rollout: RolloutSpec = RolloutSpec()
    serving: ServingSpec = ServingSpec()
    training: TrainingSpec = TrainingSpec()
    drift: DriftSpec = DriftSpec()
    performance: PerformanceSpec = PerformanceSpec()
    card: CardSpec = CardSpec()
    retrain_schedule: str | None = None
    batch_score: BatchScoreSpec | None = None

    @field_validator("train")
    @classmethod
    def _entry_point(cls, v: str) -> str:
        return str(_check_entry(v))

    @model_validator(mode="after")
    def _gate_metric(self) -> ModelSpec:
        from keel.registry import metrics as tasks

        metric = self.gate.metric or tasks.DEFAULT_METRIC[self.task]
        valid = tasks.METRICS[self.task]
        if metric not in valid:
            raise ValueError(f"gate metric {metric!r} does not apply to task {self.task!r}; "
                             f"valid metrics: {', '.join(valid)}")
        return self

    @property
    def gate_metric(self) -> str:
        from keel.registry import metrics as tasks

        return self.gate.metric or tasks.DEFAULT_METRIC[self.task]


def _check_entry(v: str | None) -> str | None:
    if v is None:
        return v
    module, sep, fn = v.partition(":")
    if not sep or not module or not fn.isidentifier():
        raise ValueError(f"expected 'module:function', got {v!r}")
    return v


class DataSpec(_Strict):
    """``generate``: the project's data hook, ``f(out_dir, rows=, seed=, drift=, end=) -> {table: path}``,
    for `keel data generate` and the demo (projects with their own data leave it out)."""

    generate: str | None = None

    @field_validator("generate")
    @classmethod
    def _entry_point(cls, v: str | None) -> str | None:
        return _check_entry(v)


class DemoSpec(_Strict):
    """What `make demo` runs: which model, how many rows, and the drift it injects into replayed traffic."""

    model: str | None = None
    rows: int = Field(100_000, ge=1000)
    drift: dict[str, float] = Field(default_factory=dict)


class AirflowSpec(_Strict):
    """How the project's DAGs run: tasks in keel's venv (local) or as pods (kubernetes)."""

    executor: Literal["local", "kubernetes"] = "local"
    materialize_schedule: str | None = "*/30 * * * *"


class ProjectSpec(_Strict):
    name: str = "keel"
    feature_repo: Path = Path("feature_repo")
    data: DataSpec = DataSpec()
    airflow: AirflowSpec = AirflowSpec()
    demo: DemoSpec = DemoSpec()
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    path: Path = Path(FILENAME)  # the file itself (set by the loader)

    @property
    def root(self) -> Path:
        return self.path.parent

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise NotFoundError("model", name, self.models, of=f"project {self.path}")
        return self.models[name]

    def resolve(self, value: str | Path, home: Path | None = None) -> str:
        """A path from the spec, ``${VAR}`` expanded and made absolute from the spec's directory; a URI
        (``s3://``, ``gs://``, ...) is returned expanded but otherwise as written."""
        env = {**os.environ, **({"KEEL_HOME": str(home)} if home else {})}
        text = string.Template(str(value)).safe_substitute(env)
        if "://" in text and not text.startswith("file://"):
            return text
        p = Path(text.removeprefix("file://")).expanduser()
        return str(p if p.is_absolute() else (self.root / p).resolve())

    def chart_models(self) -> list[dict[str, Any]]:
        """The Helm chart's ``models:`` entries for every model of the spec (``keel chart-values``), so
        the cluster serves and watches exactly what the spec names."""
        out = []
        for name, m in self.models.items():
            entry: dict[str, Any] = {"name": name, "runtime": m.serving.runtime, "alias": "champion",
                                     "minReplicas": m.serving.min_replicas, "maxReplicas": m.serving.max_replicas,
                                     "drift": {"window": m.drift.window,
                                               **({"schedule": m.drift.schedule} if m.drift.schedule else {})},
                                     "performance": {"window": m.performance.window,
                                                     **({"schedule": m.performance.schedule}
                                                        if m.performance.schedule else {})}}
            if m.serving.gpus and m.serving.runtime == "ray":
                entry["numGpus"] = m.serving.gpus
            elif m.serving.gpus:
                entry["gpu"] = {"enabled": True, "count": max(1, int(m.serving.gpus))}
            out.append(entry)
        return out

    def entry_point(self, model: str) -> Any:
        """The model's training function, imported with the project's directory on ``sys.path``."""
        return self.load_entry(self.model(model).train, f"models.{model}.train")

    def load_entry(self, spec: str, key: str) -> Any:
        module, _, fn = spec.partition(":")
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            return getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as exc:
            raise KeelError(f"{self.path}: {key}: entry point '{spec}' cannot be loaded "
                            f"({type(exc).__name__}: {exc})") from None


def find(start: Path | None = None) -> Path | None:
    """The spec file: ``KEEL_PROJECT`` (file or directory), else the nearest ``keel.yaml`` upwards."""
    env = os.environ.get(PROJECT_ENV)
    if env:
        p = Path(env).expanduser().resolve()
        p = p / FILENAME if p.is_dir() else p
        if not p.is_file():
            raise KeelError(f"{PROJECT_ENV}={env}: no project spec there (expected a {FILENAME} file or a "
                            "directory holding one)")
        return p
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / FILENAME).is_file():
            return d / FILENAME
    return None


def _describe(path: Path, err: dict[str, Any]) -> str:
    loc = ".".join(str(x) for x in err.get("loc", ()))
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        fields = _fields_at(parent)
        return f"{path}: unknown key '{loc}'" + (f"; valid keys: {', '.join(fields)}" if fields else "")
    if err["type"] == "missing":
        return f"{path}: missing key '{loc}'"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = "expected one of " + err["ctx"]["expected"]
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{path}: {loc}: {msg}{shown}" if loc else f"{path}: {msg}"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = ProjectSpec
    for part in loc:
        if model is ProjectSpec and part == "models":
            model = dict
            continue
        if model is dict:
            model = ModelSpec
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    return sorted(k for k in fields if k not in ("name", "path")) if fields else []


def load(path: Path | str | None = None) -> ProjectSpec:
    """Read and validate a spec; every error names the file and the key."""
    p = Path(path).expanduser().resolve() if path else find()
    if p is not None and p.is_dir():
        p = p / FILENAME
    if p is None:
        raise KeelError(f"no project spec: no {FILENAME} in {Path.cwd()} or its parents, and {PROJECT_ENV} is "
                        f"not set (see the examples/ folder)")
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise KeelError(f"project spec {p}: file not found (set {PROJECT_ENV} to a {FILENAME} or its directory)") \
            from None
    except yaml.YAMLError as exc:
        raise KeelError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise KeelError(f"{p}: expected a mapping with keys name, feature_repo, models")
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise KeelError(f"{p}: models: expected a mapping of model name to its settings")
    raw["models"] = {str(k): {**(v or {}), "name": str(k)} if isinstance(v, dict) or v is None else v
                     for k, v in models.items()}
    try:
        spec = ProjectSpec(**{**raw, "path": p})
    except ValidationError as exc:
        raise KeelError("; ".join(_describe(p, e) for e in exc.errors())) from None
    repo = Path(spec.resolve(spec.feature_repo))
    if not (repo / "feature_store.yaml").is_file():
        raise KeelError(f"{p}: feature_repo: no feature_store.yaml in {repo}")
    return spec.model_copy(update={"feature_repo": repo})
