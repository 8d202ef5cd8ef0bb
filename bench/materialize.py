"""Scenario 2: materialization, parquet → Redis, N entities × 50 Float64 features.

- keel: ``keel.features.store.materialize`` (its default engine writes Feast's Redis layout directly);
- Feast: the same function with ``engine="feast"``, i.e. Feast's own ``materialize`` (on a slice of the
  entities, since it is orders of magnitude slower; compared by rows/s);
- keel's engine plug-in: Feast's own ``FeatureStore.materialize``, handed ``KeelComputeEngine`` by the
  repo's ``feature_store.yaml`` (what ``feast materialize`` gets), on the full entities;
- floor: the same hashes, packed as RESP before the clock starts, pipelined on a raw socket.

Each run starts from an empty Redis; each system's runs share one fresh process, so its peak memory is
its own. After keel's runs, Feast's ``get_online_features`` must read back exactly the source's values
(a sample), and the floor's hashes must equal keel's byte for byte.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import (
    Profile,
    Row,
    better_ratio,
    client_cpus,
    median,
    redis_server,
    runs_in_child,
    say,
    server_cpus,
)

PROJECT, KEY = "keel_bench_mat", "user_id"


def _features(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def write_repo(root: Path, entities: int, nfeat: int, slice_rows: int, seed: int = 3) -> Path:
    from bench.online import ROOT

    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    end = pd.Timestamp("2026-11-22T00:00:00Z").as_unit("us")
    ev = end - pd.to_timedelta(rng.integers(60, 86_400, entities), unit="s")
    df = pd.DataFrame({KEY: np.arange(entities, dtype="int64"), "event_timestamp": ev.as_unit("us")})
    df["created"] = df["event_timestamp"]
    for i, f in enumerate(_features(nfeat)):
        col = rng.gamma(2.0 + i % 5, 3.0, entities)
        if i % 10 == 9:  # some nulls: Feast's layout has a form for them too
            col[rng.random(entities) < 0.01] = np.nan
        df[f] = col
    df.to_parquet(data / "full.parquet", index=False, row_group_size=100_000)
    df.head(slice_rows).to_parquet(data / "slice.parquet", index=False)
    repo = root / "repo"
    repo.mkdir()
    text = (ROOT / "examples" / "fraud" / "feature_repo" / "feature_store.yaml").read_text()
    (repo / "feature_store.yaml").write_text(text.replace("project: keel_fraud", f"project: {PROJECT}"))
    views = []
    for name, file in (("bench_full", "full.parquet"), ("bench_slice", "slice.parquet")):
        views.append(f'''\
            {name} = FeatureView(name="{name}", entities=[user], ttl=timedelta(days=30), online=True,
                schema=[Field(name=f"f{{i:02d}}", dtype=Float64) for i in range({nfeat})],
                source=FileSource(name="{name}_src", path={str(data / file)!r}, timestamp_field="event_timestamp",
                                  created_timestamp_column="created"))''')
    (repo / "definitions.py").write_text(textwrap.dedent('''\
        from datetime import timedelta

        from feast import Entity, FeatureView, Field, FileSource
        from feast.types import Float64
        from feast.value_type import ValueType

        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
        ''') + "\n".join(textwrap.dedent(v) for v in views) + "\n")
    return repo


def _settings(home: str, repo: str, redis_addr: str) -> Any:
    from keel.config import load_settings

    port = redis_addr.split(":")[1]
    return load_settings(home=Path(home), feature_repo=Path(repo), redis_port=int(port), pushgateway_port=1)


def _materialize(home: str, repo: str, redis_addr: str, view: str, engine: str, keep: bool) -> tuple[float, None]:
    """Seconds of one materialize call into an emptied Redis (the runs share one process: a fresh one
    spends seconds importing Feast's modules, which typeguard instruments at import, the same for every
    engine and not what is compared)."""
    import time

    from keel.features import store

    s = _settings(home, repo, redis_addr)
    end = pd.Timestamp("2026-11-22T00:00:00Z").to_pydatetime()
    if engine == "plugin":  # Feast's own FeatureStore.materialize, handed keel's engine by feature_store.yaml
        fs = store.open_store(s)
        _flush(redis_addr)
        t0 = time.perf_counter()
        fs.materialize(start_date=end - timedelta(days=30), end_date=end, feature_views=[view])
        return time.perf_counter() - t0, None
    _flush(redis_addr)
    t0 = time.perf_counter()
    store.materialize(s, end=end, views=[view], full=True, engine=engine)
    return time.perf_counter() - t0, None


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _encoded(redis_addr: str, chunk: int = 2000) -> tuple[list[tuple[int, bytes]], dict[bytes, dict[bytes, bytes]]]:
    """Every hash keel wrote, read back raw and packed as HSET commands, ``chunk`` per buffer: the floor
    sends exactly these bytes. Also returns the hashes, to compare with what the floor leaves."""
    import redis

    host, port = redis_addr.split(":")
    r = redis.Redis(host=host, port=int(port))
    keys = list(r.scan_iter(count=10_000))
    hashes: dict[bytes, dict[bytes, bytes]] = {}
    for i in range(0, len(keys), 5000):
        pipe = r.pipeline(transaction=False)
        for key in keys[i:i + 5000]:
            pipe.hgetall(key)
        hashes.update(zip(keys[i:i + 5000], pipe.execute(), strict=True))
    cmds = [_resp(b"HSET", k, *[x for kv in sorted(v.items()) for x in kv]) for k, v in hashes.items()]
    return [(len(cmds[i:i + chunk]), b"".join(cmds[i:i + chunk])) for i in range(0, len(cmds), chunk)], hashes


def _floor(redis_addr: str, chunks_path: str, keep: bool) -> tuple[float, None]:
    """Pipelined HSETs into an emptied Redis with nothing left to do but send: the wire bytes are ready,
    replies are counted."""
    import pickle
    import socket
    import time

    with open(chunks_path, "rb") as f:
        chunks: list[tuple[int, bytes]] = pickle.load(f)
    _flush(redis_addr)
    host, port = redis_addr.split(":")
    sock = socket.create_connection((host, int(port)))
    t0 = time.perf_counter()
    for expected, buf in chunks:
        sock.sendall(buf)
        replies = 0
        while replies < expected:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            replies += data.count(b"\n")
    seconds = time.perf_counter() - t0
    sock.close()
    return seconds, None


def _flush(redis_addr: str) -> None:
    import redis

    host, port = redis_addr.split(":")
    redis.Redis(host=host, port=int(port)).flushall()


def _check_feast_reads(home: str, repo: str, redis_addr: str, view: str, data: Path, sample: int = 500) -> None:
    from keel.features import store

    s = _settings(home, repo, redis_addr)
    fs = store.open_store(s)
    src = pd.read_parquet(data)
    rows = src.sample(n=min(sample, len(src)), random_state=0)
    feats = [c for c in src.columns if c.startswith("f")]
    got = fs.get_online_features(features=[f"{view}:{f}" for f in feats],
                                 entity_rows=[{KEY: int(k)} for k in rows[KEY]]).to_df()
    want = rows[feats].reset_index(drop=True)
    if not np.allclose(got[feats].to_numpy(dtype="float64"), want.to_numpy(), equal_nan=True, rtol=0, atol=0):
        raise AssertionError(f"Feast's get_online_features does not read back what keel wrote for {view}")


def run(profile: Profile, tmp: Path) -> list[Row]:
    import pickle

    from keel.features import store

    tmp.mkdir(parents=True)
    n, nfeat = profile.mat_entities, profile.mat_features
    say(f"materialize: writing {n:,} x {nfeat} parquet")
    repo = write_repo(tmp, n, nfeat, profile.mat_feast_entities)
    home = str(tmp / "keel")
    rows: list[Row] = []
    with redis_server(server_cpus()) as addr:
        store.apply(_settings(home, str(repo), addr))
        figures: dict[str, list[float]] = {}
        peaks: dict[str, float] = {}
        for engine, view, count in (("keel", "bench_full", n), ("plugin", "bench_full", n),
                                    ("feast", "bench_slice", profile.mat_feast_entities)):
            say(f"materialize: {engine} ({count:,} entities)")
            _, seconds, peaks[engine] = runs_in_child(_materialize, home, str(repo), addr, view, engine,
                                                      runs=profile.runs, cpus=client_cpus())
            figures[engine] = [count / t for t in seconds]
            _check_feast_reads(home, str(repo), addr, view, tmp / "data" / ("slice.parquet" if engine == "feast"
                                                                            else "full.parquet"))
            if engine != "keel":
                continue
            chunks, keel_hashes = _encoded(addr)  # what keel's last run left: the floor sends these bytes
            with open(tmp / "chunks.pkl", "wb") as f:
                pickle.dump(chunks, f)
            del chunks
            say("materialize: floor")
            _, seconds, _ = runs_in_child(_floor, addr, str(tmp / "chunks.pkl"), runs=profile.runs,
                                          cpus=client_cpus())
            figures["floor"] = [n / t for t in seconds]
            if _encoded(addr)[1] != keel_hashes:
                raise AssertionError("the floor's hashes differ from keel's")
    case = f"{n:,} entities x {nfeat} features (Feast: {profile.mat_feast_entities:,})"
    keel, feast, fl = median(figures["keel"]), median(figures["feast"]), median(figures["floor"])
    rows.append(Row("materialization", case, "keel", "rows/s", keel, "rows/s", figures["keel"], "Feast",
                    better_ratio(keel, feast, False), ">= 20x Feast; >= 0.5x the floor",
                    keel / feast >= 20 and keel / fl >= 0.5,
                    f"{keel / fl:.2f}x the floor; peak RSS {peaks['keel']:.0f} MB"))
    rows.append(Row("materialization", case, "feast materialize", "rows/s", feast, "rows/s", figures["feast"],
                    note=f"peak RSS {peaks['feast']:.0f} MB"))
    plugin = median(figures["plugin"])
    rows.append(Row("materialization", case, "feast materialize with keel's engine plug-in", "rows/s", plugin,
                    "rows/s", figures["plugin"], "Feast", better_ratio(plugin, feast, False), ">= 10x Feast",
                    plugin / feast >= 10, f"peak RSS {peaks['plugin']:.0f} MB; Feast's own API, keel's writer"))
    rows.append(Row("materialization", case, "floor (pre-encoded RESP, pipelined on a socket)", "rows/s", fl, "rows/s",
                    figures["floor"], note="excludes reading parquet and encoding"))
    return rows
