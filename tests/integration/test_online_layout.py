"""keel's direct reads and writes of Feast's Redis layout agree with Feast's own, both ways, on a real
Redis and a real Feast store: random rows with nulls, NaN, full-range ints, unicode strings, bools,
single and composite (int + string) entity keys, tied event times and rows outside the window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from keel.features import redis as online
from keel.features.store import open_store
from keel.stack import Stack
from keel.stack.supervisor import _group_members
from tests.conftest import isolated_settings

END = datetime(2026, 10, 1, 12, 0, 0, 123457, tzinfo=timezone.utc)  # no row sits exactly on it
START = END - timedelta(days=3)
N_CUSTOMERS, N_MERCHANTS, VERSIONS = 300, 40, 4
UNKNOWN_CUSTOMER, UNKNOWN_MERCHANT = 10**15, "nobody"


@pytest.fixture(scope="module")
def redis_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Only Redis, from keel's own stack on free ports (this module flushes its databases)."""
    settings = isolated_settings(tmp_path_factory.mktemp("layout") / "keel")
    st = Stack(settings)
    st.up(["redis"])
    pgids = st.pgids()
    yield settings
    st.down(["redis"])
    assert not [p for g in pgids for p in _group_members(g)], "redis left running"


def _frames(seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def stamps(n: int) -> pd.Series:
        us = (END - timedelta(days=4)).timestamp() * 1e6 + rng.integers(0, 5 * 86_400 * 10**6, n)
        us = np.where(rng.random(n) < 0.2, us // 1_000_000 * 1_000_000, us)  # some whole seconds (no nanos field)
        return pd.Series(pd.to_datetime(us.astype("int64"), unit="us", utc=True))

    def created(ts: pd.Series) -> pd.Series:
        c = ts + pd.to_timedelta(rng.integers(1, 10**9, len(ts)), unit="us")
        return c.where(rng.random(len(ts)) > 0.1)  # some rows have no created time

    def with_ties(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
        # a third of the entities get two rows at the same event time: the created time decides
        first = df.groupby(key).head(1).index
        tie = first[rng.random(len(first)) < 0.33]
        df.loc[tie + 1, "event_timestamp"] = df.loc[tie, "event_timestamp"].to_numpy()
        both = df.loc[tie + 1, "created"].isna() & df.loc[tie, "created"].isna().to_numpy()
        df.loc[both[both].index, "created"] = df.loc[both[both].index, "event_timestamp"]
        return df

    n = N_CUSTOMERS * VERSIONS
    null = lambda p=0.15: rng.random(n) < p  # noqa: E731
    customers = np.repeat(np.arange(N_CUSTOMERS, dtype="int64") * 7_919 - 500_000, VERSIONS)  # negatives too
    f64 = rng.normal(0, 1e3, n)
    f64[rng.random(n) < 0.05] = 0.0
    f64[rng.random(n) < 0.02] = -0.0
    f64[null()] = np.nan
    words = np.array(["", "a", "héllo", "日本語", "x" * 300, "nan", "None"], dtype=object)
    suffix = pd.Series(rng.integers(0, 99, n)).astype(str).to_numpy()
    strings = pd.Series(words[rng.integers(0, len(words), n)] + suffix)
    strings[null()] = None
    ts = stamps(n)
    mixed = pd.DataFrame({
        "customer_id": customers,
        "f64": f64,
        "f32": pd.Series(rng.normal(0, 10, n).astype("float32")).mask(null()),
        "i64": rng.integers(-(2**63), 2**63 - 1, n, dtype="int64"),
        "i64n": pd.array(rng.integers(-(2**52), 2**52, n), dtype="Int64"),
        "i32": pd.array(rng.integers(-(2**31), 2**31 - 1, n), dtype="Int32"),
        "b": pd.array(rng.random(n) < 0.5, dtype="boolean"),
        "s": strings,
        "event_timestamp": ts,
        "created": created(ts),
    })
    for col in ("i64n", "i32", "b"):
        mixed.loc[null(), col] = pd.NA
    mixed = with_ties(mixed, ["customer_id"])

    m = N_CUSTOMERS * 2
    pair_ts = stamps(m)
    pair = pd.DataFrame({
        "customer_id": rng.choice(customers, m),
        "merchant_code": [f"m-{i}é" for i in rng.integers(0, N_MERCHANTS, m)],
        "amount": pd.Series(rng.uniform(-50, 500, m)).mask(rng.random(m) < 0.1),
        "n": rng.integers(0, 1000, m),
        "label": pd.Series([f"lab{i}" for i in rng.integers(0, 5, m)]).mask(rng.random(m) < 0.1),
        "event_timestamp": pair_ts,
        "created": created(pair_ts),
    })
    k = N_MERCHANTS * VERSIONS
    merch_ts = stamps(k)
    merch = pd.DataFrame({
        "merchant_code": [f"m-{i}é" for i in np.repeat(np.arange(N_MERCHANTS), VERSIONS)],
        "risk": rng.beta(1, 20, k),
        "flag": rng.random(k) < 0.3,
        "event_timestamp": merch_ts,
        "created": created(merch_ts),
    })
    return {"mixed": mixed, "pair": pair, "merch": with_ties(merch, ["merchant_code"])}


KEYS = {"mixed": ["customer_id"], "pair": ["customer_id", "merchant_code"], "merch": ["merchant_code"]}
FEATURES = {"mixed": ["f64", "f32", "i64", "i64n", "i32", "b", "s"], "pair": ["amount", "n", "label"],
            "merch": ["risk", "flag"]}
REFS = [f"{v}:{f}" for v, fs in FEATURES.items() for f in fs]


def _definitions(data_dir: Path) -> list[Any]:
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    merchant = Entity(name="merchant", join_keys=["merchant_code"], value_type=ValueType.STRING)

    def source(name: str) -> FileSource:
        return FileSource(name=name, path=str(data_dir / f"{name}.parquet"), timestamp_field="event_timestamp",
                          created_timestamp_column="created")

    cid, mcode = Field(name="customer_id", dtype=Int64), Field(name="merchant_code", dtype=String)
    mixed = FeatureView(name="mixed", entities=[customer], ttl=timedelta(days=1), source=source("mixed"), schema=[
        cid, Field(name="f64", dtype=Float64), Field(name="f32", dtype=Float32), Field(name="i64", dtype=Int64),
        Field(name="i64n", dtype=Int64), Field(name="i32", dtype=Int32), Field(name="b", dtype=Bool),
        Field(name="s", dtype=String)])
    pair = FeatureView(name="pair", entities=[customer, merchant], ttl=timedelta(0), source=source("pair"), schema=[
        cid, mcode, Field(name="amount", dtype=Float64), Field(name="n", dtype=Int64),
        Field(name="label", dtype=String)])
    merch = FeatureView(name="merch", entities=[merchant], ttl=timedelta(days=2), source=source("merch"), schema=[
        mcode, Field(name="risk", dtype=Float64), Field(name="flag", dtype=Bool)])
    service = FeatureService(name="layout_svc", features=[mixed[["f64", "f32", "i64", "i64n", "i32", "b"]],
                                                          pair[["amount", "n"]], merch])
    return [customer, merchant, mixed, pair, merch, service]


def _store(root: Path, port: int, db: int, key_ttl: int | None = None):
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    cfg = RepoConfig(project="layout_test", provider="local", repo_path=str(root),
                     registry={"registry_type": "file", "path": str(root / "registry.db"), "cache_ttl_seconds": 0},
                     online_store={"type": "redis", "connection_string": f"127.0.0.1:{port},db={db}",
                                   "key_ttl_seconds": key_ttl},
                     offline_store={"type": "duckdb"}, entity_key_serialization_version=3)
    return FeatureStore(config=cfg)


@pytest.fixture(scope="module")
def repo(redis_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("layout_repo")
    frames = _frames(seed=11)
    for name, df in frames.items():
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / f"{name}.parquet",
                       coerce_timestamps="us")
    fs = _store(root, redis_settings.redis_port, db=3)
    fs.apply(_definitions(root))
    return {"root": root, "fs": fs, "frames": frames, "port": redis_settings.redis_port,
            "r": redis.Redis(port=redis_settings.redis_port, db=3)}


def _dump(r: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    return {k: r.hgetall(k) for k in r.scan_iter(count=1000)}


def _rows(frames: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Every customer/merchant pair of the pair view, plus unknown entities and a repeated row."""
    pairs = frames["pair"][["customer_id", "merchant_code"]].drop_duplicates()
    rows = [{"customer_id": int(c), "merchant_code": m} for c, m in pairs.itertuples(index=False)]
    rows += [{"customer_id": UNKNOWN_CUSTOMER, "merchant_code": "m-1é"},
             {"customer_id": int(frames["mixed"]["customer_id"].iloc[0]), "merchant_code": UNKNOWN_MERCHANT},
             rows[0]]
    return rows


def _expected(frames: dict[str, pd.DataFrame], rows: list[dict[str, Any]], start: datetime = START,
              end: datetime = END) -> dict[str, list[Any]]:
    """What the online store should answer, from pandas alone: the latest row per entity in [start, end)
    by event time then created time (a missing created time loses), nulls and NaN as None."""
    out: dict[str, list[Any]] = {"customer_id": [r["customer_id"] for r in rows],
                                 "merchant_code": [r["merchant_code"] for r in rows]}
    for view, df in frames.items():
        keys = KEYS[view]
        win = df[(df["event_timestamp"] >= start) & (df["event_timestamp"] < end)]
        latest = (win.sort_values(["event_timestamp", "created"], na_position="first", kind="stable")
                  .drop_duplicates(keys, keep="last").set_index(keys))
        for f in FEATURES[view]:
            col = latest[f].astype(object).where(latest[f].notna(), None).to_dict()
            if f == "f32":
                col = {k: None if v is None else float(np.float32(v)) for k, v in col.items()}
            ident = (lambda r, keys=keys: r[keys[0]]) if len(keys) == 1 else (
                lambda r, keys=keys: tuple(r[k] for k in keys))
            out[f] = [_py(col.get(ident(r))) for r in rows]
    return out


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _feast_read(fs: Any, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return fs.get_online_features(features=REFS, entity_rows=rows).to_dict()


def test_keel_writes_what_feast_reads(repo: dict[str, Any]) -> None:
    fs, r, frames = repo["fs"], repo["r"], repo["frames"]
    r.flushdb()
    for view in FEATURES:
        stats = online.materialize_view(fs, fs.get_feature_view(view), START, END)
        assert stats.written == stats.rows > 0 and stats.skipped == 0
    rows = _rows(frames)
    want = _expected(frames, rows)
    assert _feast_read(fs, rows) == want
    assert online.Reader(fs, REFS).read(rows) == want
    # Feast's online read does not filter by the view's TTL (1 day): values far older are still served
    assert datetime.now(timezone.utc) - END > timedelta(days=1) and any(v is not None for v in want["f64"])


def test_feast_writes_what_keel_reads(repo: dict[str, Any]) -> None:
    fs, r, frames = repo["fs"], repo["r"], repo["frames"]
    r.flushdb()
    fs.materialize(start_date=START, end_date=END)
    rows = _rows(frames)
    feast = _feast_read(fs, rows)
    assert feast == _expected(frames, rows)
    assert online.Reader(fs, REFS).read(rows) == feast
    # a push through Feast's write_to_online_store: newer rows for some entities, with nulls
    newer = frames["mixed"].groupby("customer_id").tail(1).head(25).copy()
    newer["event_timestamp"] = END + timedelta(hours=1)
    newer.loc[newer.index[::3], "f64"] = np.nan
    newer.loc[newer.index[1::3], "s"] = None
    fs.write_to_online_store("mixed", newer)
    assert online.Reader(fs, REFS).read(rows) == _feast_read(fs, rows)
    assert _feast_read(fs, rows)["f64"] != feast["f64"]


def test_keel_stores_feasts_bytes(repo: dict[str, Any]) -> None:
    fs, r = repo["fs"], repo["r"]
    r.flushdb()
    fs.materialize(start_date=START, end_date=END)
    by_feast = _dump(r)
    r.flushdb()
    for view in FEATURES:
        online.materialize_view(fs, fs.get_feature_view(view), START, END, record=False)
    by_keel = _dump(r)
    assert len(by_keel) == len(by_feast) > N_CUSTOMERS
    assert by_keel == by_feast
    # and write_frame of an in-memory frame with duplicates stores the same as Feast's write_to_online_store
    frame = repo["frames"]["mixed"].sample(frac=1.0, random_state=1)
    frame = frame[frame["event_timestamp"] < END]
    r.flushdb()
    fs.write_to_online_store("mixed", frame)
    by_feast = _dump(r)
    r.flushdb()
    online.write_frame(r, online.ViewLayout.of(fs.get_feature_view("mixed"), fs.config), frame)
    # Feast keeps, per entity, the first row of the latest event time it meets; keel the latest created
    tied = frame.groupby("customer_id")["event_timestamp"].transform(lambda t: (t == t.max()).sum() > 1)
    tied_keys = set(online.entity_keys("layout_test", [("customer_id", online.INT64)],
                                       {"customer_id": frame.loc[tied, "customer_id"]}).to_pylist())
    mine = _dump(r)
    assert mine.keys() == by_feast.keys()
    assert {k: v for k, v in mine.items() if k not in tied_keys} == {
        k: v for k, v in by_feast.items() if k not in tied_keys}


def test_key_ttl_as_feast_sets_it(repo: dict[str, Any]) -> None:
    fs = _store(repo["root"], repo["port"], db=4, key_ttl=3600)
    r = redis.Redis(port=repo["port"], db=4)
    frame = repo["frames"]["merch"].groupby("merchant_code").tail(1)
    r.flushdb()
    fs.write_to_online_store("merch", frame)
    feast_ttl = {k: r.ttl(k) for k in r.scan_iter()}
    r.flushdb()
    online.write_frame(r, online.ViewLayout.of(fs.get_feature_view("merch"), fs.config), frame)
    keel_ttl = {k: r.ttl(k) for k in r.scan_iter()}
    assert keel_ttl.keys() == feast_ttl.keys() and len(keel_ttl) == N_MERCHANTS
    assert all(3590 <= t <= 3600 for t in [*keel_ttl.values(), *feast_ttl.values()])
    r.flushdb()


def test_an_older_row_never_overwrites_a_newer_one(repo: dict[str, Any]) -> None:
    fs, r, frames = repo["fs"], repo["r"], repo["frames"]
    layout = online.ViewLayout.of(fs.get_feature_view("mixed"), fs.config)
    r.flushdb()
    online.materialize_view(fs, fs.get_feature_view("mixed"), START, END, record=False)
    before = _dump(r)
    mixed = frames["mixed"]
    latest = mixed[(mixed["event_timestamp"] >= START) & (mixed["event_timestamp"] < END)].sort_values(
        "event_timestamp")
    latest = latest.groupby("customer_id").tail(1).copy()
    older = latest.assign(f64=1.5, s="older", event_timestamp=latest["event_timestamp"] - timedelta(microseconds=1))
    same = latest.assign(f64=2.5, s="same instant")
    stats = online.write_frame(r, layout, pd.concat([older, same]).sample(frac=1.0, random_state=2))
    assert stats.written == 0 and stats.skipped == len(latest)
    fs.write_to_online_store("mixed", older)  # Feast refuses them too
    assert _dump(r) == before
    # newer rows win, also when the frame holds older ones for the same entities, in any order
    newer = latest.assign(f64=3.5, s="newer", event_timestamp=latest["event_timestamp"] + timedelta(microseconds=1))
    stats = online.write_frame(r, layout, pd.concat([older, newer, same]).sample(frac=1.0, random_state=3))
    assert stats.written == len(latest) and stats.skipped == 0
    rows = [{"customer_id": int(c)} for c in latest["customer_id"]]
    got = fs.get_online_features(features=["mixed:f64", "mixed:s"], entity_rows=rows).to_dict()
    assert set(got["f64"]) == {3.5} and set(got["s"]) == {"newer"}
    # and Feast's own writes of older rows leave keel's newer ones alone
    fs.write_to_online_store("mixed", latest)
    assert online.Reader(fs, ["mixed:f64"]).read(rows)["f64"] == got["f64"]


def test_incremental_windows_load_each_row_once(repo: dict[str, Any]) -> None:
    """Two consecutive windows give what one window over both gives (keel's windows are [start, end))."""
    fs, r, frames = repo["fs"], repo["r"], repo["frames"]
    mid = START + timedelta(days=1, hours=7, microseconds=3)
    r.flushdb()
    for view in FEATURES:
        online.materialize_view(fs, fs.get_feature_view(view), START, mid, record=False)
    rows = _rows(frames)
    assert online.Reader(fs, REFS).read(rows) == _expected(frames, rows, START, mid)
    for view in FEATURES:
        online.materialize_view(fs, fs.get_feature_view(view), mid, END, record=False)
    assert online.Reader(fs, REFS).read(rows) == _expected(frames, rows) == _feast_read(fs, rows)


def test_serving_reads_through_keel_with_the_serving_client(repo: dict[str, Any], redis_settings: Any) -> None:
    from keel.serving.features import OnlineFeatures

    fs, r, frames = repo["fs"], repo["r"], repo["frames"]
    r.flushdb()
    for view in FEATURES:
        online.materialize_view(fs, fs.get_feature_view(view), START, END, record=False)
    fast = OnlineFeatures(fs, "layout_svc", defaults={})
    sdk = OnlineFeatures(fs, "layout_svc", defaults={})
    sdk.reader = None
    assert fast.reader is not None
    rows = _rows(frames)
    got, want = fast._from_store(rows), sdk._from_store(rows)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # the serving store's client: KEEL_FEATURE_TIMEOUT_MS on both socket timeouts, and no retries
    served = open_store(redis_settings.model_copy(update={"feature_timeout_ms": 40.0}), serving=True)
    client = online.redis_client(served)
    kw = client.connection_pool.connection_kwargs
    assert kw["socket_timeout"] == kw["socket_connect_timeout"] == 0.04
    assert kw["retry"].get_retries() == 0


def test_feast_materialize_through_keels_engine_plugin(repo: dict[str, Any], tmp_path: Path) -> None:
    """`feast materialize` itself (Feast's CLI, in a repo whose feature_store.yaml names keel's batch engine)
    stores the bytes Feast's own engine stores; in process, FeatureStore.materialize does too."""
    import subprocess
    import sys

    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    fs, r, root = repo["fs"], repo["r"], repo["root"]
    r.flushdb()
    fs.materialize(start_date=START, end_date=END)
    by_feast = _dump(r)
    # a repo directory of its own over the same registry, as a user would write it
    (tmp_path / "feature_store.yaml").write_text(
        "project: layout_test\nprovider: local\n"
        f"registry:\n  registry_type: file\n  path: {root / 'registry.db'}\n  cache_ttl_seconds: 0\n"
        f"online_store:\n  type: redis\n  connection_string: 127.0.0.1:{repo['port']},db=3\n"
        "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n"
        "batch_engine:\n  type: keel.features.redis.engine.KeelComputeEngine\n")
    r.flushdb()
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run([str(feast), "--log-level", "INFO", "-c", str(tmp_path), "materialize",
                           START.isoformat(), END.isoformat()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _dump(r) == by_feast
    for view in FEATURES:  # keel's writer took every view (none fell back to Feast's engine)
        assert f"{view}: keel wrote" in done.stderr, done.stderr[-2000:]
    # in process: the engine's own record says what it wrote
    cfg = RepoConfig(project="layout_test", provider="local", repo_path=str(tmp_path),
                     registry={"registry_type": "file", "path": str(root / "registry.db"), "cache_ttl_seconds": 0},
                     online_store={"type": "redis", "connection_string": f"127.0.0.1:{repo['port']},db=3"},
                     offline_store={"type": "duckdb"}, entity_key_serialization_version=3,
                     batch_engine={"type": "keel.features.redis.engine.KeelComputeEngine"})
    plugged = FeatureStore(config=cfg)
    r.flushdb()
    plugged.materialize(start_date=START, end_date=END)
    assert _dump(r) == by_feast
    engine = plugged._get_provider().batch_engine
    assert {v: s.written for v, s in engine.written.items()} == {
        v: len(_latest_in_window(repo["frames"][v], KEYS[v])) for v in FEATURES}


def _latest_in_window(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    win = df[(df["event_timestamp"] >= START) & (df["event_timestamp"] <= END)]
    return win.drop_duplicates(keys)
