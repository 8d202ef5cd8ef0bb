"""MLflow internals keel relies on, in one place.

Feast registers an MLflow request-header provider (an entry point). MLflow loads every such plugin on
its first request, which imports all of Feast: ~4 s before a registry command can say anything, for a
header that only Feast's own MLflow data sources need. keel's registry calls authenticate with MLflow's
own variables (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), so the CLI's registry client skips it.
"""

from __future__ import annotations

import sys

from keel.compat import check_version

SUPPORTED = ("3.17.",)
_SKIPPED_PLUGINS = ("feast",)


def skip_foreign_header_plugins() -> None:
    """Load MLflow's request-header registry without the providers of ``_SKIPPED_PLUGINS``.

    Must run before MLflow's first request in the process. A process that already imported Feast (a
    serving replica) gains nothing, so it is left alone; so is an MLflow version this was not checked
    against (the plugins then load as usual: slower, never wrong).
    """
    if "mlflow.tracking.request_header.registry" in sys.modules or "feast" in sys.modules:
        return
    if not check_version("mlflow", SUPPORTED):
        return
    import mlflow.utils.plugins as plugins

    original = plugins.get_entry_points

    def filtered(group: str) -> list:
        return [ep for ep in original(group) if not ep.value.startswith(_SKIPPED_PLUGINS)]

    plugins.get_entry_points = filtered
    try:
        import mlflow.tracking.request_header.registry  # noqa: F401 - registers the providers, now filtered
    finally:
        plugins.get_entry_points = original
