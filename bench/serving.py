"""Serving benchmark: per-request latency and throughput of keel's runtimes, one entity per request.

The load generator runs in separate processes (aiohttp, keep-alive connections), so it is not the
bottleneck of the process being measured. Run: `make bench` or `.venv/bin/python bench/serving.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import isolated_settings  # noqa: E402 - reuse free-port settings

MODEL = "fraud_bench"


def _instances(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [{"customer_id": rng.randrange(2000), "merchant_id": rng.randrange(200),
             "amount": round(rng.uniform(1, 500), 2)} for _ in range(n)]


async def _closed_loop(url: str, bodies: list[bytes], out: list[float]) -> None:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as s:
        for b in bodies:
            t = time.perf_counter()
            async with s.post(url, data=b) as r:
                await r.read()
                assert r.status == 200, r.status
            out.append(time.perf_counter() - t)


def _client(url: str, n: int, seed: int, q: mp.Queue) -> None:
    bodies = [json.dumps({"instances": [i]}).encode() for i in _instances(n, seed)]
    lat: list[float] = []
    t0 = time.perf_counter()
    asyncio.run(_closed_loop(url, bodies, lat))
    q.put((lat, time.perf_counter() - t0))


def measure(url: str, requests: int, clients: int) -> dict:
    q: mp.Queue = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_client, args=(url, requests, 100 + c, q)) for c in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    lat = sorted(x for r, _ in results for x in r)
    busy = max(d for _, d in results)
    return {"p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "throughput_rps": len(lat) / busy, "requests": len(lat), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="per client, per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runtimes", default="kserve,ray")
    args = ap.parse_args()

    from keel.features import store, training
    from keel.features.datagen import GenSpec, generate, write
    from keel.registry.client import Registry
    from keel.serving.core import Predictor
    from keel.serving.deploy import LocalTarget
    from keel.serving.spec import ServeSpec
    from keel.stack import Stack
    from keel.train import train_fraud_model

    home = Path(tempfile.mkdtemp(prefix="keel-bench-")) / "keel"
    s = isolated_settings(home)
    stack = Stack(s)
    stack.up()
    machine = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
               "python": platform.python_version()}
    report: dict = {"when": datetime.now(timezone.utc).isoformat(), "machine": machine,
                    "scenario": "1 entity x 16 features (+3 on-demand) per request, xgboost", "results": {}}
    try:
        paths = write(generate(GenSpec(transactions=20_000, customers=2000, merchants=200)), s.data_dir)
        store.apply(s)
        store.materialize(s, full=True)
        ts = training.build(s, "fraud_model_v1", paths["transactions"])
        tr = train_fraud_model(ts)
        reg = Registry(s)
        reg.register(tr.model, MODEL, ts, tr.holdout)
        reg.promote(MODEL)

        # floor: the core in-process, no HTTP
        p = Predictor.from_registry(s, MODEL)
        p.warmup()
        inst = _instances(2000, 1)
        lat = []
        for i in inst:
            t = time.perf_counter()
            p.predict([i])
            lat.append(time.perf_counter() - t)
        lat.sort()
        report["results"]["core_in_process"] = {"p50_ms": 1000 * lat[1000], "p99_ms": 1000 * lat[1980]}
        print("core in-process", report["results"]["core_in_process"], flush=True)

        target = LocalTarget(s)
        for runtime in args.runtimes.split(","):
            spec = ServeSpec(model=MODEL, runtime=runtime, port=s.serving_port, sample_rate=0.0)
            target.deploy(spec)
            url = f"http://127.0.0.1:{spec.port}/v1/models/{MODEL}:predict"
            measure(url, 200, 1)  # warm-up
            for label, clients in (("sequential", 1), ("concurrent_4", 4)):
                runs = [measure(url, args.requests, clients) for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms", "throughput_rps")}
                report["results"][f"{runtime}_{label}"] = med
                print(runtime, label, {k: round(v, 2) for k, v in med.items()}, flush=True)
            target.undeploy(MODEL)
    finally:
        stack.down()
    out = ROOT / "bench" / "results" / f"serving-{datetime.now(timezone.utc):%Y-%m-%d}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
