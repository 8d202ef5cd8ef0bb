"""The only modules that touch a dependency's private attributes. Each checks the installed version
it was written against and says so when another is installed, so an upgrade fails loudly here rather
than subtly somewhere else."""

from __future__ import annotations

import logging
from importlib.metadata import version

log = logging.getLogger("keel.compat")
_warned: set[str] = set()


def check_version(package: str, supported: tuple[str, ...]) -> bool:
    """True when ``package``'s installed version starts with one of ``supported`` (e.g. "0.67.");
    otherwise warns once and returns False so callers can take their public fallback."""
    got = version(package)
    if got.startswith(supported):
        return True
    if package not in _warned:
        _warned.add(package)
        log.warning("%s %s is not a version keel's compat layer was checked against (%s); "
                    "using public APIs only", package, got, ", ".join(supported))
    return False
