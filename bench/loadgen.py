"""Load generators, each run in its own process (pinned away from the server under test).

Open loop for latency: request *i* is due at ``t0 + i / rate`` whether or not earlier ones finished, and
its latency counts from when it was due, so a stalled server is charged for the queue it causes
(no coordinated omission). Closed loop for saturation: ``c`` clients each send the next request when
the previous answer arrives, for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from bench.common import client_cpus, in_child


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def open_records(url: str, bodies: list[bytes], rate: float, timeout_s: float = 30.0,
                       at: dict[float, Callable[[], None]] | None = None
                       ) -> tuple[list[tuple[float, float, int, bool]], list[float]]:
    """Open loop: (due offset s, latency s, status, degraded) per request, a timed-out or refused request
    being status 599; and, for each of ``at``'s callbacks (a fault injected at an offset, on the
    requests' own clock), the offset at which it returned."""
    import aiohttp

    out: list[tuple[float, float, int, bool]] = []
    done: dict[float, float] = {}
    conn = aiohttp.TCPConnector(limit=2048)
    async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        for b in bodies[:20]:  # warm connections (not counted); a server still draining a backlog may be slow
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
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
            flag = answer.get("degraded") or answer.get("parameters", {}).get("degraded") or False
            out.append((due - t0, time.perf_counter() - due, status,
                        bool(any(flag) if isinstance(flag, list) else flag)))

        async def fault(offset: float, fn: Callable[[], None]) -> None:
            await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
            await asyncio.get_running_loop().run_in_executor(None, fn)
            done[offset] = time.perf_counter() - t0

        await asyncio.gather(*(fault(o, f) for o, f in (at or {}).items()),
                             *(one(i, b) for i, b in enumerate(bodies)))
    return out, [done[o] for o in sorted(done)]


async def _open(url: str, bodies: list[bytes], rate: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    got, _ = await open_records(url, bodies, rate)
    lat = [x[1] for x in got]
    wall = max((x[0] + x[1] for x in got), default=0.0) or (time.perf_counter() - t0)
    return {"n": len(lat), "errors": sum(1 for x in got if x[2] != 200), "p50_ms": 1000 * _pct(lat, 0.5),
            "p99_ms": 1000 * _pct(lat, 0.99), "achieved_rps": len(lat) / wall}


async def _closed(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"}) as s:
        for b in bodies[:concurrency * 2]:
            async with s.post(url, data=b) as r:
                await r.read()
        end = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < end:
                t = time.perf_counter()
                async with s.post(url, data=bodies[i % len(bodies)]) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t)
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"n": len(lat), "errors": errors, "p50_ms": 1000 * _pct(lat, 0.5), "p99_ms": 1000 * _pct(lat, 0.99),
            "throughput_rps": len(lat) / wall}


Phases = list[tuple[list[bytes], float]]


def _open_main(url: str, runs: list[Phases]) -> list[list[dict[str, Any]]]:
    return [[asyncio.run(_open(url, bodies, rate)) for bodies, rate in phases] for phases in runs]


def _closed_main(url: str, bodies: list[bytes], levels: list[int], seconds: float,
                 runs: int) -> dict[int, list[dict[str, Any]]]:
    out = {}
    for c in levels:
        asyncio.run(_closed(url, bodies, c, min(seconds, 1.0)))  # warm-up at this concurrency
        out[c] = [asyncio.run(_closed(url, bodies, c, seconds)) for _ in range(runs)]
    return out


def open_loop(url: str, runs: list[Phases]) -> list[list[dict[str, Any]]]:
    """One child process runs each run's (requests, rate) phases in turn; a result per phase per run."""
    res, _, _ = in_child(_open_main, url, runs, cpus=client_cpus())
    return res


def closed_loop(url: str, bodies: list[bytes], levels: list[int], seconds: float,
                runs: int) -> dict[int, list[dict[str, Any]]]:
    """At each concurrency level, a warm-up and then ``runs`` runs of ``seconds`` each, all in one child
    process: a result per run, per level."""
    res, _, _ = in_child(_closed_main, url, bodies, levels, seconds, runs, cpus=client_cpus())
    return res
