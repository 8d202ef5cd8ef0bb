"""The explicit client behind keel's SDK: names and versions in, no globals.

Each method is one step of register → gate → deploy → monitor and says what it records. Model settings
(feature service, label, task, gate, rollout, serving) come from the project spec when the model is in
it; every one can also be passed directly, so a model keel's spec does not know is served just the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.config import Settings, load_settings
from keel.errors import KeelError

if TYPE_CHECKING:
    import pandas as pd

    from keel.features.training import TrainingSet
    from keel.project import ModelSpec, ProjectSpec
    from keel.registry.client import VersionInfo


class Client:
    def __init__(self, settings: Settings | None = None, project: str | Path | None = None,
                 progress: Any = None) -> None:
        self.settings = settings or load_settings(**({"project": Path(project)} if project else {}))
        self.progress = progress or (lambda msg: None)  # called with a line per step of long work

    # -- spec ---------------------------------------------------------------------------------------
    @property
    def project(self) -> ProjectSpec:
        return self.settings.spec()

    def model_spec(self, model: str) -> ModelSpec:
        return self.project.model(model)

    def spec_of(self, model: str) -> ModelSpec | None:
        """The model's spec when a project spec exists and names it; None otherwise."""
        try:
            spec = self.project
        except KeelError:
            return None
        return spec.models.get(model)

    def labels_of(self, model: str) -> str:
        return self.project.resolve(self.model_spec(model).labels, self.settings.home)

    # -- features -----------------------------------------------------------------------------------
    def training_set(self, model: str | None = None, *, feature_service: str | None = None,
                     labels: pd.DataFrame | str | Path | None = None, label: str | None = None,
                     filter_by_created_timestamp: bool = True, reason: str = "",
                     engine: str = "keel") -> TrainingSet:
        """A point-in-time training set, snapshotted under its content hash (what lineage records).
        ``model`` takes feature service, labels and label from the project spec; each can be overridden."""
        from keel.features import training

        spec = self.model_spec(model) if model else None
        service = feature_service or (spec.feature_service if spec else None)
        if not service:
            raise KeelError("give a model from the project spec or feature_service=")
        source = spec.training.source if spec and labels is None and feature_service is None else "labels"
        if source == "feedback":
            from keel.features import feedback_set

            self.progress(f"served rows of '{model}' with outcomes, last {spec.training.feedback_window}")
            ts = feedback_set.build(self.settings, str(model), spec, spec.training.feedback_window)
            self.progress(f"training set: {len(ts.frame):,} served rows x {len(ts.features)} features, "
                          f"snapshot {ts.snapshot_hash[:12]}")
            return ts
        events: Any = labels if labels is not None else (self.labels_of(model) if model else None)
        if events is None:
            raise KeelError("give a model from the project spec or labels= (a DataFrame, parquet or CSV path)")
        if spec and spec.timestamp != training.TIMESTAMP:
            events = training.load_events(events).rename(columns={spec.timestamp: training.TIMESTAMP})
        self.progress(f"point-in-time join of the labelled events against '{service}' ({engine} engine)")
        ts = training.build(self.settings, service, events, label if label is not None else
                            (spec.label if spec else None), engine=engine,
                            filter_by_created_timestamp=filter_by_created_timestamp, reason=reason)
        if source == "both":
            from keel.features import feedback_set

            self.progress(f"adding the served rows of '{model}' with outcomes, last {spec.training.feedback_window}")
            ts = feedback_set.build(self.settings, str(model), spec, spec.training.feedback_window, base=ts)
        self.progress(f"training set: {len(ts.frame):,} rows x {len(ts.features)} features, "
                      f"snapshot {ts.snapshot_hash[:12]}")
        return ts

    # -- registry -----------------------------------------------------------------------------------
    def _registry(self) -> Any:
        from keel.registry.client import Registry

        return Registry(self.settings, progress=self.progress)

    def register(self, model: Any, name: str, *, training_set: TrainingSet, holdout: pd.DataFrame,
                 metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                 task: str | None = None, reason: str = "", idempotency_key: str | None = None,
                 actor: str | None = None) -> VersionInfo:
        """Log ``model`` to MLflow with its signature, lineage tags (feature service, views, definition
        hash, training window and snapshot hash, git sha), training statistics and holdout; alias it
        ``challenger``; append an audit record. Task and gate come from the spec when ``name`` is in it."""
        spec = self.spec_of(name)
        return self._registry().register(model, name, training_set, holdout, metrics, params,
                                         idempotency_key=idempotency_key, reason=reason, actor=actor,
                                         task=task or (spec.task if spec else None),
                                         gate=spec.gate if spec else None)

    def train(self, model: str, reason: str = "", **params: Any) -> VersionInfo:
        """The spec's whole training step: training set → its entry point → ``register``."""
        spec = self.model_spec(model)
        fit = self.project.entry_point(model)  # a broken entry point is said before minutes of work
        self.progress("connecting to MLflow")
        self._registry().client  # noqa: B018 - fail fast when MLflow is down, before minutes of work
        ts = self.training_set(model)
        self.progress(f"training {spec.train} on {len(ts.frame):,} rows x {len(ts.features)} features")
        trained = fit(ts, **{**spec.params, **params})
        return self.register(trained.model, model, training_set=ts, holdout=trained.holdout,
                             metrics=trained.metrics, params=trained.params, reason=reason)

    def promote(self, model: str, force: bool = False, reason: str = "", ab: bool | None = None) -> VersionInfo:
        """challenger → champion when the gate passes on the same holdout (audited either way); with ``ab``
        (default: the spec's gate.ab) also when the A/B test on real outcomes shows the challenger, served as
        a sticky canary, at worst the gate's tolerance behind the champion."""
        spec = self.spec_of(model)
        online = None
        if ab if ab is not None else bool(spec and spec.gate.ab):
            from keel.monitoring import ab as abm

            tolerance = spec.gate.tolerance if spec else 0.0

            def online(chal: Any, champ: Any) -> dict[str, Any]:
                r = abm.report(self.settings, model, versions=(champ.version, chal.version))
                passed = abm.gate_passes(r, tolerance)
                why = (f"{r.verdict}: {r.a.labelled_rows} and {r.b.labelled_rows} labelled rows"
                       if r.diff is None else
                       f"B - A = {r.diff:+.4f} {r.metric}, interval [{r.ci_low:+.4f}, {r.ci_high:+.4f}], "
                       f"tolerance {tolerance}")
                return {"passed": passed, "why": why, "metric": r.metric, "diff": r.diff, "ci_low": r.ci_low,
                        "ci_high": r.ci_high, "labelled_a": r.a.labelled_rows, "labelled_b": r.b.labelled_rows}

        return self._registry().promote(model, force=force, reason=reason, online=online)

    def rollback(self, model: str, reason: str = "") -> VersionInfo:
        """champion → the previous champion (audited)."""
        return self._registry().rollback(model, reason=reason)

    # -- serving ------------------------------------------------------------------------------------
    def deploy(self, model: str, alias: str = "champion", *, version: str | None = None,
               runtime: str | None = None, port: int | None = None, feature_service: str | None = None,
               **options: Any) -> Any:
        """Serve the version ``alias`` points at now (pinned) on the local stack; returns where."""
        from keel.serving.deploy import LocalTarget, free_port
        from keel.serving.spec import ServeSpec

        spec = self.spec_of(model)
        serving = spec.serving if spec else None
        target = LocalTarget(self.settings)
        runtime = runtime or (serving.runtime if serving else "kserve")
        shared = self.settings.ray_serve_port if runtime == "ray" and self.settings.ray_cluster else None
        if shared and port and port != shared:
            raise KeelError(f"--port {port}: on the shared Ray cluster every model answers on its Serve port "
                            f"{shared} (KEEL_RAY_SERVE_PORT), under /{model}; leave --port out")
        chosen = port or shared or free_port(self.settings, target, model)
        settings: dict[str, Any] = ({"max_batch": serving.max_batch, "cache_ttl_s": serving.cache_ttl_s,
                                     "cache_size": serving.cache_size, "cache_stale_s": serving.cache_stale_s,
                                     "sample_rate": serving.sample_rate, "max_inflight": serving.max_inflight,
                                     "priorities": serving.priorities or None, "fallback": serving.fallback,
                                     "batch_max_size": serving.batch_size,
                                     "batch_wait_s": serving.batch_wait_ms / 1000.0,
                                     "sticky": spec.rollout.sticky, "sticky_key": spec.rollout.sticky_key}
                                    if serving else {})
        given = {k: v for k, v in options.items() if v is not None}
        if runtime != "ray" and {"batch_max_size", "batch_wait_s"} & given.keys():
            raise KeelError(f"--batch-size and --batch-wait-ms apply to the Ray runtime; {model} is served on "
                            f"{runtime} (--runtime ray, or serving.runtime: ray in keel.yaml)")
        settings.update(given)  # what the caller says wins
        return target.deploy(ServeSpec(model=model, alias=alias, version=version, port=chosen,
                                       feature_service=feature_service, runtime=runtime, **settings))

    def undeploy(self, model: str) -> None:
        from keel.serving.deploy import LocalTarget

        LocalTarget(self.settings).undeploy(model)

    def predict(self, model: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
        """Score instances with the model's local deployment (entity keys and request values, or the
        model's raw inputs for a version registered without keel)."""
        from keel.serving.deploy import predict_local

        return predict_local(self.settings, model, instances)

    def batch_score(self, model: str, entities: pd.DataFrame | str | Path, out: str | Path | None = None, *,
                    alias: str = "champion", version: str | None = None, chunk_rows: int = 50_000) -> pd.DataFrame:
        """Score a table of entity rows as serving would (point-in-time features as of each row's
        event_timestamp); returns the scored rows, and writes them to ``out`` when given."""
        from keel import batch

        if out is not None:
            batch.check_output(out)
        result = batch.score(self.settings, model, entities, alias=alias, version=version, chunk_rows=chunk_rows)
        if out is not None:
            batch.write(result.frame, out)
        return result.frame

    # -- monitoring ---------------------------------------------------------------------------------
    def feedback(self, model: str, outcomes: list[dict[str, Any]] | pd.DataFrame) -> dict[str, Any]:
        """Send real outcomes to the controller (each with ``label`` and ``request_id`` [+ ``row``], or the
        entity key(s) + ``event_timestamp``); the same outcome twice counts once. Returns the counts."""
        from keel.monitoring import feedback as fb

        if hasattr(outcomes, "to_dict"):  # a DataFrame
            outcomes = [{k: fb._plain(v) for k, v in r.items() if not fb._missing(v)}
                        for r in outcomes.to_dict("records")]
        return fb.send(self.settings, model, list(outcomes))

    def performance(self, model: str, window: str | None = None, push: bool = True) -> Any:
        """The served versions' metrics on their outcomes, label coverage and delay, and the decay verdict;
        gauges to the Pushgateway, one run per version to MLflow."""
        from keel.monitoring import performance

        return performance.run(self.settings, model, window, push=push, progress=self.progress)

    def drift(self, model: str, window: str | None = None, push: bool = True) -> Any:
        """Evidently on the served traffic vs the champion's holdout; gauges to the Pushgateway, the
        report to MLflow."""
        from keel.monitoring import drift

        spec = self.spec_of(model)
        return drift.run(self.settings, model, window or (spec.drift.window if spec else "1h"),
                         sample_size=spec.drift.sample_size if spec else 50_000, push=push, progress=self.progress)

    # -- model cards --------------------------------------------------------------------------------
    def card(self, model: str, version: str | None = None, log: bool = True) -> Any:
        """The model card of ``version`` (default: the champion, else the latest), regenerated now with the
        latest drift, live performance and audit history: intended use and task (spec), lineage, holdout
        metrics overall and by the spec's slice column. ``log`` writes it (Markdown and HTML) to the
        version's MLflow run under ``card/`` and tags the version ``keel.card``. Returns a ModelCard."""
        from keel.registry import card

        registry = self._registry()
        made = card.build(registry, model, version, self.spec_of(model))
        return card.log(registry, made) if log else made
