"""Scenario ``hang``: the online store stops answering (Redis SIGSTOPped: connections are accepted by the
kernel, nothing is ever read) for 10 s under steady open-loop load.

A dead store is the easy case (connections are refused at once); a hung one costs each lookup the full
store timeout, and a server that looks features up on its event loop makes every in-flight request wait
for it. Figures per system: p99 of the requests due while Redis was stopped, non-200 answers, and the
share of those answers flagged degraded. Goal (issue 17): keel's p99 within the store timeout + 20 ms,
0 non-200, on both runtimes. Each row also notes the p99 of the same load before the hang: Ray Serve's
proxy hop alone costs tens of ms at p99 on a small machine, which the hang's figure includes. The peer
is the Feast feature server → KServe transformer → xgbserver chain under the same hang.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from bench.common import Profile, Row, client_cpus, in_child, median, say
from bench.loadgen import _pct

HANG_S, BEFORE_S, AFTER_S, RATE = 10.0, 2.0, 3.0, 100.0  # issue 18: hung for 10 s


async def _load(url: str, bodies: list[bytes], rate: float, redis_pid: int
                ) -> tuple[list[tuple[float, float, int, bool]], tuple[float, float]]:
    """(due offset s, latency s, status, degraded) per request, open loop; and when (offsets from the
    first request's due time) Redis was stopped and continued: the load generator does both itself, so
    the window is on the requests' own clock."""
    import aiohttp

    out: list[tuple[float, float, int, bool]] = []
    window: list[float] = []
    conn = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=30)) as s:
        for b in bodies[:20]:
            async with s.post(url, data=b) as r:
                await r.read()
        t0 = time.perf_counter() + 0.05

        async def one(i: int, body: bytes) -> None:
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with s.post(url, data=body) as r:
                    answer = await r.json(content_type=None) if r.status == 200 else {}
                    status = r.status
            except (TimeoutError, aiohttp.ClientError):
                answer, status = {}, 599
            degraded = answer.get("degraded") or answer.get("parameters", {}).get("degraded") or False
            out.append((due - t0, time.perf_counter() - due, status, bool(any(degraded) if isinstance(degraded, list)
                                                                         else degraded)))

        async def hang() -> None:
            await asyncio.sleep(max(0.0, t0 + BEFORE_S - time.perf_counter()))
            os.kill(redis_pid, signal.SIGSTOP)
            window.append(time.perf_counter() - t0)
            try:
                await asyncio.sleep(HANG_S)
            finally:
                os.kill(redis_pid, signal.SIGCONT)
                window.append(time.perf_counter() - t0)

        await asyncio.gather(hang(), *(one(i, b) for i, b in enumerate(bodies)))
    return out, (window[0], window[1])


def _load_main(url: str, bodies: list[bytes], rate: float, redis_pid: int) -> Any:
    try:
        return asyncio.run(_load(url, bodies, rate, redis_pid))
    finally:
        os.kill(redis_pid, signal.SIGCONT)


def _redis_pid(port: int) -> int:
    import redis

    return int(redis.Redis(port=port).info("server")["process_id"])


def one_run(url: str, redis_port: int, bodies: list[bytes]) -> dict[str, Any]:
    pid = _redis_pid(redis_port)
    try:
        (got, (lo, hi)), _, _ = in_child(_load_main, url, bodies, RATE, pid, cpus=client_cpus())
    finally:
        os.kill(pid, signal.SIGCONT)
    during = [r for r in got if lo <= r[0] <= hi]
    calm = [r[1] for r in got if r[0] < lo]  # the same load before the hang: the runtime's own p99
    lat = [r[1] for r in during]
    return {"calm_p99_ms": 1000 * _pct(calm, 0.99), "p99_ms": 1000 * _pct(lat, 0.99), "p50_ms": 1000 * _pct(lat, 0.5),
            "n": len(during), "non_200": sum(1 for r in got if r[2] != 200),
            "degraded_share": sum(1 for r in during if r[3]) / max(1, len(during))}


def run(profile: Profile, w: dict[str, Any]) -> list[Row]:
    from bench import online

    s = w["settings"]
    budget = s.feature_timeout_ms + 20.0
    n = int((BEFORE_S + HANG_S + AFTER_S) * RATE)
    rows: list[Row] = []
    systems = [("keel KServe runtime", lambda: online.keel_serving(w, "kserve")),
               ("keel Ray Serve runtime", lambda: online.keel_serving(w, "ray")),
               ("Feast server + KServe chain", lambda: online.chain(w))]
    figures: dict[str, list[dict[str, Any]]] = {}
    for name, start in systems:
        say(f"hang: {name}")
        with start() as url:
            figures[name] = [one_run(url, s.redis_port, online.entity_bodies(n, 1, w["entities"], seed=40 + r))
                             for r in range(profile.runs)]
        f = figures[name]
        say(f"  p99 during the hang {median([x['p99_ms'] for x in f]):.1f} ms, non-200 "
            f"{[x['non_200'] for x in f]}, degraded {median([x['degraded_share'] for x in f]):.0%}")
    peer = median([x["p99_ms"] for x in figures["Feast server + KServe chain"]])
    for name, f in figures.items():
        p99 = median([x["p99_ms"] for x in f])
        keel = name.startswith("keel")
        errors = sum(x["non_200"] for x in f)
        rows.append(Row("hang", f"Redis stopped {HANG_S:.0f} s @ {RATE:.0f}/s, 1 entity", name, "p99", p99, "ms",
                        [x["p99_ms"] for x in f], None if not keel else "Feast server + KServe chain",
                        None if not keel else peer / p99,
                        f"p99 <= {budget:.0f} ms, 0 non-200" if keel else None,
                        (p99 <= budget and errors == 0) if keel else None,
                        f"non-200: {errors}; degraded during the hang: "
                        f"{median([x['degraded_share'] for x in f]):.0%}; p99 before the hang "
                        f"{median([x['calm_p99_ms'] for x in f]):.1f} ms"))
    return rows
