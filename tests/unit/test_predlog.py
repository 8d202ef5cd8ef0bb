from __future__ import annotations

from pathlib import Path

import pytest

from keel.serving.predlog import PredictionLog, read


def _rec(i: int, model: str = "m", day: str = "2026-11-01") -> dict:
    return {"request_id": f"r{i}", "model": model, "version": "1", "timestamp": f"{day}T10:00:00+00:00",
            "x": float(i), "prediction": 0.5}


def test_flush_partitions_by_model_and_date(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), flush_every=10_000)
    log.add([_rec(i) for i in range(5)] + [_rec(9, "n", "2026-11-02")])
    assert list(tmp_path.iterdir()) == []  # buffered until flushed
    assert log.flush() == 6
    assert sorted(str(p.relative_to(tmp_path).parent) for p in tmp_path.rglob("*.parquet")) == [
        "model=m/date=2026-11-01", "model=n/date=2026-11-02"]
    df = read(str(tmp_path))
    assert len(df) == 6 and set(df["model"]) == {"m", "n"}
    assert len(read(str(tmp_path), "m")) == 5
    assert not list(tmp_path.rglob("*.tmp"))


def test_buffer_is_bounded_and_drops_oldest(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), max_buffer=10, flush_every=1_000_000)
    log.add([_rec(i) for i in range(25)])
    assert len(log) == 10 and log.dropped == 15
    log.flush()
    assert sorted(read(str(tmp_path))["x"].tolist()) == [float(i) for i in range(15, 25)]


def test_flushes_by_itself_when_the_threshold_is_reached(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), flush_every=4)
    log.add([_rec(i) for i in range(4)])
    assert log.written == 4 and len(log) == 0


def test_flushes_on_a_timer_and_on_close(tmp_path: Path) -> None:
    import time

    log = PredictionLog(str(tmp_path), flush_interval_s=0.2)
    log.add([_rec(1)])
    deadline = time.monotonic() + 10
    while log.written == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.written == 1 and len(read(str(tmp_path))) == 1
    log.add([_rec(2)])
    assert log.close() == 1 and len(read(str(tmp_path))) == 2


def test_a_failed_write_keeps_the_unwritten_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keel.serving.predlog as pl

    real = pl._write
    calls = {"n": 0}

    def flaky(df, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(df, path)

    monkeypatch.setattr(pl, "_write", flaky)
    log = PredictionLog(str(tmp_path))
    log.add([_rec(1, "a"), _rec(2, "b"), _rec(3, "c")])
    with pytest.raises(OSError):
        log.flush()
    assert len(log) == 2  # model a was written; b and c are kept
    assert log.flush() == 2
    assert sorted(read(str(tmp_path))["request_id"]) == ["r1", "r2", "r3"]


def test_sampling_rate(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), sample_rate=0.25, seed=1)
    share = sum(log.sampled() for _ in range(20_000)) / 20_000
    assert abs(share - 0.25) < 0.02
    assert all(PredictionLog(str(tmp_path), sample_rate=1.0).sampled() for _ in range(100))
    assert not any(PredictionLog(str(tmp_path), sample_rate=0.0, seed=2).sampled() for _ in range(100))
    with pytest.raises(ValueError, match="sample_rate=2"):
        PredictionLog(str(tmp_path), sample_rate=2)


def test_fsspec_uri(tmp_path: Path) -> None:
    log = PredictionLog(f"file://{tmp_path}")
    log.add([_rec(1)])
    log.flush()
    assert len(read(f"file://{tmp_path}")) == 1
