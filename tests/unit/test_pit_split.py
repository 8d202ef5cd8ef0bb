"""How the Ray point-in-time join splits its events: every key's events in one partition, so a task
holds only its keys' feature rows and no key's rows are read by two tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from keel.features.pit_ray import split


def _events(n: int, keys: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"customer_id": rng.integers(0, keys, n), "merchant_id": rng.integers(0, 7, n),
                         "row": np.arange(n)})


def test_each_key_lands_in_exactly_one_partition_and_no_row_is_lost() -> None:
    events = _events(10_000, 900)
    parts = split(events, ["customer_id"], 1_000)
    assert 8 <= len(parts) <= 10 and all(len(p) for p in parts)
    owners = pd.concat([p[["customer_id"]].assign(part=i) for i, p in enumerate(parts)]).drop_duplicates()
    assert owners["customer_id"].is_unique  # no key in two partitions
    assert sorted(pd.concat(parts)["row"]) == list(range(10_000))
    assert max(len(p) for p in parts) < 2 * 1_000  # roughly even for a uniform key


def test_a_compound_key_is_split_on_both_columns() -> None:
    events = _events(5_000, 40)
    parts = split(events, ["customer_id", "merchant_id"], 500)
    pairs = pd.concat([p[["customer_id", "merchant_id"]].assign(part=i) for i, p in enumerate(parts)])
    assert pairs.drop_duplicates().duplicated(["customer_id", "merchant_id"]).sum() == 0
    assert pairs.drop_duplicates(["customer_id", "part"]).duplicated("customer_id").any()  # not by one column


def test_without_keys_it_splits_by_row_ranges_and_small_inputs_stay_whole() -> None:
    events = _events(2_500, 50)
    assert [len(p) for p in split(events, [], 1_000)] == [1_000, 1_000, 500]
    (whole,) = split(events, ["customer_id"], 10_000)
    assert whole.equals(events)
