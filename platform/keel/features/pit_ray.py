"""Point-in-time joins fanned out over a Ray cluster: the events split into partitions, each joined by
keel's DuckDB engine (``keel.features.pit``) in a Ray task on whichever node Ray picks, the parts
concatenated. An event's features depend only on its own keys and timestamp, so partitions are
independent and the result equals the single-process join row for row; a node holds one partition's
events and what DuckDB reads for them, not the whole set.
"""

from __future__ import annotations

import os
import resource
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings

ROW = "_keel_pit_row"


def _join_part(env: dict[str, str], service: str, part: pd.DataFrame, created: bool
               ) -> tuple[pd.DataFrame, str, float]:
    import ray

    from keel.config import load_settings
    from keel.features import pit
    from keel.features import store as fstore

    os.environ.update(env)
    settings = load_settings()
    with fstore.in_repo(settings):
        fs = fstore.open_store(settings)
        df = pit.get_historical_features(fs, part, fstore.feature_service(fs, service),
                                         filter_by_created_timestamp=created).to_df()
    # the worker's peak RSS (MiB; Linux counts KiB): what one node's join of a partition cost it
    return df, ray.get_runtime_context().get_node_id(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def join(settings: Settings, service: str, events: pd.DataFrame, created: bool = True,
         partition_rows: int = 100_000) -> tuple[pd.DataFrame, int, float]:
    """(the joined events in their given order, Ray nodes that joined them, the largest peak RSS in MiB
    of a worker that joined a partition: bounded by the partition, not by the whole set)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address=settings.ray_cluster, log_to_driver=False, configure_logging=False)
    task: Any = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_join_part)  # across the nodes
    env = settings.as_env()
    numbered = events.assign(**{ROW: np.arange(len(events))})
    refs = [task.remote(env, service, numbered.iloc[i:i + partition_rows], created)
            for i in range(0, len(numbered), partition_rows)]
    parts = ray.get(refs)
    df = pd.concat([p for p, _, _ in parts], ignore_index=True).sort_values(ROW, kind="mergesort")
    return (df.drop(columns=[ROW]).reset_index(drop=True), len({node for _, node, _ in parts}),
            max(peak for _, _, peak in parts))
