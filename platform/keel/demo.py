"""`make demo`: the platform's main job on the local stack, from raw events to a champion model.

Each step uses the same SDK calls a user or an Airflow task would; the demo only strings them together
and prints what a person wants to see at the end (where to look, what was trained on what). What it runs
is the project spec's: its data hook, its model (``demo.model``), and the drift it injects (``demo.drift``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from keel.config import Settings

Echo = Callable[[str], None]


def _instances(ts: object, n: int) -> list[dict[str, object]]:
    """The latest ``n`` labelled events as requests: entity keys and request-time values."""
    frame = ts.frame.sort_values("event_timestamp").tail(n)  # type: ignore[attr-defined]
    cols = [*ts.entity_keys, *ts.request_fields]  # type: ignore[attr-defined]
    return [{c: (v.item() if hasattr(v, "item") else v) for c, v in r.items()} for r in frame[cols].to_dict("records")]


def _drift_loop(settings: Settings, model: str, ts: object, drift_spec: dict[str, float],
                step: Callable[[str], None]) -> list[str]:
    """Replay holdout rows with drift on the spec's features, run the drift job, and wait (on Prometheus
    and Alertmanager, not a sleep) for KeelDatasetDrift to fire."""
    from keel.errors import KeelError
    from keel.monitoring import drift
    from keel.monitoring.alerts import current
    from keel.monitoring.inject import replay
    from keel.serving.deploy import predict_local
    from keel.serving.predlog import read
    from keel.train import time_split

    _, holdout = time_split(ts.frame)  # type: ignore[attr-defined]
    rows = holdout.sample(n=min(600, len(holdout)), random_state=0)
    logged = settings.predictions_location
    before = len(read(logged, model))
    step(f"replaying {len(rows)} holdout events as live traffic, drift injected on "
         + ", ".join(f"{k} x{v:g}" for k, v in drift_spec.items()))
    sent = replay(settings, model, rows, drift_spec, lambda batch: predict_local(settings, model, batch))
    _wait_for(lambda: len(read(logged, model)) >= before + sent, 60, "the prediction log to be flushed")
    step("drift job: Evidently on the window vs the model's training holdout -> Pushgateway + MLflow report")
    result = drift.run(settings, model, "1h")
    step(f"{len(result.drifted)}/{len(result.features)} features drifted (share {result.drift_share:.0%}): "
         + ", ".join(result.drifted))
    step("waiting for Prometheus to fire KeelDatasetDrift (for: 1m) and Alertmanager to receive it")

    def firing() -> list[dict[str, object]]:
        return [a for a in current(settings) if a["alert"] == "KeelDatasetDrift" and a["model"] == model
                and a["state"] == "firing" and a["alertmanager"] == "yes"]

    try:
        alerts = _wait_for(firing, 180, "KeelDatasetDrift to fire")
    except KeelError as exc:
        return [f"  drift alert      not firing: {exc}"]
    a = alerts[0]  # type: ignore[index]
    step(f"alert firing: {a['alert']} ({a['severity']}) {a['summary']}")
    lines = [f"  drift            {', '.join(result.drifted)} drifted; mlflow run {result.run_id}",
             f"  alert            {a['alert']} firing since {a['since']}, in Alertmanager (`keel alerts`)"]
    if settings.retraining:
        lines += _retrain_loop(settings, model, str(a["since"]), _instances(ts, 1), step)
    return lines


def _retrain_loop(settings: Settings, model: str, alert_since: str, probe: list[dict[str, object]],
                  step: Callable[[str], None]) -> list[str]:
    """Alertmanager has sent the alert to the controller: follow its trigger through Airflow to the new
    champion answering, and print the timeline."""
    import json
    import urllib.request
    from datetime import UTC, datetime

    from keel.errors import KeelError
    from keel.serving.deploy import predict_local

    def triggers() -> list[dict[str, object]]:
        req = urllib.request.Request(f"{settings.controller_url}/v1/triggers?model={model}",
                                     headers={"Authorization": f"Bearer {settings.token()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    step("the controller received the alert; Airflow retrains, gates, promotes and rolls out (canary, then full)")
    try:
        done = _wait_for(lambda: [t for t in triggers() if t["state"] in ("done", "failed")], 600,
                         "the retraining DAG run")
    except KeelError as exc:
        return [f"  retraining       not finished: {exc}"]
    t = done[-1]  # type: ignore[index]
    records = [asdict(r) for r in settings.audit().records()]
    promoted = [r for r in records if r["action"] == "promote" and r["actor"] == "airflow"]
    answer = predict_local(settings, model, probe)
    served_at = datetime.now(UTC).isoformat(timespec="seconds")[:19]
    triggered = next((r["time"][:19] for r in records if r["action"] == "retrain-triggered"), "-")
    step(f"DAG run {t['run_id']} {t['state']}; the endpoint now answers with v{answer['version']}")
    promotion = f"{promoted[-1]['time'][:19]} v{promoted[-1]['to_version']}" if promoted else "-"
    return [
        f"  retraining       DAG run {t['run_id']}: {t['state']} (`keel runs {model}`)",
        "  timeline (UTC)",
        f"    alert fired            {alert_since}",
        f"    DAG run triggered      {triggered}",
        f"    promoted               {promotion}",
        f"    new version answering  {served_at} (v{answer['version']})",
    ]


def _wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    from keel.errors import KeelError

    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise KeelError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1.0)


def run_demo(settings: Settings, rows: int | None = None, model: str | None = None, echo: Echo = print,
             drift: bool = True) -> dict[str, object]:
    from keel.client import Client
    from keel.errors import KeelError
    from keel.features import store
    from keel.serving.deploy import LocalTarget, predict_local
    from keel.stack import Stack

    client = Client(settings)
    project = client.project
    model = model or project.demo.model or next(iter(project.models), None)
    if model is None:
        raise KeelError(f"{project.path}: no models to run the demo with")
    spec = project.model(model)
    rows = rows or project.demo.rows
    t0 = time.monotonic()

    def step(msg: str) -> None:
        echo(f"[{time.monotonic() - t0:6.1f}s] {msg}")

    step(f"project {project.name} ({project.path}); model '{model}' ({spec.task})")
    step("starting the local stack (MLflow, Redis, Prometheus, Pushgateway, Alertmanager"
         + (", Airflow, keel controller)" if settings.retraining else ")"))
    Stack(settings, on_wait=step).up()
    if project.data.generate:
        step(f"generating {rows:,} labelled events and feature snapshots ({project.data.generate})")
        with store.with_home(settings):
            project.load_entry(project.data.generate, "data.generate")(rows=rows)
    step("applying the Feast feature repo")
    store.apply(settings)
    step("materializing features into Redis (each view's TTL window: the data was just generated)")
    store.materialize(settings, full=True)
    step(f"building a point-in-time training set from feature service '{spec.feature_service}'")
    ts = client.training_set(model)
    for w in ts.warnings:
        step(f"warning: {w}")
    step(f"training on {len(ts.frame):,} rows x {len(ts.features)} features ({spec.train})")
    trained = project.entry_point(model)(ts, **spec.params)
    step("registering in MLflow with lineage (alias 'challenger')")
    v = client.register(trained.model, model, training_set=ts, holdout=trained.holdout, metrics=trained.metrics,
                        params=trained.params, reason="make demo")
    registry = client._registry()
    step("promotion gate: challenger vs champion on the same holdout")
    gate = registry.gate(model)
    if gate.passed:
        v = registry.promote(model, reason="make demo")
        verdict = f"promoted v{v.version} to champion"
    else:
        verdict = f"gate refused v{v.version}; champion unchanged"
    step(verdict)

    champion = registry.resolve(model, "champion")
    target = LocalTarget(settings)
    existing = target.specs().get(model)
    port = existing.port if existing and not existing.route_prefix else None  # else the first free one
    step(f"serving champion v{champion.version} with {spec.serving.runtime} (features looked up from Redis)")
    deployed = client.deploy(model, "champion", port=port)
    step(f"serving at {deployed.url}")
    drift_report = _drift_loop(settings, model, ts, project.demo.drift, step) if drift and project.demo.drift else []
    instances = _instances(ts, 5)
    served = predict_local(settings, model, instances)
    final = registry.resolve(model, "champion")  # the state at the end: retraining may have promoted another
    lines = [
        "",
        "keel demo: done",
        f"  MLflow UI        {settings.tracking_uri}/#/models/{model}",
        f"  model            {model} v{final.version} (champion)"
        + (f", first trained as v{champion.version}" if final.version != champion.version else ""),
        f"  gate             {gate.metric}: challenger {gate.challenger:.4f} vs champion "
        + (f"{gate.champion:.4f}" if gate.champion is not None else "(none yet)"),
        "  holdout metrics  " + ", ".join(f"{k}={val:.4f}" for k, val in trained.metrics.items()),
        "  lineage",
    ]
    for key in ("feature_service", "feature_views", "feature_definition_hash", "training_window_start",
                "training_window_end", "training_set_hash", "created_filter", "git_sha", "keel_version"):
        lines.append(f"    {key:<24} {final.tags.get('keel.' + key, '-')}")
    lines += [
        f"  training set     {ts.snapshot}",
        f"  serving          {deployed.url}/v1/models/{model}:predict (v{served['version']}, {deployed.runtime})",
        *drift_report,
        "  predictions",
    ]
    for inst, score, degraded in zip(instances, served["predictions"], served["degraded_rows"], strict=True):
        shown = " ".join(f"{k}={val}" for k, val in inst.items())
        value = f"{score:.4f}" if isinstance(score, float) else str(score)
        lines.append(f"    {shown} -> {value}" + ("  (degraded)" if degraded else ""))
    example = " ".join(f"--entity {k}={val}" for k, val in instances[-1].items())
    lines += [
        f"  try it           .venv/bin/keel predict {model} {example}",
        f"  audit            {len(registry.audit.records(model))} records (`keel audit {model}`)",
        "  stop the stack   .venv/bin/keel down",
        f"  took             {time.monotonic() - t0:.1f}s",
    ]
    for line in lines:
        echo(line)
    return {"model": model, "version": final.version, "gate": gate, "predictions": served}
