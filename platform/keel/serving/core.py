"""The predictor core: validate → features → model → response. No web framework in here.

A Predictor is bound to one registered version, resolved from an alias once, at load time; the
version is reported with every answer and never re-resolved per request, so an alias moving in the
registry changes serving only through a deliberate redeploy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keel.config import Settings
from keel.errors import KeelError
from keel.serving import metrics as M
from keel.serving.breaker import STATE_VALUE, CircuitBreaker
from keel.serving.predlog import PredictionLog, now

log = logging.getLogger("keel.serving")


class InputError(ValueError):
    """Bad request content; adapters answer 4xx with ``field`` named."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def body(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field}


@dataclass
class Result:
    model: str
    version: str
    scores: list[Any]          # binary: P(positive); regression: the value; multiclass: one list per row
    degraded: list[bool]
    role: str = "primary"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    classes: list[Any] | None = None  # multiclass: the class of each probability, in order
    fallback_rows: list[bool] | None = None  # rows scored by the fallback model version (degraded too)
    fallback_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "version": self.version, "predictions": self.scores,
               "degraded": any(self.degraded), "degraded_rows": self.degraded, "request_id": self.request_id}
        if self.classes is not None:
            out["classes"] = self.classes
        if self.fallback_rows is not None and any(self.fallback_rows):
            out["fallback_version"], out["fallback_rows"] = self.fallback_version, self.fallback_rows
        return out


EXPECTED = {"int": "a 64-bit integer", "float": "a finite number", "str": "a string", "bool": "true or false",
            "object": "a value"}


def check_value(kind: str, v: Any) -> Any:
    """``v`` as the kind the repo (or the model's signature) declares, or None when it is not one."""
    if kind == "int":
        ok = isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63
        return v if ok else None
    if kind == "float":
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return float(v) if ok else None
    if kind == "str":
        return v if isinstance(v, str) else None
    if kind == "bool":
        return v if isinstance(v, bool) else None
    return v


def pick_device(want_gpu: bool) -> str:
    """'cuda' when a GPU was asked for and is present; otherwise 'cpu', saying so when it matters."""
    if not want_gpu:
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                                     check=False).returncode == 0:
        return "cuda"
    log.warning("a GPU was requested but none is available; running the model on CPU")
    return "cpu"


class ModelRunner:
    """Calls the native model on a float matrix in the signature's column order, on the chosen device."""

    def __init__(self, model: Any, flavor: str, device: str, task: str = "binary") -> None:
        from keel.registry.metrics import classes_of

        self.model, self.flavor, self.device, self.task = model, flavor, device, task
        self.classes = classes_of(model) if task == "multiclass" else None
        self._booster = None
        if flavor == "xgboost":
            # one thread per process: requests are small, and OpenMP threads spinning against the
            # server's own threads cost more than they give; replicas are the unit of parallelism
            model.set_params(n_jobs=1)
            if device == "cuda":
                model.set_params(device="cuda")
            booster = model.get_booster()
            objective = str(booster.attr("objective") or model.get_params().get("objective", ""))
            if task == "binary" and objective.startswith("binary:"):
                self._booster = booster  # in-place predict on a float32 matrix: no DMatrix, no pandas pass
        elif flavor == "pytorch":
            model.to(device)
            with contextlib.suppress(NotImplementedError):  # exported (pt2) graphs are inference-only already
                model.eval()

    def scores(self, X: Any) -> np.ndarray:
        if self._booster is not None:
            return np.asarray(self._booster.inplace_predict(X.to_numpy(dtype="float32"), validate_features=False))
        from keel.registry.metrics import scores

        return scores(self.model, X, self.task)

    def score_lookup(self, lookup: Any, features: list[str]) -> np.ndarray:
        """Scores straight from the looked-up columns: a float32 matrix for the booster (no DataFrame),
        the DataFrame the model was trained on for everything else."""
        if self._booster is not None:
            return np.asarray(self._booster.inplace_predict(lookup.matrix(features), validate_features=False))
        return self.scores(lookup.frame[features])


