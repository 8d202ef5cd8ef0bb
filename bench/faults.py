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
from typing import Any

from bench.common import Profile, Row, client_cpus, in_child, median, say
from bench.loadgen import _pct, open_records

HANG_S, BEFORE_S, AFTER_S, RATE = 10.0, 2.0, 3.0, 100.0  # issue 18: hung for 10 s


def _load_main(url: str, bodies: list[bytes], rate: float, redis_pid: int) -> Any:
    """The open loop with Redis stopped BEFORE_S into it and continued HANG_S later, on the requests' own
    clock: (records, (stopped at, continued at))."""
    try:
        got, (lo, hi) = asyncio.run(open_records(url, bodies, rate, at={
            BEFORE_S: lambda: os.kill(redis_pid, signal.SIGSTOP),
            BEFORE_S + HANG_S: lambda: os.kill(redis_pid, signal.SIGCONT)}))
        return got, (lo, hi)
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
