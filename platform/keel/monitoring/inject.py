"""Replay labelled rows as live traffic, with drift injected on named features.

For demos and tests of the drift loop: each row gets fresh entity ids, its feature values are written to
the online store under them (multiplied by the drift factor where one is given) and a request is sent
for it. The prediction log then holds exactly the training distribution plus the injected drift, so a
drift job must flag the drifted features (and those computed from them) and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings
from keel.errors import KeelError


def replay(settings: Settings, model: str, rows: pd.DataFrame, drift: dict[str, float],
           send: Callable[[list[dict[str, Any]]], dict[str, Any]], entity_base: int = 9_000_000,
           batch: int = 50) -> int:
    """Write each row's features under new ids and ``send`` requests for them; returns rows sent.
    Rows missing any online feature are skipped (the online store has no typed null for them)."""
    from keel.features.store import open_store

    fs = open_store(settings)
    views = [fv for fv in fs.list_feature_views() if fv.online]
    cols = {fv.name: [f.name for f in fv.features] for fv in views}
    usable = [fv for fv in views if all(c in rows for c in cols[fv.name])]
    unknown = [f for f in drift if not any(f in cols[fv.name] for fv in usable)]
    if unknown:
        raise KeelError(f"cannot inject drift on {', '.join(unknown)}: not a stored feature of the rows given")
    needed = [c for fv in usable for c in cols[fv.name]]
    rows = rows.dropna(subset=needed).reset_index(drop=True)
    ids = np.arange(entity_base, entity_base + len(rows), dtype="int64")
    now = pd.Timestamp(datetime.now(UTC))
    keys: dict[str, np.ndarray] = {}
    for fv in usable:
        frame = rows[cols[fv.name]].copy()
        for f in cols[fv.name]:
            if f in drift:
                frame[f] = frame[f] * drift[f]
            if pd.api.types.is_integer_dtype(rows[f]) or str(next(x.dtype for x in fv.features if x.name == f)) \
                    in ("Int64", "Int32"):
                frame[f] = frame[f].round().astype("int64")
        for key in (e.name for e in fv.entity_columns):
            keys[key] = ids
            frame[key] = ids
        fs.write_to_online_store(fv.name, frame.assign(event_timestamp=now, created=now))
    extra = [c for c in ("amount",) if c in rows]
    instances = [{**{k: int(v[i]) for k, v in keys.items()}, **{c: float(rows[c].iloc[i]) for c in extra}}
                 for i in range(len(rows))]
    for k in range(0, len(instances), batch):
        answer = send(instances[k:k + batch])
        if any(answer.get("degraded_rows", [])):
            raise KeelError("feature lookups degraded during the replay: is Redis healthy? (`keel status`)")
    return len(instances)
