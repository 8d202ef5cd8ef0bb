"""`keel data` and `keel features`: the project's data hook and Feast."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from keel.cli.base import cli, settings_of
from keel.errors import KeelError
from keel.output import render


@cli.group()
def data() -> None:
    """The project's own data (its ``data.generate`` hook in keel.yaml)."""


def drift_pairs(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in values:
        name, sep, factor = item.partition("=")
        try:
            out[name] = float(factor)
        except ValueError:
            raise KeelError(f"invalid --drift '{item}': expected FEATURE=FACTOR, e.g. amount_mean_24h=1.8") from None
        if not sep or not name:
            raise KeelError(f"invalid --drift '{item}': expected FEATURE=FACTOR, e.g. amount_mean_24h=1.8")
    return out


@data.command("generate")
@click.option("--rows", default=100_000, show_default=True, type=click.IntRange(min=1), help="labelled events")
@click.option("--seed", default=7, show_default=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), help="window end (default: this hour)")
@click.option("--drift", multiple=True, help="FEATURE=FACTOR, scale a feature late in the window")
@click.option("--out", type=click.Path(path_type=Path), help="directory (default: where the project's repo reads it)")
@click.pass_context
def data_generate(ctx: click.Context, rows: int, seed: int, out: Path | None, end: datetime | None,
                  drift: tuple[str, ...]) -> None:
    """Generate the project's example data as parquet, with its ``data.generate`` hook."""
    s = settings_of(ctx)
    spec = s.spec()
    if not spec.data.generate:
        raise KeelError(f"{spec.path}: data.generate is not set; this project brings its own data")
    hook = spec.load_entry(spec.data.generate, "data.generate")
    when = (end if end.tzinfo else end.replace(tzinfo=UTC)) if end else None
    from keel.features.store import with_home

    with with_home(s):
        paths = hook(out, rows=rows, seed=seed, drift=drift_pairs(drift), end=when)
    import pyarrow.parquet as pq

    click.echo(render([{"table": k, "rows": pq.read_metadata(p).num_rows, "path": str(p)} for k, p in paths.items()],
                      "table"))


@cli.group()
def features() -> None:
    """Feast: apply definitions, materialize, build training sets."""


@features.command("apply")
@click.pass_context
def features_apply(ctx: click.Context) -> None:
    """Register the feature repo's definitions (feast apply)."""
    from keel.features import store

    names = store.apply(settings_of(ctx))
    click.echo(f"applied {len(names)} objects: {', '.join(names)}")


@features.command("materialize")
@click.option("--end", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]), help="default: now")
@click.option("--view", "views", multiple=True, help="only these feature views")
@click.option("--full", is_flag=True, help="reload each view's whole TTL window, not just what is new")
@click.option("--engine", type=click.Choice(["keel", "feast"]), default="keel", show_default=True,
              help="keel writes Feast's Redis layout itself; feast uses Feast's own (slower) materialization")
@click.pass_context
def features_materialize(ctx: click.Context, end: datetime | None, views: tuple[str, ...], full: bool,
                         engine: str) -> None:
    """Incrementally load the online store (Redis) up to END, with progress."""

    from keel.features import store
    from keel.output import row_bars

    if end and end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    done = store.materialize(settings_of(ctx), end, list(views) or None, full=full, engine=engine,
                             bars=row_bars())
    click.echo(f"materialized up to {done.isoformat()}")


@features.command("training-set")
@click.argument("model", required=False)
@click.option("--feature-service", default=None, help="default: the model's, from keel.yaml")
@click.option("--labels", type=click.Path(path_type=Path), help="labelled events (parquet/csv); default: the model's")
@click.option("--label", default=None, help="label column; default: the model's")
@click.option("--no-created-filter", is_flag=True,
              help="keep feature rows created after the event (a backfill whose created column is load time)")
@click.option("--reason", default="", help="why --no-created-filter (recorded in lineage)")
@click.option("--engine", type=click.Choice(["keel", "ray", "feast"]), default="keel", show_default=True,
              help="keel: DuckDB in this process; ray: keel's join on partitions across the Ray cluster; feast: "
              "Feast's own offline store")
@click.pass_context
def features_training_set(ctx: click.Context, model: str | None, feature_service: str | None, labels: Path | None,
                          label: str | None, no_created_filter: bool, reason: str, engine: str) -> None:
    """Point-in-time join of MODEL's labelled events against its feature service, snapshotted with a
    content hash (or any --feature-service with --labels)."""
    from keel.client import Client
    from keel.output import progress_printer

    client = Client(settings_of(ctx), progress=progress_printer())
    ts = client.training_set(model, feature_service=feature_service, labels=labels, label=label,
                             filter_by_created_timestamp=not no_created_filter, reason=reason, engine=engine)
    for w in ts.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(render({"rows": len(ts.frame), "features": len(ts.features), "hash": ts.snapshot_hash,
                       "snapshot": str(ts.snapshot), "window": f"{ts.window_start} .. {ts.window_end}",
                       "created_filter": "on" if ts.created_filter else f"off ({ts.created_filter_reason})"},
                      "yaml"))


@features.command("serve")
@click.option("--host", default=None, help="default: KEEL_HOST (cluster: 0.0.0.0)")
@click.option("--port", default=6566, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.pass_context
def features_serve(ctx: click.Context, host: str | None, port: int, workers: int) -> None:
    """Run Feast's own feature server on keel's feature repo (the chart's feature-server pods run this)."""
    from keel.compat.feast import serve_with_body_limit
    from keel.features.store import open_store

    s = settings_of(ctx)
    bind = host or s.listen_host
    serve_with_body_limit(open_store(s), s.max_body_bytes, host=bind, port=port, workers=workers, metrics=False,
                          no_access_log=True, max_requests=0, registry_ttl_sec=60)


@features.command("env")
@click.pass_context
def features_env(ctx: click.Context) -> None:
    """Print exports that let the plain `feast` CLI use keel's feature repo."""
    import shlex

    from keel.features.store import placeholders

    for k, v in placeholders(settings_of(ctx)).items():
        click.echo(f"export {k}={shlex.quote(v)}")
