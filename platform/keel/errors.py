"""Errors a user can fix. The CLI prints them as one line and exits 2, never with a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class KeelError(Exception):
    """A problem the user can act on (bad input, missing service, unknown name)."""

    exit_code = 2


class NotFoundError(KeelError):
    """A named thing (model, alias, feature service, service) does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str] = (), of: str = "") -> None:
        listed = sorted({str(c) for c in choices})
        valid = ", ".join(listed) if listed else "none exist yet"
        where = f" of {of}" if of else ""
        super().__init__(f"unknown {kind} '{name}'{where}; valid choices: {valid}")
        self.kind, self.name, self.choices = kind, name, listed


class ServiceUnavailableError(KeelError):
    """A service keel needs is not answering; the message says how to start it."""

    def __init__(self, service: str, url: str, hint: str = "start the local stack with `keel up`") -> None:
        super().__init__(f"{service} is not reachable at {url}; {hint}")
        self.service, self.url = service, url


class GateRefusedError(KeelError):
    """The promotion gate said no: the challenger is worse than the champion. Exits 3, not 2, so
    scripts can tell "refused" from "you typed it wrong"."""

    exit_code = 3


class MissingExtraError(KeelError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"python package '{module}' is not installed; install keel[{extra}]")


def require(module: str, extra: str):
    """Import an optional heavy dependency, turning ImportError into install advice."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(module, extra) from exc
