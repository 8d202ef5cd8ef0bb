"""`keel batch-score`: score a table of entity rows with a registered model, as serving would."""

from __future__ import annotations

import click

from keel.cli.base import cli, settings_of


@cli.command("batch-score")
@click.argument("model")
@click.option("--entities", required=True, help="a .parquet or .csv file (or fsspec URI) of the rows to score: "
              "the feature service's entity keys and request fields, and event_timestamp (scored as of then)")
@click.option("--out", required=True, help="where the scored rows go: .parquet or .csv (or an fsspec URI)")
@click.option("--alias", default="champion", show_default=True, help="registry alias, resolved once, now")
@click.option("--version", "version", default=None, help="a version instead of an alias")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="rows scored at a time (bounds memory)")
@click.pass_context
def batch_score(ctx: click.Context, model: str, entities: str, out: str, alias: str, version: str | None,
                chunk_rows: int) -> None:
    """Score every row of ENTITIES with MODEL: point-in-time features from the offline store as of each
    row's event_timestamp, the serving runtime's own model code; writes the rows with score, degraded,
    model, version and request_id."""
    from keel import batch

    s = settings_of(ctx)
    batch.check_output(out)  # before loading anything: a bad path must not cost the run
    rows = batch.read_entities(entities)

    def progress(done: int, total: int) -> None:
        click.echo(f"scored {done:,}/{total:,} rows", err=True)

    result = batch.score(s, model, rows, alias=alias, version=version, chunk_rows=chunk_rows,
                         progress=progress if len(rows) > chunk_rows else None)
    where = batch.write(result.frame, out)
    click.echo(f"scored {len(result.frame):,} rows with {model} v{result.version} ({result.degraded:,} degraded) "
               f"-> {where} (batch {result.batch_id})")
