"""Ground truth in: outcomes (delayed labels) for the predictions a model served.

An outcome names the prediction it belongs to, either by the answer's ``request_id`` (and ``row``, the
row's index within that request, 0 for a one-row request) or by the request's entity key(s) and an
``event_timestamp``: then it belongs to that entity's logged prediction nearest in time, at most
``match_tolerance_s`` away. Either way it is resolved *at ingestion* against the prediction log, so a
bad reference is refused while the sender can still fix it, and both ways of naming one prediction are
one outcome: its id is ``<request_id>:<row>``. The same outcome twice is stored once (a duplicate); a
different label for a stored outcome is a correction, stored and winning at read time.

Stored as parquet under ``<uri>/model=<m>/date=<prediction date>/part-*.parquet`` — the prediction log's
layout, a directory or any fsspec URI (the artifact store on a cluster) — with the entity keys and the
prediction's timestamp as ``event_timestamp``, so the files are also a plain labelled-events source for
Feast or a training set: ``FileSource(path="<uri>/model=<m>/*/*.parquet", timestamp_field="event_timestamp",
created_timestamp_column="received_at")``, where the created timestamp lets a correction win. Only the
controller writes (one writer, so the duplicate check is exact); readers keep the latest row per outcome
id, which also covers a file written twice.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from keel.errors import KeelError

MAX_ROWS = 10_000  # per call: a bigger batch is split by the client, never half-taken by the server
LOOKBACK = timedelta(days=35)  # how old a prediction may be for an outcome to still name it
FIELDS = ("request_id", "row", "label", "event_timestamp", "observed_at")
MAX_ERRORS = 20


class FeedbackError(KeelError):
    """Bad rows: nothing of the batch was stored. ``problems`` lists each as ``outcomes[i].field: why``."""

    def __init__(self, problems: list[str], status: int = 422) -> None:
        shown = problems[:MAX_ERRORS]
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__("; ".join(shown) + more + " (nothing of this batch was stored)")
        self.problems = problems
        self.status = status


@dataclass
class FeedbackResult:
    model: str
    rows: int
    accepted: int
    duplicates: int
    corrected: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ts(value: Any) -> pd.Timestamp:
    """An ISO 8601 string or epoch seconds; naive times are UTC."""
    if isinstance(value, bool) or value is None:
        raise ValueError
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError
        return pd.Timestamp(float(value), unit="s", tz="UTC")
    if not isinstance(value, str) or not value.strip():
        raise ValueError
    t = pd.Timestamp(value)
    if pd.isna(t):
        raise ValueError
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def check_label(task: str, value: Any, classes: list[str] | None) -> float | str:
    """The label as stored (float for binary and regression, the class as text for multiclass), or
    ValueError saying what was expected."""
    if task == "binary":
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int | float) and value in (0, 1):
            return float(value)
        raise ValueError("expected 0 or 1 (or true/false) for a binary model")
    if task == "regression":
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError("expected a finite number for a regression model")
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        raise ValueError(f"expected one of the classes {classes}" if classes else "expected a class label")
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if classes and text not in classes:
        raise ValueError(f"expected one of the classes {', '.join(classes)}")
    return text


class PredictionIndex:
    """What the prediction log holds per model, for resolving outcomes: request id, row, time and entity
    keys of every logged row. Parquet parts are immutable, so each file is read once and kept; a new
    call only reads the files that appeared since."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self._files: dict[str, dict[str, pd.DataFrame]] = {}
        self._frames: dict[str, pd.DataFrame] = {}

    def frame(self, model: str, keys: list[str], now: datetime) -> pd.DataFrame:
        import fsspec
        import pyarrow.parquet as pq

        fs, _, (root,) = fsspec.get_fs_token_paths(self.uri)
        seen = self._files.setdefault(model, {})
        first = (now - LOOKBACK).date()
        fresh = False
        for path in sorted(fs.glob(f"{root}/model={model}/date=*/*.parquet")):
            day = path.split("date=", 1)[1].split("/", 1)[0]
            if path in seen or day < first.isoformat():
                continue
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                names = pf.schema_arrow.names
                cols = [c for c in ("request_id", "row", "timestamp", "role", "version", *keys) if c in names]
                part = pf.read(columns=cols).to_pandas()
            if "row" not in part:  # logs written before rows were numbered: one-row requests
                part["row"] = part.groupby("request_id").cumcount()
            if "role" in part:  # a shadow row repeats its primary's request id: the primary's is the one named
                part = part[part["role"] != "shadow"]
            seen[path] = part
            fresh = True
        if fresh or model not in self._frames:
            parts = [p for p in seen.values() if not p.empty]
            df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
                columns=["request_id", "row", "timestamp", *keys])
            df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
            df["row"] = df["row"].astype("int64")
            self._frames[model] = df.drop_duplicates(["request_id", "row"])
        return self._frames[model]


