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


@cli.command()
@click.argument("model")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--label-column", default=None, help="the file's label column; default: 'label', else the spec's label")
@click.option("--request-id", default=None, help="one outcome by the answer's request_id (instead of FILE)")
@click.option("--row", default=0, show_default=True, type=click.IntRange(min=0), help="with --request-id")
@click.option("--label", "label", default=None, help="with --request-id: the outcome (0/1, a number or a class)")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def feedback(ctx: click.Context, model: str, file: str | None, label_column: str | None, request_id: str | None,
             row: int, label: str | None, fmt: str) -> None:
    """Send MODEL's real outcomes (delayed labels) to the controller.

    FILE (.csv, .parquet, .json, .jsonl) has a label column and, per row, either request_id (+ row, the
    row's index within its request) or the entity key(s) + event_timestamp of the prediction. The same
    outcome twice counts once; a bad row refuses its batch, named by its index."""
    import json as _json

    from keel.client import Client
    from keel.errors import KeelError
    from keel.monitoring import feedback as fb

    s = settings_of(ctx)
    if (file is None) == (request_id is None):
        raise KeelError("give FILE or --request-id with --label (one of them)")
    if request_id is not None:
        if label is None:
            raise KeelError("--request-id needs --label")
        try:
            value = _json.loads(label)
        except _json.JSONDecodeError:
            value = label
        rows = [{"request_id": request_id, "row": row, "label": value}]
    else:
        rows = fb.load_rows(file, label_column)
        spec = Client(s).spec_of(model) if label_column is None and rows and "label" not in rows[0] else None
        if spec is not None and spec.label in rows[0]:  # the spec's own label column name
            rows = [{("label" if k == spec.label else k): v for k, v in r.items()} for r in rows]
    out = fb.send(s, model, rows)
    if fmt != "table":
        click.echo(render(out, fmt))
        return
    click.echo(f"{model}: {out['rows']} outcomes, {out['accepted']} stored, {out['duplicates']} duplicates, "
               f"{out['corrected']} corrections")


@cli.group()
def performance() -> None:
    """Performance jobs: served predictions joined to their real outcomes."""


@performance.command("run")
@click.argument("model")
@click.option("--window", default=None, help="prediction-log window, e.g. 1h, 7d; default: the spec's, else 7d")
@click.option("--predictions", default=None, help="prediction-log URI; default: KEEL_PREDICTIONS_URI")
@click.option("--outcomes", default=None, help="outcome store URI; default: KEEL_OUTCOMES_URI")
@click.option("--interval", default=None, help="the job's schedule (for staleness alerts); default: --window")
@click.option("--no-push", is_flag=True, help="do not push gauges to the Pushgateway")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def performance_run(ctx: click.Context, model: str, window: str | None, predictions: str | None,
                    outcomes: str | None, interval: str | None, no_push: bool, fmt: str) -> None:
    """Measure MODEL's served versions on their outcomes; push gauges and log a run to MLflow."""
    from dataclasses import asdict

    from keel.monitoring import performance as perf
    from keel.output import progress_printer

    r = perf.run(settings_of(ctx), model, window, predictions, outcomes, interval, push=not no_push,
                 progress=progress_printer())
    if fmt != "table":
        click.echo(render(asdict(r), fmt))
        return
    rows = [{"version": v.version, "metric": k, "live": round(x, 4),
             "baseline": round(v.baseline[k], 4) if k in v.baseline else "-",
             "decay": round(v.decay, 4) if v.decay is not None and k == v.decay_metric else "-"}
            for v in r.versions for k, x in v.metrics.items()]
    click.echo(render(rows, "table") if rows else "no labelled rows yet")
    for v in r.versions:
        verdict = ("DECAY" if v.decay > r.decay_tolerance else "ok") if v.decay is not None else \
            f"no verdict (fewer than {r.min_labels} labelled rows)"
        click.echo(f"{r.model} v{v.version}: {v.labelled_rows}/{v.served_rows} served rows labelled "
                   f"({v.label_coverage:.0%}); {verdict}")


@cli.group()
def ab() -> None:
    """A/B tests: the champion against a sticky canary, on real outcomes."""


@ab.command("report")
@click.argument("model")
@click.option("--window", default=None, help="prediction-log window, e.g. 1d, 7d; default: the spec's performance "
                                             "window, else 7d")
@click.option("--metric", default=None, help="default: the gate metric (or, for multiclass, accuracy)")
@click.option("--versions", default=None, help="A,B: the champion's and the challenger's versions; default: the "
                                               "canary's most served version and the primary's over its time")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(100, 100_000))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def ab_report(ctx: click.Context, model: str, window: str | None, metric: str | None, versions: str | None,
              n_boot: int, seed: int, fmt: str) -> None:
    """Each variant's metric on its labelled rows, the difference B - A with a bootstrap interval."""
    from keel.errors import KeelError
    from keel.monitoring import ab as abm

    pair = None
    if versions:
        parts = [p.strip().removeprefix("v") for p in versions.split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise KeelError(f"--versions '{versions}': expected A,B version numbers, e.g. 3,4")
        pair = (parts[0], parts[1])
    r = abm.report(settings_of(ctx), model, window, metric, pair, n_boot, seed)
    if fmt != "table":
        click.echo(render(r.as_dict(), fmt))
        return
    rows = [{"variant": v.name, "version": v.version, "served": v.served_rows, "labelled": v.labelled_rows,
             r.metric: "-" if v.value is None else round(v.value, 4)} for v in (r.a, r.b)]
    click.echo(render(rows, "table"))
    if r.diff is None:
        click.echo(f"{r.model}: {r.verdict} (each variant needs the spec's performance.min_labels labelled rows)")
        return
    click.echo(f"{r.model}: B - A = {r.diff:+.4f} {r.metric}, {r.confidence:.0%} interval [{r.ci_low:+.4f}, "
               f"{r.ci_high:+.4f}] ({r.n_boot} bootstrap resamples): {r.verdict}")
