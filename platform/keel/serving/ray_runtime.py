"""Ray Serve runtime: a deployment over keel's router with adaptive batching (``@serve.batch``),
autoscaling and fractional GPUs. Same V1 request/response as the KServe runtime.

Ray's value here is batching, GPU packing and autoscaling, not single-request latency (its proxy hop
costs milliseconds): the requests that queue while a replica's batch slots are busy share one feature
lookup and one model call (and, with ``batch_wait_s`` > 0, those that arrive that long after the first).

Run locally: ``python -m keel.serving.ray_runtime --spec '<ServeSpec JSON>'``: a Ray instance of its own,
or, when the spec has a route prefix, an application of the shared Ray cluster's one Serve instance (its
replicas on the worker nodes, its answers under ``/<model>`` on the cluster's proxy). On Kubernetes, the
Serve config in ``serving/`` points at :func:`app_builder`.
"""


import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from keel.serving import ray_ingress
from keel.serving.spec import ServeSpec

log = logging.getLogger("keel.serving")
# Batches in flight at once per replica. With one (Ray's default) a batch whose lookup waits out the store
# timeout holds every request queued behind it: a hung Redis cost the breaker's five failures in series
# (p99 478 ms against a 100 ms timeout). With enough slots, each request that arrives before the breaker
# opens waits out only its own timeout; batches still form whenever the slots are busy. 32, as the
# KServe runtime's thread pool: both runtimes absorb the same burst of hung lookups.
CONCURRENT_BATCHES = 32
api = FastAPI(title="keel serving (Ray Serve)")


@serve.deployment(name="keel")
@serve.ingress(api)
class KeelDeployment:
    def __init__(self, spec_json: str, env: "dict[str, str] | None" = None) -> None:
        from keel.config import load_settings
        from keel.serving.limits import BodyLimit

        os.environ.update(env or {})
        settings = load_settings()
        api.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # before the replica's first request
        self.spec = ServeSpec.from_json(spec_json)
        self.spec.add_shedding(api)  # per replica: Serve's own max_ongoing_requests queues instead
        self.router = self.spec.build_router(settings)
        self.predict_batch.set_max_batch_size(self.spec.batch_max_size)
        self.predict_batch.set_batch_wait_timeout_s(self.spec.batch_wait_s)
        # the batches' own threads (asyncio's default pool has cpu_count + 4: fewer than the batch slots)
        self._pool = ThreadPoolExecutor(max_workers=CONCURRENT_BATCHES, thread_name_prefix="keel-batch")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, max_concurrent_batches=CONCURRENT_BATCHES)
    async def predict_batch(self, requests: list[Any]) -> list[Any]:
        # off the replica's event loop: a lookup waiting on a hung store must not hold the other batches
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.router.predict_many, requests)

    @api.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> Response:
        from keel.serving import protocol
        from keel.serving.core import InputError

        if name != self.spec.model:
            return JSONResponse({"error": f"model '{name}' is not served here; serving '{self.spec.model}'",
                                 "field": "model"}, status_code=404)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"body: not valid JSON ({exc})", "field": "body"}, status_code=400)
        try:
            instances = protocol.v1_instances(body)
        except InputError as exc:
            return JSONResponse(exc.body(), status_code=400)
        result = await self.predict_batch(instances)
        if isinstance(result, InputError):
            return JSONResponse(result.body(), status_code=400)
        return JSONResponse(result.as_dict())

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        """Open Inference Protocol V2, as KServe's runtime answers it (keel.serving.protocol)."""
        from keel.serving import protocol
        from keel.serving.core import InputError

        if name != self.spec.model:
            return JSONResponse({"error": f"model '{name}' is not served here; serving '{self.spec.model}'",
                                 "field": "model"}, status_code=404)
        try:
            body = json.loads(await request.body())
            rows = protocol.v2_instances(protocol.v2_json_inputs(body), self.router.primary)
        except InputError as exc:  # before ValueError, which it is
            return JSONResponse(exc.body(), status_code=400)
        except (ValueError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"body: not valid JSON ({exc})", "field": "body"}, status_code=400)
        result = await self.predict_batch(rows)
        if isinstance(result, InputError):
            return JSONResponse(result.body(), status_code=400)
        outputs = [{"name": n, "shape": shape, "datatype": dt, "data": data}
                   for n, shape, dt, data in protocol.v2_outputs(result)]
        rid = body.get("id") if isinstance(body, dict) else None
        return JSONResponse({"model_name": name, "model_version": result.version, "id": rid or result.request_id,
                             "outputs": outputs, "parameters": {"degraded": any(result.degraded)}})

    @api.get("/v2/models/{name}")
    async def metadata(self, name: str) -> Response:
        from keel.serving import protocol

        if name != self.spec.model:
            return JSONResponse({"error": f"model '{name}' is not served here", "field": "model"}, status_code=404)
        return JSONResponse(protocol.v2_metadata(name, self.router.primary))

    @api.get("/v1/models/{name}")
    async def ready(self, name: str) -> Response:
        if name != self.spec.model:
            return JSONResponse({"error": f"model '{name}' is not served here", "field": "model"}, status_code=404)
        p = self.router.primary
        return JSONResponse({"name": name, "ready": True, "version": p.version, "alias": p.alias,
                             "device": p.runner.device})

    @api.get("/healthz")
    async def healthz(self) -> Response:
        return JSONResponse({"status": "ok"})

    @api.get("/metrics")
    async def metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def __del__(self) -> None:
        router = getattr(self, "router", None)
        if router is not None:
            router.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def deployment_options(spec: ServeSpec) -> dict[str, Any]:
    """Replica count or autoscaling, and per-replica resources (fractional GPUs pack several replicas
    onto one card)."""
    opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": spec.num_gpus},
                            "max_ongoing_requests": max(8, spec.batch_max_size * CONCURRENT_BATCHES)}
    if spec.max_replicas > max(spec.min_replicas, 1):
        opts["autoscaling_config"] = {"min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
                                      "target_ongoing_requests": max(2, spec.batch_max_size // 2)}
    else:
        opts["num_replicas"] = max(spec.min_replicas, 1)
    return opts


def keel_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("KEEL_", "MLFLOW_"))}


