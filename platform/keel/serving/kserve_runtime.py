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
from keel.serving.core import InputError
from keel.serving.router import Router
from keel.serving.spec import ServeSpec

log = logging.getLogger("keel.serving")

V2_TYPES = {"INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64"}
V2_FLOATS = {"FP64", "FP32", "FP16"}
V2_OF_KIND = {"int": "INT64", "float": "FP64", "str": "BYTES", "bool": "BOOL", "object": "BYTES"}
V2_ALLOWED = {"int": V2_TYPES, "float": V2_TYPES | V2_FLOATS, "str": {"BYTES"}, "bool": {"BOOL"},
              "object": {"BYTES"}}


class KeelModel(kserve.Model):
    def __init__(self, name: str, router: Router) -> None:
        super().__init__(name)
        self.router = router
        self.ready = True

    # -- V2 metadata ----------------------------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        p = self.router.primary
        return [{"name": k, "datatype": V2_OF_KIND[p.online.types.get(k, "float")], "shape": [-1]}
                for k in p.input_fields]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "score", "datatype": "FP64", "shape": [-1]},
                {"name": "degraded", "datatype": "BOOL", "shape": [-1]}]

    # -- inference ------------------------------------------------------------------------------
    def _instances_from_v2(self, req: InferRequest) -> list[dict[str, Any]]:
        p = self.router.primary
        columns: dict[str, list[Any]] = {}
        for inp in req.inputs:
            if inp.name not in p.input_fields:
                raise InputError(f"inputs.{inp.name}", f"unknown input; expected {', '.join(p.input_fields)}")
            want = V2_ALLOWED[p.online.types.get(inp.name, "float")]
            if inp.datatype not in want:
                raise InputError(f"inputs.{inp.name}.datatype",
                                 f"{inp.datatype} not allowed; expected one of {', '.join(sorted(want))}")
            shape = list(inp.shape)
            if not shape or any((not isinstance(d, int)) or d < 0 for d in shape):
                raise InputError(f"inputs.{inp.name}.shape", f"invalid shape {shape}")
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise InputError(f"inputs.{inp.name}.shape", f"expected [N] or [N, 1], got {shape}")
            data = inp.data
            if hasattr(data, "tolist"):
                data = data.tolist()
            data = list(data) if data is not None else []
            if data and isinstance(data[0], list):
                data = [x for row in data for x in (row if isinstance(row, list) else [row])]
            if len(data) != shape[0]:
                raise InputError(f"inputs.{inp.name}.shape", f"shape {shape} does not match {len(data)} values")
            if inp.datatype == "BYTES":
                data = [x.decode() if isinstance(x, bytes) else x for x in data]
            columns[inp.name] = data
        missing = [f for f in p.input_fields if f not in columns]
        if missing:
            raise InputError(f"inputs.{missing[0]}", "missing input")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise InputError("inputs", f"all inputs must have the same length, got {sorted(lengths)}")
        n = lengths.pop()
        return [{k: columns[k][i] for k in columns} for i in range(n)]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        try:
            if isinstance(payload, InferRequest):
                result = self.router.predict(self._instances_from_v2(payload))
                n = len(result.scores)
                shape = [n, len(result.classes)] if result.classes is not None else [n]
                flat = [x for row in result.scores for x in row] if result.classes is not None else result.scores
                return InferResponse(
                    response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                    model_version=result.version,
                    infer_outputs=[InferOutput("score", shape, "FP64", flat),
                                   InferOutput("degraded", [n], "BOOL", result.degraded)],
                    parameters={"model_version": result.version, "degraded": any(result.degraded)})
            if not isinstance(payload, dict):
                raise InputError("body", "expected a JSON object with 'instances'")
            if "instances" not in payload:
                raise InputError("instances", "missing; expected {\"instances\": [{...}, ...]}")
            return self.router.predict(payload["instances"]).as_dict()
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
