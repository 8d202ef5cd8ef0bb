"""The drift job's comparison: bounded sampling that is uniform and reproducible, and per-column
verdicts equal to what a full, unsampled Evidently DataDriftPreset run gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench.drift import preset_verdicts  # the peer the benchmark runs

from keel.errors import KeelError
from keel.monitoring.drift import BottomK, column_drift, drift_report, evidently_drift, parse_window, read_window


def test_bottom_k_is_bounded_reproducible_and_uniform() -> None:
    counts = np.zeros(1000)
    for seed in range(400):
        s = BottomK(100, seed)
        for start in range(0, 1000, 128):  # uneven batches
            s.add(pd.DataFrame({"i": np.arange(start, min(start + 128, 1000))}))
        rows = s.frame()["i"].to_numpy()
        assert len(rows) == 100 and len(set(rows)) == 100 and s.seen == 1000
        counts[rows] += 1
    # each row is kept with probability 0.1: 40 expected per row; a chi-square test over 10 blocks of 100
    blocks = counts.reshape(10, 100).sum(axis=1)
    chi2 = float(((blocks - 4000) ** 2 / 4000).sum())
    assert chi2 < 27.9, blocks  # p = 0.001 at 9 degrees of freedom
    again = BottomK(100, 7)
    again.add(pd.DataFrame({"i": np.arange(1000)}))
    first = BottomK(100, 7)
    first.add(pd.DataFrame({"i": np.arange(1000)}))
    assert first.frame().equals(again.frame())


def test_a_sampled_window_gives_the_verdicts_of_a_full_evidently_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cols = [f"f{i}" for i in range(6)]
    n = 120_000
    reference = pd.DataFrame({c: rng.gamma(2.0, 3.0, 20_000) for c in cols})
    current = pd.DataFrame({c: rng.gamma(2.0, 3.0, n) for c in cols})
    current["f0"] *= 1.6  # drifted
    current["f3"] += 4.0  # drifted
    end = datetime(2026, 11, 22, 12, tzinfo=UTC)
    current["timestamp"] = [(end - timedelta(minutes=30)).isoformat()] * n
    current["role"], current["degraded"], current["version"] = "primary", False, "1"
    part = tmp_path / "model=m" / f"date={end.date().isoformat()}"
    part.mkdir(parents=True)
    for k, chunk in enumerate(np.array_split(current, 4)):
        chunk.to_parquet(part / f"part-{k}.parquet", index=False)
    sample, total, degraded, versions = read_window(str(tmp_path), "m", cols, end - timedelta(hours=1), end,
                                                    sample_size=10_000, seed=0, batch_rows=8192)
    assert (len(sample), total, degraded, versions) == (10_000, n, 0, {"1": n})
    sampled, _ = evidently_drift(reference, sample, cols)
    full = preset_verdicts(reference, current[cols], cols)
    assert {c.column: c.detected for c in sampled} == {c: v[3] for c, v in full.items()}
    assert {c.column for c in sampled if c.detected} == {"f0", "f3"}


@pytest.mark.parametrize("rows", [400, 5_000])  # below 1,000 rows the preset picks other tests
def test_verdicts_equal_evidently_data_drift_preset_per_column(rows: int) -> None:
    rng = np.random.default_rng(rows)
    ref = pd.DataFrame({"same": rng.normal(0, 1, rows), "shifted": rng.normal(0, 1, rows),
                        "edge": rng.gamma(2.0, 3.0, rows), "ints": rng.integers(0, 50, rows),
                        "cat": rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2])})
    cur = pd.DataFrame({"same": rng.normal(0, 1, rows), "shifted": rng.normal(0.5, 1, rows),
                        "edge": rng.gamma(2.0, 3.0, rows) * 1.15, "ints": rng.integers(0, 50, rows),
                        "cat": rng.choice(["a", "b", "c"], rows, p=[0.2, 0.3, 0.5])})
    cur.loc[:9, "same"] = np.inf  # dropped, as the preset drops them
    cols = list(ref.columns)
    want = preset_verdicts(ref, cur, cols)
    got = {c.column: (c.method, c.score, c.threshold, c.detected) for c in column_drift(ref, cur, cols)}
    assert got.keys() == want.keys()
    for col, (method, score, threshold, detected) in want.items():
        assert got[col][0] == method and got[col][2] == threshold and got[col][3] == detected, (col, got[col])
        assert got[col][1] == pytest.approx(score, rel=1e-9, abs=1e-12), col
    assert want["shifted"][3] and want["cat"][3] and not want["same"][3]


def test_the_report_plots_what_drifted_and_the_output() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(0, 1, 3000), "b": rng.normal(0, 1, 3000), "prediction": rng.random(3000)})
    cur = pd.DataFrame({"a": rng.normal(2, 1, 3000), "b": rng.normal(0, 1, 3000), "prediction": rng.random(3000)})
    verdicts = column_drift(ref, cur, list(ref.columns))
    assert [v.column for v in verdicts if v.detected] == ["a"]
    shown = [m["config"]["column"] for m in drift_report(ref, cur, verdicts).dict()["metrics"]]
    assert shown == ["a", "prediction"]
    assert drift_report(ref[["b"]], cur[["b"]], column_drift(ref, cur, ["b"])) is None


def test_window_parsing_names_the_bad_value() -> None:
    assert parse_window("90m") == timedelta(minutes=90)
    for bad in ("1 hour", "0h", "-1h", "h"):
        with pytest.raises(KeelError, match=f"invalid window '{bad}'"):
            parse_window(bad)
