"""keel's materialization as a Feast batch-engine plug-in, so ``feast materialize`` and
``FeatureStore.materialize`` get the fast path too, not only keel's own commands.

A repo opts in with two lines in its ``feature_store.yaml``::

    batch_engine:
      type: keel.features.redis.engine.KeelComputeEngine

Why an engine and not an online-store subclass: Feast's local engine turns every row into
``ValueProto`` objects *before* it calls the online store's ``online_write_batch``, and that conversion
is where materialization spends its time; a store subclass is handed the protos already built. The
engine is the plug-in point that sees the offline data first. (Reads are the same story the other way:
``online_read`` must return protos, so keel's reader stays keel's serving path.)

A view keel's writer does not handle (not a local parquet source, not a single Redis with entity key
serialization v3, a transformation, a precomputed feature service) goes to Feast's own local engine,
unchanged, with a log line saying why. The window is Feast's: ``end`` included.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import FeastConfigBaseModel

from keel.features.redis.codec import Unsupported
from keel.features.redis.layout import store_client
from keel.features.redis.writer import WriteStats, check_view, load_view

TYPE = "keel.features.redis.engine.KeelComputeEngine"
log = logging.getLogger("keel.features")


class KeelComputeEngineConfig(FeastConfigBaseModel):
    """``batch_engine:`` settings; ``backend`` is passed to Feast's local engine for the views it keeps."""

    type: Literal["keel.features.redis.engine.KeelComputeEngine"] = TYPE
    backend: str | None = None


class KeelComputeEngine(LocalComputeEngine):
    """Feast's local engine, with keel's column-at-a-time Redis writer for the views it can take."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("type", None)
        super().__init__(**kwargs)
        self.written: dict[str, WriteStats] = {}  # per view, what keel's writer did (Feast's views absent)

    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask,
                         **kwargs: Any) -> LocalMaterializationJob:
        fv = task.feature_view
        job_id = f"{fv.name}-{task.start_time}-{task.end_time}"
        try:
            if task.disable_event_timestamp or not task.only_latest:
                raise Unsupported("the task asks for every row, not the latest per entity")
            layout = check_view(self.repo_config, registry.list_feature_services(task.project), fv)
            client = store_client(self.online_store, self.repo_config)
        except Unsupported as why:
            log.info("%s: %s; Feast's local engine materializes it", fv.name, why)
            return super()._materialize_one(registry, task, **kwargs)
        try:
            stats = load_view(layout, fv, task.start_time, task.end_time, client,
                              root=self.repo_config.repo_path, end_inclusive=True, progress=task.tqdm_builder)
        except Exception as exc:  # Feast raises a job's error after the engine returns
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)
        self.written[fv.name] = stats
        log.info("%s: keel wrote %d entities (%d already newer in Redis)", fv.name, stats.written, stats.skipped)
        return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