def build_app(spec: ServeSpec) -> Any:
    return KeelDeployment.options(**deployment_options(spec)).bind(spec.to_json(), keel_env())


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for Serve config files (``import_path: keel.serving.ray_runtime:app_builder``)."""
    spec = ServeSpec(**{k: v for k, v in args.items() if k in ServeSpec.__dataclass_fields__})
    return KeelDeployment.bind(spec.to_json(), keel_env())


def start_shared_serve(host: str, port: int, attempts: int = 3) -> None:
    """Join (or first start) the shared cluster's one Serve instance, its HTTP proxy on the head only.
    Two deployments starting together can both find no controller and race to create it: the loser's
    "already taken" is retried, and then finds the winner's."""
    import time

    for attempt in range(attempts):
        try:
            serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
            return
        except ValueError as exc:  # the detached controller's name was taken a moment ago
            if "already" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keel-ray")
    parser.add_argument("--spec", required=True, help="ServeSpec as JSON")
    parser.add_argument("--host", default=None)
    parser.add_argument("--num-cpus", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from keel.config import load_settings

    settings = load_settings()
    spec = ServeSpec.from_json(args.spec)
    host = args.host or settings.host
    shared = bool(spec.route_prefix)
    if shared and not settings.ray_cluster:
        log.error("%s is deployed on the shared Ray cluster (route %s) but none is configured now: set "
                  "KEEL_RAY_WORKERS or KEEL_RAY_ADDRESS, or deploy it again", spec.model, spec.route_prefix)
        return 2
    stop = threading.Event()
    ingress = None
    if shared:  # a driver on the cluster: the replicas run on its worker nodes, not in this process tree
        ray.init(address=settings.ray_cluster, configure_logging=False, log_to_driver=False)
    else:
        ingress = ray_ingress.ingress_env(host)  # before ray.init: Serve's actors read it as they start
        if ingress is not None:
            os.environ.update(ingress[0])
        ray.init(num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, _node_ip_address=host,
                 configure_logging=False, log_to_driver=False)
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own handlers
        signal.signal(sig, lambda *_: stop.set())
    try:
        if shared:
            start_shared_serve(settings.ray_serve_host, spec.port)
        else:
            serve.start(http_options={"host": host, "port": spec.port})
        serve.run(build_app(spec), name=spec.model, route_prefix=spec.route_prefix or "/", blocking=False)
        log.info("ray serve: %s on %s", spec.model, spec.base_url(settings))
        stop.wait()
        log.info("stopping: draining replicas and flushing prediction logs")
        serve.delete(spec.model)  # replicas shut down gracefully; their routers flush
        if not shared:  # the shared cluster's Serve instance outlives any one model
            serve.shutdown()
    finally:
        ray.shutdown()
        if ingress is not None:
            ray_ingress.stop_haproxy(ingress[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
