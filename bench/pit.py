"""Scenario 3: point-in-time training set, F feature rows (10 Float64 features, ~10 versions per entity)
joined to E labelled entity rows.

- keel: ``keel.features.pit``, the default engine of ``training.build`` (one DuckDB window pass per view
  over feature rows placed at their arrival time, with Feast's semantics);
- Feast's DuckDB offline store and Feast's file (dask) offline store: ``get_historical_features`` on the
  same feature view (the file store on a slice of the entities, compared by labelled rows/s);
- raw DuckDB: one ``ASOF LEFT JOIN`` over the same parquet, with the view's TTL applied (inclusive at
  ``event - ttl``, as Feast); it ignores ``created``, which this data makes harmless (no late rows).

Every system's output, ordered by event id, must equal the raw join's before any time is reported.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import Profile, Row, better_ratio, client_cpus, in_child, median, redis_server, runs_in_child, say

PROJECT, KEY, VIEW, SERVICE = "keel_bench_pit", "user_id", "pit_fv", "pit_service"
FEATURES = [f"p{i}" for i in range(10)]
TTL_DAYS = 7
T0 = pd.Timestamp("2026-09-01T00:00:00Z").as_unit("us")


def write_data(root: Path, feature_rows: int, events: int, seed: int = 11) -> None:
    """Feature rows at distinct (entity, second) points over 60 days; events at random times after T0.
    ``created`` equals the event time, so no row arrives late and ties cannot occur: every engine's
    answer is then defined without reference to tie-break rules, and must be the same."""
    rng = np.random.default_rng(seed)
    entities = max(1, feature_rows // 10)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    keys = rng.integers(0, entities, feature_rows)
    secs = rng.choice(60 * 86_400, feature_rows, replace=True)
    f = pd.DataFrame({KEY: keys.astype("int64"), "s": secs}).drop_duplicates([KEY, "s"])
    f["event_timestamp"] = (T0 + pd.to_timedelta(f.pop("s"), unit="s")).astype("datetime64[us, UTC]")
    f["created"] = f["event_timestamp"]
    for i, c in enumerate(FEATURES):
        f[c] = rng.normal(i, 1.0, len(f))
    f.to_parquet(data / "features.parquet", index=False, row_group_size=500_000)
    e = pd.DataFrame({"event_id": np.arange(events, dtype="int64"), KEY: rng.integers(0, entities, events),
                      "event_timestamp": (T0 + pd.to_timedelta(rng.integers(0, 62 * 86_400, events), unit="s"))
                      .astype("datetime64[us, UTC]"), "label": rng.integers(0, 2, events)})
    e.to_parquet(data / "events.parquet", index=False)


def write_repo(root: Path, offline: str) -> Path:
    from bench.online import ROOT

    repo = root / f"repo-{offline}"
    repo.mkdir()
    text = (ROOT / "examples" / "fraud" / "feature_repo" / "feature_store.yaml").read_text()
    text = text.replace("project: keel_fraud", f"project: {PROJECT}").replace("type: duckdb", f"type: {offline}")
    (repo / "feature_store.yaml").write_text(text)
    (repo / "definitions.py").write_text(textwrap.dedent(f'''\
        from datetime import timedelta

        from feast import Entity, FeatureService, FeatureView, Field, FileSource
        from feast.types import Float64
        from feast.value_type import ValueType

        user = Entity(name="user", join_keys=["{KEY}"], value_type=ValueType.INT64)
        {VIEW} = FeatureView(name="{VIEW}", entities=[user], ttl=timedelta(days={TTL_DAYS}), online=False,
            schema=[Field(name=n, dtype=Float64) for n in {FEATURES!r}],
            source=FileSource(name="pit_src", path={str(root / "data" / "features.parquet")!r},
                              timestamp_field="event_timestamp", created_timestamp_column="created"))
        {SERVICE} = FeatureService(name="{SERVICE}", features=[{VIEW}])
        '''))
    return repo


def _settings(root: str, offline: str) -> Any:
    """Settings for a repo; `feast apply` wants its online store (Redis) up, so run() starts one."""
    from keel.config import load_settings

    port = int((Path(root).parent / "redis-port").read_text())
    return load_settings(home=Path(root) / f"keel-{offline}", feature_repo=Path(root) / f"repo-{offline}",
                         redis_port=port, pushgateway_port=1)


def _keel(root: str, keep: bool) -> tuple[float, pd.DataFrame | None]:
    """keel's engine, as ``training.build`` calls it (build then also hashes and snapshots the frame).
    Timed from the call, like the others: imports and opening the store are the same for keel and Feast."""
    from keel.features import pit, store

    _warm_imports()
    fs = store.open_store(_settings(root, "duckdb"))
    service = fs.get_feature_service(SERVICE)
    events = pd.read_parquet(Path(root) / "data" / "events.parquet")
    t0 = time.perf_counter()
    job = pit.get_historical_features(fs, events, service, filter_by_created_timestamp=True)
    df = job.to_df()
    seconds = time.perf_counter() - t0
    if not pit.is_keel_job(job):
        raise AssertionError("keel's engine handed this request back to Feast")
    return seconds, df if keep else None


def _feast(root: str, offline: str, keep: bool) -> tuple[float, pd.DataFrame | None]:
    from keel.features import store

    _warm_imports()
    fs = store.open_store(_settings(root, offline))
    service = fs.get_feature_service(SERVICE)
    events = pd.read_parquet(Path(root) / "data" / "events.parquet")
    extra = {"filter_by_created_timestamp": True} if offline == "duckdb" else {}  # what keel's engine does
    t0 = time.perf_counter()
    df = fs.get_historical_features(entity_df=events, features=service, **extra).to_df()
    return time.perf_counter() - t0, df if keep else None


def _warm_imports() -> None:
    """ibis' DuckDB backend takes 0.5 s to import, once per process, in both keel's engine and Feast's
    DuckDB store; like every other import, not part of the join's time."""
    import ibis.backends.duckdb  # noqa: F401


