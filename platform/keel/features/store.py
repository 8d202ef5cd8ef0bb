"""keel's thin layer over Feast: open the store from keel's settings, apply, materialize, and describe.

Feast stays the source of truth for definitions and data; keel only fills the placeholders of
``feature_store.yaml`` from its own settings so the same repo works locally and in a cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import string
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from keel.config import Settings
from keel.errors import KeelError, NotFoundError, ServiceUnavailableError, require
from keel.infra.probes import redis_ok

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


def placeholders(settings: Settings) -> dict[str, str]:
    """Values for the ``${...}`` placeholders in feature_store.yaml."""
    registry = settings.feast_registry_uri
    return {
        # A URI means Feast's SQL registry (shared by every pod on a cluster); a path, its file registry.
        "FEAST_REGISTRY_TYPE": "sql" if "://" in registry else "file",
        "FEAST_REGISTRY_PATH": registry or str(settings.home / "feast" / "registry.db"),
        "FEAST_REDIS_CONNECTION": settings.redis_connection,
    }


def repo_config(settings: Settings) -> Any:
    """Feast RepoConfig for keel's feature repo, with placeholders filled from settings."""
    feast = require("feast", "features")
    from feast.repo_config import RepoConfig

    yaml_path = settings.repo / "feature_store.yaml"
    if not yaml_path.exists():
        raise KeelError(f"feature repo {settings.repo}: no feature_store.yaml there")
    values = {**os.environ, **placeholders(settings)}
    text = string.Template(yaml_path.read_text()).safe_substitute(values)
    raw = yaml.safe_load(text)
    online = raw.get("online_store")
    if isinstance(online, dict) and online.get("type", "redis") == "redis" and "redis_type" not in online:
        online["redis_type"] = settings.redis_type  # the platform's topology; a repo that names one keeps it
    (settings.home / "feast").mkdir(parents=True, exist_ok=True)
    del feast
    return RepoConfig(repo_path=settings.repo, **raw)


def open_store(settings: Settings, serving: bool = False, batch_engine: str | None = None) -> FeatureStore:
    """The Feast store. ``serving=True`` bounds every Redis call by KEEL_FEATURE_TIMEOUT_MS, so a hung
    online store costs a request that long, not a TCP timeout. ``batch_engine`` replaces the repo's
    (``"local"``: Feast's own, whatever the repo names)."""
    from feast import FeatureStore

    # after Feast's import, which puts its own "once" filter for RuntimeWarning first: a repo with a stream
    # feature view would print Feast's "experimental" notice on every command and in every server log
    warnings.filterwarnings("ignore", message="Stream feature views are experimental", category=RuntimeWarning)
    cfg = repo_config(settings)
    if batch_engine is not None:
        cfg.batch_engine_config = batch_engine
    if serving and cfg.online_store.type == "redis":
        t = settings.feature_timeout_ms / 1000.0
        cfg.online_store.connection_string += f",socket_timeout={t},socket_connect_timeout={t}"
    fs = FeatureStore(repo_path=str(settings.repo), config=cfg)
    if serving and cfg.online_store.type == "redis":
        _no_redis_retries(fs)
    return fs


