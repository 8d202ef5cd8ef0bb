"""Batch scoring across a Ray cluster (KEEL_RAY_ADDRESS, or the local stack's head): Ray Data splits the
rows into blocks and ``map_batches`` runs a pool of scoring actors on the cluster's nodes, each of which
loads the model once and scores its blocks exactly as ``keel.batch`` does in-process (point-in-time
features as of each row, ``Predictor.score``). Ray does the scheduling; nothing here assigns work.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings

NODE = "_keel_node"


class _Scorer:
    """One Ray actor: the model loaded once, then block after block (Ray Data's callable-class form)."""

    def __init__(self, env: dict[str, str], model: str, version: str, chunk_rows: int) -> None:
        import ray

        from keel.config import load_settings
        from keel.serving.core import Predictor

        os.environ.update(env)
        self.settings = load_settings()
        self.predictor = Predictor.from_registry(self.settings, model, alias=None, version=version,
                                                 max_batch=chunk_rows)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, block: pd.DataFrame) -> pd.DataFrame:
        from keel.batch import ROW, _score_chunk

        scores, degraded = _score_chunk(self.settings, self.predictor, block.drop(columns=[ROW]),
                                        bool(self.predictor.online.entity_keys))
        from keel.serving.core import _outputs

        return pd.DataFrame({ROW: block[ROW].to_numpy(), "score": _outputs(np.asarray(scores)),
                             "degraded": degraded, NODE: self.node})


def score(settings: Settings, model: str, version: str, rows: pd.DataFrame, chunk_rows: int,
          actors: int | None = None) -> tuple[list[Any], np.ndarray, int]:
    """(scores, degraded, nodes used) for ``rows`` in order, scored by ``version`` on the cluster."""
    import ray

    from keel.batch import ROW

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address=settings.ray_cluster, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = len(rows)
    blocks = max(1, -(-n // chunk_rows))
    data = ray.data.from_pandas(rows.assign(**{ROW: np.arange(n)}), override_num_blocks=blocks)
    scored = data.map_batches(_Scorer, fn_constructor_kwargs={"env": settings.as_env(), "model": model,
                                                              "version": version, "chunk_rows": chunk_rows},
                              batch_size=chunk_rows, batch_format="pandas", num_cpus=1,
                              # one block at a time per actor: every actor gets the next block as it finishes,
                              # so a slow node still takes its share and no actor queues four blocks ahead
                              compute=ray.data.ActorPoolStrategy(size=max(1, min(actors or cpus, blocks, cpus)),
                                                                 max_tasks_in_flight_per_actor=1)
                              ).to_pandas()
    scored = scored.sort_values(ROW, kind="mergesort")
    if len(scored) != n:
        raise RuntimeError(f"Ray returned {len(scored)} scored rows for {n}")
    return scored["score"].tolist(), scored["degraded"].to_numpy(dtype=bool), int(scored[NODE].nunique())