def _raw(root: str, keep: bool = True) -> tuple[float, pd.DataFrame | None]:
    import duckdb

    d = Path(root) / "data"
    cols = ", ".join(f"CASE WHEN f.event_timestamp >= e.event_timestamp - INTERVAL {TTL_DAYS} DAY THEN f.{c} END AS {c}"
                     for c in FEATURES)
    t0 = time.perf_counter()
    df = duckdb.sql(f"""
        SELECT e.*, {cols}
        FROM read_parquet('{d / "events.parquet"}') e
        ASOF LEFT JOIN read_parquet('{d / "features.parquet"}') f
          ON e.{KEY} = f.{KEY} AND e.event_timestamp >= f.event_timestamp""").df()
    return time.perf_counter() - t0, df if keep else None


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("event_id").reset_index(drop=True)[["event_id", KEY, *FEATURES]]


def _same(name: str, got: pd.DataFrame, want: pd.DataFrame) -> None:
    g, w = _canon(got), _canon(want)
    if len(g) != len(w) or not (g["event_id"].to_numpy() == w["event_id"].to_numpy()).all():
        raise AssertionError(f"{name}: {len(g)} rows, expected {len(w)} with the same event ids")
    if not np.allclose(g[FEATURES].to_numpy(dtype="float64"), w[FEATURES].to_numpy(dtype="float64"),
                       equal_nan=True, rtol=0, atol=1e-12):
        raise AssertionError(f"{name}: feature values differ from the raw DuckDB ASOF join")


def _timed(label: str, fn: Any, *args: Any, runs: int) -> tuple[list[float], float, pd.DataFrame]:
    """The warm-up's result is the one checked; (times, peak RSS, result)."""
    out, times, peak = runs_in_child(fn, *args, runs=runs, cpus=client_cpus())
    say(f"pit: {label} median {median(times):.2f} s")
    return times, peak, out


