"""The hot-entity feature cache: fresh hits skip the store, the size bound holds, and while the store
fails the last known values are served (flagged) before the training medians."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from keel.serving.breaker import CircuitBreaker
from keel.serving.features import FeatureCache, OnlineFeatures


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_entries_are_fresh_for_the_ttl_then_only_stale_and_the_size_bound_evicts_the_least_recent() -> None:
    clock = Clock()
    cache = FeatureCache(ttl_s=1.0, max_items=2, stale_s=10.0, clock=clock)
    cache.put((1,), {"f": 1.0})
    cache.put((2,), {"f": 2.0})
    assert cache.get((1,)) == {"f": 1.0}  # 1 is now the most recent
    cache.put((3,), {"f": 3.0})
    assert len(cache) == 2 and cache.get((2,)) is None and cache.get((3,)) == {"f": 3.0}
    clock.t += 1.5
    assert cache.get((1,)) is None and cache.get((1,), stale=True) == {"f": 1.0}
    clock.t += 9.0
    assert cache.get((1,), stale=True) is None  # older than stale_s: not even while the store fails


@pytest.mark.parametrize("bad", [{"ttl_s": 0.0}, {"ttl_s": 1.0, "max_items": 0}, {"ttl_s": 1.0, "stale_s": -1.0}])
def test_bad_sizes_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="ttl_s > 0"):
        FeatureCache(**bad)  # type: ignore[arg-type]


class Store:
    """Stands in for the Redis read: f = customer_id * 10 + the generation of the data."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.generation = 0
        self.down = False

    def read(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if self.down:
            raise ConnectionError("Connection refused")
        self.calls.append([r["customer_id"] for r in rows])
        return {"f": np.array([r["customer_id"] * 10.0 + self.generation for r in rows])}


def _online(store: Store, clock: Clock) -> OnlineFeatures:
    online = OnlineFeatures.__new__(OnlineFeatures)  # the fetch logic only, without a Feast store
    online.entity_keys, online.base, online.numeric = ["customer_id"], ["f"], {"f"}
    online.request_fields, online.odfvs, online.types = [], [], {"customer_id": "int"}
    online.defaults = {"f": -1.0}
    online.breaker = CircuitBreaker(failures=100)
    online.cache = FeatureCache(1.0, 100, 60.0, clock=clock)
    online._from_store = store.read  # type: ignore[method-assign]
    return online


def test_hits_skip_the_store_and_a_failing_store_serves_the_last_known_values_flagged() -> None:
    clock, store = Clock(), Store()
    online = _online(store, clock)
    first = online.fetch([{"customer_id": 1}, {"customer_id": 2}])
    assert (first.hits, first.misses, first.stale) == (0, 2, 0) and first.columns["f"].tolist() == [10.0, 20.0]
    again = online.fetch([{"customer_id": 2}, {"customer_id": 3}])
    assert store.calls == [[1, 2], [3]]  # 2 came from the cache
    assert (again.hits, again.misses) == (1, 1) and again.columns["f"].tolist() == [20.0, 30.0]
    assert not again.degraded.any()

    store.generation, clock.t = 1, clock.t + 2.0  # past the ttl: the store is asked again
    assert online.fetch([{"customer_id": 1}]).columns["f"].tolist() == [11.0]

    store.down, clock.t = True, clock.t + 2.0
    out = online.fetch([{"customer_id": 1}, {"customer_id": 2}, {"customer_id": 9}])
    assert out.columns["f"].tolist() == [11.0, 20.0, -1.0]  # last known, last known, the median
    assert out.degraded.tolist() == [True, True, True] and out.stale == 2 and out.reason == "error"
    only_known = online.fetch([{"customer_id": 2}])
    assert only_known.reason == "stale" and only_known.degraded.tolist() == [True]

    store.down = False
    back = online.fetch([{"customer_id": 2}])
    assert back.columns["f"].tolist() == [21.0] and not back.degraded.any()
