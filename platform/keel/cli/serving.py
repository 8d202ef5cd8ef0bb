"""`keel deploy|undeploy|predict`: serving."""

from __future__ import annotations

from pathlib import Path

import click

from keel.cli.base import OUTPUT, cli, settings_of
from keel.errors import KeelError
from keel.output import render


@cli.command()
@click.argument("model")
@click.option("--alias", default="champion", show_default=True, help="registry alias, resolved once, now")
@click.option("--version", "version", default=None, help="a version instead of an alias")
@click.option("--target", default="local", show_default=True, help="local | kserve | rayserve")
@click.option("--runtime", type=click.Choice(["kserve", "ray"]), default=None,
              help="default: the model's serving.runtime in keel.yaml, else kserve")
@click.option("--feature-service", default=None,
              help="look a model's inputs up from this feature service (for a model registered without keel)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="default: KEEL_SERVING_PORT + n")
@click.option("--canary", default=None, help="ALIAS:PERCENT served side by side, e.g. challenger:10")
@click.option("--sticky/--no-sticky", default=None,
              help="with --canary: split by a hash of the entity key, so an entity always meets the same variant "
                   "(an A/B test); --no-sticky flips a coin per request (default: the spec's rollout.sticky, else on)")
@click.option("--sticky-key", default=None, help="the request field the sticky split hashes (default: the first "
                                                 "entity key)")
@click.option("--shadow", default=None, help="ALIAS scored and logged, never returned")
@click.option("--gpu", is_flag=True, help="run the model on a GPU when one is present")
@click.option("--num-gpus", type=float, default=0.0, show_default=True, help="Ray: GPUs per replica (fractional)")
@click.option("--sample-rate", type=float, default=None, help="prediction-log sampling (default: the spec's, else 1)")
@click.option("--max-batch", type=click.IntRange(min=1), default=None, help="default: the spec's, else 1000")
@click.option("--max-inflight", type=click.IntRange(min=1), default=None,
              help="prediction requests a replica holds at once; 503 + Retry-After past it (default: the spec's, "
                   "else 32)")
@click.option("--cache-ttl", type=click.FloatRange(min=0.0), default=None,
              help="seconds a looked-up entity's features are reused in process; 0 turns the cache off (default: "
                   "the spec's, else 1)")
@click.option("--cache-size", type=click.IntRange(min=1), default=None,
              help="entities the feature cache holds at most, least recently used out first (default: the spec's, "
                   "else 10000)")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None,
              help="Ray runtime: requests one model call takes at most (default: the spec's, else 32)")
@click.option("--batch-wait-ms", type=click.FloatRange(0.0, 1000.0), default=None,
              help="Ray runtime: how long a batch waits for more requests once its first is there; 0 takes only "
                   "what queued while the replica was busy (default: the spec's, else 0)")
@click.option("--fallback", default=None,
              help="an alias or version number of MODEL that scores the rows whose features had to be defaulted "
                   "(online store down, features missing); default: the spec's, else none (training medians)")
@click.option("--min-replicas", type=click.IntRange(min=0), default=1, show_default=True, help="cluster targets")
@click.option("--max-replicas", type=click.IntRange(min=1), default=1, show_default=True, help="cluster targets")
@click.option("--values", "values_files", multiple=True, type=click.Path(path_type=Path),
              help="cluster targets: the release's Helm values files")
