"""`keel stream send|consume|status`: fresh features from events (keel.features.stream)."""

from __future__ import annotations

import click

from keel.cli.base import cli, settings_of
from keel.output import FORMATS, render


@cli.group()
def stream() -> None:
    """Events into fresh features: a Redis Stream per Feast push source, consumed into the feature store."""


@stream.command("send")
@click.argument("source")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def stream_send(ctx: click.Context, source: str, file: str) -> None:
    """Append the events in FILE (.csv, .parquet, .json, .jsonl) to SOURCE's stream.

    Each event carries the stream feature views' entity keys, aggregated columns and event_timestamp;
    the batch is checked first and refused whole, with the row and field named."""
    from keel.features import stream as st
    from keel.monitoring.feedback import load_rows

    ids = st.publish(settings_of(ctx), source, load_rows(file))
    click.echo(f"{len(ids)} events appended to {st.stream_key(source)} ({ids[0]} .. {ids[-1]})")


@stream.command("consume")
@click.argument("source")
@click.option("--name", default=None, help="consumer name in the group (default: host-pid)")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="serve Prometheus metrics here (0: a free port)")
@click.option("--claim-idle-ms", default=30_000, show_default=True, type=click.IntRange(min=100),
              help="take over a dead consumer's unacknowledged entries once idle this long")
@click.pass_context
def stream_consume(ctx: click.Context, source: str, name: str | None, batch: int, metrics_port: int | None,
                   claim_idle_ms: int) -> None:
    """Consume SOURCE's stream: compute its stream feature views' aggregations per event and push them
    (online through Feast's push API, offline to the push source's batch source). Runs until SIGTERM."""
    import logging

    from keel.features.stream_service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings_of(ctx), source, name, metrics_port, batch, claim_idle_ms)


@stream.command("status")
@click.argument("source")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def stream_status(ctx: click.Context, source: str, fmt: str) -> None:
    """SOURCE's stream length, the consumer group's backlog and its consumers."""
    from keel.features.stream_service import status

    out = status(settings_of(ctx), source)
    if fmt != "table":
        click.echo(render(out, fmt))
        return
    click.echo(f"{source}: {out['length']} entries, {out['undelivered']} undelivered, {out['pending']} pending")
    if out["consumers"]:
        click.echo(render(out["consumers"], "table"))
