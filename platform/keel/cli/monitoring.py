"""`keel drift`: monitoring jobs."""

from __future__ import annotations

import click

from keel.cli.base import cli, settings_of
from keel.output import FORMATS, render


@cli.group()
def drift() -> None:
    """Drift jobs: the serving model's training holdout against its prediction log."""


@drift.command("run")
@click.argument("model")
@click.option("--window", default=None, help="prediction-log window, e.g. 30m, 1h, 7d; default: the spec's, else 1h")
@click.option("--predictions", default=None, help="prediction-log URI; default: KEEL_HOME/predictions")
@click.option("--sample-size", default=None, type=click.IntRange(min=100),
              help="rows compared per side at most (seeded uniform sample)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--interval", default=None, help="the job's schedule (for staleness alerts); default: --window")
@click.option("--no-push", is_flag=True, help="do not push gauges to the Pushgateway")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def drift_run(ctx: click.Context, model: str, window: str | None, predictions: str | None, sample_size: int | None,
              seed: int, interval: str | None, no_push: bool, fmt: str) -> None:
    """Compare MODEL's recent traffic with its training data; push gauges and log the report to MLflow.

    Exits 0 whether or not drift is found; non-zero with one line when the run cannot be made."""
    from dataclasses import asdict

    from keel.client import Client
    from keel.monitoring import drift as d
    from keel.output import progress_printer

    s = settings_of(ctx)
    spec = Client(s).spec_of(model)  # the model's drift settings when the project spec names it
    window = window or (spec.drift.window if spec else "1h")
    sample_size = sample_size or (spec.drift.sample_size if spec else 50_000)
    r = d.run(s, model, window, predictions, sample_size, seed, interval, push=not no_push,
              progress=progress_printer())
    if fmt != "table":
        click.echo(render(asdict(r), fmt))
        return
    rows = [{"feature": c.column, "method": c.method, "score": round(c.score, 4), "threshold": c.threshold,
             "drift": "DRIFT" if c.detected else "-"} for c in [*r.features, *([r.prediction] if r.prediction else [])]]
    click.echo(render(rows, "table"))
    click.echo(f"{r.model} v{r.version}: {len(r.drifted)}/{len(r.features)} features drifted "
               f"(share {r.drift_share:.0%}); {r.current_rows} of {r.rows_in_window} logged rows vs "
               f"{r.reference_rows} reference rows; {r.rows_degraded} degraded rows left out; mlflow run {r.run_id}")
