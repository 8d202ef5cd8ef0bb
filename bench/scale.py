"""Scale-out scenarios (issue 15): the work that outgrows one process, on the engines keel hands it to.

- ``batch``: batch scoring rows/s. keel's ``batch.score`` in-process and on a local Ray cluster (head +
  2 worker nodes, Ray Data) vs the loop a team would write over the online endpoint (one request per
  row, keel's KServe runtime) vs an in-process floor (the booster on a feature matrix built before the
  clock starts: no lookup, no join). Rows are scored as of now, so all four must give the same scores.
- ``pit`` on Ray (``pit_ray``): the point-in-time join single-process (``keel.features.pit``) vs the same
  join fanned out over the Ray cluster as partitions (``keel.features.pit_ray``); equal row for row.
- ``rediscluster``: materialization rows/s and online read p50/p99 (keel's reader, one entity per call)
  on a 3-master + 3-replica Redis Cluster vs one Redis, the same data; equal reads.

On two cores a Ray cluster has no spare cores to spread over: these figures show what the fan-out costs
where it cannot win, and that results stay equal; the point of it is more machines, not one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import Profile, Row, better_ratio, client_cpus, median, redis_server, runs_in_child, say

RAY = ["ray-head", "ray-worker-1", "ray-worker-2"]


@contextlib.contextmanager
def ray_cluster(home: Path) -> Iterator[str]:
    """keel's local Ray cluster (a head with no CPUs, 2 worker nodes of 1 CPU each); yields its address."""
    from tests.conftest import free_block

    from keel.config import load_settings
    from keel.stack import Stack

    s = load_settings(home=home, ray_workers=2, ray_port=free_block(4), ray_worker_cpus=1,
                      ray_object_store_mb=512, pushgateway_port=1)
    stack = Stack(s)
    say("starting a local Ray cluster (head + 2 workers)")
    try:
        states = {st.name: st.state for st in stack.up(RAY)}
        if set(states.values()) != {"healthy"}:
            raise RuntimeError(f"the Ray cluster did not start: {states}")
        yield str(s.ray_cluster)
    finally:
        stack.down(RAY)


# -- batch scoring --------------------------------------------------------------------------------------
def _entities(w: dict[str, Any], n: int, seed: int = 5) -> pd.DataFrame:
    from bench.online import KEY

    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC").as_unit("us")
    return pd.DataFrame({KEY: rng.integers(0, w["entities"], n).astype("int64"),
                         "event_timestamp": now})


