"""Session-wide fixture results that are kept only once they succeed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Once:
    """Session-wide results kept only once they succeed. pytest re-raises a session fixture's failed
    setup for every test that asks for it, so one service that failed to start errored ~40 tests in
    cascade; with these, the module that asked errors and the next module tries again."""

    def __init__(self) -> None:
        self._done: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._done:
            self._done[key] = make()
        return self._done[key]
