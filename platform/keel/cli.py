"""The `keel` command. Thin: parses arguments, calls the SDK, renders results.

User errors (KeelError, bad arguments) print one line on stderr and exit 2; a refused promotion
exits 3. Heavy libraries load inside the commands that need them, so `keel --help` is instant.
"""

from __future__ import annotations

import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from keel import __version__
from keel.config import Settings, describe_variables, load_settings
from keel.errors import KeelError
from keel.output import FORMATS, render

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                      help="output format")


def _settings(ctx: click.Context) -> Settings:
    if ctx.obj is None:
        ctx.obj = load_settings()
    return ctx.obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keel")
def cli() -> None:
    """keel: MLflow, Feast, KServe, Ray Serve, Airflow and Prometheus as one ML platform."""


# -- local stack -----------------------------------------------------------------------------
@cli.command()
@click.argument("services", nargs=-1)
@click.pass_context
def up(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Start the local stack (or only SERVICES) on loopback and wait until healthy."""
    from keel.stack import Stack

    rows = Stack(_settings(ctx)).up(list(services) or None)
    click.echo(render([_status_row(s) for s in rows], "table"))


@cli.command()
@click.argument("services", nargs=-1)
@click.pass_context
def down(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Stop the local stack (or only SERVICES); nothing keel started is left running."""
    from keel.stack import Stack

    stopped = Stack(_settings(ctx)).down(list(services) or None)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@cli.command()
@OUTPUT
@click.pass_context
def status(ctx: click.Context, fmt: str) -> None:
    """Each local service's URL, pid and health."""
    from keel.stack import Stack

    click.echo(render([_status_row(s) for s in Stack(_settings(ctx)).status()], fmt))


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

    stack = Stack(_settings(ctx))
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
    s = _settings(ctx)
    data = s.model_dump(mode="json")
    data.update(tracking_uri=s.tracking_uri, redis=s.redis_connection.split(",")[0],
                prometheus=s.prometheus_url, pushgateway=s.pushgateway_url, alertmanager=s.alertmanager_url)
    rows = [{"setting": k, "value": v} for k, v in data.items()]
    click.echo(render(rows if fmt == "table" else data, fmt))


# -- data and features -----------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Synthetic fraud-domain data."""


def _drift_pairs(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in values:
        name, sep, factor = item.partition("=")
        try:
            out[name] = float(factor)
        except ValueError:
            raise KeelError(f"invalid --drift '{item}': expected FEATURE=FACTOR, e.g. amount_mean_24h=1.8") from None
        if not sep:
            raise KeelError(f"invalid --drift '{item}': expected FEATURE=FACTOR, e.g. amount_mean_24h=1.8")
    return out


@data.command("generate")
@click.option("--transactions", default=100_000, show_default=True, type=click.IntRange(min=1))
@click.option("--customers", default=5_000, show_default=True, type=click.IntRange(min=1))
@click.option("--merchants", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--days", default=14, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=7, show_default=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), help="window end (default: this hour)")
@click.option("--drift", multiple=True, help="FEATURE=FACTOR, scale a feature after --drift-start")
@click.option("--drift-start", default=0.8, show_default=True, type=float, help="fraction of the window")
@click.option("--out", type=click.Path(path_type=Path), help="directory (default: KEEL_HOME/data)")
@click.pass_context
def data_generate(ctx: click.Context, out: Path | None, end: datetime | None, drift: tuple[str, ...],
                  **kw: Any) -> None:
    """Generate labelled transactions and feature snapshots as parquet."""

    from keel.features.datagen import GenSpec, generate, write

    extra = {"end": end if end.tzinfo else end.replace(tzinfo=UTC)} if end else {}
    spec = GenSpec(drift=_drift_pairs(drift), **extra, **kw)
    paths = write(generate(spec), out or _settings(ctx).data_dir)
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

    names = store.apply(_settings(ctx))
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

    if end and end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    done = store.materialize(_settings(ctx), end, list(views) or None, full=full, engine=engine)
    click.echo(f"materialized up to {done.isoformat()}")


@features.command("training-set")
@click.argument("feature_service")
@click.option("--labels", type=click.Path(path_type=Path), help="labelled events (parquet/csv); "
              "default: KEEL_HOME/data/transactions.parquet")
@click.option("--label", default="is_fraud", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="snapshot directory")
@click.pass_context
def features_training_set(ctx: click.Context, feature_service: str, labels: Path | None, label: str,
                          out: Path | None) -> None:
    """Point-in-time join of labelled events against FEATURE_SERVICE, snapshotted with a content hash."""
    from keel.features import training

    s = _settings(ctx)
    ts = training.build(s, feature_service, labels or s.data_dir / "transactions.parquet", label, out)
    click.echo(render({"rows": len(ts.frame), "features": len(ts.features), "hash": ts.snapshot_hash,
                       "snapshot": str(ts.snapshot), "window": f"{ts.window_start} .. {ts.window_end}"}, "yaml"))


@features.command("serve")
@click.option("--host", default=None, help="default: KEEL_HOST (cluster: 0.0.0.0)")
@click.option("--port", default=6566, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.pass_context
def features_serve(ctx: click.Context, host: str | None, port: int, workers: int) -> None:
    """Run Feast's own feature server on keel's feature repo (the chart's feature-server pods run this)."""
    from keel.features.store import open_store

    s = _settings(ctx)
    bind = host or ("0.0.0.0" if s.profile == "cluster" else s.host)  # all interfaces only in a pod
    open_store(s).serve(host=bind, port=port, workers=workers, metrics=False, no_access_log=True,
                        max_requests=0, registry_ttl_sec=60)


@features.command("env")
@click.pass_context
def features_env(ctx: click.Context) -> None:
    """Print exports that let the plain `feast` CLI use keel's feature repo."""
    import shlex

    from keel.features.store import placeholders

    for k, v in placeholders(_settings(ctx)).items():
        click.echo(f"export {k}={shlex.quote(v)}")


# -- training and registry -------------------------------------------------------------------
@cli.command()
@click.argument("model")
@click.option("--feature-service", default="fraud_model_v1", show_default=True)
@click.option("--labels", type=click.Path(path_type=Path), help="default: KEEL_HOME/data/transactions.parquet")
@click.option("--reason", default="", help="recorded in the audit log")
@click.pass_context
def train(ctx: click.Context, model: str, feature_service: str, labels: Path | None, reason: str) -> None:
    """Build a training set, train the fraud model and register it as MODEL's challenger."""
    from keel.features import training
    from keel.registry.client import Registry
    from keel.train import train_fraud_model

    s = _settings(ctx)
    registry = Registry(s)
    registry.client  # noqa: B018 - fail fast when MLflow is down, before minutes of work
    ts = training.build(s, feature_service, labels or s.data_dir / "transactions.parquet")
    trained = train_fraud_model(ts)
    v = registry.register(trained.model, model, ts, trained.holdout, trained.metrics, trained.params, reason=reason)
    click.echo(f"registered {model} v{v.version} as challenger; " +
               ", ".join(f"{k}={val:.4f}" for k, val in trained.metrics.items()))


@cli.group()
def models() -> None:
    """Registered models."""


@models.command("list")
@OUTPUT
@click.pass_context
def models_list(ctx: click.Context, fmt: str) -> None:
    """Every registered model with its champion and challenger."""
    from keel.registry.client import Registry

    click.echo(render(Registry(_settings(ctx)).models(), fmt))


@models.command("show")
@click.argument("model")
@OUTPUT
@click.pass_context
def models_show(ctx: click.Context, model: str, fmt: str) -> None:
    """A model's versions, aliases, lineage and metrics."""
    from keel.registry.client import Registry

    info = Registry(_settings(ctx)).show(model)
    if fmt != "table":
        click.echo(render(info, fmt))
        return
    click.echo(f"model {info['name']}  aliases: " + (", ".join(f"{a}=v{v}" for a, v in info["aliases"].items())
                                                     or "none"))
    rows = [{"version": v["version"], "aliases": v["aliases"],
             **{k: v["metrics"].get(k) for k in ("roc_auc", "pr_auc")},
             "feature_service": v["lineage"].get("feature_service"),
             "training_set": v["lineage"].get("training_set_hash"),
             "git": (v["lineage"].get("git_sha") or "")[:12]} for v in info["versions"]]
    click.echo(render(rows, "table"))


@cli.command()
@click.argument("model")
@click.option("--force", is_flag=True, help="skip the gate (needs --reason)")
@click.option("--reason", default="", help="recorded in the audit log")
@click.pass_context
def promote(ctx: click.Context, model: str, force: bool, reason: str) -> None:
    """Make MODEL's challenger the champion if it is not worse on the same holdout."""
    from keel.registry.client import Registry

    v = Registry(_settings(ctx)).promote(model, force=force, reason=reason)
    click.echo(f"{model} v{v.version} is now champion")


@cli.command()
@click.argument("model")
@click.option("--reason", default="", help="recorded in the audit log")
@click.pass_context
def rollback(ctx: click.Context, model: str, reason: str) -> None:
    """Point MODEL's champion back at the previous champion."""
    from keel.registry.client import Registry

    v = Registry(_settings(ctx)).rollback(model, reason=reason)
    click.echo(f"{model} champion rolled back to v{v.version}")


@cli.command()
@click.argument("model", required=False)
@OUTPUT
@click.pass_context
def audit(ctx: click.Context, model: str | None, fmt: str) -> None:
    """The audit log of alias changes (all models, or MODEL)."""
    from dataclasses import asdict

    from keel.registry.audit import AuditLog

    rows = [asdict(r) for r in AuditLog(_settings(ctx).audit_log).records(model)]
    cols = ["time", "actor", "action", "model", "alias", "from_version", "to_version", "reason"]
    click.echo(render(rows, fmt, cols) if fmt == "table" else render(rows, fmt))


# -- serving -----------------------------------------------------------------------------------
@cli.command()
@click.argument("model")
@click.option("--alias", default="champion", show_default=True, help="registry alias, resolved once, now")
@click.option("--version", "version", default=None, help="a version instead of an alias")
@click.option("--target", default="local", show_default=True, help="local | kserve | rayserve")
@click.option("--runtime", type=click.Choice(["kserve", "ray"]), default="kserve", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="default: KEEL_SERVING_PORT + n")
@click.option("--canary", default=None, help="ALIAS:PERCENT served side by side, e.g. challenger:10")
@click.option("--shadow", default=None, help="ALIAS scored and logged, never returned")
@click.option("--gpu", is_flag=True, help="run the model on a GPU when one is present")
@click.option("--num-gpus", type=float, default=0.0, show_default=True, help="Ray: GPUs per replica (fractional)")
@click.option("--sample-rate", type=float, default=1.0, show_default=True, help="prediction-log sampling")
@click.option("--max-batch", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--min-replicas", type=click.IntRange(min=0), default=1, show_default=True, help="cluster targets")
@click.option("--max-replicas", type=click.IntRange(min=1), default=1, show_default=True, help="cluster targets")
@click.option("--values", "values_files", multiple=True, type=click.Path(path_type=Path),
              help="cluster targets: the release's Helm values files")
@click.option("--priority-class", default=None, help="cluster targets: PriorityClass of the serving pods")
@click.option("--dry-run", is_flag=True, help="cluster targets: print the objects as YAML, apply nothing")
@click.pass_context
def deploy(ctx: click.Context, model: str, alias: str, version: str | None, target: str, runtime: str,
           port: int | None, canary: str | None, shadow: str | None, gpu: bool, num_gpus: float,
           sample_rate: float, max_batch: int, min_replicas: int, max_replicas: int,
           values_files: tuple[Path, ...], priority_class: str | None, dry_run: bool) -> None:
    """Serve MODEL (its ALIAS's version, pinned now) with feature lookup and graceful degradation.

    --target kserve|rayserve renders the Helm chart's objects for MODEL and applies them with kubectl."""
    from keel.serving import deploy as d
    from keel.serving.spec import ServeSpec

    s = _settings(ctx)
    if target in ("kserve", "rayserve"):
        from keel.serving import cluster

        canary_alias, weight = ServeSpec.parse_canary(canary) if canary else (None, 0.0)
        spec = ServeSpec(model=model, alias=alias, version=version, runtime=cluster.RUNTIME_OF_TARGET[target],
                         canary_alias=canary_alias, canary_weight=weight, shadow_alias=shadow,
                         gpu=gpu or num_gpus > 0, num_gpus=num_gpus, min_replicas=min_replicas,
                         max_replicas=max_replicas)
        docs = cluster.render(s, spec, target, values_files, priority_class)
        click.echo(cluster.to_yaml(docs) if dry_run else cluster.apply(s, docs), nl=False)
        return
    if dry_run or values_files:
        raise KeelError("--dry-run and --values apply to the cluster targets (kserve, rayserve)")
    tgt = d.target(s, target)
    canary_alias, weight = ServeSpec.parse_canary(canary) if canary else (None, 0.0)
    if port is None:
        taken = {sp.port for name, sp in tgt.specs().items() if name != model} if hasattr(tgt, "specs") else set()
        port = next(p for p in range(s.serving_port, s.serving_port + 100) if p not in taken)
    spec = ServeSpec(model=model, alias=alias, version=version, runtime=runtime, port=port, canary_alias=canary_alias,
                     canary_weight=weight, shadow_alias=shadow, gpu=gpu or num_gpus > 0, num_gpus=num_gpus,
                     sample_rate=sample_rate, max_batch=max_batch)
    out = tgt.deploy(spec)
    extra = f", canary {canary_alias} {weight:.0%}" if canary_alias else f", shadow {shadow}" if shadow else ""
    click.echo(f"serving {out.model} v{out.version} ({out.runtime}{extra}) at {out.url}/v1/models/{out.model}:predict")


@cli.command()
@click.argument("model")
@click.option("--target", default="local", show_default=True)
@click.pass_context
def undeploy(ctx: click.Context, model: str, target: str) -> None:
    """Stop serving MODEL (its prediction log is flushed first)."""
    from keel.serving import deploy as d

    d.target(_settings(ctx), target).undeploy(model)
    click.echo(f"undeployed {model}")


def _entity_value(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise KeelError(f"invalid --entity value '{text}': expected a number") from None


@cli.command()
@click.argument("model")
@click.option("--entity", "entities", multiple=True, help="KEY=VALUE (repeat), one instance")
@click.option("--json", "body", default=None, help='instances as JSON: [{"customer_id": 1, ...}, ...]')
@OUTPUT
@click.pass_context
def predict(ctx: click.Context, model: str, entities: tuple[str, ...], body: str | None, fmt: str) -> None:
    """Score entities with a local deployment of MODEL."""
    import json

    from keel.serving.deploy import predict_local

    if body:
        try:
            instances = json.loads(body)
        except ValueError as exc:
            raise KeelError(f"invalid --json: {exc}") from None
    else:
        inst: dict[str, int | float] = {}
        for item in entities:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise KeelError(f"invalid --entity '{item}': expected KEY=VALUE, e.g. customer_id=42")
            inst[k] = _entity_value(v)
        if not inst:
            raise KeelError("give --entity KEY=VALUE (repeatable) or --json")
        instances = [inst]
    out = predict_local(_settings(ctx), model, instances)
    if fmt == "table":
        rows = [{"prediction": p, "degraded": d, "model": out["model"], "version": out["version"]}
                for p, d in zip(out["predictions"], out["degraded_rows"], strict=True)]
        click.echo(render(rows, "table"))
    else:
        click.echo(render(out, fmt))


# -- monitoring ----------------------------------------------------------------------------------
@cli.group()
def drift() -> None:
    """Drift jobs: the serving model's training holdout against its prediction log."""


@drift.command("run")
@click.argument("model")
@click.option("--window", default="1h", show_default=True, help="prediction-log window, e.g. 30m, 1h, 7d")
@click.option("--predictions", default=None, help="prediction-log URI; default: KEEL_HOME/predictions")
@click.option("--sample-size", default=50_000, show_default=True, type=click.IntRange(min=100),
              help="rows compared per side at most (seeded uniform sample)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--interval", default=None, help="the job's schedule (for staleness alerts); default: --window")
@click.option("--no-push", is_flag=True, help="do not push gauges to the Pushgateway")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def drift_run(ctx: click.Context, model: str, window: str, predictions: str | None, sample_size: int, seed: int,
              interval: str | None, no_push: bool, fmt: str) -> None:
    """Compare MODEL's recent traffic with its training data; push gauges and log the report to MLflow.

    Exits 0 whether or not drift is found; non-zero with one line when the run cannot be made."""
    from dataclasses import asdict

    from keel.monitoring import drift as d

    r = d.run(_settings(ctx), model, window, predictions, sample_size, seed, interval, push=not no_push)
    if fmt != "table":
        click.echo(render(asdict(r), fmt))
        return
    rows = [{"feature": c.column, "method": c.method, "score": round(c.score, 4), "threshold": c.threshold,
             "drift": "DRIFT" if c.detected else "-"} for c in [*r.features, *([r.prediction] if r.prediction else [])]]
    click.echo(render(rows, "table"))
    click.echo(f"{r.model} v{r.version}: {len(r.drifted)}/{len(r.features)} features drifted "
               f"(share {r.drift_share:.0%}); {r.current_rows} of {r.rows_in_window} logged rows vs "
               f"{r.reference_rows} reference rows; {r.rows_degraded} degraded rows left out; mlflow run {r.run_id}")


# -- retraining ----------------------------------------------------------------------------------
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
    from keel.registry.audit import AuditLog

    s = _settings(ctx)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    queue = TriggerQueue(s.home / "controller" / "triggers.db", s.retrain_cooldown_s)
    airflow = Airflow(s.airflow_api, s.airflow_username, s.airflow_secret)  # read at login: Airflow may start later

    def known() -> list[str]:
        from keel.registry.client import Registry

        return [m.name for m in Registry(s).models()]

    ctl = Controller(queue, airflow, AuditLog(s.audit_log), known_models=known)
    bind = host or ("0.0.0.0" if s.profile == "cluster" else s.host)  # all interfaces only in a pod
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
    s = _settings(ctx)
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

    s = _settings(ctx)
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

    rows = current(_settings(ctx))
    click.echo(render(rows, fmt) if rows or fmt != "table" else "no alerts")


@cli.command()
@click.option("--transactions", default=100_000, show_default=True, type=click.IntRange(min=1000))
@click.option("--model", default="fraud", show_default=True)
@click.option("--no-drift", is_flag=True, help="skip the drift check and alert at the end")
@click.pass_context
def demo(ctx: click.Context, transactions: int, model: str, no_drift: bool) -> None:
    """Run the platform's main job on the local stack, end to end."""
    from keel.demo import run_demo

    run_demo(_settings(ctx), transactions=transactions, model=model, echo=click.echo, drift=not no_drift)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        cli.main(args=argv, prog_name="keel", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("keel: aborted", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"keel: error: {exc.format_message()}{hint}", err=True)
        return 2
    except KeelError as exc:
        click.echo(f"keel: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:
        if type(exc).__name__ == "MlflowException" and "401" in str(exc):
            click.echo("keel: error: MLflow refused the request (401 not authenticated): set "
                       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD", err=True)
            return 2
        raise
    return 0


def entry() -> None:
    """Console-script entry. Exits without interpreter finalisation (after flushing output): DuckDB's
    bindings print a page of reference-leak noise at finalisation, and a CLI run has nothing left to
    clean up by then."""
    import os

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
