"""The stream consumer's pure parts: aggregate functions, entry-id order, and the offline append that
keeps each entry once and replaces its file whole."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from keel.features.stream import Agg, StreamView, _aggregate, _id_key, append_offline


def test_aggregates_and_entry_order() -> None:
    assert _aggregate("count", [1.0, 2.0]) == 2.0 and _aggregate("count", []) == 0.0
    assert _aggregate("sum", [1.5, 2.5]) == 4.0 and _aggregate("sum", []) == 0.0
    assert _aggregate("mean", [1.0, 3.0]) == 2.0 and math.isnan(_aggregate("mean", []))
    assert (_aggregate("min", [3.0, 1.0]), _aggregate("max", [3.0, 1.0])) == (1.0, 3.0)
    assert _id_key("1700000000000-2") < _id_key("1700000000000-10") < _id_key("1700000000001-0")


def test_the_offline_append_keeps_each_entry_once(tmp_path: Path) -> None:
    view = StreamView("v", "s", ["customer_id"], [Agg("n", "amount", "count", 3600.0)], str(tmp_path / "v.parquet"),
                      ["customer_id", "event_timestamp", "n", "event_id"])
    t = pd.Timestamp("2026-12-01T10:00:00Z")
    rows = pd.DataFrame({"customer_id": [1, 2], "event_timestamp": [t, t], "n": [1, 1], "event_id": ["1-0", "1-1"]})
    assert append_offline(view, rows) == 2
    again = pd.concat([rows, rows.assign(event_id=["2-0", "2-1"], n=[2, 2])], ignore_index=True)
    assert append_offline(view, again) == 2  # the replayed entries are skipped, the new ones kept
    assert append_offline(view, rows) == 0
    stored = pd.read_parquet(view.batch_path)
    assert sorted(stored["event_id"]) == ["1-0", "1-1", "2-0", "2-1"]
    assert not list(tmp_path.glob("*.tmp"))
