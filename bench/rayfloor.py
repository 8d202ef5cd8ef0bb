"""Scenario ``rayfloor``: keel's Ray runtime against Ray Serve's own floor, one request at a time.

The floor is a constant-answer Ray Serve deployment (``bench/peers/ray_constant.py``: no lookup, no
model) on a Ray instance of its own, pinned like every server under test, in the ingress keel's runtime
uses (HAProxy, Ray Serve's throughput-optimized mode) and, for what that mode is worth, behind Ray's
Python proxy. keel's Ray runtime (default batching: natural, no wait) and keel's KServe runtime answer
the same one-entity requests. Figure: latency in a closed loop at concurrency 1 (each request sent when
the previous one is answered), p50 and p99 over ``profile.runs`` runs of a few seconds each.

Goal (issue 18): keel's Ray runtime within 1.5x the floor's single-request latency (p50). The KServe
runtime's own figure is there to show what a lookup of 50 features and an XGBoost call cost outside Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from bench.common import ROOT, Profile, Row, free_port, median, say, server, server_cpus
from bench.loadgen import closed_loop
from bench.online import KEY, MODEL, _py, entity_bodies, keel_serving

GOAL = 1.5
SECONDS = 3.0


@contextlib.contextmanager
def ray_constant(w: dict[str, Any], ingress: str) -> Iterator[str]:
    port = free_port()
    with server(_py("bench.peers.ray_constant", "--port", str(port), "--ingress", ingress),
                f"http://127.0.0.1:{port}/", server_cpus(), {"PYTHONPATH": f"{ROOT}:{ROOT / 'platform'}"},
                w["tmp"] / f"ray-constant-{ingress}.log", ROOT, timeout=180):
        yield f"http://127.0.0.1:{port}/"


def in_process_ms(w: dict[str, Any], bodies: list[bytes], n: int = 2000) -> float:
    """keel's own work for one request, without any server: ``Router.predict_many`` (validation, the
    lookup of the entity's features in Redis, the model call, metrics) as the Ray replica calls it, median
    over ``n`` calls on the server core (after the servers are gone)."""
    from keel.serving.spec import ServeSpec

    router = ServeSpec(model=MODEL, port=0, sample_rate=0.0, cache_ttl_s=0.0).build_router(w["settings"])
    requests = [json.loads(b)["instances"] for b in bodies[:n]]
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, server_cpus())
    try:
        for r in requests[:200]:
            router.predict_many([r])
        took = []
        for r in requests:
            t = time.perf_counter()
            router.predict_many([r])
            took.append(time.perf_counter() - t)
    finally:
        os.sched_setaffinity(0, before)
    assert all(KEY in r[0] for r in requests)
    return 1000 * median(took)


def run(profile: Profile, w: dict[str, Any]) -> list[Row]:
    bodies = entity_bodies(2000, 1, w["entities"], 7)
    systems = [("Ray Serve constant answer, HAProxy ingress (Ray's floor)", lambda: ray_constant(w, "haproxy")),
               ("Ray Serve constant answer, Ray's Python proxy", lambda: ray_constant(w, "proxy")),
               ("keel Ray runtime (lookup + model)", lambda: keel_serving(w, "ray")),
               ("keel KServe runtime (lookup + model)", lambda: keel_serving(w, "kserve"))]
    figures: dict[str, list[dict[str, Any]]] = {}
    for name, start in systems:
        say(f"rayfloor: {name}")
        with start() as url:
            runs = closed_loop(url, bodies, [1], SECONDS, profile.runs)[1]
        if any(r["errors"] for r in runs):
            raise AssertionError(f"rayfloor ({name}): non-200 answers: {[r['errors'] for r in runs]}")
        figures[name] = runs
        say(f"  p50 {median([r['p50_ms'] for r in runs]):.2f} ms, p99 {median([r['p99_ms'] for r in runs]):.2f} ms, "
            f"{median([r['throughput_rps'] for r in runs]):.0f} req/s")
    floor_name = systems[0][0]
    floor50 = median([r["p50_ms"] for r in figures[floor_name]])
    floor99 = median([r["p99_ms"] for r in figures[floor_name]])
    own = in_process_ms(w, bodies)
    say(f"rayfloor: keel's own work per request, in process: {own:.3f} ms")
    case = f"1 entity per request, closed loop at concurrency 1, {SECONDS:.0f} s per run"
    rows = []
    for name, runs in figures.items():
        p50, p99 = median([r["p50_ms"] for r in runs]), median([r["p99_ms"] for r in runs])
        row = Row("Ray Serve floor", case, name, "p50", p50, "ms", [r["p50_ms"] for r in runs],
                  note=f"p99 {p99:.2f} ms; {median([r['throughput_rps'] for r in runs]):.0f} req/s")
        if name != floor_name:
            row.baseline, row.ratio = "Ray's floor", floor50 / p50
            row.note += f"; {p50 / floor50:.2f}x the floor's p50, {p99 / floor99:.2f}x its p99"
        if name.startswith("keel Ray"):
            row.goal, row.met = f"<= {GOAL}x the floor's p50", p50 / floor50 <= GOAL
            if not row.met:  # where the time goes
                row.note += (f"; beyond the floor: {p50 - floor50:.2f} ms, of which {own:.2f} ms is keel's own work "
                             f"in process (validation, the 50-feature Redis lookup, the model: Router.predict_many) "
                             f"and {max(0.0, p50 - floor50 - own):.2f} ms the FastAPI ingress, @serve.batch's queue "
                             f"and the hop to the scoring thread; the goal leaves {(GOAL - 1) * floor50:.2f} ms")
        rows.append(row)
    return rows
