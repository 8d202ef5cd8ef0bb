"""Champion and challenger side by side: a canary split by weight, or the challenger in shadow.

In canary mode each request is answered by exactly one version (the response says which, and the
prediction log records it with the role ``canary``). With a ``sticky_key`` the split is an A/B test: a
request goes to the challenger when a hash of its first row's key value falls under the weight, so the
same entity always meets the same variant, on every replica and across restarts (a keyed hash, not
Python's per-process ``hash``). A request without the key falls back to the coin flip. In
shadow mode the primary always answers; the challenger scores the same request on a background
worker and is only logged, never returned. Shadow work is bounded: when the queue is full, shadow
scoring is skipped rather than slowing the primary.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from keel.serving import metrics as M
from keel.serving.core import InputError, Predictor, Result

log = logging.getLogger("keel.serving")


class Router:
    def __init__(self, primary: Predictor, secondary: Predictor | None = None, mode: str | None = None,
                 weight: float = 0.0, seed: int | None = None, shadow_queue: int = 64,
                 sticky_key: str | None = None) -> None:
        if mode not in (None, "canary", "shadow"):
            raise ValueError(f"mode={mode!r}: expected None, 'canary' or 'shadow'")
        if mode and secondary is None:
            raise ValueError(f"mode={mode!r} needs a second predictor")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight={weight}: expected a fraction between 0 and 1")
        self.primary, self.secondary, self.mode, self.weight = primary, secondary, mode, weight
        self.sticky_key = sticky_key if mode == "canary" else None
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._shadow = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-shadow") if mode == "shadow" else None
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        self._shadow_queue = shadow_queue
        self._inflight = M.INFLIGHT.labels(primary.name)

    @property
    def name(self) -> str:
        return self.primary.name

    @property
    def predictors(self) -> list[Predictor]:
        return [p for p in (self.primary, self.secondary) if p is not None]

    def route(self, instances: Any = None) -> Predictor:
        if self.mode == "canary" and self.secondary is not None:
            if self.sticky_key is not None:
                value = first_value(instances, self.sticky_key)
                if value is not None:
                    return self.secondary if bucket(self.primary.name, value) < self.weight else self.primary
            with self._rng_lock:
                if self._rng.random() < self.weight:
                    return self.secondary
        return self.primary

    def predict(self, instances: Any, target: Predictor | None = None) -> Result:
        """Answer one request, counting its outcome by HTTP-equivalent code."""
        chosen = target or self.route(instances)
        role = "canary" if chosen is not self.primary else "primary"
        self._inflight.inc()
        try:
            result = chosen.predict(instances, role=role)
        except InputError:
            chosen.count("400")
            raise
        except Exception:
            chosen.count("500")
            raise
        finally:
            self._inflight.dec()
        chosen.count("200")
        if self._shadow is not None and self.secondary is not None:
            self._submit_shadow(instances, result.request_id)
        return result

    def predict_many(self, requests: list[Any]) -> list[Result | InputError]:
        """Answer several requests with one model call per chosen version (adaptive batching).

        Each request is validated on its own, so one bad request fails alone; valid ones are scored
        together and split back. Canary routing stays per request.
        """
        out: list[Result | InputError | None] = [None] * len(requests)
        groups: dict[int, tuple[Predictor, list[int], list[list[dict[str, Any]]]]] = {}
        for i, instances in enumerate(requests):
            chosen = self.route(instances)
            try:
                rows = chosen.validate(instances)
            except InputError as exc:
                chosen.count("400")
                out[i] = exc
                continue
            groups.setdefault(id(chosen), (chosen, [], []))
            groups[id(chosen)][1].append(i)
            groups[id(chosen)][2].append(rows)
        for chosen, idx, rows_list in groups.values():
            role = "canary" if chosen is not self.primary else "primary"
            flat = [r for rows in rows_list for r in rows]
            ids = [uuid.uuid4().hex for _ in idx]  # each request keeps its own id, in its answer and in the log
            row_ids = [rid for rid, rows in zip(ids, rows_list, strict=True) for _ in rows]
            self._inflight.inc(len(idx))
            try:
                merged = chosen.predict(flat, role=role, row_ids=row_ids)
            except Exception:
                chosen.count("500", len(idx))
                raise
            finally:
                self._inflight.dec(len(idx))
            pos = 0
            for i, rid, rows in zip(idx, ids, rows_list, strict=True):
                k = len(rows)
                fb = merged.fallback_rows[pos:pos + k] if merged.fallback_rows is not None else None
                out[i] = Result(chosen.name, chosen.version, merged.scores[pos:pos + k], merged.degraded[pos:pos + k],
                                role, rid, merged.classes, fb, merged.fallback_version if fb and any(fb) else None)
                pos += k
                chosen.count("200")
                if self._shadow is not None and self.secondary is not None:
                    self._submit_shadow(requests[i], out[i].request_id)
        return out  # type: ignore[return-value]

    def _submit_shadow(self, instances: Any, request_id: str) -> None:
        with self._pending_lock:
            if len(self._pending) >= self._shadow_queue:
                return
            fut = self._shadow.submit(self._score_shadow, instances, request_id)
            self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future) -> None:
        with self._pending_lock:
            self._pending.discard(fut)

    def _score_shadow(self, instances: Any, request_id: str) -> None:
        try:
            self.secondary.predict(instances, role="shadow", request_id=request_id)
        except Exception as exc:  # a failing shadow must never affect the primary
            log.warning("shadow scoring failed: %s", exc)

    def close(self) -> None:
        """Finish shadow work, then flush every prediction log (graceful stop loses nothing)."""
        if self._shadow is not None:
            self._shadow.shutdown(wait=True)
        for p in self.predictors:
            if p.predlog is not None:
                p.predlog.close()


def bucket(salt: str, value: Any) -> float:
    """A stable position in [0, 1) for a key value: the first 8 bytes of its BLAKE2b hash (salted with the
    model's name, so two models' experiments do not split the same customers the same way)."""
    digest = hashlib.blake2b(f"{salt}\x00{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def first_value(instances: Any, key: str) -> Any:
    """The key's value in a request's first row (V1 instances: a list of objects), or None."""
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        return instances[0].get(key)
    return None
