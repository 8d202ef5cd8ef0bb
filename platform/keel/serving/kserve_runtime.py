"""KServe runtime: a ``kserve.Model`` over keel's router, on KServe's own ModelServer and DataPlane.

Speaks V1 (``/v1/models/<m>:predict`` with ``{"instances": [...]}``) and the Open Inference Protocol V2
(``/v2/models/<m>/infer``, metadata, ready). The only thing changed in KServe's server is the bind
address: its REST server hard-codes 0.0.0.0, keel binds the host it is given (127.0.0.1 locally;
``keel.compat.kserve``).

Run: ``python -m keel.serving.kserve_runtime --spec '<ServeSpec JSON>' [--host 127.0.0.1]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from keel.config import load_settings
from keel.serving import protocol
from keel.serving.core import InputError
from keel.serving.router import Router
from keel.serving.spec import ServeSpec

log = logging.getLogger("keel.serving")

class KeelModel(kserve.Model):
    def __init__(self, name: str, router: Router, threads: int = 32) -> None:
        super().__init__(name)
        self.router = router
        self.ready = True
        # scoring runs on these threads, never on the event loop: a hung online store (a stopped Redis
        # answers nothing until the socket timeout) then delays the requests that wait on it, not every
        # request the server holds
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keel-predict")

    # -- V2 metadata (keel.serving.protocol) ------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        return protocol.v2_metadata(self.name, self.router.primary)["inputs"]

    def get_output_types(self) -> list[dict[str, Any]]:
        return protocol.v2_metadata(self.name, self.router.primary)["outputs"]

    # -- inference ------------------------------------------------------------------------------
    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(payload, InferRequest):
                inputs = [(i.name, i.datatype, i.shape, i.data) for i in payload.inputs]
                rows = protocol.v2_instances(inputs, self.router.primary)
                result = await loop.run_in_executor(self._pool, self.router.predict, rows)
                return InferResponse(
                    response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                    model_version=result.version,
                    infer_outputs=[InferOutput(*out) for out in protocol.v2_outputs(result)],
                    parameters={"model_version": result.version, "degraded": any(result.degraded)})
            instances = protocol.v1_instances(payload)
            return (await loop.run_in_executor(self._pool, self.router.predict, instances)).as_dict()
        except InputError as exc:
            raise InvalidInput(str(exc)) from None

    def stop(self) -> None:
        self._pool.shutdown(wait=True)
        self.router.close()
        super().stop()


def _prepare_app(max_body_bytes: int, spec: ServeSpec) -> None:
    """Shed load past the spec's in-flight bound (503, ``keel.serving.shed``), bound request bodies (413
    before parsing, ``keel.serving.limits``), and answer a body that fails the
    V2 schema with 400 naming the failing fields: FastAPI's own 422 echoes the input back, and for a body
    like ``Infinity`` that echo is not valid JSON, so the answer became a 500."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

    from keel.serving.limits import BodyLimit

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    spec.add_shedding(app)  # outermost: a full replica refuses before reading the body

    async def handler(_: Any, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:5]]
        return JSONResponse(status_code=400, content={"error": "; ".join(parts) or "invalid request body"})

    app.add_exception_handler(RequestValidationError, handler)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keel-kserve")
    parser.add_argument("--spec", required=True, help="ServeSpec as JSON")
    parser.add_argument("--host", default=None, help="bind address (default: KEEL_HOST)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    spec = ServeSpec.from_json(args.spec)
    router = spec.build_router(settings)
    model = KeelModel(spec.model, router)
    from keel.compat.kserve import loopback_server_class

    server = loopback_server_class()(host=args.host or settings.host,
                                     before_start=lambda: _prepare_app(settings.max_body_bytes, spec),
                                     http_port=spec.port, enable_grpc=False, enable_docs_url=False, workers=1)
    # uvicorn catches SIGTERM/SIGINT, drains, then re-raises the signal to the handler found at start:
    # make that handler an orderly exit, so the `finally` below flushes the prediction log.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    try:
        server.start([model])
    finally:
        router.close()
        log.info("prediction log flushed; bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
