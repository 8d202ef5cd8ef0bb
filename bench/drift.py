"""Scenario 4: drift, R reference rows × C current rows (a prediction-log window) × K columns.

- keel: what ``keel drift run`` does — the reference sampled to the job's sample size, the window read in
  batches into a bounded bottom-k sample, each column's verdict from the test Evidently's preset picks,
  and Evidently's report (plots) of the columns that drifted;
- peer: Evidently's DataDriftPreset on all rows of both, unsampled, as its docs run it.

Each system's runs share one fresh process, so peak RSS is that system's. Every fifth column is drifted (scale × 1.5);
the per-column verdicts of keel and of the full run must be equal before time is reported.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import Profile, Row, better_ratio, client_cpus, median, runs_in_child, say

END = datetime(2026, 11, 22, 12, tzinfo=UTC)
SAMPLE = 50_000   # keel drift run's default --sample-size


def _columns(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def write_data(root: Path, reference: int, current: int, cols: list[str], seed: int = 0) -> None:
    """A prediction log of ``current`` rows in 16 files, and a reference parquet of ``reference`` rows."""
    rng = np.random.default_rng(seed)
    part = root / "log" / "model=m" / f"date={END.date().isoformat()}"
    part.mkdir(parents=True)
    per = max(1, current // 16)
    for k in range(16):
        df = pd.DataFrame({c: rng.gamma(2.0, 3.0, per) * (1.5 if i % 5 == 0 else 1.0) for i, c in enumerate(cols)})
        df["timestamp"] = (END - timedelta(minutes=30)).isoformat()
        df["role"], df["degraded"], df["version"] = "primary", False, "1"
        df.to_parquet(part / f"part-{k:02d}.parquet", index=False)
    pd.DataFrame({c: rng.gamma(2.0, 3.0, reference) for c in cols}).to_parquet(root / "ref.parquet", index=False)


def _keel(root: str, cols: list[str], keep: bool) -> tuple[float, dict[str, bool]]:
    from keel.monitoring.drift import evidently_drift, read_window

    _warm_imports()
    t0 = time.perf_counter()
    ref = pd.read_parquet(Path(root) / "ref.parquet")
    if len(ref) > SAMPLE:
        ref = ref.sample(n=SAMPLE, random_state=0).reset_index(drop=True)
    cur, _, _, _ = read_window(str(Path(root) / "log"), "m", cols, END - timedelta(hours=1), END, SAMPLE, seed=0)
    verdicts, _ = evidently_drift(ref, cur, cols)
    return time.perf_counter() - t0, {c.column: c.detected for c in verdicts}


def preset_verdicts(reference: pd.DataFrame, current: pd.DataFrame,
                    cols: list[str]) -> dict[str, tuple[str, float, float, bool]]:
    """Evidently's own DataDriftPreset, end to end: (method, score, threshold, detected) per column."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    num = [c for c in cols if pd.api.types.is_numeric_dtype(reference[c])]
    definition = DataDefinition(numerical_columns=num, categorical_columns=[c for c in cols if c not in num])
    snap = Report([DataDriftPreset(columns=cols)]).run(
        reference_data=Dataset.from_pandas(reference[cols], data_definition=definition),
        current_data=Dataset.from_pandas(current[cols], data_definition=definition))
    out = {}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if str(cfg.get("type", "")).endswith("ValueDrift"):
            score, threshold, method = float(m["value"]), float(cfg["threshold"]), str(cfg["method"])
            detected = score <= threshold if "p_value" in method else score >= threshold
            out[cfg["column"]] = (method, score, threshold, detected)
    return out


def _full(root: str, cols: list[str], keep: bool) -> tuple[float, dict[str, bool]]:
    _warm_imports()
    t0 = time.perf_counter()
    ref = pd.read_parquet(Path(root) / "ref.parquet")
    cur = pd.concat([pd.read_parquet(p, columns=cols) for p in sorted((Path(root) / "log").rglob("*.parquet"))])
    verdicts = preset_verdicts(ref, cur, cols)
    return time.perf_counter() - t0, {c: v[3] for c, v in verdicts.items()}


def _warm_imports() -> None:
    """Evidently's import takes seconds and is the same for both: not part of either's time."""
    import evidently.legacy.calculations.stattests
    import evidently.presets  # noqa: F401


def run(profile: Profile, tmp: Path) -> list[Row]:
    cols = _columns(profile.drift_columns)
    r, c = profile.drift_reference, profile.drift_current
    say(f"drift: writing {r:,} reference and {c:,} current rows x {len(cols)} columns")
    write_data(tmp, r, c, cols)
    figures: dict[str, tuple[list[float], float, dict[str, bool]]] = {}
    for name, fn in (("keel", _keel), ("full Evidently", _full)):
        verdicts, times, peak = runs_in_child(fn, str(tmp), cols, runs=profile.runs, cpus=client_cpus())
        figures[name] = (times, peak, verdicts)
        say(f"drift: {name} median {median(times):.2f} s, peak {peak:.0f} MB")
    kv, fv = figures["keel"][2], figures["full Evidently"][2]
    if kv != fv:
        differ = sorted(col for col in cols if kv.get(col) != fv.get(col))
        raise AssertionError(f"drift verdicts differ on {', '.join(differ)}")
    drifted = sum(fv.values())
    k_s, f_s = median(figures["keel"][0]), median(figures["full Evidently"][0])
    k_mb = figures["keel"][1]
    case = f"{r:,} reference x {c:,} current x {len(cols)} columns ({drifted} drifted, verdicts equal)"
    return [
        Row("drift", case, "keel drift job (sampled 50k)", "time", k_s, "s", figures["keel"][0], "full Evidently",
            better_ratio(k_s, f_s, True), ">= 10x faster; peak <= 2 GB", k_s * 10 <= f_s and k_mb <= 2048,
            f"peak RSS {k_mb:.0f} MB"),
        Row("drift", case, "Evidently DataDriftPreset, all rows", "time", f_s, "s", figures["full Evidently"][0],
            note=f"peak RSS {figures['full Evidently'][1]:.0f} MB"),
    ]
