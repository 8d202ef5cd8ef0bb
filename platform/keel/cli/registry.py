"""`keel train|models|promote|rollback|audit`: the model registry."""

from __future__ import annotations

import click

from keel.cli.base import OUTPUT, cli, settings_of
from keel.errors import KeelError
from keel.output import render


@cli.command()
@click.argument("model")
@click.option("--reason", default="", help="recorded in the audit log")
@click.option("--param", "params", multiple=True, help="KEY=VALUE for the training function (repeatable)")
@click.pass_context
def train(ctx: click.Context, model: str, reason: str, params: tuple[str, ...]) -> None:
    """Build MODEL's training set, call its training function (keel.yaml) and register the result as
    MODEL's challenger."""
    import yaml

    from keel.client import Client

    extra = {}
    for item in params:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise KeelError(f"invalid --param '{item}': expected KEY=VALUE, e.g. max_depth=6")
        extra[k] = yaml.safe_load(v)
    from keel.output import progress_printer

    v = Client(settings_of(ctx), progress=progress_printer()).train(model, reason=reason, **extra)
    shown = ", ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items()))
    click.echo(f"registered {model} v{v.version} as challenger ({v.tags.get('keel.task', '?')}); {shown}")


@cli.group()
def models() -> None:
    """Registered models."""


@models.command("list")
@OUTPUT
@click.pass_context
def models_list(ctx: click.Context, fmt: str) -> None:
    """Every registered model with its champion and challenger."""
    from keel.registry.client import Registry

    click.echo(render(Registry(settings_of(ctx)).models(), fmt))


@models.command("show")
@click.argument("model")
@OUTPUT
@click.pass_context
def models_show(ctx: click.Context, model: str, fmt: str) -> None:
    """A model's versions, aliases, lineage and metrics."""
    from keel.registry.client import Registry

    info = Registry(settings_of(ctx)).show(model)
    if fmt != "table":
        click.echo(render(info, fmt))
        return
    click.echo(f"model {info['name']}  aliases: " + (", ".join(f"{a}=v{v}" for a, v in info["aliases"].items())
                                                     or "none"))
    from keel.registry.metrics import REPORTED

    task = next((v["lineage"].get("task") for v in info["versions"] if v["lineage"].get("task")), "binary")
    rows = [{"version": v["version"], "aliases": v["aliases"],
             **{k: v["metrics"].get(k) for k in REPORTED.get(task, REPORTED["binary"])},
             "feature_service": v["lineage"].get("feature_service"),
             "training_set": v["lineage"].get("training_set_hash"),
             "git": (v["lineage"].get("git_sha") or "")[:12]} for v in info["versions"]]
    click.echo(render(rows, "table"))


@models.command("card")
@click.argument("model")
@click.argument("version", required=False)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="also write the HTML card to this file")
@click.pass_context
def models_card(ctx: click.Context, model: str, version: str | None, html_path: str | None) -> None:
    """Regenerate MODEL's card for VERSION (default: the champion, else the latest) with the latest drift,
    live performance and audit history; log it to the version's MLflow run and print the Markdown."""
    from pathlib import Path

    from keel.client import Client

    card = Client(settings_of(ctx)).card(model, version)
    if html_path:
        Path(html_path).write_text(card.html)
    click.echo(card.markdown)
    click.echo(f"logged to {card.uri}" + (f"; HTML written to {html_path}" if html_path else ""), err=True)


@cli.command()
@click.argument("model")
@click.option("--force", is_flag=True, help="skip the gate (needs --reason)")
@click.option("--reason", default="", help="recorded in the audit log")
@click.option("--ab/--no-ab", default=None, help="also require the A/B test on real outcomes (the challenger served "
                                                 "as a sticky canary); default: the spec's gate.ab")
@click.pass_context
def promote(ctx: click.Context, model: str, force: bool, reason: str, ab: bool | None) -> None:
    """Make MODEL's challenger the champion if it is not worse on the same holdout (and, with --ab, on real
    outcomes beside the champion)."""
    from keel.client import Client

    v = Client(settings_of(ctx)).promote(model, force=force, reason=reason, ab=ab)
    click.echo(f"{model} v{v.version} is now champion")


@cli.command()
@click.argument("model")
@click.option("--reason", default="", help="recorded in the audit log")
@click.pass_context
def rollback(ctx: click.Context, model: str, reason: str) -> None:
    """Point MODEL's champion back at the previous champion."""
    from keel.registry.client import Registry

    v = Registry(settings_of(ctx)).rollback(model, reason=reason)
    click.echo(f"{model} champion rolled back to v{v.version}")


@cli.command()
@click.argument("model", required=False)
@OUTPUT
@click.pass_context
def audit(ctx: click.Context, model: str | None, fmt: str) -> None:
    """The audit log of alias changes (all models, or MODEL)."""
    from dataclasses import asdict

    rows = [asdict(r) for r in settings_of(ctx).audit().records(model)]
    cols = ["time", "actor", "action", "model", "alias", "from_version", "to_version", "reason"]
    click.echo(render(rows, fmt, cols) if fmt == "table" else render(rows, fmt))
