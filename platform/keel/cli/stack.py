"""`keel up|down|status|logs|config`: the local stack."""

from __future__ import annotations

from typing import Any

import click

from keel.cli.base import OUTPUT, cli, settings_of
from keel.config import describe_variables
from keel.output import render


@cli.command()
@click.argument("services", nargs=-1)
@click.pass_context
def up(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Start the local stack (or only SERVICES) on loopback and wait until healthy."""
    from keel.stack import Stack

    rows = Stack(settings_of(ctx), on_wait=click.echo).up(list(services) or None)
    click.echo(render([_status_row(s) for s in rows], "table"))


@cli.command()
@click.argument("services", nargs=-1)
@click.pass_context
def down(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Stop the local stack (or only SERVICES); nothing keel started is left running."""
    from keel.stack import Stack

    stopped = Stack(settings_of(ctx)).down(list(services) or None)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@cli.command()
@click.option("--target", type=click.Choice(["local", "kserve", "rayserve"]), default="local", show_default=True,
              help="kserve|rayserve: the release's models on the cluster (KUBECONFIG, KEEL_RELEASE, KEEL_NAMESPACE)")
@OUTPUT
@click.pass_context
def status(ctx: click.Context, target: str, fmt: str) -> None:
    """Each local service's URL, pid and health; or each model the release serves on a cluster target."""
    if target != "local":
        from keel.serving.kube import ClusterTarget

        rows = [{"kind": s.kind, "name": s.name, "version": s.version, "ready": s.ready, "reason": s.reason}
                for s in ClusterTarget(settings_of(ctx), target).status()]
        click.echo(render(rows, fmt))
        return
    from keel.stack import Stack

    click.echo(render([_status_row(s) for s in Stack(settings_of(ctx)).status()], fmt))


def _status_row(s: Any) -> dict[str, Any]:
    return {"service": s.name, "url": s.url, "pid": s.pid, "state": s.state}


@cli.command()
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="lines to show")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.pass_context
def logs(ctx: click.Context, service: str, lines: int, follow: bool) -> None:
    """Show a local service's log."""
    from keel.stack import Stack
    from keel.stack.supervisor import follow as follow_log

    stack = Stack(settings_of(ctx))
    click.echo(stack.tail(service, lines))
    if follow:
        follow_log(stack.log_path(service))


@cli.command("config")
@click.option("--list", "list_vars", is_flag=True, help="list every KEEL_* variable with its default")
@OUTPUT
@click.pass_context
def config_cmd(ctx: click.Context, list_vars: bool, fmt: str) -> None:
    """Show the resolved settings (or the variables that set them)."""
    if list_vars:
        rows = [{"variable": v, "default": d, "description": t} for v, d, t in describe_variables()]
        click.echo(render(rows, fmt))
        return
    s = settings_of(ctx)
    data = s.model_dump(mode="json")
    data.update(tracking_uri=s.tracking_uri, redis=s.redis_connection.split(",")[0],
                prometheus=s.prometheus_url, pushgateway=s.pushgateway_url, alertmanager=s.alertmanager_url)
    rows = [{"setting": k, "value": v} for k, v in data.items()]
    click.echo(render(rows if fmt == "table" else data, fmt))


@cli.command("chart-values")
@click.pass_context
def chart_values(ctx: click.Context) -> None:
    """Print the Helm chart's `models:` values for every model of the project spec
    (`helm install keel charts/keel -f <(keel chart-values)`)."""
    import yaml

    click.echo(yaml.safe_dump({"models": settings_of(ctx).spec().chart_models()}, sort_keys=False).rstrip())
