"""`keel controller|retrain|runs|alerts|demo`: the closed loop."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import click

from keel.cli.base import cli, settings_of
from keel.config import Settings
from keel.errors import KeelError
from keel.output import FORMATS, render


@cli.command()
@click.option("--host", default=None, help="default: KEEL_HOST (cluster: 0.0.0.0)")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="default: KEEL_CONTROLLER_PORT")
@click.pass_context
def controller(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the keel controller: Alertmanager webhooks in, retraining DAG runs out."""
    import logging

    from keel.controller.airflow import Airflow
    from keel.controller.app import Controller, serve, wait_forever
    from keel.controller.queue import TriggerQueue

    s = settings_of(ctx)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    queue = TriggerQueue(s.home / "controller" / "triggers.db", s.retrain_cooldown_s)
    airflow = Airflow(s.airflow_api, s.airflow_username, s.airflow_secret)  # read at login: Airflow may start later

    def known() -> list[str]:
        from keel.registry.client import Registry

        return Registry(s).model_names()

    from keel.controller.feedback import Feedback, registry_facts
    from keel.monitoring.outcomes import OutcomeStore

    feedback = Feedback(OutcomeStore(s.outcomes_location, s.predictions_location), registry_facts(s))
    ctl = Controller(queue, airflow, s.audit(), known_models=known, feedback=feedback)
    bind = host or s.listen_host
    server = serve(ctl, bind, port or s.controller_port, s.token())
    click.echo(f"keel controller on http://{bind}:{server.server_port} (Airflow {s.airflow_api})")
    wait_forever(server, ctl)


def _controller_call(s: Settings, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import json
    import urllib.error
    import urllib.request

    from keel.errors import ServiceUnavailableError

    req = urllib.request.Request(s.controller_url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {s.token()}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise KeelError(json.loads(exc.read() or b"{}").get("error", f"controller said HTTP {exc.code}")) from None
    except (urllib.error.URLError, OSError):
        raise ServiceUnavailableError("keel controller", s.controller_url) from None


@cli.command()
@click.argument("model")
@click.option("--reason", default="manual retrain", show_default=True, help="recorded in the audit log")
@click.pass_context
def retrain(ctx: click.Context, model: str, reason: str) -> None:
    """Retrain MODEL through the controller (the same path a drift alert takes)."""
    s = settings_of(ctx)
    out = _controller_call(s, "POST", "/v1/retrain", {"model": model, "reason": reason, "actor": s.actor})
    verb = "queued" if out["new"] else f"already {out['state']} (deduplicated)"
    click.echo(f"retrain of {model} {verb}: trigger {out['trigger']}, DAG run {out['run_id']}")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def runs(ctx: click.Context, model: str, fmt: str) -> None:
    """MODEL's retraining triggers and their DAG runs, with outcomes."""
    from datetime import datetime as dt

    s = settings_of(ctx)
    rows = [{"trigger": t["id"], "created": dt.fromtimestamp(t["created"], UTC).isoformat(timespec="seconds"),
             "source": t["source"], "state": t["state"], "outcome": t.get("outcome") or "-",
             "run_id": t["run_id"], "attempts": t["attempts"],
             "reason": t["reason"]} for t in _controller_call(s, "GET", f"/v1/triggers?model={model}")]
    click.echo(render(rows, fmt) if rows or fmt != "table" else f"no retraining runs of {model}")


@cli.command()
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def alerts(ctx: click.Context, fmt: str) -> None:
    """Alerts firing or pending in Prometheus, and whether Alertmanager has them."""
    from keel.monitoring.alerts import current

    rows = current(settings_of(ctx))
    click.echo(render(rows, fmt) if rows or fmt != "table" else "no alerts")


@cli.command()
@click.option("--rows", default=None, type=click.IntRange(min=1000), help="default: the spec's demo.rows")
@click.option("--model", default=None, help="default: the spec's demo.model, else its first model")
@click.option("--no-drift", is_flag=True, help="skip the drift check and alert at the end")
@click.pass_context
def demo(ctx: click.Context, rows: int | None, model: str | None, no_drift: bool) -> None:
    """Run the project's main job on the local stack, end to end (the project spec says which)."""
    from keel.demo import run_demo

    run_demo(settings_of(ctx), rows=rows, model=model, echo=click.echo, drift=not no_drift)
