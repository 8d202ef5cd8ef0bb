"""Seeded data for the delivery example: courier snapshots that arrive late, and labelled orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

VEHICLES = np.array(["bike", "scooter", "car"])
SPEED = {"bike": 1.3, "scooter": 1.0, "car": 0.8}
REPO_DATA = Path(__file__).resolve().parent / "feature_repo" / "data"


def _write(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
    return path


def generate(out_dir: Path | None = None, rows: int = 20_000, seed: int = 3, drift: dict[str, float] | None = None,
             end: datetime | None = None) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    end = end or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=10)
    n_couriers = max(50, rows // 100)
    ids = np.array([f"c{i:04d}" for i in range(n_couriers)])
    vehicle = VEHICLES[rng.integers(0, 3, n_couriers)]
    skill = rng.normal(25.0, 5.0, n_couriers)
    snaps = []
    for k in range(int((end - start) / timedelta(hours=6))):
        ts = start + timedelta(hours=6 * k)
        snaps.append(pd.DataFrame({
            "courier_id": ids, "event_timestamp": ts,
            "created": [ts + timedelta(minutes=int(m)) for m in rng.integers(1, 90, n_couriers)],  # arrives late
            "avg_minutes_7d": skill + rng.normal(0, 1.0, n_couriers),
            "deliveries_7d": rng.poisson(40, n_couriers).astype("int64"),
            "vehicle": vehicle}))
    stats = pd.concat(snaps, ignore_index=True)
    stats["event_timestamp"] = pd.to_datetime(stats["event_timestamp"], utc=True)
    stats["created"] = pd.to_datetime(stats["created"], utc=True)
    who = rng.integers(0, n_couriers, rows)
    when = start + timedelta(days=1) + pd.to_timedelta(rng.uniform(0, 9 * 86400, rows), unit="s")
    km = rng.uniform(0.5, 12.0, rows)
    factor = np.array([SPEED[v] for v in vehicle[who]])
    for name, f in (drift or {}).items():
        if name == "distance_km":
            km = km * np.where(np.arange(rows) > rows * 0.8, f, 1.0)
    minutes = skill[who] * (0.4 + km / 8.0) * factor + rng.normal(0, 2.0, rows)
    orders = pd.DataFrame({"order_id": np.arange(rows), "courier_id": ids[who], "event_timestamp": when,
                           "distance_km": km, "minutes": minutes,
                           "speed": np.where(minutes < 20, "fast", np.where(minutes < 35, "normal", "slow"))})
    orders["event_timestamp"] = pd.to_datetime(orders["event_timestamp"], utc=True)
    out = out_dir or REPO_DATA
    return {"courier_stats": _write(stats, out / "courier_stats.parquet"),
            "orders": _write(orders.sort_values("event_timestamp"), out / "orders.parquet")}
