"""Point-in-time joins fanned out over a Ray cluster: the events split into partitions by a hash of their
entity key, each joined by keel's DuckDB engine (``keel.features.pit``) in a Ray task on whichever node
Ray picks, the parts concatenated. An event's features depend only on its own keys and timestamp, so
partitions are independent and the result equals the single-process join row for row.

Why by key and not by row range: the engine keeps only feature rows whose key some event of the
partition has (a semi join while the file streams past), so with keys split between partitions a task
holds its partition's events and their keys' feature rows, about 1/N of the largest view, and no key's
rows are read twice. Split by row range, every partition sees nearly every key and holds nearly the
whole file. The partition key is the largest view's (by source file size); views on other keys are
still bounded by the keys of the partition's events.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings

ROW = "_keel_pit_row"


@dataclass(frozen=True)
class RayJoin:
    frame: pd.DataFrame   # the joined events in their given order
    nodes: int            # Ray nodes whose workers joined a partition
    worker_peak_mb: float  # the largest peak RSS of a worker that joined one
    join_mb: float        # the most a partition's join raised its worker's RSS above where it began


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in MiB; 0 where absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> float:
    """Reset this process's peak RSS (VmHWM; Linux: clear_refs 5) and return its RSS now, in MiB."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mb("VmRSS")


def _join_part(env: dict[str, str], service: str, part: pd.DataFrame, created: bool
               ) -> tuple[pd.DataFrame, str, float, float]:
    import ray

    from keel.config import load_settings
    from keel.features import pit
    from keel.features import store as fstore

    os.environ.update(env)
    settings = load_settings()
    with fstore.in_repo(settings):
        fs = fstore.open_store(settings)
        service_ = fstore.feature_service(fs, service)
        # What the join itself costs, apart from the worker's imports and any partition it joined before:
        # the peak (VmHWM) is reset (Linux: clear_refs 5) and measured from the RSS it starts at.
        before = reset_peak()
        df = pit.get_historical_features(fs, part, service_, filter_by_created_timestamp=created).to_df()
        peak = status_mb("VmHWM")
    return df, ray.get_runtime_context().get_node_id(), peak, max(0.0, peak - before)


def split(events: pd.DataFrame, keys: list[str], partition_rows: int) -> list[pd.DataFrame]:
    """About len/partition_rows non-empty partitions, every key's events in one of them (by a hash of
    ``keys``); by row ranges when there are no keys. The hash only has to agree with itself: the tasks
    match feature rows on the keys' values, not on their hashes."""
    n = max(1, -(-len(events) // partition_rows))
    if not keys:  # right, but then each task may hold most of the feature rows
        return [events.iloc[i:i + partition_rows] for i in range(0, len(events), partition_rows)]
    bucket = pd.util.hash_pandas_object(events[keys], index=False).to_numpy() % np.uint64(n)
    return [part for i in range(n) if len(part := events[bucket == i])]


def partition_keys(settings: Settings, service: str, columns: list[str]) -> list[str]:
    """The entity-frame columns that the service's largest view (by source file) joins on; [] when the
    sizes cannot be read (a non-file source), and the split then falls back to row ranges."""
    from keel.features import store as fstore

    with fstore.in_repo(settings):
        fs = fstore.open_store(settings)
        fvs, _ = fstore.service_views(fs, fstore.feature_service(fs, service))
        sized = []
        for fv in fvs:
            path = getattr(fv.batch_source, "path", None)
            join_map = fv.projection.join_key_map or {e.name: e.name for e in fv.entity_columns}
            cols = [join_map.get(k, k) for k in fv.join_keys]
            if path and "://" not in path and os.path.isfile(path) and all(c in columns for c in cols):
                sized.append((os.path.getsize(path), cols))
    return max(sized, key=lambda s: s[0])[1] if sized else []


def join(settings: Settings, service: str, events: pd.DataFrame, created: bool = True,
         partition_rows: int = 100_000) -> RayJoin:
    """The point-in-time join of ``events`` on the cluster, in about len/partition_rows Ray tasks."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address=settings.ray_cluster, log_to_driver=False, configure_logging=False)
    task: Any = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_join_part)  # across the nodes
    env = settings.as_env()
    numbered = events.assign(**{ROW: np.arange(len(events))})
    parts_in = split(numbered, partition_keys(settings, service, list(events.columns)), partition_rows)
    parts = ray.get([task.remote(env, service, part, created) for part in parts_in])
    df = pd.concat([p[0] for p in parts], ignore_index=True).sort_values(ROW, kind="mergesort")
    return RayJoin(frame=df.drop(columns=[ROW]).reset_index(drop=True), nodes=len({p[1] for p in parts}),
                   worker_peak_mb=max(p[2] for p in parts), join_mb=max(p[3] for p in parts))