class OutcomeStore:
    """Validates, resolves and stores outcomes (see the module docstring). Thread-safe: the controller
    calls it from concurrent request handlers."""

    def __init__(self, uri: str, predictions: str) -> None:
        self.uri = uri.rstrip("/")
        self.index = PredictionIndex(predictions)
        self._lock = threading.Lock()
        self._stored: dict[str, dict[str, Any]] = {}  # model -> outcome id -> label
        self._read_files: dict[str, set[str]] = {}

    def _known(self, model: str) -> dict[str, Any]:
        import fsspec

        fs, _, (root,) = fsspec.get_fs_token_paths(self.uri)
        have = self._stored.setdefault(model, {})
        done = self._read_files.setdefault(model, set())
        new = [p for p in sorted(fs.glob(f"{root}/model={model}/date=*/*.parquet")) if p not in done]
        if new:
            frames = []
            for p in new:
                with fs.open(p, "rb") as fh:
                    frames.append(pd.read_parquet(fh, columns=["outcome_id", "label", "received_at", "seq"]))
            df = pd.concat(frames, ignore_index=True).sort_values(["received_at", "seq"], kind="stable")
            have.update(zip(df["outcome_id"], df["label"], strict=True))
            done.update(new)
        return have

    def record(self, model: str, task: str, rows: Any, entity_keys: list[str], classes: list[str] | None = None,
               tolerance_s: float = 300.0, now: datetime | None = None) -> FeedbackResult:
        """Check every row, resolve it to a logged prediction, store the new ones; all or nothing."""
        if not isinstance(rows, list):
            raise FeedbackError(["outcomes: expected a list of outcome objects"], 400)
        if not rows:
            raise FeedbackError(["outcomes: empty; expected at least one outcome"], 400)
        if len(rows) > MAX_ROWS:
            raise FeedbackError([f"outcomes: {len(rows)} in one call; at most {MAX_ROWS} (split the batch)"],
                                413)
        now = now or datetime.now(UTC)
        allowed = (*FIELDS, *entity_keys)
        problems: list[str] = []
        parsed: list[dict[str, Any]] = []
        for i, r in enumerate(rows):
            where = f"outcomes[{i}]"
            if not isinstance(r, dict):
                problems.append(f"{where}: expected an object with label and request_id or "
                                f"{' + '.join([*entity_keys, 'event_timestamp']) or 'request_id'}")
                continue
            extra = sorted(set(r) - set(allowed))
            if extra:
                problems.append(f"{where}.{extra[0]}: unknown field; valid fields: {', '.join(allowed)}")
                continue
            out: dict[str, Any] = {"i": i}
            try:
                if "label" not in r:
                    raise _Bad("label", "missing")
                try:
                    out["label"] = check_label(task, r["label"], classes)
                except ValueError as exc:
                    raise _Bad("label", f"{exc} (got {r['label']!r})") from None
                try:
                    out["observed_at"] = _ts(r["observed_at"]) if r.get("observed_at") is not None \
                        else pd.Timestamp(now)
                except (ValueError, TypeError):
                    raise _Bad("observed_at", f"expected an ISO 8601 time or epoch seconds (got {r['observed_at']!r})"
                               ) from None
                if "request_id" in r:
                    rid = r["request_id"]
                    if not isinstance(rid, str) or not rid or len(rid) > 128:
                        raise _Bad("request_id", f"expected the answer's request_id, a string of 1-128 characters "
                                                 f"(got {rid!r})")
                    row = r.get("row", 0)
                    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
                        raise _Bad("row", f"expected the row's index within its request, an integer >= 0 (got {row!r})")
                    out.update(request_id=rid, row=row, source="request")
                else:
                    missing = [k for k in [*entity_keys, "event_timestamp"] if r.get(k) is None]
                    if not entity_keys or missing:
                        need = " + ".join([*entity_keys, "event_timestamp"]) if entity_keys else ""
                        raise _Bad(missing[0] if entity_keys else "request_id",
                                   "missing; an outcome names its prediction by request_id"
                                   + (f" or by {need}" if need else " (this model records no entity keys)"))
                    try:
                        out["event"] = _ts(r["event_timestamp"])
                    except (ValueError, TypeError):
                        raise _Bad("event_timestamp", "expected an ISO 8601 time or epoch seconds "
                                                      f"(got {r['event_timestamp']!r})") from None
                    for k in entity_keys:
                        if not isinstance(r[k], int | str) or isinstance(r[k], bool):
                            raise _Bad(k, f"expected an entity key (integer or string), got {r[k]!r}")
                    out.update(keys={k: r[k] for k in entity_keys}, source="entity")
            except _Bad as bad:
                problems.append(f"{where}.{bad.field}: {bad.why}")
                continue
            parsed.append(out)
        if problems:
            raise FeedbackError(problems)
        with self._lock:
            logged = self.index.frame(model, entity_keys, now)
            resolved = self._resolve(model, parsed, logged, entity_keys, tolerance_s)
            return self._store(model, resolved, logged, entity_keys, now)

    def _resolve(self, model: str, parsed: list[dict[str, Any]], logged: pd.DataFrame, keys: list[str],
                 tolerance_s: float) -> list[dict[str, Any]]:
        problems = []
        by_id = logged.set_index(["request_id", "row"]).index if len(logged) else pd.MultiIndex.from_tuples(
            [], names=["request_id", "row"])
        rows_of = logged.groupby("request_id")["row"].max() if len(logged) else pd.Series(dtype="int64")
        groups: dict[Any, Any] | None = None
        for p in parsed:
            where = f"outcomes[{p['i']}]"
            if p["source"] == "request":
                if (p["request_id"], p["row"]) in by_id:
                    continue
                if p["request_id"] in rows_of.index:
                    problems.append(f"{where}.row: request '{p['request_id']}' has rows 0..{rows_of[p['request_id']]}"
                                    f", not {p['row']}")
                else:
                    problems.append(f"{where}.request_id: unknown request id '{p['request_id']}' for model '{model}'"
                                    " (not in its prediction log: not sampled, older than "
                                    f"{LOOKBACK.days} days, or answered seconds ago and not flushed yet)")
                continue
            if groups is None:  # each entity's logged rows, grouped once per call
                groups = logged.groupby([logged[k].astype(str) for k in keys]).indices \
                    if len(logged) and all(k in logged for k in keys) else {}
            key = tuple(str(p["keys"][k]) for k in keys)
            pos = groups.get(key[0] if len(key) == 1 else key)
            match = logged.iloc[pos] if pos is not None else logged.iloc[0:0]
            gap = (match["timestamp"] - p["event"]).abs().dt.total_seconds()
            if not len(match) or gap.min() > tolerance_s:
                who = ", ".join(f"{k}={v!r}" for k, v in p["keys"].items())
                problems.append(f"{where}: no logged prediction of '{model}' for {who} within {tolerance_s:g}s of "
                                f"{p['event'].isoformat()}")
                continue
            best = match.loc[gap.idxmin()]
            p.update(request_id=str(best["request_id"]), row=int(best["row"]))
        if problems:
            raise FeedbackError(problems)
        return parsed

    def _store(self, model: str, parsed: list[dict[str, Any]], logged: pd.DataFrame, keys: list[str],
               now: datetime) -> FeedbackResult:
        have = self._known(model)
        batch: dict[str, dict[str, Any]] = {}
        duplicates = corrected = 0
        for p in parsed:
            oid = f"{p['request_id']}:{p['row']}"
            before = batch[oid]["label"] if oid in batch else have.get(oid)
            if before is not None and before == p["label"]:
                duplicates += 1
                continue
            corrected += before is not None
            batch[oid] = p
        if batch:
            ids = pd.DataFrame({"outcome_id": list(batch)})
            meta = logged.assign(outcome_id=logged["request_id"] + ":" + logged["row"].astype(str))
            meta = ids.merge(meta, on="outcome_id", how="left")
            received = pd.Timestamp(now)
            df = pd.DataFrame({
                "outcome_id": list(batch),
                "request_id": [p["request_id"] for p in batch.values()],
                "row": np.array([p["row"] for p in batch.values()], dtype="int64"),
                "label": [p["label"] for p in batch.values()],
                "event_timestamp": meta["timestamp"].to_numpy(),
                "observed_at": pd.to_datetime([p["observed_at"] for p in batch.values()], utc=True),
                "received_at": received,
                "seq": time.time_ns(),  # orders two batches received in the same instant: the later one wins
                "source": [p["source"] for p in batch.values()],
                "version": meta["version"].astype(str).to_numpy() if "version" in meta else "",
                **{k: meta[k].to_numpy() for k in keys if k in meta},
            })
            df["date"] = df["event_timestamp"].dt.strftime("%Y-%m-%d")
            from keel.serving.predlog import _write

            for date, part in df.groupby("date", sort=True):
                name = f"{self.uri}/model={model}/date={date}/part-{uuid.uuid4().hex}.parquet"
                _write(part.drop(columns=["date"]), name)
            have.update({oid: p["label"] for oid, p in batch.items()})
        return FeedbackResult(model, len(parsed), len(batch) - corrected, duplicates, corrected)


class _Bad(Exception):
    def __init__(self, field: str, why: str) -> None:
        super().__init__(why)
        self.field, self.why = field, why


def read(uri: str, model: str, since: datetime | None = None) -> pd.DataFrame:
    """The stored outcomes of ``model`` (latest per outcome id), optionally only those of predictions
    made on or after ``since``'s date."""
    import fsspec

    fs, _, (root,) = fsspec.get_fs_token_paths(uri.rstrip("/"))
    files = sorted(fs.glob(f"{root}/model={model}/date=*/*.parquet"))
    if since is not None:
        first = since.date().isoformat()
        files = [f for f in files if f.split("date=", 1)[1].split("/", 1)[0] >= first]
    if not files:
        return pd.DataFrame(columns=["outcome_id", "request_id", "row", "label", "event_timestamp", "observed_at",
                                     "received_at"])
    frames = []
    for f in files:
        with fs.open(f, "rb") as fh:
            frames.append(pd.read_parquet(fh))
    df = pd.concat(frames, ignore_index=True).sort_values(["received_at", "seq"], kind="stable")
    return df.drop_duplicates("outcome_id", keep="last").reset_index(drop=True)
