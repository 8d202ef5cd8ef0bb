"""A deliberately naive point-in-time join, row by row, to check both engines (keel's and Feast's) against.

For each labelled event at time t and each feature view: among the entity's feature rows with
event_timestamp <= t, created <= t (the row had arrived) and event_timestamp + ttl >= t (not expired),
take the one with the greatest (event_timestamp, created); no such row gives nulls.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd


def brute_force(events: pd.DataFrame, tables: dict[str, tuple[pd.DataFrame, str, timedelta, list[str]]]
                ) -> pd.DataFrame:
    out = events.copy()
    for _view, (table, key, ttl, features) in tables.items():
        by_key = {k: g for k, g in table.groupby(key)}
        values = {f: np.full(len(events), np.nan) for f in features}
        for i, (k, t) in enumerate(zip(events[key].to_numpy(), events["event_timestamp"], strict=True)):
            rows = by_key.get(k)
            if rows is None:
                continue
            ok = rows[(rows["event_timestamp"] <= t) & (rows["created"] <= t) & (rows["event_timestamp"] + ttl >= t)]
            if ok.empty:
                continue
            best = ok.sort_values(["event_timestamp", "created"]).iloc[-1]
            for f in features:
                values[f][i] = best[f]
        for f in features:
            out[f] = values[f]
    return out
