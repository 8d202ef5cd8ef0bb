"""Scenario ``cache``: the hot-entity feature cache on a skewed (Zipf) key distribution.

keel's KServe runtime serves one-entity requests whose keys follow a Zipf law (a few entities take
most requests, as accounts or users do), open loop, with its default feature cache (1 s fresh,
10,000 entities) and with the cache off (every request reads Redis), one after the other in the same
world. Figures: the hit rate (from the server's own ``keel_feature_cache_total``), p50/p99 latency, and
the same requests' answers, which must be equal.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np

from bench.common import Profile, Row, better_ratio, median, say
from bench.loadgen import open_loop
from bench.online import KEY, _post, _scores, check_equal, keel_serving

ZIPF_S = 1.2      # P(rank k) ~ k^-1.2
RATE = 200.0      # requests per second, open loop
REQUESTS = 2000   # per run: 10 s


def zipf_bodies(n: int, entities: int, seed: int) -> list[bytes]:
    """One-entity requests, key ranks drawn from Zipf(ZIPF_S) truncated to the world's entities and
    mapped through a fixed shuffle (so the hot keys are not simply the smallest ids)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, entities + 1, dtype="float64")
    p = ranks ** -ZIPF_S
    ids = np.random.default_rng(0).permutation(entities)[rng.choice(entities, n, p=p / p.sum())]
    return [json.dumps({"instances": [{KEY: int(i)}]}).encode() for i in ids]


def _cache_counts(url: str) -> dict[str, float]:
    metrics = url.split("/v1/")[0] + "/metrics"
    with urllib.request.urlopen(metrics, timeout=10) as r:
        text = r.read().decode()
    out = {"hit": 0.0, "miss": 0.0, "stale": 0.0}
    for line in text.splitlines():
        if line.startswith("keel_feature_cache_total{"):
            result = line.split('result="')[1].split('"')[0]
            out[result] += float(line.rsplit(" ", 1)[1])
    return out


def run(profile: Profile, w: dict[str, Any]) -> list[Row]:
    entities = w["entities"]
    runs = [[(zipf_bodies(REQUESTS, entities, 10 + r), RATE)] for r in range(profile.runs)]
    sample = zipf_bodies(50, entities, 99)
    figures: dict[bool, list[dict[str, Any]]] = {}
    answers: dict[bool, list[float]] = {}
    hit_rates: list[float] = []
    for cache in (True, False):
        with keel_serving(w, "kserve", cache=cache) as url:
            name = "with its feature cache" if cache else "cache off"
            say(f"cache: keel KServe runtime {name}, Zipf({ZIPF_S}) over {entities:,} entities @ {RATE:.0f}/s")
            answers[cache] = [s for b in sample for s in _scores(_post(url, b))]
            per_run = []
            for phases in runs:
                before = _cache_counts(url)
                (result,) = open_loop(url, [phases])[0]
                after = _cache_counts(url)
                if result["errors"]:
                    raise AssertionError(f"cache ({name}): non-200 answers: {result['errors']}")
                if cache:
                    hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
                    hit_rates.append(hits / max(1.0, hits + misses))
                per_run.append(result)
            figures[cache] = per_run
            say(f"  p50 {median([r['p50_ms'] for r in per_run]):.2f} ms, "
                f"p99 {median([r['p99_ms'] for r in per_run]):.2f} ms")
    check_equal("keel with its feature cache", answers[True], answers[False], "keel, cache off")
    case = f"1 entity per request, Zipf({ZIPF_S}) keys over {entities:,} entities, {RATE:.0f} req/s open loop"
    on99, off99 = (median([r["p99_ms"] for r in figures[c]]) for c in (True, False))
    on50, off50 = (median([r["p50_ms"] for r in figures[c]]) for c in (True, False))
    rate = median(hit_rates)
    return [
        Row("feature cache", case, "keel KServe runtime, feature cache (1 s, 10,000 entities)", "hit rate",
            100 * rate, "%", [100 * h for h in hit_rates],
            note="hits / (hits + misses) from the server's keel_feature_cache_total; answers equal to cache off"),
        Row("feature cache", case, "keel KServe runtime, feature cache (1 s, 10,000 entities)", "p99", on99, "ms",
            [r["p99_ms"] for r in figures[True]], "keel KServe runtime, cache off", better_ratio(on99, off99, True),
            note=f"p50 {on50:.2f} ms"),
        Row("feature cache", case, "keel KServe runtime, cache off", "p99", off99, "ms",
            [r["p99_ms"] for r in figures[False]], note=f"p50 {off50:.2f} ms; every request reads Redis"),
    ]
