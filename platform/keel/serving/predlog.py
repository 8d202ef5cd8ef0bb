"""The prediction log: what was asked, what features were used, what was answered.

Sampled at a configurable rate, buffered in memory under a hard bound (when full, the oldest records
are dropped and counted: serving never blocks on the log), flushed to parquet partitioned by model and
date — a local directory or any fsspec URI (s3://...) — every few seconds and on shutdown.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

import pandas as pd


class PredictionLog:
    def __init__(self, uri: str, sample_rate: float = 1.0, max_buffer: int = 100_000, flush_every: int = 5_000,
                 seed: int | None = None, flush_interval_s: float = 0.0) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate}: expected a fraction between 0 and 1")
        self.uri = uri.rstrip("/")
        self.sample_rate = sample_rate
        self.max_buffer = max_buffer
        self.flush_every = flush_every
        self._buf: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.dropped = 0
        self.written = 0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if flush_interval_s > 0:
            self._timer = threading.Thread(target=self._flush_periodically, args=(flush_interval_s,),
                                           name="keel-predlog", daemon=True)
            self._timer.start()

    def _flush_periodically(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.flush()
            except Exception as exc:  # a full disk must not kill serving; records stay buffered (bounded)
                import logging

                logging.getLogger("keel.serving").warning("prediction log flush failed: %s", exc)

    def close(self) -> int:
        """Stop the timer and write what is buffered."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=30)
        return self.flush()

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate

    def add(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for rec in records:
                if len(self._buf) >= self.max_buffer:
                    self._buf.popleft()
                    self.dropped += 1
                self._buf.append(rec)
            due = len(self._buf) >= self.flush_every
        if due:
            self.flush()

    def __len__(self) -> int:
        return len(self._buf)

    def flush(self) -> int:
        """Write everything buffered; returns the number of records written. If writing fails, the
        records go back to the front of the buffer (still bounded) and the error is raised."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._buf)
                self._buf.clear()
            if not batch:
                return 0
            df = pd.DataFrame.from_records(batch)
            df["date"] = pd.to_datetime(df["timestamp"], utc=True).dt.strftime("%Y-%m-%d")
            done: set[tuple[str, str]] = set()
            try:
                for (model, date), part in df.groupby(["model", "date"], sort=False):
                    path = f"{self.uri}/model={model}/date={date}/part-{uuid.uuid4().hex}.parquet"
                    _write(part.drop(columns=["model", "date"]), path)
                    done.add((model, date))
            except Exception:
                dates = df["date"].tolist()
                batch = [r for r, d in zip(batch, dates, strict=True) if (r["model"], d) not in done]
                with self._lock:
                    room = max(0, self.max_buffer - len(self._buf))
                    keep = batch[-room:] if room else []
                    self.dropped += len(batch) - len(keep)
                    self._buf.extendleft(reversed(keep))
                raise
            self.written += len(batch)
            return len(batch)


def _write(df: pd.DataFrame, path: str) -> None:
    import fsspec

    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    tmp = p + ".tmp"
    with fs.open(tmp, "wb") as fh:
        df.to_parquet(fh, index=False)
    fs.mv(tmp, p)


def read(uri: str, model: str | None = None) -> pd.DataFrame:
    """All logged records (for drift jobs and tests)."""
    import fsspec

    fs, _, (root,) = fsspec.get_fs_token_paths(uri.rstrip("/"))
    pattern = f"{root}/model={model or '*'}/date=*/*.parquet"
    files = sorted(fs.glob(pattern))
    if not files:
        return pd.DataFrame()
    frames = []
    for f in files:
        with fs.open(f, "rb") as fh:
            part = pd.read_parquet(fh)
        part["model"] = f.split("model=", 1)[1].split("/", 1)[0]
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()