@click.option("--priority-class", default=None, help="cluster targets: PriorityClass of the serving pods")
@click.option("--dry-run", is_flag=True, help="cluster targets: print the objects as YAML, apply nothing")
@click.option("--no-wait", is_flag=True, help="cluster targets: do not wait for the operator to report Ready")
@click.pass_context
def deploy(ctx: click.Context, model: str, alias: str, version: str | None, target: str, runtime: str | None,
           feature_service: str | None, port: int | None, canary: str | None, sticky: bool | None,
           sticky_key: str | None, shadow: str | None, gpu: bool,
           num_gpus: float, sample_rate: float | None, max_batch: int | None, max_inflight: int | None,
           cache_ttl: float | None, cache_size: int | None, batch_size: int | None, batch_wait_ms: float | None,
           fallback: str | None, min_replicas: int, max_replicas: int,
           values_files: tuple[Path, ...], priority_class: str | None, dry_run: bool, no_wait: bool) -> None:
    """Serve MODEL (its ALIAS's version, pinned now) with feature lookup and graceful degradation.

    --target kserve|rayserve renders the Helm chart's objects for MODEL, pins the version, applies them
    server-side through the Kubernetes API (KUBECONFIG; KEEL_RELEASE, KEEL_NAMESPACE) and waits until
    the operator reports the InferenceService or RayService Ready (KEEL_START_TIMEOUT)."""
    from keel.serving import deploy as d
    from keel.serving.spec import ServeSpec

    s = settings_of(ctx)
    if target in ("kserve", "rayserve"):
        from keel.serving import cluster

        canary_alias, weight = ServeSpec.parse_canary(canary) if canary else (None, 0.0)
        spec = ServeSpec(model=model, alias=alias, version=version, runtime=cluster.RUNTIME_OF_TARGET[target],
                         canary_alias=canary_alias, canary_weight=weight, shadow_alias=shadow,
                         sticky=True if sticky is None else sticky, sticky_key=sticky_key,
                         gpu=gpu or num_gpus > 0, num_gpus=num_gpus, min_replicas=min_replicas,
                         max_replicas=max_replicas)
        if dry_run:
            click.echo(cluster.to_yaml(cluster.render(s, spec, target, values_files, priority_class)), nl=False)
            return
        from keel.serving.kube import ClusterTarget

        out = ClusterTarget(s, target, values_files, priority_class).deploy(spec, wait=not no_wait)
        click.echo(f"serving {out.model} v{out.version} on {out.url}" + ("" if no_wait else " (Ready)"))
        return
    if dry_run or values_files:
        raise KeelError("--dry-run and --values apply to the cluster targets (kserve, rayserve)")
    from keel.client import Client

    canary_alias, weight = ServeSpec.parse_canary(canary) if canary else (None, 0.0)
    d.target(s, target)  # an unknown target is refused with the valid choices
    out = Client(s).deploy(model, alias, version=version, runtime=runtime, port=port, feature_service=feature_service,
                           canary_alias=canary_alias, canary_weight=weight, shadow_alias=shadow,
                           sticky=sticky, sticky_key=sticky_key, gpu=gpu or num_gpus > 0, num_gpus=num_gpus,
                           sample_rate=sample_rate, max_batch=max_batch,
                           max_inflight=max_inflight, cache_ttl_s=cache_ttl, cache_size=cache_size,
                           batch_max_size=batch_size,
                           batch_wait_s=None if batch_wait_ms is None else batch_wait_ms / 1000.0, fallback=fallback)
    extra = f", canary {canary_alias} {weight:.0%}" if canary_alias else f", shadow {shadow}" if shadow else ""
    click.echo(f"serving {out.model} v{out.version} ({out.runtime}{extra}) at {out.url}/v1/models/{out.model}:predict")


@cli.command()
@click.argument("model")
@click.option("--target", default="local", show_default=True, help="local | kserve | rayserve")
@click.pass_context
def undeploy(ctx: click.Context, model: str, target: str) -> None:
    """Stop serving MODEL (its prediction log is flushed first)."""
    from keel.serving import deploy as d

    d.target(settings_of(ctx), target).undeploy(model)
    click.echo(f"undeployed {model}")


def _entity_value(text: str, kind: str | None) -> int | float | str | bool:
    """A --entity value as the deployment declares the field (its V2 metadata), else guessed: an integer,
    a number, or the text itself (string entity keys)."""
    if kind == "str":
        return text
    if kind == "bool":
        return text.lower() in ("1", "true", "yes")
    try:
        return int(text) if kind != "float" else float(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            if kind in ("int", "float"):
                raise KeelError(f"invalid --entity value '{text}': expected a number") from None
            return text


@cli.command()
@click.argument("model")
@click.option("--entity", "entities", multiple=True, help="KEY=VALUE (repeat), one instance")
@click.option("--json", "body", default=None, help='instances as JSON: [{"user_id": "u1", "amount": 3.5}, ...]')
@OUTPUT
@click.pass_context
def predict(ctx: click.Context, model: str, entities: tuple[str, ...], body: str | None, fmt: str) -> None:
    """Score entities with a local deployment of MODEL."""
    import json

    from keel.serving.deploy import input_kinds, predict_local

    if body:
        try:
            instances = json.loads(body)
        except ValueError as exc:
            raise KeelError(f"invalid --json: {exc}") from None
    else:
        inst: dict[str, int | float | str | bool] = {}
        kinds = input_kinds(settings_of(ctx), model) if entities else {}
        for item in entities:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise KeelError(f"invalid --entity '{item}': expected KEY=VALUE, e.g. user_id=42")
            inst[k] = _entity_value(v, kinds.get(k))
        if not inst:
            raise KeelError("give --entity KEY=VALUE (repeatable) or --json")
        instances = [inst]
    out = predict_local(settings_of(ctx), model, instances)
    if fmt == "table":
        rows = [{"prediction": p if "classes" not in out else dict(zip(out["classes"], p, strict=True)),
                 "degraded": d, "model": out["model"], "version": out["version"]}
                for p, d in zip(out["predictions"], out["degraded_rows"], strict=True)]
        click.echo(render(rows, "table"))
    else:
        click.echo(render(out, fmt))
