"""Fresh features from events: a Redis Stream per Feast PushSource, a consumer group, Feast's push API.

Producers append events to ``keel:stream:<push source>`` (XADD; ``publish``). A consumer (``keel stream
consume``, one per push source: ``keel up`` starts it, the chart runs it as a Deployment) reads them with
XREADGROUP in the group ``keel``, computes each stream feature view's aggregations over the view's own
Feast definition (``Aggregation(column, function, time_window, name)``: count, sum, mean, min, max) as of
each event, and pushes the rows through ``FeatureStore.push`` to the online store; the same rows land in
the push source's batch source (the offline parquet), so a point-in-time training set sees, for each
event, the value serving saw.

Nothing lost, nothing counted twice, across a consumer killed at any instant: an entry is acknowledged
only after its rows are written, so a restart first re-reads its pending entries; the per-entity window
state lives in Redis keyed by the entry id (ZADD/HSET of the same id is a no-op), so replaying an entry
recomputes the same aggregate; and the offline append skips entries whose id it already holds
(``event_id`` column) and replaces the file atomically. Redis Streams rather than Kafka: no Kafka broker
is installable here, and Redis is already the online store (use AOF persistence for a durable buffer).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from keel.config import Settings
from keel.errors import KeelError

GROUP = "keel"
TIMESTAMP = "event_timestamp"
FUNCTIONS = ("count", "sum", "mean", "min", "max")
log = logging.getLogger("keel.stream")


def stream_key(source: str) -> str:
    return f"keel:stream:{source}"


@dataclass(frozen=True)
class Agg:
    name: str
    column: str
    function: str
    window_s: float


@dataclass(frozen=True)
class StreamView:
    """A stream feature view fed by a push source, as the consumer computes it."""

    name: str
    source: str
    keys: list[str]
    aggs: list[Agg]
    batch_path: str  # the push source's batch source (offline parquet), absolute
    columns: list[str]  # every column of the batch source, in its order

    @property
    def longest_s(self) -> float:
        return max(a.window_s for a in self.aggs)


def views_of(settings: Settings, source: str) -> list[StreamView]:
    """The stream feature views whose source is the push source ``source``, from the Feast registry."""
    from feast.data_source import PushSource

    from keel.features import store as fstore

    with fstore.in_repo(settings):
        st = fstore.open_store(settings)
        sources = {s.name: s for s in st.list_data_sources()}
        push = sources.get(source)
        if not isinstance(push, PushSource):
            pushes = sorted(n for n, s in sources.items() if isinstance(s, PushSource))
            raise KeelError(f"unknown push source '{source}'; valid choices: {', '.join(pushes) or '(none)'}")
        found = []
        for v in st.list_stream_feature_views():
            if getattr(v.stream_source, "name", None) != source and getattr(v, "source", None) is not push:
                continue
            aggs = []
            for a in v.aggregations:
                if a.function not in FUNCTIONS or a.time_window is None:
                    raise KeelError(f"stream feature view '{v.name}': aggregation {a.function}({a.column}) needs a "
                                    f"time_window and one of {', '.join(FUNCTIONS)}")
                aggs.append(Agg(a.name or f"{a.function}_{a.column}", a.column, a.function,
                                a.time_window.total_seconds()))
            if not aggs:
                raise KeelError(f"stream feature view '{v.name}' has no aggregations: keel computes them per event")
            batch = push.batch_source
            path = str(Path(str(st.repo_path)) / batch.path) if not Path(batch.path).is_absolute() else batch.path
            keys = [c.name for c in v.entity_columns]
            columns = [*keys, TIMESTAMP, *[a.name for a in aggs], "event_id"]
            found.append(StreamView(v.name, source, keys, aggs, path, columns))
    if not found:
        raise KeelError(f"push source '{source}' feeds no stream feature view with aggregations")
    return found


def _redis(settings: Settings) -> Any:
    import redis

    conn = settings.redis_connection
    host, _, port = conn.split(",")[0].partition(":")
    password = next((p.split("=", 1)[1] for p in conn.split(",")[1:] if p.startswith("password=")), None)
    return redis.Redis(host=host, port=int(port or 6379), password=password, decode_responses=True)


def _epoch(value: Any) -> float:
    t = pd.Timestamp(value)
    if pd.isna(t):
        raise ValueError
    return (t.tz_localize("UTC") if t.tzinfo is None else t).timestamp()


def publish(settings: Settings, source: str, events: list[dict[str, Any]], views: list[StreamView] | None = None
            ) -> list[str]:
    """Append events to the push source's stream; each needs the views' keys, columns and event_timestamp.
    Checked up front, all or nothing, with the row and field named. Returns the entry ids."""
    views = views or views_of(settings, source)
    need = sorted({*[k for v in views for k in v.keys], *[a.column for v in views for a in v.aggs], TIMESTAMP})
    problems = []
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            problems.append(f"events[{i}]: expected an object with {', '.join(need)}")
            continue
        missing = [c for c in need if e.get(c) is None]
        if missing:
            problems.append(f"events[{i}].{missing[0]}: missing; expected {', '.join(need)}")
            continue
        try:
            _epoch(e[TIMESTAMP])
        except (ValueError, TypeError):
            problems.append(f"events[{i}].{TIMESTAMP}: expected an ISO 8601 time, got {e[TIMESTAMP]!r}")
        for a in {a.column for v in views for a in v.aggs}:
            if a in e and (isinstance(e[a], bool) or not isinstance(e[a], int | float) or not math.isfinite(e[a])):
                problems.append(f"events[{i}].{a}: expected a finite number, got {e[a]!r}")
    if problems:
        raise KeelError("; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
    r = _redis(settings)
    pipe = r.pipeline(transaction=False)
    for e in events:
        pipe.xadd(stream_key(source), {"event": json.dumps(e, default=str)})
    return list(pipe.execute())


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Consumer:
    """One consumer of a push source's stream (see the module docstring)."""

    def __init__(self, settings: Settings, source: str, name: str | None = None, batch: int = 500,
                 block_ms: int = 1000, claim_idle_ms: int = 30_000) -> None:
        self.settings, self.source = settings, source
        self.claim_idle_ms = claim_idle_ms  # a dead consumer's entries are taken over once idle this long
        self.name = name or f"{os.uname().nodename}-{os.getpid()}"
        self.batch, self.block_ms = batch, block_ms
        self.views = views_of(settings, source)
        self.r = _redis(settings)
        self.key = stream_key(source)
        self.processed = 0
        self.last_event_ts: float | None = None
        self.last_ids: list[str] = []  # the entry ids of the last batch written
        self._recovered = False  # until no other consumer's entries are pending: none are read anew
        self._stop = threading.Event()
        self._store: Any = None
        try:
            self.r.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists already
            if "BUSYGROUP" not in str(exc):
                raise

    def store(self) -> Any:
        if self._store is None:
            from keel.features import store as fstore

            with fstore.in_repo(self.settings):
                self._store = fstore.open_store(self.settings)
        return self._store

    # -- per-entity window state in Redis, keyed by entry id (idempotent) ----------------------------------
    def _state(self, view: StreamView, ent: str) -> tuple[str, str]:
        return f"keel:agg:{{{view.name}:{ent}}}:t", f"keel:agg:{{{view.name}:{ent}}}:v"

    def _rows(self, entries: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {v.name: [] for v in self.views}
        for view in self.views:
            pipe = self.r.pipeline(transaction=False)
            parsed = []
            for entry_id, e in entries:
                ent = json.dumps([e[k] for k in view.keys], default=str)
                t = _epoch(e[TIMESTAMP])
                times, values = self._state(view, ent)
                pipe.zadd(times, {entry_id: t})
                pipe.hset(values, entry_id, json.dumps({a.column: e.get(a.column) for a in view.aggs}))
                parsed.append((entry_id, e, ent, t))
            pipe.execute()
            latest: dict[str, tuple[float, str, dict[str, Any]]] = {}
            for entry_id, e, ent, t in parsed:
                out[view.name].append(self._as_of(view, ent, entry_id, e, t))
                if ent not in latest or (t, _id_key(entry_id)) > (latest[ent][0], _id_key(latest[ent][1])):
                    latest[ent] = (t, entry_id, e)
            for ent, (t, entry_id, e) in latest.items():
                # a late event (older than one already handled for the entity) changes the entity's current
                # value: the newest event's row is recomputed and pushed online after the batch's rows. Offline
                # rows keep what was served at their time (what a point-in-time training set should see).
                top = self.r.zrevrange(self._state(view, ent)[0], 0, 0, withscores=True)
                if top and (top[0][1], _id_key(top[0][0])) > (t, _id_key(entry_id)):
                    row = self._as_of(view, ent, top[0][0], e, top[0][1])
                    out.setdefault(f"{view.name}:online", []).append(row)
            # forget what no window can reach any more (twice the longest window behind the newest event)
            newest = max(t for *_, t in parsed)
            pipe = self.r.pipeline(transaction=False)
            for ent in {p[2] for p in parsed}:
                times, values = self._state(view, ent)
                old = self.r.zrangebyscore(times, "-inf", newest - 2 * view.longest_s)
                if old:
                    pipe.zrem(times, *old)
                    pipe.hdel(values, *old)
            pipe.execute()
        return out

    def _as_of(self, view: StreamView, ent: str, entry_id: str, e: dict[str, Any], t: float) -> dict[str, Any]:
        """The view's row as of one entry: its events in each window up to the entry's time (at the same
        instant, those that came before it in the stream)."""
        times, values = self._state(view, ent)
        members = self.r.zrangebyscore(times, t - view.longest_s, t, withscores=True)
        mine = _id_key(entry_id)
        members = [(m, sc) for m, sc in members if sc < t or _id_key(m) <= mine]
        vals = dict(zip((m for m, _ in members), self.r.hmget(values, [m for m, _ in members]), strict=True))
        row: dict[str, Any] = {k: e[k] for k in view.keys}
        row[TIMESTAMP] = pd.Timestamp(t, unit="s", tz="UTC")
        for a in view.aggs:
            xs = [json.loads(vals[m])[a.column] for m, sc in members if sc > t - a.window_s and vals.get(m)]
            row[a.name] = _aggregate(a.function, [float(x) for x in xs if x is not None])
        row["event_id"] = entry_id
        return row

    def _write(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        from feast.data_source import PushMode

        for view in self.views:
            df = pd.DataFrame(rows[view.name])
            if df.empty:
                continue
            fixes = pd.DataFrame(rows.get(f"{view.name}:online", []))
            both = pd.concat([df, fixes], ignore_index=True) if len(fixes) else df
            both[TIMESTAMP] = both[TIMESTAMP].astype("datetime64[us, UTC]")
            for a in view.aggs:
                both[a.name] = both[a.name].astype("int64" if a.function == "count" else "float64")
            self.store().push(view.source, both.drop(columns=["event_id"]), to=PushMode.ONLINE)
            append_offline(view, both.iloc[: len(df)])

    def run_once(self) -> int:
        """Handle this consumer's pending entries first (a restart), then a dead consumer's, then new ones;
        returns how many."""
        got = self.r.xreadgroup(GROUP, self.name, {self.key: "0"}, count=self.batch)
        entries = got[0][1] if got and got[0][1] else []
        if not entries:  # entries a consumer that died was given (a restarted pod has a new name)
            claimed = self.r.xautoclaim(self.key, GROUP, self.name, self.claim_idle_ms, "0-0", count=self.batch)
            entries = [e for e in claimed[1] if e and e[1]]
        if not entries and not self._recovered:
            # events are aggregated in stream order: nothing new is read while another consumer's entries
            # wait to be taken over (they become claimable once idle claim_idle_ms)
            others = self.r.xpending(self.key, GROUP)
            if others and others.get("pending"):
                self._stop.wait(min(1.0, self.claim_idle_ms / 4000.0))
                return 0
            self._recovered = True
        if not entries:
            got = self.r.xreadgroup(GROUP, self.name, {self.key: ">"}, count=self.batch, block=self.block_ms)
            entries = got[0][1] if got else []
        if not entries:
            return 0
        events = [(entry_id, json.loads(fields["event"])) for entry_id, fields in entries]
        self._write(self._rows(events))
        self.last_ids = [entry_id for entry_id, _ in events]
        self.r.xack(self.key, GROUP, *self.last_ids)
        self.processed += len(events)
        self.last_event_ts = max(_epoch(e[TIMESTAMP]) for _, e in events)
        return len(events)

    def lag(self) -> dict[str, float]:
        """Entries not yet delivered or not yet acknowledged, and the age of the newest event handled."""
        groups = {g["name"]: g for g in self.r.xinfo_groups(self.key)}
        g = groups.get(GROUP, {})
        age = time.time() - self.last_event_ts if self.last_event_ts else math.nan
        return {"undelivered": float(g.get("lag") or 0), "pending": float(g.get("pending") or 0), "age_s": age}

    def run(self, on_batch: Callable[[int], None] | None = None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except Exception:  # Redis or the store briefly away: the entries stay pending, retried next round
                log.exception("stream %s: batch failed; its entries stay pending", self.source)
                self._stop.wait(1.0)
                continue
            if on_batch is not None:
                on_batch(n)


def _aggregate(function: str, xs: list[float]) -> float:
    if function == "count":
        return float(len(xs))
    if not xs:
        return 0.0 if function == "sum" else math.nan
    return {"sum": sum, "mean": lambda v: sum(v) / len(v), "min": min, "max": max}[function](xs)


def append_offline(view: StreamView, rows: pd.DataFrame) -> int:
    """Append rows to the batch source's parquet, skipping entry ids it holds; atomic (write + rename)."""
    path = Path(view.batch_path)
    rows = new = rows[view.columns]
    if path.exists():
        have = pd.read_parquet(path)
        new = rows[~rows["event_id"].isin(set(have["event_id"]))]
        if new.empty:
            return 0
        rows = pd.concat([have, new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    rows.to_parquet(tmp, index=False, coerce_timestamps="us")
    tmp.replace(path)
    return len(new)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