def _batch(settings: Any, model: str, path: str, engine: str, keep: bool) -> tuple[float, np.ndarray | None]:
    from keel import batch

    rows = pd.read_parquet(path)
    t0 = time.perf_counter()
    out = batch.score(settings, model, rows, engine=engine, chunk_rows=max(1, len(rows) // 4)).frame
    seconds = time.perf_counter() - t0
    if out["degraded"].any():
        raise AssertionError(f"batch scoring ({engine}) degraded {int(out['degraded'].sum())} rows")
    return seconds, out["score"].to_numpy() if keep else None


def _floor(model_file: str, features: str, path: str, keep: bool) -> tuple[float, np.ndarray | None]:
    import xgboost as xgb

    from bench.online import FEATURES, KEY

    booster = xgb.Booster()
    booster.load_model(model_file)
    table = pd.read_parquet(features).set_index(KEY)[FEATURES]
    matrix = table.loc[pd.read_parquet(path)[KEY]].to_numpy(dtype="float32")  # before the clock
    t0 = time.perf_counter()
    scores = booster.inplace_predict(matrix)
    return time.perf_counter() - t0, scores if keep else None


def _loop(url: str, rows: pd.DataFrame) -> tuple[float, np.ndarray]:
    from bench.online import KEY, _post, _scores

    out = np.empty(len(rows))
    t0 = time.perf_counter()
    for i, key in enumerate(rows[KEY].tolist()):
        out[i] = _scores(_post(url, json.dumps({"instances": [{KEY: key}]}).encode()))[0]
    return time.perf_counter() - t0, out


def batch_rows(profile: Profile, w: dict[str, Any]) -> list[Row]:
    from bench.online import MODEL, keel_serving

    n = profile.batch_rows
    tmp = w["tmp"] / "batch"
    tmp.mkdir()
    rows = _entities(w, n)
    path = tmp / "entities.parquet"
    rows.to_parquet(path, index=False)
    s = w["settings"]
    features = str(w["tmp"] / "data" / "features.parquet")
    say(f"batch: keel in-process, {n:,} rows")
    keel_scores, keel_t, peak = runs_in_child(_batch, s, MODEL, str(path), "local", runs=profile.runs,
                                              cpus=client_cpus())
    say("batch: floor")
    floor_scores, floor_t, _ = runs_in_child(_floor, str(w["model_file"]), features, str(path), runs=profile.runs)
    np.testing.assert_allclose(keel_scores, floor_scores, rtol=0, atol=1e-6)
    loop_n = min(n, 2000)
    loop_t: list[float] = []
    with keel_serving(w, "kserve") as url:
        say(f"batch: a loop over the online endpoint, {loop_n:,} rows x {profile.runs}")
        _loop(url, rows.head(50))  # warm-up
        for _ in range(profile.runs):
            seconds, online_scores = _loop(url, rows.head(loop_n))
            loop_t.append(seconds)
    np.testing.assert_allclose(online_scores, keel_scores[:loop_n], rtol=0, atol=1e-6)
    ray_t: list[float] = []
    with ray_cluster(tmp / "ray") as address:
        ray_settings = s.model_copy(update={"ray_address": address})
        say("batch: keel on Ray Data")
        ray_scores, ray_t, _ = runs_in_child(_batch, ray_settings, MODEL, str(path), "ray", runs=profile.runs)
    np.testing.assert_allclose(ray_scores, keel_scores, rtol=0, atol=1e-6)
    keel_rps = [n / t for t in keel_t]
    loop_rps = [loop_n / t for t in loop_t]
    ray_rps = [n / t for t in ray_t]
    floor_rps = [n / t for t in floor_t]
    k, lo, r, f = median(keel_rps), median(loop_rps), median(ray_rps), median(floor_rps)
    case = f"{n:,} entity rows, 50 features, as of now (the loop: {loop_n:,} of them)"
    return [
        Row("batch scoring", case, "keel batch-score (in-process)", "rows/s", k, "rows/s", keel_rps,
            "loop over the online endpoint", better_ratio(k, lo, False), ">= 10x the endpoint loop", k / lo >= 10,
            f"{k / f:.3f}x the floor; peak RSS {peak:.0f} MB; point-in-time features from the offline store"),
        Row("batch scoring", case, "keel batch-score (Ray Data, 2 worker nodes)", "rows/s", r, "rows/s", ray_rps,
            "keel batch-score (in-process)", better_ratio(r, k, False),
            note="2 cores: the cluster's nodes share the cores the in-process run has to itself"),
        Row("batch scoring", case, "loop over the online endpoint (keel KServe runtime)", "rows/s", lo, "rows/s",
            loop_rps, note="one request per row, online features"),
        Row("batch scoring", case, "floor (booster on a prebuilt matrix)", "rows/s", f, "rows/s", floor_rps,
            note="no feature lookup or join"),
    ]


# -- point-in-time on Ray --------------------------------------------------------------------------------
PARTS = 8  # partitions of the labelled events, split by entity key


def _pit_ray(root: str, address: str, keep: bool) -> tuple[float, pd.DataFrame | None]:
    from bench.pit import SERVICE, _settings, _warm_imports
    from keel.features import pit_ray

    _warm_imports()
    s = _settings(root, "duckdb").model_copy(update={"ray_address": address})
    events = pd.read_parquet(Path(root) / "data" / "events.parquet")
    t0 = time.perf_counter()
    out = pit_ray.join(s, SERVICE, events, partition_rows=-(-len(events) // PARTS))
    seconds = time.perf_counter() - t0
    return seconds, out.frame.assign(_nodes=out.nodes, _task_peak=out.worker_peak_mb, _join_mb=out.join_mb
                                     ) if keep else None


def _single(root: str, keep: bool) -> tuple[float, pd.DataFrame | None]:
    """keel's single-process join, with how far the join raised the process's RSS (as for a Ray task)."""
    from bench.pit import _keel, _warm_imports
    from keel.features.pit_ray import reset_peak, status_mb

    _warm_imports()
    before = reset_peak()
    seconds, df = _keel(root, keep)
    return seconds, df.assign(_join_mb=max(0.0, status_mb("VmHWM") - before)) if df is not None else None


def pit_ray_rows(profile: Profile, tmp: Path) -> list[Row]:
    from bench.pit import _same, write_data, write_repo
    from bench.pit import _settings as pit_settings
    from keel.features import store

    tmp.mkdir(parents=True)
    fr, ev = profile.pit_feature_rows, profile.pit_entity_rows
    root, small = tmp / "data-root", tmp / "data-part"
    say(f"pit_ray: writing {fr:,} feature rows and {ev:,} labelled rows, and 1/{PARTS} of that")
    with redis_server() as addr:
        (tmp / "redis-port").write_text(addr.split(":")[1])
        for where, scale in ((root, 1), (small, PARTS)):
            where.mkdir()
            write_data(where, fr // scale, ev // scale)
            write_repo(where, "duckdb")
            store.apply(pit_settings(str(where), "duckdb"))
    say(f"pit_ray: keel single-process, on all the rows and on 1/{PARTS}")
    alone, _, _ = runs_in_child(_single, str(small), runs=1, cpus=client_cpus())
    part_size_mb = float(alone["_join_mb"].iloc[0])
    single, single_t, single_peak = runs_in_child(_single, str(root), runs=profile.runs, cpus=client_cpus())
    with ray_cluster(tmp / "ray") as address:
        say("pit_ray: keel on the Ray cluster")
        fanned, ray_t, driver_peak = runs_in_child(_pit_ray, str(root), address, runs=profile.runs)
    nodes = int(fanned.pop("_nodes").iloc[0])
    task_peak = float(fanned.pop("_task_peak").iloc[0])
    part_mb = float(fanned.pop("_join_mb").iloc[0])
    whole_mb = float(single.pop("_join_mb").iloc[0])
    _same("keel on Ray", fanned, single)
    s, r = median(single_t), median(ray_t)
    case = f"{fr:,} feature rows, {ev:,} labelled rows, 10 features"
    # Bounded by the partition, not by the total: a partition's join (1/PARTS of the keys, so of their
    # feature rows) grows its worker about as much as a whole single-process join of a 1/PARTS-sized
    # data set does, whatever the total. (Not 1/PARTS of the whole join's: DuckDB's window and scan
    # buffers are a constant share.)
    bound = 1.25 * part_size_mb
    return [
        Row("point-in-time join on Ray", case, "keel on Ray (DuckDB partitions as Ray tasks)", "time", r, "s", ray_t,
            "keel single-process", better_ratio(r, s, True), "equal results", True,
            f"row for row equal; ran on {nodes} node(s); 2 cores: the nodes share the cores single-process "
            "DuckDB uses as threads"),
        Row("point-in-time join on Ray", case, f"keel on Ray: one of {PARTS} partitions (split by key)",
            "join memory", part_mb, "MB", [part_mb], "keel single-process", better_ratio(part_mb, whole_mb, True),
            f"<= 1.25x a single-process join of 1/{PARTS} the rows", part_mb <= bound,
            f"how far a partition's join raised its worker's RSS (VmHWM after a reset, less VmRSS before); "
            f"a single-process join of {fr // PARTS:,} feature rows and {ev // PARTS:,} labelled rows: "
            f"{part_size_mb:.0f} MB; a worker's peak RSS {task_peak:.0f} MB with its imports; driver peak "
            f"{driver_peak:.0f} MB"),
        Row("point-in-time join on Ray", case, "keel single-process (DuckDB)", "time", s, "s", single_t,
            note=f"the join raised RSS by {whole_mb:.0f} MB; peak RSS {single_peak:.0f} MB with imports"),
    ]


# -- Redis Cluster ---------------------------------------------------------------------------------------
def _mat_settings(home: str, repo: str, address: str, cluster: bool) -> Any:
    from keel.config import load_settings

    extra: dict[str, Any] = ({"redis_type": "redis_cluster", "redis_address": address} if cluster
                             else {"redis_port": int(address.split(":")[1])})
    return load_settings(home=Path(home), feature_repo=Path(repo), pushgateway_port=1, **extra)


def _materialize(home: str, repo: str, address: str, cluster: bool, flush: list[int], keep: bool) -> tuple[float, None]:
    import redis

    from keel.features import store

    for port in flush:
        redis.Redis(port=port).flushall()
    s = _mat_settings(home, repo, address, cluster)
    end = pd.Timestamp("2026-11-22T00:00:00Z").to_pydatetime()
    t0 = time.perf_counter()
    store.materialize(s, end=end, views=["bench_full"], full=True)
    return time.perf_counter() - t0, None


def _reads(home: str, repo: str, address: str, cluster: bool, n: int, entities: int, keep: bool
           ) -> tuple[float, dict[str, Any] | None]:
    """n single-entity reads through keel's serving reader; (median latency, {p50, p99, sample})."""
    from keel.features import store
    from keel.features.redis import Reader

    fs = store.open_store(_mat_settings(home, repo, address, cluster), serving=True)
    view = fs.get_feature_view("bench_full")
    reader = Reader(fs, [f"bench_full:{f.name}" for f in view.features])
    rng = np.random.default_rng(9)
    keys = rng.integers(0, entities, n).tolist()
    for k in keys[:100]:
        reader.read([{"user_id": k}])
    lat = np.empty(n)
    for i, k in enumerate(keys):
        t0 = time.perf_counter()
        reader.read([{"user_id": k}])
        lat[i] = time.perf_counter() - t0
    sample = reader.read([{"user_id": k} for k in range(0, entities, max(1, entities // 200))]) if keep else None
    return float(np.median(lat)), {"p50": float(np.percentile(lat, 50)) * 1e3,
                                   "p99": float(np.percentile(lat, 99)) * 1e3, "sample": sample}


def rediscluster_rows(profile: Profile, tmp: Path) -> list[Row]:
    from tests.rediscluster import redis_cluster

    from bench.materialize import write_repo
    from keel.features import store

    tmp.mkdir(parents=True)
    n, nfeat = profile.mat_entities, profile.mat_features
    say(f"rediscluster: writing {n:,} x {nfeat} parquet")
    repo = str(write_repo(tmp, n, nfeat, 10))
    mat: dict[str, list[float]] = {}
    reads: dict[str, list[dict[str, Any]]] = {}
    samples: dict[str, Any] = {}
    with redis_server() as single, redis_cluster(tmp / "cluster") as nodes:
        for name, address, cluster, flush in (("one Redis", single, False, [int(single.split(":")[1])]),
                                              ("Redis Cluster (3 masters + 3 replicas)", nodes.address, True,
                                               list(nodes[:3]))):
            home = str(tmp / ("keel-cluster" if cluster else "keel-single"))
            store.apply(_mat_settings(home, repo, address, cluster))
            say(f"rediscluster: materialize into {name}")
            _, seconds, _ = runs_in_child(_materialize, home, repo, address, cluster, flush, runs=profile.runs,
                                          cpus=client_cpus())
            mat[name] = [n / t for t in seconds]
            say(f"rediscluster: reads from {name}")
            reads[name] = []
            for _ in range(profile.runs):
                (_, got), _, _ = _in_child_reads(home, repo, address, cluster, n)
                reads[name].append(got)
            samples[name] = reads[name][0]["sample"]
    one, many = "one Redis", "Redis Cluster (3 masters + 3 replicas)"
    if samples[one] != samples[many]:
        raise AssertionError("reads from the cluster differ from reads from one Redis")
    case = f"{n:,} entities x {nfeat} features; reads: 2,000 single-entity calls per run"
    m1, mc = median(mat[one]), median(mat[many])
    p99 = {k: median([r["p99"] for r in v]) for k, v in reads.items()}
    p50 = {k: median([r["p50"] for r in v]) for k, v in reads.items()}
    return [
        Row("Redis Cluster", case, f"keel materialize into {many}", "rows/s", mc, "rows/s", mat[many],
            "one Redis", better_ratio(mc, m1, False), note="one pipeline per master, routed by hash slot"),
        Row("Redis Cluster", case, "keel materialize into one Redis", "rows/s", m1, "rows/s", mat[one]),
        Row("Redis Cluster", case, f"keel online read from {many}", "p99", p99[many], "ms",
            [r["p99"] for r in reads[many]], "one Redis", better_ratio(p99[many], p99[one], True),
            note=f"p50 {p50[many]:.3f} ms; reads equal one Redis's"),
        Row("Redis Cluster", case, "keel online read from one Redis", "p99", p99[one], "ms",
            [r["p99"] for r in reads[one]], note=f"p50 {p50[one]:.3f} ms"),
    ]


def _in_child_reads(home: str, repo: str, address: str, cluster: bool, entities: int) -> Any:
    from bench.common import in_child

    return in_child(_reads, home, repo, address, cluster, 2000, entities, True, cpus=client_cpus())
