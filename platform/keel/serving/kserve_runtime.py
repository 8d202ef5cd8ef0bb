"""KServe runtime: a ``kserve.Model`` over keel's router, on KServe's own ModelServer and DataPlane.

Speaks V1 (``/v1/models/<m>:predict`` with ``{"instances": [...]}``) and the Open Inference Protocol V2
(``/v2/models/<m>/infer``, metadata, ready). The only thing changed in KServe's server is the bind
address: its REST server hard-codes 0.0.0.0, keel binds the host it is given (127.0.0.1 locally;
``keel.compat.kserve``).

Run: ``python -m keel.serving.kserve_runtime --spec '<ServeSpec JSON>' [--host 127.0.0.1]``
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import uuid
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
    def __init__(self, name: str, router: Router) -> None:
        super().__init__(name)
        self.router = router
        self.ready = True

    # -- V2 metadata (keel.serving.protocol) ------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        return protocol.v2_metadata(self.name, self.router.primary)["inputs"]

    def get_output_types(self) -> list[dict[str, Any]]:
        return protocol.v2_metadata(self.name, self.router.primary)["outputs"]

    # -- inference ------------------------------------------------------------------------------
    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        try:
            if isinstance(payload, InferRequest):
                inputs = [(i.name, i.datatype, i.shape, i.data) for i in payload.inputs]
                result = self.router.predict(protocol.v2_instances(inputs, self.router.primary))
                return InferResponse(
                    response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                    model_version=result.version,
                    infer_outputs=[InferOutput(*out) for out in protocol.v2_outputs(result)],
                    parameters={"model_version": result.version, "degraded": any(result.degraded)})
            return self.router.predict(protocol.v1_instances(payload)).as_dict()
        except InputError as exc:
            raise InvalidInput(str(exc)) from None

    def stop(self) -> None:
        self.router.close()
        super().stop()


def _answer_bad_bodies_with_400() -> None:
    """FastAPI answers a body that fails the V2 schema with 422 and echoes the input back; for a body like
    ``Infinity`` that echo is not valid JSON and the answer becomes a 500. Name the failing fields instead."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

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

    server = loopback_server_class()(host=args.host or settings.host, before_start=_answer_bad_bodies_with_400,
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
