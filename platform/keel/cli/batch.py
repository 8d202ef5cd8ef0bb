"""`keel batch-score`: score a table of entity rows with a registered model, as serving would."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import click

from keel.cli.base import cli, settings_of
from keel.errors import KeelError


@cli.command("batch-score")
@click.argument("model")
@click.option("--entities", default=None, help="a .parquet or .csv file (or fsspec URI) of the rows to score: "
              "the feature service's entity keys and request fields, and event_timestamp (scored as of then); "
              "default: the model's batch_score job in keel.yaml")
@click.option("--out", default=None, help="where the scored rows go: .parquet or .csv (or an fsspec URI)")
@click.option("--alias", default="champion", show_default=True, help="registry alias, resolved once, now")
@click.option("--version", "version", default=None, help="a version instead of an alias")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="rows scored at a time (bounds memory)")
@click.option("--engine", type=click.Choice(["auto", "local", "ray"]), default="auto", show_default=True,
              help="ray: Ray Data across the Ray cluster (KEEL_RAY_ADDRESS or the local head); auto: Ray when "
              "one is configured and the rows are more than one chunk")
@click.option("--date", default=None, help="the spec's job: the logical date its {date} stands for (YYYY-MM-DD; "
              "default: today, UTC)")
@click.pass_context
def batch_score(ctx: click.Context, model: str, entities: str | None, out: str | None, alias: str,
                version: str | None, chunk_rows: int, engine: str, date: str | None) -> None:
    """Score every row of ENTITIES with MODEL: point-in-time features from the offline store as of each
    row's event_timestamp, the serving runtime's own model code; writes the rows with score, degraded,
    model, version and request_id. Without --entities and --out, runs the model's batch_score job from
    keel.yaml (what its Airflow DAG runs)."""
    from keel import batch

    s = settings_of(ctx)
    if entities is None and out is None:
        day = date or datetime.now(UTC).strftime("%Y-%m-%d")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise KeelError(f"--date '{day}': expected YYYY-MM-DD")
        done = batch.run_scheduled(s, model, day)
        click.echo(f"scored {done['rows']:,} rows with {model} v{done['version']} ({done['degraded']:,} degraded) "
                   f"-> {done['out']} (batch {done['batch_id']})")
        return
    if entities is None or out is None:
        raise KeelError("--entities and --out go together (or neither: the model's batch_score job in keel.yaml)")
    batch.check_output(out)  # before loading anything: a bad path must not cost the run
    rows = batch.read_entities(entities)

    def progress(done: int, total: int) -> None:
        click.echo(f"scored {done:,}/{total:,} rows", err=True)

    result = batch.score(s, model, rows, alias=alias, version=version, chunk_rows=chunk_rows,
                         progress=progress if len(rows) > chunk_rows else None, engine=engine)
    where = batch.write(result.frame, out)
    on = f" on {result.nodes} Ray nodes" if engine != "local" and result.nodes > 1 else ""
    click.echo(f"scored {len(result.frame):,} rows with {model} v{result.version} ({result.degraded:,} degraded) "
               f"-> {where} (batch {result.batch_id}){on}")