def _no_redis_retries(fs: FeatureStore) -> None:
    """redis-py retries a failed connection 3 times with exponential backoff (seconds per request while
    Redis is down). Serving has its own policy (timeout, circuit breaker, defaults), so fail at once."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from keel.compat.feast import online_client

    client = online_client(fs)
    if hasattr(client, "set_retry"):
        client.set_retry(Retry(NoBackoff(), 0))


def check_online_store(settings: Settings) -> None:
    """Fail early with a clear line rather than deep inside Feast when Redis is not running."""
    if settings.profile != "local" or settings.redis_address:
        return
    if not redis_ok(settings.host, settings.redis_port):
        raise ServiceUnavailableError("Redis (Feast online store)", f"{settings.host}:{settings.redis_port}")


@contextlib.contextmanager
def in_repo(settings: Settings) -> Iterator[Path]:
    """Run Feast with the feature repo as working directory, as `feast` itself is run: relative source
    paths (which Feast's DuckDB store and materialization resolve from the CWD) then mean the repo's."""
    cwd = os.getcwd()
    repo = settings.repo
    os.chdir(repo)
    try:
        yield repo
    finally:
        os.chdir(cwd)


@contextlib.contextmanager
def with_home(settings: Settings) -> Iterator[None]:
    """A project's own code (feature definitions, data hooks) that reads keel's settings from the
    environment sees these settings' state directory."""
    saved = os.environ.get("KEEL_HOME")
    os.environ["KEEL_HOME"] = str(settings.home)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("KEEL_HOME", None)
        else:
            os.environ["KEEL_HOME"] = saved


@contextlib.contextmanager
def _definitions_see(settings: Settings):
    """definitions.py reads keel's settings from the environment; make it see these ones."""
    repo = str(settings.repo)
    cwd = os.getcwd()
    # Feast imports repo files as top-level modules relative to the CWD; drop cached ones so a
    # second apply in one process (tests, controller) re-reads them with these settings, and so a
    # same-named module of another repo (every repo has a definitions.py) is not taken for this one's.
    names = {p.stem for p in Path(repo).glob("*.py")}
    installed = (sys.prefix, sys.base_prefix)
    for mod, v in list(sys.modules.items()):
        file = str(getattr(v, "__file__", "") or "")
        if file.startswith(repo + os.sep) or (mod in names and file and not file.startswith(installed)):
            del sys.modules[mod]
    os.chdir(repo)
    sys.path.insert(0, repo)
    try:
        with with_home(settings):
            yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(repo)


def apply(settings: Settings, quiet: bool = True) -> list[str]:
    """`feast apply` of keel's repo; returns the names of the objects now registered."""
    check_online_store(settings)  # before importing Feast (seconds): a Redis that is down is said at once
    from feast import FeatureStore
    from feast.repo_operations import apply_total_with_repo_instance

    from keel.compat.feast import repo_contents

    cfg = repo_config(settings)
    store = FeatureStore(repo_path=str(settings.repo), config=cfg)
    sink = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(sink) if sink else contextlib.nullcontext(), _definitions_see(settings):
        repo = repo_contents(settings.repo, cfg.project, cfg)
        apply_total_with_repo_instance(store, cfg.project, store.registry, repo, skip_source_validation=False)
    store.refresh_registry()
    return sorted(
        [fv.name for fv in store.list_feature_views()]
        + [fv.name for fv in store.list_on_demand_feature_views()]
        + [fs.name for fs in store.list_feature_services()]
    )


def feature_service(store: FeatureStore, name: str) -> FeatureService:
    try:
        return store.get_feature_service(name)
    except Exception as exc:  # Feast raises FeatureServiceNotFoundException (not exported stably)
        if "not found" in str(exc).lower() or exc.__class__.__name__.endswith("NotFoundException"):
            choices = [fs.name for fs in store.list_feature_services()]
            raise NotFoundError("feature service", name, choices) from None
        raise


def materialize(settings: Settings, end: datetime | None = None, views: list[str] | None = None,
                full: bool = False, engine: str = "keel", bars: Callable[[str, int], Any] | None = None) -> datetime:
    """Incremental materialization up to ``end`` (default now): each view resumes where it stopped.

    Unlike Feast's ``materialize_incremental``, a view's first run starts one TTL before ``end``
    rather than one TTL before the wall clock, so backfilling a past window loads what it should.
    ``full`` reloads each view's whole TTL window (after the offline data was rewritten, or the
    online store lost its data).

    ``engine="keel"`` (default) writes Feast's Redis layout directly from the view's parquet source
    (keel.features.redis: the same bytes at >10x Feast's rows/s, about as fast as Redis takes them); a
    view it does not handle (another source or store) goes through Feast, as does every view with
    ``engine="feast"``. ``bars`` makes a progress bar per view from its label and row total (keel's
    writer); Feast's path prints its own.
    """
    if engine not in ("keel", "feast"):
        raise KeelError(f"unknown materialization engine '{engine}'; valid choices: feast, keel")
    check_online_store(settings)
    with in_repo(settings):
        return _materialize(settings, end, views, full, engine, bars)


def _materialize(settings: Settings, end: datetime | None, views: list[str] | None, full: bool,
                 engine: str, bars: Callable[[str, int], Any] | None) -> datetime:
    fs = open_store(settings, batch_engine="local" if engine == "feast" else None)
    end = end or datetime.now(timezone.utc)
    registered = {fv.name: fv for fv in fs.list_feature_views()}
    if not registered:
        raise KeelError("no feature views are registered; run `keel features apply` first")
    for v in views or []:
        if v not in registered:
            raise NotFoundError("feature view", v, registered)
    began = time.time()
    rows: dict[str, int] = {}
    for name in views or sorted(registered):
        fv = registered[name]
        if not fv.online:
            continue
        start = None if full else fv.most_recent_end_time
        if start is None:
            start = end - (fv.ttl if fv.ttl else timedelta(days=3650))
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
        rows[name] = 0
        if start >= end:
            continue  # already loaded up to end
        bar = (lambda total, name=name: bars(name, total)) if bars else None
        if engine == "feast" or not _materialize_fast(fs, fv, start, end, bar):
            fs.materialize(start_date=start, end_date=end, feature_views=[name])
        rows[name] = _source_rows(fv, start, end)
    _push_materialization(settings, end, rows, time.time() - began)
    return end


def _materialize_fast(fs: FeatureStore, fv: Any, start: datetime, end: datetime,
                      bar: Callable[[int], Any] | None = None) -> bool:
    """keel's own writer of Feast's layout; False (nothing written) when the view needs Feast's path."""
    from keel.features import redis as online

    try:
        online.materialize_view(fs, fv, start, end, progress=bar)
    except online.Unsupported as exc:
        logging.getLogger("keel.features").info("%s: %s; materializing with Feast", fv.name, exc)
        return False
    return True


def _source_rows(fv: Any, start: datetime, end: datetime) -> int:
    """Rows of the view's offline source in [start, end): what this run loaded (file sources only)."""
    path = getattr(fv.batch_source, "path", None)
    if not path or not Path(path).exists():
        return 0
    import duckdb

    ts = fv.batch_source.timestamp_field
    query = f'SELECT count(*) FROM read_parquet(?) WHERE "{ts}" >= ? AND "{ts}" < ?'
    return int(duckdb.execute(query, [str(path), start, end]).fetchone()[0])


def _push_materialization(settings: Settings, end: datetime, rows: dict[str, int], duration: float) -> None:
    """Freshness gauges for the feature-store alerts and dashboard. A Pushgateway that is down costs a
    warning, not the materialization."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    until = Gauge("keel_feature_materialized_until_timestamp_seconds", "End of the last materialized interval",
                  ["feature_view"], registry=reg)
    count = Gauge("keel_materialization_rows", "Rows written to the online store", ["feature_view"], registry=reg)
    for name, n in rows.items():
        until.labels(name).set(end.timestamp())
        count.labels(name).set(n)
    Gauge("keel_materialization_last_success_timestamp_seconds", "When materialization last finished",
          registry=reg).set_to_current_time()
    Gauge("keel_materialization_duration_seconds", "How long it took", registry=reg).set(duration)
    try:
        push_to_gateway(settings.pushgateway_url.removeprefix("http://"), job="keel_materialize", registry=reg,
                        timeout=5)
    except OSError as exc:
        logging.getLogger("keel.features").warning("materialization metrics not pushed: %s", exc)


def service_views(store: FeatureStore, service: FeatureService) -> tuple[list[Any], list[Any]]:
    """(feature views, on-demand views) that a feature service draws on; stream feature views (fed by a
    push source, keel.features.stream) count as feature views: they are read and joined the same way."""
    names = {p.name for p in service.feature_view_projections}
    fvs = [fv for fv in [*store.list_feature_views(), *store.list_stream_feature_views()] if fv.name in names]
    odfvs = [v for v in store.list_on_demand_feature_views() if v.name in names]
    return fvs, odfvs


def definition_hash(store: FeatureStore, service: FeatureService) -> str:
    """A stable hash of what a feature service means: views, schemas, TTLs, sources and UDF source.

    Built from a canonical description rather than Feast's protos, whose bytes carry timestamps and
    pickled functions that change between runs without the meaning changing.
    """
    fvs, odfvs = service_views(store, service)
    desc: list[dict[str, Any]] = []
    for proj in sorted(service.feature_view_projections, key=lambda p: p.name):
        desc.append({"projection": proj.name, "features": sorted(f.name for f in proj.features)})
    for fv in sorted(fvs, key=lambda v: v.name):
        desc.append({
            "view": fv.name,
            "ttl": fv.ttl.total_seconds() if fv.ttl else None,
            "entities": sorted(fv.entities),
            "schema": sorted((f.name, str(f.dtype)) for f in fv.schema),
            # the file's name, not its directory: moving KEEL_HOME does not change what a feature means
            "source": Path(getattr(fv.batch_source, "path", "") or fv.batch_source.name).name,
            "timestamp": fv.batch_source.timestamp_field,
        })
    for od in sorted(odfvs, key=lambda v: v.name):
        udf = od.feature_transformation.udf_string or ""
        desc.append({
            "on_demand_view": od.name,
            "schema": sorted((f.name, str(f.dtype)) for f in od.features),
            "sources": sorted(od.source_feature_view_projections) + sorted(od.source_request_sources),
            "udf": udf,
            "mode": od.mode,
        })
    blob = json.dumps(desc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_repo_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise KeelError(f"file not found: {p}")
    return p.resolve()
