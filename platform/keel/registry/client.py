"""keel's registry client: explicit names and versions in, MLflow underneath.

Aliases carry the meaning: ``challenger`` is the newest candidate, ``champion`` is what serves. The
champion's history lives in a registered-model tag (so rollback needs nothing but MLflow), and every
alias change is appended to the audit log.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.config import Settings
from keel.errors import GateRefusedError, KeelError, NotFoundError, ServiceUnavailableError, require
from keel.infra.probes import http_ok
from keel.registry import flavors
from keel.registry import metrics as m
from keel.registry.audit import AuditRecord

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from keel.features.training import TrainingSet

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "keel.champion_history"
STATS_ARTIFACT = "feature_stats.json"
TASK_TAG = "keel.task"
CLASSES_TAG = "keel.classes"
HOLDOUT_ARTIFACT = "holdout.parquet"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    created: int | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class GateResult:
    metric: str
    challenger: float
    champion: float | None
    tolerance: float
    passed: bool
    evaluated_on: str  # holdout hash


class Registry:
    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress or (lambda msg: None)  # a line per step of long work (uploads)
        self.audit = settings.audit()
        self._client: MlflowClient | None = None

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            uri = self.settings.tracking_uri
            # before importing MLflow (seconds): a server that is down is said in well under 2 s
            if uri.startswith("http") and not http_ok(uri.rstrip("/") + "/health", timeout=1.5):
                raise ServiceUnavailableError("MLflow tracking server", uri)
            mlflow = require("mlflow", "registry")
            from keel.compat.mlflow import skip_foreign_header_plugins

            skip_foreign_header_plugins()
            mlflow.set_tracking_uri(uri)
            self._client = mlflow.MlflowClient(tracking_uri=uri)
        return self._client

    def _model(self, name: str) -> Any:
        client = self.client  # the health check comes before any MLflow import
        from mlflow.exceptions import MlflowException

        try:
            return client.get_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                raise NotFoundError("model", name, self.model_names()) from None
            raise

    def _by_alias(self, name: str, alias: str) -> VersionInfo | None:
        rm = self._model(name)
        version = rm.aliases.get(alias)
        return self.version(name, str(version)) if version is not None else None

    def version(self, name: str, version: str) -> VersionInfo:
        self.client  # noqa: B018 - the health check comes before any MLflow import
        from mlflow.exceptions import MlflowException

        rm = self._model(name)
        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException:
            versions = [v.version for v in self.client.search_model_versions(f"name='{name}'")]
            raise NotFoundError("version", str(version), versions, of=f"model '{name}'") from None
        aliases = sorted(a for a, v in rm.aliases.items() if str(v) == str(mv.version))
        metrics = {k.removeprefix("keel.metric."): float(v) for k, v in mv.tags.items()
                   if k.startswith("keel.metric.")}
        return VersionInfo(name, str(mv.version), mv.run_id, aliases, dict(mv.tags), metrics,
                           mv.creation_timestamp)

    def resolve(self, name: str, alias: str) -> VersionInfo:
        """The version an alias points at, with a clear error naming the aliases that exist."""
        rm = self._model(name)
        if alias not in rm.aliases:
            raise NotFoundError("alias", alias, rm.aliases, of=f"model '{name}'")
        return self.version(name, str(rm.aliases[alias]))

    def _history(self, name: str) -> list[str]:
        raw = self._model(name).tags.get(HISTORY_TAG, "")
        return [v for v in raw.split(",") if v]

    def _record(self, action: str, name: str, alias: str, before: str | None, after: str | None,
                reason: str = "", actor: str | None = None, **details: object) -> AuditRecord:
        return self.audit.append(AuditRecord(action=action, model=name, alias=alias, from_version=before,
                                             to_version=after, actor=actor or self.settings.actor,
                                             reason=reason, details=dict(details)))

    # -- register -----------------------------------------------------------------------------
    def by_idempotency_key(self, name: str, key: str) -> VersionInfo | None:
        """The version registered with ``key`` (a retraining run's id), if any: how a step that trained
        elsewhere (a RayJob) finds what the run registered."""
        found = self.client.search_model_versions(f"name='{name}' and tag.`keel.idempotency_key`='{key}'")
        return self.version(name, str(found[0].version)) if found else None

    def register(self, model: Any, name: str, training_set: TrainingSet, holdout: pd.DataFrame,
                 metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                 idempotency_key: str | None = None, reason: str = "", actor: str | None = None,
                 task: str | None = None, gate: Any = None) -> VersionInfo:
        """Log ``model`` with signature, lineage and training statistics; alias it ``challenger``.

        ``holdout`` (features + label) is stored with the version so any later gate can score both
        champion and challenger on exactly the same rows. ``task`` (binary, multiclass, regression) is
        inferred from the model and label when not given; ``gate`` (a project GateSpec) sets the metric,
        its direction and tolerance, recorded on the version so the gate needs no spec to run.
        ``idempotency_key`` makes a retried caller (an Airflow task re-run) get the version it
        registered before instead of a duplicate.
        """
        mlflow = require("mlflow", "registry")
        from mlflow.models import infer_signature

        from keel.registry import card, lineage

        client = self.client
        if idempotency_key:
            earlier = self.by_idempotency_key(name, idempotency_key)
            if earlier is not None:
                return earlier
        feats, label = training_set.features, training_set.label
        if not label:
            raise KeelError("training set has no label column; a registered model needs one to be gated")
        missing = [c for c in [*feats, label] if c not in holdout.columns]
        if missing:
            raise KeelError(f"holdout lacks column(s) {', '.join(missing)}")
        task = task or infer_task(model, holdout[label])
        if task not in m.TASKS:
            raise KeelError(f"unknown task '{task}'; valid choices: {', '.join(m.TASKS)}")
        metric_name = (getattr(gate, "metric", None) or (self.settings.promotion_metric if task == "binary"
                                                          else m.DEFAULT_METRIC[task]))
        m.metric(metric_name, task)  # a metric that does not fit the task is refused before any upload
        classes = m.classes_of(model)
        self.progress(f"scoring the holdout ({len(holdout):,} rows) for {metric_name}")
        output = m.scores(model, holdout[feats], task)
        score = m.metric(metric_name, task)(holdout[label].to_numpy(), output, classes)
        holdout_hash = _holdout_hash(holdout[[*feats, label]])
        sample = training_set.frame[feats].head(5)
        signature = infer_signature(sample, m.scores(model, sample, task))
        tolerance = getattr(gate, "tolerance", None)
        greater = getattr(gate, "greater_is_better", None)
        tags = {**lineage.lineage_tags(training_set), "keel.holdout_hash": holdout_hash,
                flavors.FLAVOR_TAG: flavors.flavor_of(model), TASK_TAG: task,
                "keel.promotion_metric": metric_name, f"keel.metric.{metric_name}": repr(score),
                "keel.gate_tolerance": repr(float(self.settings.promotion_tolerance if tolerance is None
                                                  else tolerance)),
                "keel.gate_greater_is_better": str(m.greater_is_better(metric_name, greater)).lower()}
        if classes is not None and task == "multiclass":
            tags[CLASSES_TAG] = json.dumps(classes)
        for k, v in (metrics or {}).items():
            tags[f"keel.metric.{k}"] = repr(float(v))
        if idempotency_key:
            tags["keel.idempotency_key"] = idempotency_key
        mlflow.set_experiment(f"keel/{name}")
        with mlflow.start_run(run_name=f"train-{name}") as run:
            mlflow.log_params(params or {})
            mlflow.log_metrics({metric_name: score, **{k: float(v) for k, v in (metrics or {}).items()}})
            mlflow.set_tags(tags)
            with tempfile.TemporaryDirectory() as tmp:
                stats = lineage.feature_stats(training_set.frame, feats)
                (Path(tmp) / STATS_ARTIFACT).write_text(json.dumps(stats, indent=1, default=str))
                # entity keys, request values and event time ride along: smoke traffic and warm-up draw
                # real requests from these rows
                extra = [c for c in dict.fromkeys(["event_timestamp", *training_set.entity_keys,
                                                   *getattr(training_set, "request_fields", []),
                                                   *card.slice_columns(self.settings, name)])  # + card's slice
                         if c in holdout.columns and c not in feats and c != label]
                holdout[[*extra, *feats, label]].to_parquet(Path(tmp) / HOLDOUT_ARTIFACT, index=False)
                size = sum(f.stat().st_size for f in Path(tmp).iterdir())
                self.progress(f"uploading statistics and holdout to MLflow ({size / 1e6:.1f} MB)")
                mlflow.log_artifact(str(Path(tmp) / STATS_ARTIFACT))
                mlflow.log_artifact(str(Path(tmp) / HOLDOUT_ARTIFACT))
            self.progress(f"uploading the model ({flavors.flavor_of(model)} flavor) and registering '{name}'")
            info = flavors.log_model(model, name, signature, sample)
        self.progress(f"tagging v{info.registered_model_version} and aliasing it {CHALLENGER}")
        version = str(info.registered_model_version)
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_model_version_tag(name, version, "keel.run_id", run.info.run_id)
        before = self._model(name).aliases.get(CHALLENGER)
        client.set_registered_model_alias(name, CHALLENGER, version)
        self._record("register", name, CHALLENGER, None if before is None else str(before), version,
                     reason=reason, actor=actor, metric=metric_name, value=score)
        card.on_register(self, name, version, model, holdout)  # every version gets a card; never fails this
        return self.version(name, version)

    # -- gate / promote / rollback ------------------------------------------------------------
    def load(self, v: VersionInfo) -> Any:
        """The version's native model object (a pyfunc model for flavors keel does not load natively)."""
        self.client  # noqa: B018 - sets the tracking URI (and checks the server) before loading
        return flavors.load_model(v.uri, v.tags.get(flavors.FLAVOR_TAG) or flavors.detect(v.uri))

    def _holdout(self, v: VersionInfo) -> pd.DataFrame:
        import mlflow
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path=HOLDOUT_ARTIFACT, dst_path=tmp)
            return pd.read_parquet(path)

    def gate(self, name: str) -> GateResult:
        """Compare challenger and champion on the challenger's holdout (re-scoring the champion when
        its recorded metric was measured on different rows). Metric, direction and tolerance are the
        challenger's, as its project spec said when it was registered."""
        chal = self._by_alias(name, CHALLENGER)
        if chal is None:
            raise NotFoundError("alias", CHALLENGER, self._model(name).aliases, of=f"model '{name}'")
        champ = self._by_alias(name, CHAMPION)
        task = chal.tags.get(TASK_TAG, "binary")
        metric_name = chal.tags.get("keel.promotion_metric", self.settings.promotion_metric)
        holdout_hash = chal.tags.get("keel.holdout_hash", "")
        tol = float(chal.tags.get("keel.gate_tolerance", self.settings.promotion_tolerance))
        greater = {"true": True, "false": False}.get(chal.tags.get("keel.gate_greater_is_better", ""))
        if "keel.features" not in chal.tags:
            raise KeelError(f"cannot gate {name} v{chal.version}: it was registered without keel (no holdout "
                            "or features recorded); promote with --force and a reason")

        def recorded(v: VersionInfo) -> float | None:
            same = v.tags.get("keel.holdout_hash") == holdout_hash
            return v.metrics.get(metric_name) if same else None

        holdout: pd.DataFrame | None = None

        def rescored(v: VersionInfo) -> float:
            nonlocal holdout
            if holdout is None:
                holdout = self._holdout(chal)
            label = chal.tags["keel.label"]
            feats = v.tags["keel.features"].split(",")
            missing = [f for f in feats if f not in holdout.columns]
            if missing:
                raise KeelError(f"cannot gate {name}: champion v{v.version} needs feature(s) {', '.join(missing)} "
                                f"absent from challenger v{chal.version}'s holdout; promote with --force and a reason")
            model = self.load(v)
            out = m.scores(model, holdout[feats], task)
            return m.metric(metric_name, task)(holdout[label].to_numpy(), out, m.classes_of(model))

        c_score = recorded(chal)
        if c_score is None:
            c_score = rescored(chal)
        if champ is None:
            return GateResult(metric_name, c_score, None, tol, True, holdout_hash)
        p_score = recorded(champ)
        if p_score is None:
            p_score = rescored(champ)
        return GateResult(metric_name, c_score, p_score, tol,
                          m.not_worse(metric_name, c_score, p_score, tol, greater), holdout_hash)

    def promote(self, name: str, force: bool = False, reason: str = "", actor: str | None = None,
                online: Callable[[VersionInfo, VersionInfo], dict[str, Any]] | None = None) -> VersionInfo:
        """challenger → champion if the gate passes (or ``force`` with a reason). Under the model's alias
        lock (``AuditStore.lock``): what is read, changed and recorded is one step, whoever else promotes or
        rolls back at the same moment. ``online(challenger, champion)``, when given, is a second gate on
        real outcomes (the A/B test): a dict with ``passed`` and ``why``, recorded with the decision."""
        if force and not reason.strip():
            raise KeelError("--force needs --reason: say why the gate is being overridden")
        with self.audit.lock(name):
            return self._promote(name, force, reason, actor, online)

    def _promote(self, name: str, force: bool, reason: str, actor: str | None,
                 online: Callable[[VersionInfo, VersionInfo], dict[str, Any]] | None = None) -> VersionInfo:
        chal = self._by_alias(name, CHALLENGER)
        if chal is None:
            raise NotFoundError("alias", CHALLENGER, self._model(name).aliases, of=f"model '{name}'")
        champ = self._by_alias(name, CHAMPION)
        if champ is not None and champ.version == chal.version:
            raise KeelError(f"model '{name}' version {chal.version} is already the champion")
        before = champ.version if champ else None
        if force:
            action, details = "force-promote", {}
        else:
            g = self.gate(name)
            details = {"metric": g.metric, "challenger": g.challenger, "champion": g.champion,
                       "tolerance": g.tolerance, "holdout_hash": g.evaluated_on}
            if not g.passed:
                self._record("promote-refused", name, CHAMPION, before, before,
                             reason=reason or "gate: challenger worse than champion", actor=actor,
                             candidate=chal.version, **details)
                raise GateRefusedError(
                    f"promotion of '{name}' v{chal.version} refused: {g.metric} {g.challenger:.4f} is worse than "
                    f"champion v{before}'s {g.champion:.4f} (tolerance {g.tolerance}); "
                    "use --force --reason to override")
            if online is not None and champ is not None:
                evidence = online(chal, champ)
                details.update({f"ab_{k}": v for k, v in evidence.items() if k != "passed"})
                if not evidence["passed"]:
                    self._record("promote-refused", name, CHAMPION, before, before,
                                 reason=reason or "A/B gate: not shown good enough on real outcomes", actor=actor,
                                 candidate=chal.version, **details)
                    raise GateRefusedError(f"promotion of '{name}' v{chal.version} refused by the A/B test on real "
                                           f"outcomes: {evidence['why']}; use --force --reason to override")
            action = "promote"
        self.client.set_registered_model_alias(name, CHAMPION, chal.version)
        self.client.delete_registered_model_alias(name, CHALLENGER)
        history = [*self._history(name), chal.version]
        self.client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
        self._record(action, name, CHAMPION, before, chal.version, reason=reason, actor=actor, **details)
        return self.version(name, chal.version)

    def rollback(self, name: str, reason: str = "", actor: str | None = None) -> VersionInfo:
        """champion → the previous champion (under the model's alias lock, like :meth:`promote`)."""
        with self.audit.lock(name):
            history = self._history(name)
            champ = self._by_alias(name, CHAMPION)
            if champ is None:
                raise KeelError(f"model '{name}' has no champion to roll back")
            if not history or history[-1] != champ.version:
                raise KeelError(f"model '{name}': its champion history ({', '.join(history) or 'empty'}) does not "
                                f"end with the champion v{champ.version}; promote the version you want instead")
            earlier = list(history)
            while earlier and earlier[-1] == champ.version:  # a rollback to the champion itself is no change
                earlier.pop()
            if not earlier:
                raise KeelError(f"model '{name}' has no previous champion to roll back to "
                                f"(champion history: {', '.join(history)})")
            target = earlier[-1]
            self.version(name, target)  # still exists?
            self.client.set_registered_model_alias(name, CHAMPION, target)
            self.client.set_registered_model_tag(name, HISTORY_TAG, ",".join(earlier))
            self._record("rollback", name, CHAMPION, champ.version, target, reason=reason, actor=actor)
            return self.version(name, target)

    # -- reading ------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Every registered model's name (one registry call: what the controller checks requests against)."""
        names, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            names += [rm.name for rm in page]
            token = page.token
            if not token:
                return sorted(names)

    def models(self) -> list[dict[str, Any]]:
        rows = []
        for rm in self.client.search_registered_models(max_results=1000):
            versions = self.client.search_model_versions(f"name='{rm.name}'")
            rows.append({
                "name": rm.name,
                "champion": _opt(rm.aliases.get(CHAMPION)),
                "challenger": _opt(rm.aliases.get(CHALLENGER)),
                "versions": len(versions),
                "latest": max((int(v.version) for v in versions), default=None),
                "updated": datetime.fromtimestamp(rm.last_updated_timestamp / 1000, UTC).isoformat()
                if rm.last_updated_timestamp else None,
            })
        return sorted(rows, key=lambda r: r["name"])

    def show(self, name: str) -> dict[str, Any]:
        from keel.registry import lineage

        rm = self._model(name)
        versions = sorted(self.client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        return {
            "name": name,
            "aliases": {a: str(v) for a, v in rm.aliases.items()},
            "champion_history": self._history(name),
            "versions": [
                {"version": str(v.version), "run_id": v.run_id,
                 "aliases": sorted(a for a, x in rm.aliases.items() if str(x) == str(v.version)),
                 "lineage": {k.removeprefix("keel."): val for k, val in sorted(v.tags.items())
                             if k.startswith("keel.") and k.removeprefix("keel.") in lineage.LINEAGE_KEYS},
                 "metrics": {k.removeprefix("keel.metric."): float(val) for k, val in v.tags.items()
                             if k.startswith("keel.metric.")}}
                for v in versions
            ],
        }

    def feature_stats(self, v: VersionInfo) -> dict[str, Any]:
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path=STATS_ARTIFACT, dst_path=tmp)
            return json.loads(Path(path).read_text())


def infer_task(model: Any, label: Any) -> str:
    """The task when neither the caller nor the spec says: binary/multiclass for a model with class
    probabilities (by its number of classes); for one without (a torch module), binary when the label
    is 0/1, multiclass when it is not numeric; else regression."""
    import pandas as pd

    if hasattr(model, "predict_proba"):
        n = len(m.classes_of(model) or label.dropna().unique())
        return "binary" if n <= 2 else "multiclass"
    values = label.dropna()
    if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return "multiclass"
    if len(values) and set(values.unique().tolist()) <= {0, 1}:
        return "binary"
    return "regression"


def _opt(v: object) -> str | None:
    return None if v is None else str(v)


def _holdout_hash(df: pd.DataFrame) -> str:
    from keel.features.training import frame_hash

    return frame_hash(df)
