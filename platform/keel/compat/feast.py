"""Feast internals keel relies on, in one place, checked against the installed version.

Each function names the private attribute it wraps and why keel needs it. With a Feast version these
were not checked against, ``check_version`` warns once; the wrappers still try, and a changed internal
then fails here, with this module in the traceback, rather than deep in keel.
"""

from __future__ import annotations

from typing import Any

from keel.compat import check_version

SUPPORTED = ("0.67.",)


def _checked() -> None:
    check_version("feast", SUPPORTED)


def online_client(store: Any) -> Any:
    """The redis-py client Feast's Redis online store made for ``store`` (``_get_provider`` /
    ``_get_client``): keel reads and writes through it so timeouts and retry policy stay Feast's."""
    _checked()
    return store_client(store._get_provider().online_store, store.config)


def store_client(online_store: Any, config: Any) -> Any:
    """The redis-py client of one of Feast's ``RedisOnlineStore`` objects (``_get_client``): what a batch
    engine plug-in is handed is the store object, not a ``FeatureStore``."""
    _checked()
    return online_store._get_client(config.online_store)


def versioned_view_name(fv: Any, config: Any) -> str:
    """The name Feast's Redis store keys a view's fields under (``_versioned_fv_name``)."""
    _checked()
    from feast.infra.online_stores.redis import _versioned_fv_name

    return str(_versioned_fv_name(fv, config))


def repo_contents(repo: Any, project: str, config: Any) -> Any:
    """The objects a repo's Python files define, as `feast apply` collects them (``_get_repo_contents``)."""
    _checked()
    from feast.repo_operations import _get_repo_contents

    return _get_repo_contents(repo, project, config)


def resolve_features(store: Any, features: Any) -> tuple[list[str], list[Any], list[Any]]:
    """Feature refs, feature views and on-demand views of a request, as ``get_historical_features``
    resolves them (``utils._get_features``, ``utils._get_feature_views_to_use``)."""
    _checked()
    from feast import utils

    refs = utils._get_features(store.registry, store.project, features, allow_cache=True)
    fvs, odfvs = utils._get_feature_views_to_use(store.registry, store.project, features)
    return refs, fvs, odfvs


def group_feature_refs(refs: list[str], fvs: list[Any], odfvs: list[Any]) -> tuple[Any, Any]:
    _checked()
    from feast import utils

    return utils._group_feature_refs(refs, fvs, odfvs)


def validate_feature_refs(refs: list[str]) -> None:
    _checked()
    from feast import utils

    utils._validate_feature_refs(refs, False)


def to_utc(df: Any, column: str) -> Any:
    """The entity frame's event time in UTC, as Feast's ibis offline stores convert it (``_to_utc``)."""
    _checked()
    from feast.infra.offline_stores.ibis import _to_utc

    return _to_utc(df, column)


def serve_with_body_limit(store: Any, max_body_bytes: int, **options: Any) -> None:
    """``store.serve(...)``, Feast's own feature server, with its app wrapped in keel's request-body bound.

    Feast's server takes no body-size option and gunicorn has none either; its ``FeastServeApplication``
    builds the app with ``feast.feature_server.get_app`` (a module global), so the bound wraps what that
    returns. Everything else (auth, gunicorn workers, the routes) stays Feast's.
    """
    _checked()
    import feast.feature_server as fs

    from keel.serving.limits import BodyLimit

    original = fs.get_app

    def get_app(*args: Any, **kwargs: Any) -> Any:
        return BodyLimit(original(*args, **kwargs), max_body_bytes)

    fs.get_app = get_app
    try:
        store.serve(**options)
    finally:
        fs.get_app = original
