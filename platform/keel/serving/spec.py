"""What to serve: one spec shared by the local launcher, both runtimes, the CLI and (later) the chart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from keel.config import Settings
from keel.errors import KeelError

RUNTIMES = ("kserve", "ray")


@dataclass(frozen=True)
class ServeSpec:
    model: str
    alias: str = "champion"
    version: str | None = None
    runtime: str = "kserve"
    port: int = 8085
    canary_alias: str | None = None
    canary_weight: float = 0.0
    # the canary as an A/B test: split by a hash of this request field (default: the model's first entity
    # key), so an entity always meets the same variant; False: a coin flip per request
    sticky: bool = True
    sticky_key: str | None = None
    shadow_alias: str | None = None
    max_batch: int = 1000
    gpu: bool = False
    num_gpus: float = 0.0
    predlog_uri: str | None = None
    sample_rate: float = 1.0
    # the hot-entity feature cache (keel.serving.features.FeatureCache): fresh for cache_ttl_s (0: off), at most
    # cache_size entities, and their last known values served (flagged) up to cache_stale_s old while the store fails
    cache_ttl_s: float = 1.0
    cache_size: int = 10_000
    cache_stale_s: float = 300.0
    # Ray runtime batching: a model call takes up to batch_max_size requests, waiting at most batch_wait_s
    # for more once the first is there. 0 (natural batching): a batch is what queued while the replica's
    # batch slots were busy, so one client pays no wait and a burst still shares calls
    batch_max_size: int = 32
    batch_wait_s: float = 0.0
    min_replicas: int = 1
    max_replicas: int = 1
    feature_service: str | None = None  # look a non-keel model's inputs up from this service
    # "/<model>" for an application of the shared Ray cluster's one Serve instance (its proxy on ``port``,
    # KEEL_RAY_SERVE_PORT, for every model); "" for a server of its own on ``port``
    route_prefix: str = ""
    max_inflight: int = 32  # load shedding: prediction requests a replica holds at once (keel.serving.shed)
    priorities: dict[str, float] | None = None  # X-Keel-Priority class -> share of max_inflight
    # a simpler version of the same model (an alias, or a version number) that scores the rows whose
    # features had to be defaulted; the training medians stay the last resort
    fallback: str | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise KeelError(f"unknown runtime '{self.runtime}'; valid choices: {', '.join(RUNTIMES)}")
        if self.canary_alias and self.shadow_alias:
            raise KeelError("choose --canary or --shadow, not both")
        if not 0.0 <= self.canary_weight <= 1.0:
            raise KeelError(f"invalid canary weight {self.canary_weight}: expected a percentage from 0 to 100")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise KeelError(f"invalid sample rate {self.sample_rate}: expected a fraction between 0 and 1")
        if self.num_gpus < 0 or self.max_batch < 1 or self.min_replicas < 0 or self.max_replicas < 1:
            raise KeelError("num_gpus >= 0, max_batch >= 1, min_replicas >= 0 and max_replicas >= 1 are required")
        if self.cache_ttl_s < 0 or self.cache_size < 1 or self.cache_stale_s < 0:
            raise KeelError(f"invalid feature cache (ttl {self.cache_ttl_s} s, {self.cache_size} entities, stale "
                            f"{self.cache_stale_s} s): expected ttl >= 0 (0: off), at least 1 entity, stale >= 0")
        if self.fallback is not None and not self.fallback.strip():
            raise KeelError("invalid fallback '': expected an alias or a version number of the model")
        if self.max_inflight < 1:
            raise KeelError(f"invalid max_inflight {self.max_inflight}: expected at least 1 request")
        bad = {k: v for k, v in (self.priorities or {}).items() if not 0.0 < v <= 1.0}
        if bad:
            raise KeelError(f"invalid priorities {bad}: each class's share of max_inflight must be in (0, 1]")
        if self.route_prefix and (self.runtime != "ray" or self.route_prefix != f"/{self.model}"):
            raise KeelError(f"route prefix '{self.route_prefix}': only a Ray runtime deployment on the shared Ray "
                            f"cluster has one, and it is '/{self.model}'")

    def add_shedding(self, app: Any) -> None:
        """Bound the prediction requests ``app`` (a Starlette/FastAPI app) holds at once, by priority."""
        from keel.serving.shed import LoadShed

        app.add_middleware(LoadShed, model=self.model, max_inflight=self.max_inflight, shares=self.priorities)

    def base_url(self, settings: Settings) -> str:
        """Where this deployment answers: its own port, or its prefix on the shared Ray cluster's proxy."""
        host = settings.ray_serve_host if self.route_prefix else settings.host
        return f"http://{host}:{self.port}{self.route_prefix}"

    @classmethod
    def parse_canary(cls, text: str) -> tuple[str, float]:
        alias, sep, pct = text.partition(":")
        try:
            weight = float(pct) / 100.0
        except ValueError:
            weight = -1.0
        if not sep or not alias or not 0.0 <= weight <= 1.0:
            raise KeelError(f"invalid --canary '{text}': expected ALIAS:PERCENT, e.g. challenger:10")
        return alias, weight

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServeSpec:
        return cls(**json.loads(text))

    def build_router(self, settings: Settings, seed: int | None = None) -> Any:
        from keel.serving.core import Predictor
        from keel.serving.predlog import PredictionLog
        from keel.serving.router import Router

        uri = self.predlog_uri or settings.predictions_location
        log = PredictionLog(uri, self.sample_rate, flush_interval_s=10.0)
        common = {"gpu": self.gpu, "max_batch": self.max_batch, "predlog": log, "cache_ttl_s": self.cache_ttl_s,
                  "cache_size": self.cache_size, "cache_stale_s": self.cache_stale_s,
                  "feature_service": self.feature_service}
        primary = Predictor.from_registry(settings, self.model, self.alias, self.version, **common)
        other = self.canary_alias or self.shadow_alias
        secondary = Predictor.from_registry(settings, self.model, other, **common) if other else None
        mode = "canary" if self.canary_alias else "shadow" if self.shadow_alias else None
        if self.fallback:
            by_version = self.fallback.isdigit()
            fb = Predictor.from_registry(settings, self.model, None if by_version else self.fallback,
                                         self.fallback if by_version else None,
                                         **{**common, "predlog": None})
            for p in (primary, secondary):
                if p is not None:
                    p.use_fallback(fb)
            fb.warmup()
        for p in (primary, secondary):
            if p is not None:
                p.warmup()
        key = None
        if mode == "canary" and self.sticky:
            keys = list(getattr(primary.online, "entity_keys", []) or [])
            key = self.sticky_key or (keys[0] if keys else None)
            if key is not None and key not in primary.input_fields:
                raise KeelError(f"sticky key '{key}' is not a request field of {self.model} v{primary.version}; "
                                f"valid choices: {', '.join(primary.input_fields)}")
        return Router(primary, secondary, mode, self.canary_weight, seed, sticky_key=key)
