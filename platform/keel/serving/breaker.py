"""A circuit breaker for the online store.

Closed: calls go through; N failures within a window open it. Open: calls are refused at once (the
caller serves defaults) until a cool-down passes. Half-open: one probe call at a time goes through;
success closes the breaker, failure re-opens it. Refusing fast matters more than the failure itself:
a dead Redis must cost microseconds per request, not a connect timeout.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    def __init__(self, failures: int = 5, window_s: float = 10.0, cooldown_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        if failures < 1 or window_s <= 0 or cooldown_s <= 0:
            raise ValueError("failures >= 1, window_s > 0 and cooldown_s > 0 are required")
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self._state = CLOSED
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self._on_change:
                self._on_change(state)

    def _maybe_half_open(self) -> None:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._set(HALF_OPEN)
            self._probing = False

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time is let through."""
        with self._lock:
            self._maybe_half_open()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            if self._state in (HALF_OPEN, OPEN):
                self._recent.clear()
            self._probing = False
            self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            now = self._clock()
            self._probing = False
            if self._state == HALF_OPEN:
                self._opened_at = now
                self._set(OPEN)
                return
            self._recent.append(now)
            while self._recent and now - self._recent[0] > self.window_s:
                self._recent.popleft()
            if self._state == CLOSED and len(self._recent) >= self.failures:
                self._opened_at = now
                self._set(OPEN)