def run(profile: Profile, tmp: Path) -> list[Row]:
    from keel.features import store

    tmp.mkdir(parents=True)
    fr, ev = profile.pit_feature_rows, profile.pit_entity_rows
    say(f"pit: writing {fr:,} feature rows and {ev:,} labelled rows")
    big, small = tmp / "big", tmp / "small"
    big.mkdir()
    write_data(big, fr, ev)
    if profile.pit_file_store_rows < fr:  # the file store on a slice, proportionally fewer labelled rows
        small.mkdir()
        share = profile.pit_file_store_rows / fr
        write_data(small, profile.pit_file_store_rows, max(1, int(ev * share)))
    else:
        small = big
    with redis_server() as addr:
        (tmp / "redis-port").write_text(addr.split(":")[1])
        for root in dict.fromkeys((big, small)):
            for offline in ("duckdb", "file"):
                write_repo(root, offline)
                store.apply(_settings(str(root), offline))
    raw_t, _, raw = _timed("raw DuckDB ASOF JOIN", _raw, str(big), runs=profile.runs)
    keel_t, keel_peak, k = _timed("keel", _keel, str(big), runs=profile.runs)
    _same("keel", k, raw)
    duck_t, _, d = _timed("Feast DuckDB store", _feast, str(big), "duckdb", runs=profile.runs)
    _same("Feast DuckDB store", d, raw)
    small_raw = raw if small is big else in_child(_raw, str(small))[0][1]
    file_t, _, fl = _timed("Feast file store (slice)", _feast, str(small), "file", runs=profile.runs)
    # Feast's file store leaves out labelled rows that no feature row matches (most of them, not all),
    # where its DuckDB store, keel and the raw join keep them with nulls: it must equal the raw join on
    # the rows it keeps, and only unmatched rows may be missing
    kept = small_raw["event_id"].isin(fl["event_id"])
    unmatched = small_raw[FEATURES].isna().all(axis=1)
    if (~kept & ~unmatched).any():
        raise AssertionError(f"Feast file store: left out {int((~kept & ~unmatched).sum())} matched labelled rows")
    dropped = int((~kept).sum())
    _same("Feast file store", fl, small_raw[kept])
    if small is big:
        small_keel_t, sk = keel_t, None
    else:
        small_keel_t, _, sk = _timed("keel (slice)", _keel, str(small), runs=profile.runs)
        _same("keel (slice)", sk, small_raw)
    del k, d, fl, sk, raw, small_raw
    keel_s, raw_s, duck_s = median(keel_t), median(raw_t), median(duck_t)
    file_rps = len(pd.read_parquet(small / "data" / "events.parquet")) / median(file_t)
    keel_small_rps = len(pd.read_parquet(small / "data" / "events.parquet")) / median(small_keel_t)
    sliced = "" if small is big else f" (file store: a slice of {profile.pit_file_store_rows:,})"
    case = f"{fr:,} feature rows, {ev:,} labelled rows, 10 features{sliced}"
    return [
        Row("point-in-time join", case, "keel", "time", keel_s, "s", keel_t, "Feast file store",
            better_ratio(keel_small_rps, file_rps, False), ">= 50x the file store; <= 1.5x raw DuckDB",
            keel_small_rps / file_rps >= 50 and keel_s / raw_s <= 1.5,
            f"{keel_s / raw_s:.2f}x raw DuckDB; {better_ratio(keel_s, duck_s, True):.1f}x faster than Feast DuckDB; "
            f"peak RSS {keel_peak:.0f} MB; vs the file store: {keel_small_rps:,.0f} vs {file_rps:,.0f} "
            "labelled rows/s"),
        Row("point-in-time join", case, "Feast DuckDB store", "time", duck_s, "s", duck_t),
        Row("point-in-time join", case, "Feast file (dask) store", "labelled rows/s", file_rps, "rows/s",
            file_t, note=f"{median(file_t):.2f} s per run; left out {dropped:,} unmatched "
            "labelled rows (the others keep them, with nulls)"),
        Row("point-in-time join", case, "raw DuckDB ASOF JOIN", "time", raw_s, "s", raw_t),
    ]
