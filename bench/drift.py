"""Drift-job benchmark: keel's bounded, sampled drift comparison over a window of >= 1M logged rows,
against a full, unsampled Evidently DataDriftPreset run on the same rows. Reports time, peak memory of
each (measured in separate child processes) and whether the per-feature verdicts agree.

Run: `.venv/bin/python bench/drift.py [--rows 1000000] [--columns 10]` (also part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
END = datetime(2026, 11, 22, 12, tzinfo=UTC)


def _columns(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def write_log(root: Path, rows: int, cols: list[str], seed: int = 0) -> pd.DataFrame:
    """A prediction log of ``rows`` rows in 16 files; every fifth feature drifted. Returns the reference."""
    rng = np.random.default_rng(seed)
    part = root / "model=m" / f"date={END.date().isoformat()}"
    part.mkdir(parents=True)
    per = rows // 16
    for k in range(16):
        df = pd.DataFrame({c: rng.gamma(2.0, 3.0, per) * (1.5 if i % 5 == 0 else 1.0) for i, c in enumerate(cols)})
        df["timestamp"] = (END - timedelta(minutes=30)).isoformat()
        df["role"], df["degraded"], df["version"] = "primary", False, "1"
        df.to_parquet(part / f"part-{k:02d}.parquet", index=False)
    return pd.DataFrame({c: rng.gamma(2.0, 3.0, 100_000) for c in cols})


def _keel(root: str, ref_path: str, cols: list[str], sample: int, out: mp.Queue) -> None:
    from keel.monitoring.drift import evidently_drift, read_window

    t0 = time.perf_counter()
    ref = pd.read_parquet(ref_path).sample(n=sample, random_state=0)
    cur, total, _, _ = read_window(root, "m", cols, END - timedelta(hours=1), END, sample, seed=0)
    verdicts, _ = evidently_drift(ref, cur, cols)
    out.put({"seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
             / 1024, "rows_in_window": total, "verdicts": {c.column: c.detected for c in verdicts}})


def _full(root: str, ref_path: str, cols: list[str], out: mp.Queue) -> None:
    from keel.monitoring.drift import evidently_drift

    t0 = time.perf_counter()
    ref = pd.read_parquet(ref_path)
    cur = pd.concat([pd.read_parquet(p, columns=cols) for p in sorted(Path(root).rglob("*.parquet"))])
    verdicts, _ = evidently_drift(ref, cur, cols)
    out.put({"seconds": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
             / 1024, "rows": len(cur), "verdicts": {c.column: c.detected for c in verdicts}})


def _child(target: object, *args: object) -> dict:
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--columns", type=int, default=10)
    ap.add_argument("--sample", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    cols = _columns(args.columns)
    with tempfile.TemporaryDirectory() as tmp:
        ref = write_log(Path(tmp) / "log", args.rows, cols)
        ref_path = str(Path(tmp) / "ref.parquet")
        ref.to_parquet(ref_path, index=False)
        keel = [_child(_keel, str(Path(tmp) / "log"), ref_path, cols, args.sample) for _ in range(args.runs)]
        full = _child(_full, str(Path(tmp) / "log"), ref_path, cols)
    k = sorted(keel, key=lambda r: r["seconds"])[len(keel) // 2]
    result = {"machine": {"cores": mp.cpu_count(), "cpu": platform.processor() or platform.machine(),
                          "python": sys.version.split()[0]},
              "rows": args.rows, "columns": args.columns, "sample": args.sample,
              "keel": {kk: v for kk, v in k.items() if kk != "verdicts"},
              "full_evidently": {kk: v for kk, v in full.items() if kk != "verdicts"},
              "verdicts_equal": k["verdicts"] == full["verdicts"],
              "drifted": sorted(c for c, d in full["verdicts"].items() if d)}
    out = ROOT / "bench" / "results" / f"drift-{datetime.now(UTC):%Y-%m-%d}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
