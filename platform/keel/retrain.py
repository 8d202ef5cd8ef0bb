"""The retraining pipeline's steps, called by the Airflow DAG (dags/keel_retrain.py) in the core venv
locally, or as ``python -m keel.retrain <step>`` in a pod on a cluster: one code path for both.

Every step is idempotent per DAG run: registering uses the run id as the idempotency key, promotion is
skipped when the run's version is already champion, and a rollout redeploys to the same end state.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from keel.config import Settings, load_settings
from keel.errors import GateRefusedError, KeelError

RUN_KEYS = ("params", "labels", "canary_percent", "smoke_requests")


def validate_conf(conf: dict[str, Any] | None, spec: Any = None) -> dict[str, Any]:
    """The run's conf (what a trigger may override for one run) over the model's spec, each value
    checked, with an error naming the bad one. The spec supplies everything else."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(RUN_KEYS) - {"reason", "trigger"})
    if unknown:
        raise KeelError(f"unknown conf key(s) {', '.join(unknown)}; valid keys: {', '.join(RUN_KEYS)}, "
                        f"reason, trigger")
    base: dict[str, Any] = {"params": {}, "labels": None, "canary_percent": 10, "smoke_requests": 20}
    if spec is not None:
        base.update(params=dict(spec.params), canary_percent=spec.rollout.canary_percent,
                    smoke_requests=spec.rollout.smoke_requests)
    if not isinstance(conf.get("params", {}), dict):
        raise KeelError(f"conf params={conf['params']!r}: expected an object of keyword arguments for the entry point")
    out = {**base, **conf, "params": {**base["params"], **conf.get("params", {})}}
    pct = out["canary_percent"]
    if not isinstance(pct, int | float) or isinstance(pct, bool) or not 0 <= pct <= 100:
        raise KeelError(f"conf canary_percent={pct!r}: expected a number from 0 to 100")
    n = out["smoke_requests"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise KeelError(f"conf smoke_requests={n!r}: expected a positive integer")
    if out["labels"] is not None and not isinstance(out["labels"], str):
        raise KeelError(f"conf labels={out['labels']!r}: expected a path or URI of labelled events")
    return out


def train(settings: Settings, model: str, run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Point-in-time training set -> the model's entry point (keel.yaml) -> registered as challenger (once
    per run: the run id is the idempotency key)."""
    from keel.client import Client

    client = Client(settings)
    spec = client.model_spec(model)
    conf = validate_conf(conf, spec)
    if spec.training.ray is not None and settings.rayjob_template is not None:
        return _train_as_rayjob(settings, spec.training.ray, model, run_id, conf)
    ts = client.training_set(model, labels=conf["labels"])
    trained = client.project.entry_point(model)(ts, **conf["params"])
    v = client.register(trained.model, model, training_set=ts, holdout=trained.holdout, metrics=trained.metrics,
                        params=trained.params, idempotency_key=run_id,
                        reason=f"retrain {run_id}: {conf.get('reason', '')}".strip(), actor="airflow")
    return {"version": v.version, "training_set_hash": ts.snapshot_hash, "rows": len(ts.frame)}


def _train_as_rayjob(settings: Settings, ray: Any, model: str, run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """The same step inside the run's RayJob (keel.rayjob); what it registered is found by the run id."""
    from keel import rayjob
    from keel.registry.client import Registry

    registry = Registry(settings)
    done = registry.by_idempotency_key(model, run_id)
    job: dict[str, Any] = {}
    if done is None:
        job = rayjob.submit(settings, model, run_id, conf, ray, on_status=lambda line: print(line, flush=True))
        done = registry.by_idempotency_key(model, run_id)
        if done is None:
            raise KeelError(f"{job['ray_job']} succeeded but registered no version of '{model}' for run {run_id}")
    return {"version": done.version, "training_set_hash": done.tags.get("keel.training_set_hash"),
            "rows": int(done.tags.get("keel.training_rows", 0)), **job}


def gate(settings: Settings, model: str, run_id: str, version: str) -> dict[str, Any]:
    """Promote the run's version if the gate passes; a refusal leaves the champion untouched."""
    from keel.registry.client import Registry

    registry = Registry(settings)
    before = registry.resolve(model, "champion").version if "champion" in registry._model(model).aliases else None
    if before == version:  # a re-run after a successful promotion
        return {"promoted": True, "previous": _previous(registry, model, version), "champion": version}
    challenger = registry.resolve(model, "challenger").version
    if challenger != version:
        raise KeelError(f"challenger of '{model}' is v{challenger}, not this run's v{version}: another run "
                        f"registered since; not promoting")
    try:
        v = registry.promote(model, reason=f"retrain {run_id}", actor="airflow")
    except GateRefusedError as exc:
        return {"promoted": False, "previous": before, "champion": before, "refused": str(exc)}
    return {"promoted": True, "previous": before, "champion": v.version}


def _previous(registry: Any, model: str, version: str) -> str | None:
    history = registry._history(model)
    return history[-2] if len(history) >= 2 and history[-1] == version else None


def rollout(settings: Settings, model: str, run_id: str, decision: dict[str, Any],
            conf: dict[str, Any]) -> dict[str, Any]:
    """Canary (the previous version keeps most traffic, the new champion gets canary_percent), a smoke
    check through the real endpoint, then the new champion alone. A failed smoke check rolls back."""
    from keel.registry.client import Registry
    from keel.serving.deploy import LocalTarget, predict_local
    from keel.serving.spec import ServeSpec

    conf = validate_conf(conf, settings.spec().models.get(model))
    if not decision.get("promoted"):
        return {"outcome": "refused", "champion": decision.get("champion")}
    if settings.deploy_target != "local":
        return _rollout_cluster(settings, model, run_id, decision, conf)
    target = LocalTarget(settings)
    current = target.specs().get(model)
    if current is None:
        return {"outcome": "promoted", "champion": decision["champion"], "deployed": False}
    registry = Registry(settings)
    new, old = decision["champion"], decision.get("previous")
    base = {"runtime": current.runtime, "port": current.port, "predlog_uri": current.predlog_uri,
            "sample_rate": current.sample_rate, "sticky": current.sticky, "sticky_key": current.sticky_key}
    if old and old != new and conf["canary_percent"] > 0:
        target.deploy(ServeSpec(model=model, version=old, canary_alias="champion",
                                canary_weight=conf["canary_percent"] / 100.0, **base))
    probes = _smoke_instances(registry, model, new, conf["smoke_requests"])
    task = registry.version(model, new).tags.get("keel.task", "binary")
    ok, detail = _smoke(settings, model, probes, predict_local, task)
    if not ok:
        registry.rollback(model, reason=f"retrain {run_id}: smoke check failed ({detail})", actor="airflow")
        target.deploy(ServeSpec(model=model, alias="champion", **base))
        return {"outcome": "rolled_back", "champion": old, "smoke": detail}
    target.deploy(ServeSpec(model=model, alias="champion", **base))
    first = predict_local(settings, model, probes[:1])
    return {"outcome": "promoted", "champion": new, "deployed": True, "first_prediction_version": first["version"],
            "first_prediction_at": time.time()}


def _rollout_cluster(settings: Settings, model: str, run_id: str, decision: dict[str, Any],
                     conf: dict[str, Any]) -> dict[str, Any]:
    """The same rollout on the release's InferenceService or RayService (KEEL_DEPLOY_TARGET): each step
    patches the live object's pinned version and canary share and waits until the operator reports it
    Ready; the smoke check goes through the model's in-cluster endpoint."""
    from keel.registry.client import Registry
    from keel.serving.deploy import predict_at
    from keel.serving.kube import ClusterTarget

    kind = settings.deploy_target
    if kind == "cluster":  # each model on its own runtime, as the spec (and the chart's models) say
        from keel.serving.cluster import RUNTIME_OF_TARGET

        runtime = settings.spec().model(model).serving.runtime
        kind = next(t for t, r in RUNTIME_OF_TARGET.items() if r == runtime)
    target = ClusterTarget(settings, kind)
    if target.current(model) is None:
        return {"outcome": "promoted", "champion": decision["champion"], "deployed": False}
    registry = Registry(settings)
    new, old = decision["champion"], decision.get("previous")
    if old and old != new and conf["canary_percent"] > 0:
        target.pin(model, old, canary_alias="champion", canary_weight=conf["canary_percent"] / 100.0)
    probes = _smoke_instances(registry, model, new, conf["smoke_requests"])
    task = registry.version(model, new).tags.get("keel.task", "binary")
    endpoint = target.endpoint(model)

    def predict(_: Settings, name: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
        return predict_at(endpoint, name, instances, hint=f"is {target.name_of(model)} serving?")

    ok, detail = _smoke(settings, model, probes, predict, task)
    if not ok:
        registry.rollback(model, reason=f"retrain {run_id}: smoke check failed ({detail})", actor="airflow")
        if old:
            target.pin(model, old)
        return {"outcome": "rolled_back", "champion": old, "smoke": detail}
    target.pin(model, new)
    return {"outcome": "promoted", "champion": new, "deployed": True, "target": kind,
            "object": target.name_of(model)}


def _smoke_instances(registry: Any, model: str, version: str, n: int) -> list[dict[str, Any]]:
    """Real requests for the smoke check: the new version's own holdout rows (entity keys and request
    values as recorded in lineage), never hand-written columns."""
    v = registry.version(model, version)
    fields = [f for f in (v.tags.get("keel.entity_keys", "") + "," + v.tags.get("keel.request_fields", "")).split(",")
              if f]
    holdout = registry._holdout(v)
    missing = [f for f in fields if f not in holdout.columns]
    if not fields or missing:
        raise KeelError(f"model '{model}' v{version}'s holdout lacks request field(s) {', '.join(missing or fields)}; "
                        "register it with keel 0.1+ to get smoke traffic")
    rows = holdout[fields].dropna().tail(n)
    return [{k: (x.item() if hasattr(x, "item") else x) for k, x in r.items()} for r in rows.to_dict("records")]


def _smoke(settings: Settings, model: str, probes: list[dict[str, Any]], predict: Any,
           task: str = "binary") -> tuple[bool, str]:
    """Every probe answered, with outputs of the version's task: probabilities in [0, 1] (per class
    summing to 1 for multiclass), finite values for regression."""
    import math

    try:
        out = predict(settings, model, probes)
    except KeelError as exc:
        return False, str(exc)
    scores = out.get("predictions", [])
    n = len(probes)
    if len(scores) != n:
        return False, f"{len(scores)} answers for {n} requests"
    for s in scores:
        if isinstance(s, list):
            if any(not 0.0 <= float(p) <= 1.0 for p in s) or abs(sum(map(float, s)) - 1.0) > 1e-3:
                return False, f"class probabilities {s} are not a distribution"
        elif not isinstance(s, int | float) or not math.isfinite(float(s)):
            return False, f"non-finite prediction {s!r}"
        elif task == "binary" and not 0.0 <= float(s) <= 1.0:
            return False, f"score {s} outside [0, 1]"
    return True, f"{n} answers"


def parser() -> argparse.ArgumentParser:
    """The pods' command line (the DAG's KubernetesPodOperator tasks build it)."""
    ap = argparse.ArgumentParser(prog="keel.retrain")
    ap.add_argument("step", choices=["validate", "train", "gate", "rollout"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--conf", default="{}", help="the run's conf (validate) or the conf validate returned")
    ap.add_argument("--input", default="{}", help="the previous step's output")
    ap.add_argument("--xcom", action="store_true", help="also write the result where KubernetesPodOperator reads it")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``python -m keel.retrain STEP --model M --run-id R [--conf JSON] [--input JSON]`` (cluster pods)."""
    a = parser().parse_args(argv)
    s, conf, prev = load_settings(), json.loads(a.conf), json.loads(a.input)
    steps = {"validate": lambda: validate_conf(conf, s.spec().models.get(a.model)),
             "train": lambda: train(s, a.model, a.run_id, conf),
             "gate": lambda: gate(s, a.model, a.run_id, prev["version"]),
             "rollout": lambda: rollout(s, a.model, a.run_id, prev, conf)}
    out = json.dumps(steps[a.step]())
    if a.xcom:
        from pathlib import Path

        Path("/airflow/xcom").mkdir(parents=True, exist_ok=True)
        Path("/airflow/xcom/return.json").write_text(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
