"""`make demo`: the platform's main job on the local stack, from raw events to a champion model.

Each step uses the same SDK calls a user or an Airflow task would; the demo only strings them together
and prints what a person wants to see at the end (where to look, what was trained on what).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from keel.config import Settings

Echo = Callable[[str], None]


def run_demo(settings: Settings, transactions: int = 100_000, model: str = "fraud",
             feature_service: str = "fraud_model_v1", echo: Echo = print) -> dict[str, object]:
    from keel.features import store, training
    from keel.features.datagen import GenSpec, generate, write
    from keel.registry.client import Registry
    from keel.serving.deploy import LocalTarget, predict_local
    from keel.serving.spec import ServeSpec
    from keel.stack import Stack
    from keel.train import train_fraud_model

    t0 = time.monotonic()

    def step(msg: str) -> None:
        echo(f"[{time.monotonic() - t0:6.1f}s] {msg}")

    step("starting the local stack (MLflow, Redis, Prometheus, Pushgateway, Alertmanager)")
    Stack(settings).up()
    step(f"generating {transactions:,} labelled transactions and feature snapshots")
    spec = GenSpec(transactions=transactions, customers=max(500, transactions // 20))
    paths = write(generate(spec), settings.data_dir)
    step("applying the Feast feature repo")
    store.apply(settings)
    step("materializing features into Redis (each view's TTL window: the data was just regenerated)")
    store.materialize(settings, full=True)
    step(f"building a point-in-time training set from feature service '{feature_service}'")
    ts = training.build(settings, feature_service, paths["transactions"])
    step(f"training on {len(ts.frame):,} rows x {len(ts.features)} features (time split)")
    trained = train_fraud_model(ts)
    registry = Registry(settings)
    step("registering in MLflow with lineage (alias 'challenger')")
    v = registry.register(trained.model, model, ts, trained.holdout, trained.metrics, trained.params,
                          reason="make demo")
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
    port = existing.port if existing else settings.serving_port
    step(f"serving champion v{champion.version} with KServe on port {port} (features looked up from Redis)")
    deployed = target.deploy(ServeSpec(model=model, alias="champion", runtime="kserve", port=port))
    recent = ts.frame.sort_values("event_timestamp").tail(5)
    instances = [{k: int(r[k]) for k in ts.entity_keys} | {"amount": float(r["amount"])} for _, r in recent.iterrows()]
    served = predict_local(settings, model, instances)
    sample = recent.iloc[-1]
    lines = [
        "",
        "keel demo: done",
        f"  MLflow UI        {settings.tracking_uri}/#/models/{model}",
        f"  model            {model} v{champion.version} (champion)",
        f"  gate             {gate.metric}: challenger {gate.challenger:.4f} vs champion "
        + (f"{gate.champion:.4f}" if gate.champion is not None else "(none yet)"),
        "  holdout metrics  " + ", ".join(f"{k}={val:.4f}" for k, val in trained.metrics.items()),
        "  lineage",
    ]
    for key in ("feature_service", "feature_views", "feature_definition_hash", "training_window_start",
                "training_window_end", "training_set_hash", "git_sha", "keel_version"):
        lines.append(f"    {key:<24} {champion.tags.get('keel.' + key, '-')}")
    lines += [
        f"  training set     {ts.snapshot}",
        f"  serving          {deployed.url}/v1/models/{model}:predict (v{served['version']}, {deployed.runtime})",
        "  predictions",
    ]
    for inst, score, degraded in zip(instances, served["predictions"], served["degraded_rows"], strict=True):
        lines.append(f"    customer {inst['customer_id']:>6} merchant {inst['merchant_id']:>4} amount "
                     f"{inst['amount']:>9.2f} -> fraud probability {score:.4f}" + ("  (degraded)" if degraded else ""))
    lines += [
        f"  try it           .venv/bin/keel predict {model} --entity customer_id={int(sample['customer_id'])} "
        f"--entity merchant_id={int(sample['merchant_id'])} --entity amount=250",
        f"  audit            {len(registry.audit.records(model))} records (`keel audit {model}`)",
        "  stop the stack   .venv/bin/keel down",
        f"  took             {time.monotonic() - t0:.1f}s",
    ]
    for line in lines:
        echo(line)
    return {"model": model, "version": champion.version, "gate": gate, "predictions": served}