class Predictor:
    def __init__(self, name: str, version: str, runner: ModelRunner, online: Any, features: list[str],
                 max_batch: int = 1000, predlog: PredictionLog | None = None, alias: str | None = None,
                 examples: Any = None) -> None:
        self.name, self.version, self.alias = name, version, alias
        self.runner, self.online, self.features = runner, online, features
        self.max_batch = max_batch
        self.predlog = predlog
        self.examples = examples  # a few holdout rows (DataFrame): real requests and the features behind them
        self.fallback: Predictor | None = None
        self.online.breaker._on_change = self._breaker_changed
        M.BREAKER.labels(name, version).set(0)
        self._lat = {s: M.LATENCY.labels(name, version, s) for s in ("features", "model", "total")}
        self._batch = M.BATCH.labels(name, version)
        self._codes: dict[str, Any] = {}
        # exported at 0 from the start, so a hit ratio exists before the first request
        self._cache = {r: M.CACHE.labels(name, version, r) for r in ("hit", "miss", "stale")}
        self._cache_entries = M.CACHE_ENTRIES.labels(name, version)

    def count(self, code: str, n: int = 1) -> None:
        """Count answered requests by HTTP-equivalent code (label children cached: this is per request)."""
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = M.REQUESTS.labels(self.name, self.version, code)
        child.inc(n)

    def _breaker_changed(self, state: str) -> None:
        M.BREAKER.labels(self.name, self.version).set(STATE_VALUE[state])
        log.warning("online-store breaker for %s v%s is now %s", self.name, self.version, state)

    @classmethod
    def from_registry(cls, settings: Settings, name: str, alias: str | None = "champion", version: str | None = None,
                      gpu: bool = False, max_batch: int = 1000, predlog: PredictionLog | None = None,
                      cache_ttl_s: float = 0.0, breaker: CircuitBreaker | None = None,
                      feature_service: str | None = None, cache_size: int = 10_000,
                      cache_stale_s: float = 300.0) -> Predictor:
        """Load a version as ``keel.serving.plan`` resolves it: features looked up from its feature
        service (registered by keel, or ``feature_service`` given), or raw-feature mode (a version
        registered without keel: the request carries the inputs its signature names)."""
        from keel.registry.client import Registry
        from keel.serving.plan import plan_for

        reg = Registry(settings)
        v = reg.version(name, version) if version else reg.resolve(name, alias or "champion")
        plan = plan_for(reg, v, feature_service)
        model = reg.load(v)
        task = plan.task or _infer_task(model)
        runner = ModelRunner(model, plan.flavor, pick_device(gpu), task)
        examples = plan.examples(reg, v)
        if plan.feature_service:
            from keel.features.store import open_store
            from keel.serving.features import OnlineFeatures

            stats = reg.feature_stats(v) if plan.keel else {}
            defaults = {k: s.get("default") for k, s in stats.items()}
            online: Any = OnlineFeatures(open_store(settings, serving=True), plan.feature_service, defaults,
                                         breaker, cache_ttl_s, cache_size, cache_stale_s)
        else:
            from keel.serving.features import RawFeatures

            online = RawFeatures(plan.inputs)
        log.info("serving %s v%s (alias %s, %s, %s) on %s", name, v.version, alias, task,
                 f"features from '{plan.feature_service}'" if plan.feature_service else "raw features",
                 runner.device)
        return cls(name, v.version, runner, online, plan.features, max_batch, predlog,
                   alias if not version else None, examples)

    def use_fallback(self, fallback: Predictor) -> None:
        """Score the rows whose features had to be defaulted (store down, breaker open, features missing)
        with ``fallback``, a simpler version of the same model, instead of on the training medians. It
        must answer the same task (and classes) from inputs this version's requests carry."""
        if fallback.runner.task != self.runner.task or fallback.runner.classes != self.runner.classes:
            raise KeelError(f"fallback {fallback.name} v{fallback.version} is a {fallback.runner.task} model; "
                            f"expected the task of v{self.version}: {self.runner.task}"
                            + (f" with classes {self.runner.classes}" if self.runner.classes else ""))
        extra = [f for f in fallback.input_fields if f not in self.input_fields]
        if extra:
            raise KeelError(f"fallback {fallback.name} v{fallback.version} needs input(s) {', '.join(extra)} that "
                            f"requests to v{self.version} do not carry; expected a version whose inputs are among: "
                            f"{', '.join(self.input_fields) or '(none)'}")
        self.fallback = fallback
        self._fallback_count = M.FALLBACK_MODEL.labels(self.name, self.version, fallback.version)
        self._fallback_count.inc(0)  # exported at 0 from the start

    def _with_fallback(self, rows: list[dict[str, Any]], scores: np.ndarray, need: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """The fallback's scores where it could give them; the medians' scores stay the last resort
        (the fallback failing, or itself short of features, never fails the request)."""
        fb = self.fallback
        assert fb is not None
        idx = np.flatnonzero(need)
        try:
            sub = [{k: rows[i][k] for k in fb.input_fields} for i in idx]
            got, fl = fb.score(fb.online.fetch(sub))
        except Exception as exc:
            log.warning("fallback %s v%s failed (%s: %s); serving the training defaults' scores", fb.name,
                        fb.version, type(exc).__name__, exc)
            return scores, None
        ok = ~fl.defaulted if fl.defaulted is not None else np.ones(len(idx), dtype=bool)
        if not ok.any():
            return scores, None
        out = np.array(scores, dtype="float64", copy=True)
        out[idx[ok]] = np.asarray(got, dtype="float64")[ok]
        used = np.zeros(len(rows), dtype=bool)
        used[idx[ok]] = True
        self._fallback_count.inc(int(ok.sum()))
        return out, used

    def warmup(self, rounds: int = 3) -> None:
        """Exercise the whole path (Redis connection, Feast registry, on-demand transforms, the model)
        before the server reports ready, so the first real requests do not pay for it or time out.
        Only real rows are used: the lookup runs for holdout entities, and the model scores the holdout's
        own features, never values it was not trained on (an entity the store lacks would give nulls)."""
        ex = self.examples
        if ex is None or len(ex) == 0:
            return
        head = ex.head(3)
        requests = [{k: _plain(r[k]) for k in self.input_fields if k in head.columns} for _, r in head.iterrows()]
        have_features = all(f in head.columns for f in self.features)
        for _ in range(rounds):
            if requests and len(requests[0]) == len(self.input_fields):
                self.online.fetch(requests)
            if have_features:
                self.runner.scores(head[self.features])

    # -- input ----------------------------------------------------------------------------------
    @property
    def input_fields(self) -> list[str]:
        return [*self.online.entity_keys, *self.online.request_fields]

    def validate(self, instances: Any) -> list[dict[str, Any]]:
        if not isinstance(instances, list):
            raise InputError("instances", "expected a list of objects")
        if not instances:
            raise InputError("instances", "expected at least one instance")
        if len(instances) > self.max_batch:
            raise InputError("instances", f"batch of {len(instances)} exceeds the maximum of {self.max_batch}")
        types = self.online.types
        keys = set(self.online.entity_keys)
        out = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InputError(f"instances[{i}]", f"expected an object with {', '.join(self.input_fields)}")
            row: dict[str, Any] = {}
            for k in self.input_fields:
                kind = types.get(k, "float")
                v = inst.get(k)
                what = "entity key" if k in keys else "request value" if self.online.entity_keys else "input"
                if v is None:
                    raise InputError(f"instances[{i}].{k}", f"missing {what} (expected {EXPECTED[kind]})")
                checked = check_value(kind, v)
                if checked is None:
                    raise InputError(f"instances[{i}].{k}", f"expected {EXPECTED[kind]}, got {v!r}")
                row[k] = checked
            out.append(row)
        return out

    # -- predict --------------------------------------------------------------------------------
    def score(self, lookup: Any) -> tuple[np.ndarray, Any]:
        """The model's output for looked-up (or, in batch scoring, point-in-time) features; a model that
        cannot take nulls (no imputer) gets the training defaults in place of the missing values, and
        those rows are flagged degraded rather than failing."""
        try:
            return self.runner.score_lookup(lookup, self.features), lookup
        except ValueError:
            frame = lookup.frame
            missing = frame[self.features].isna().any(axis=1).to_numpy()
            if not missing.any() or not getattr(self.online, "defaults", None):
                raise
            for f in self.features:
                d = self.online.defaults.get(f)
                col = lookup.columns.get(f)
                if d is not None and col is not None:
                    col[missing & frame[f].isna().to_numpy()] = d
            lookup.degraded = lookup.degraded | missing
            lookup.defaulted = missing if lookup.defaulted is None else lookup.defaulted | missing
            lookup.reason = lookup.reason or "missing_features"
            return self.runner.score_lookup(lookup, self.features), lookup

    def predict(self, instances: Any, role: str = "primary", request_id: str | None = None,
                row_ids: list[str] | None = None) -> Result:
        """Score one request (or, with ``row_ids``, several batched into one call: each row is logged
        under its own request's id)."""
        t0 = time.perf_counter()
        rows = self.validate(instances)
        lookup = self.online.fetch(rows)
        t1 = time.perf_counter()
        scores, lookup = self.score(lookup)
        t2 = time.perf_counter()
        n = len(rows)
        if lookup.degraded.any():
            stale = getattr(lookup, "stale", 0)
            if stale:
                M.FALLBACK.labels(self.name, self.version, "stale").inc(stale)
            others = int(lookup.degraded.sum()) - stale
            if others:
                M.FALLBACK.labels(self.name, self.version, lookup.reason or "error").inc(others)
        cache = getattr(self.online, "cache", None)
        if cache is not None:
            self._cache["hit"].inc(lookup.hits)
            self._cache["miss"].inc(lookup.misses)
            if lookup.stale:
                self._cache["stale"].inc(lookup.stale)
            self._cache_entries.set(len(cache))
        self._lat["features"].observe(t1 - t0)
        self._lat["model"].observe(t2 - t1)
        self._lat["total"].observe(t2 - t0)
        self._batch.observe(n)
        M.PREDICTIONS.labels(self.name, self.version, role).inc(n)
        used = None
        if self.fallback is not None and lookup.defaulted is not None and lookup.defaulted.any():
            scores, used = self._with_fallback(rows, scores, lookup.defaulted)
        result = Result(self.name, self.version, _outputs(scores), lookup.degraded.tolist(), role,
                        request_id or uuid.uuid4().hex, self.runner.classes,
                        None if used is None else used.tolist(), None if used is None or not self.fallback
                        else self.fallback.version)
        if self.predlog is not None and self.predlog.sampled():
            self._log(result, rows, lookup, row_ids)
        return result

    def _log(self, result: Result, rows: list[dict[str, Any]], lookup: Any, row_ids: list[str] | None = None) -> None:
        ts = now()
        cols = {f: lookup.columns[f].tolist() for f in self.features}
        recs = []
        seen: dict[str, int] = {}  # a row's index within its own request: outcomes name it (request_id, row)
        for i, row in enumerate(rows):
            rid = row_ids[i] if row_ids else result.request_id
            k = seen[rid] = seen.get(rid, -1) + 1
            recs.append({"request_id": rid, "row": k, "model": self.name, "version": self.version,
                         "role": result.role, "timestamp": ts, **row, **{f: v[i] for f, v in cols.items()},
                         "prediction": _logged(result.scores[i]), "degraded": result.degraded[i]})
        before = self.predlog.dropped
        self.predlog.add(recs)
        if self.predlog.dropped > before:
            M.LOG_DROPPED.labels(self.name).inc(self.predlog.dropped - before)


def _outputs(scores: np.ndarray) -> list[Any]:
    """Plain JSON values: one float per row, or one list of class probabilities per row."""
    arr = np.asarray(scores)
    if arr.ndim == 2:
        return [[float(x) for x in row] for row in arr]
    return [x.item() if hasattr(x, "item") else x for x in arr]


def _logged(score: Any) -> float:
    """What the prediction log keeps per row: the score, or for multiclass the top class's index."""
    if isinstance(score, list):
        return float(int(np.argmax(score)))
    return float(score) if isinstance(score, int | float) else score


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _infer_task(model: Any) -> str:
    import pandas as pd

    from keel.registry.client import infer_task

    return infer_task(model, pd.Series([], dtype="float64"))
