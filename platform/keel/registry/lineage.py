"""Lineage tags and training statistics recorded with every registered version.

The statistics (per feature: moments, quantiles, a histogram, and a default value) are what serving
falls back to when the online store fails and what drift jobs compare against, so they are computed
once, here, from the exact training frame.
"""

from __future__ import annotations

import subprocess
from typing import Any

import numpy as np
import pandas as pd

import keel
from keel.config import PROJECT_ROOT

TAG = "keel."
LINEAGE_KEYS = ("feature_service", "feature_views", "feature_definition_hash", "training_window_start",
                "training_window_end", "training_set_hash", "created_filter", "task", "git_sha", "keel_version")


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def lineage_tags(ts: Any) -> dict[str, str]:
    """Tags for a TrainingSet (keel.features.training.TrainingSet)."""
    return {
        f"{TAG}feature_service": ts.feature_service,
        f"{TAG}feature_views": ",".join(ts.feature_views),
        f"{TAG}feature_definition_hash": ts.definition_hash,
        f"{TAG}training_window_start": ts.window_start.isoformat(),
        f"{TAG}training_window_end": ts.window_end.isoformat(),
        f"{TAG}training_set_hash": ts.snapshot_hash,
        f"{TAG}training_set_uri": str(ts.snapshot) if getattr(ts, "snapshot", None) else "",
        f"{TAG}training_rows": str(len(ts.frame)),
        f"{TAG}features": ",".join(ts.features),
        f"{TAG}entity_keys": ",".join(ts.entity_keys),
        f"{TAG}request_fields": ",".join(getattr(ts, "request_fields", [])),
        f"{TAG}created_filter": "on" if getattr(ts, "created_filter", True)
        else f"off: {getattr(ts, 'created_filter_reason', '')}",
        f"{TAG}label": ts.label or "",
        f"{TAG}unservable_features": ",".join(f"{f}:{t}" for f, t in getattr(ts, "unservable", {}).items()),
        f"{TAG}git_sha": git_sha(),
        f"{TAG}keel_version": keel.__version__,
    }


def feature_stats(frame: pd.DataFrame, features: list[str], bins: int = 20) -> dict[str, dict[str, Any]]:
    """Per-feature statistics of the training frame (JSON-serialisable)."""
    out: dict[str, dict[str, Any]] = {}
    for name in features:
        col = frame[name]
        entry: dict[str, Any] = {"dtype": str(col.dtype), "count": int(col.notna().sum()),
                                 "null_fraction": float(col.isna().mean()) if len(col) else 0.0}
        if pd.api.types.is_numeric_dtype(col) and col.notna().any():
            v = col.dropna().astype("float64").to_numpy()
            q = np.quantile(v, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
            counts, edges = np.histogram(v, bins=bins)
            entry.update(
                mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()),
                quantiles=dict(zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"],
                                   map(float, q), strict=True)),
                histogram={"edges": edges.tolist(), "counts": counts.tolist()},
                default=float(q[3]) if not pd.api.types.is_integer_dtype(col) else float(round(q[3])),
            )
        else:
            mode = col.mode(dropna=True)
            entry["default"] = None if mode.empty else mode.iloc[0].item() if hasattr(mode.iloc[0], "item") \
                else mode.iloc[0]
        out[name] = entry
    return out
