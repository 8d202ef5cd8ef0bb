"""V1 and V2 (Open Inference Protocol) request and response shapes, apart from any web framework.

Both runtimes (KServe's ModelServer, Ray Serve) are thin adapters over these functions and the predictor
core, so a body is accepted, refused (with the field named) or answered the same way on either.
"""

from __future__ import annotations

from typing import Any

from keel.serving.core import InputError, Result

V2_INTS = {"INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64"}
V2_FLOATS = {"FP64", "FP32", "FP16"}
V2_OF_KIND = {"int": "INT64", "float": "FP64", "str": "BYTES", "bool": "BOOL", "object": "BYTES"}
V2_ALLOWED = {"int": V2_INTS, "float": V2_INTS | V2_FLOATS, "str": {"BYTES"}, "bool": {"BOOL"},
              "object": {"BYTES"}}


def v1_instances(body: Any) -> Any:
    """The ``instances`` of a V1 body (validated row by row by the predictor)."""
    if not isinstance(body, dict):
        raise InputError("body", "expected a JSON object with 'instances'")
    if "instances" not in body:
        raise InputError("instances", "missing; expected {\"instances\": [{...}, ...]}")
    return body["instances"]


def v2_instances(inputs: list[tuple[str, str, list[Any], Any]], predictor: Any) -> list[dict[str, Any]]:
    """Rows from V2 inputs, each ``(name, datatype, shape, data)``: one input per field the predictor
    takes, typed as it declares the field, of shape [N] or [N, 1]."""
    fields = predictor.input_fields
    kinds = predictor.online.types
    columns: dict[str, list[Any]] = {}
    for name, datatype, shape, data in inputs:
        if name not in fields:
            raise InputError(f"inputs.{name}", f"unknown input; expected {', '.join(fields)}")
        want = V2_ALLOWED[kinds.get(name, "float")]
        if datatype not in want:
            raise InputError(f"inputs.{name}.datatype",
                             f"{datatype} not allowed; expected one of {', '.join(sorted(want))}")
        shape = list(shape or [])
        if not shape or any((not isinstance(d, int)) or d < 0 for d in shape):
            raise InputError(f"inputs.{name}.shape", f"invalid shape {shape}")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InputError(f"inputs.{name}.shape", f"expected [N] or [N, 1], got {shape}")
        if hasattr(data, "tolist"):
            data = data.tolist()
        data = list(data) if data is not None else []
        if data and isinstance(data[0], list):
            data = [x for row in data for x in (row if isinstance(row, list) else [row])]
        if len(data) != shape[0]:
            raise InputError(f"inputs.{name}.shape", f"shape {shape} does not match {len(data)} values")
        if datatype == "BYTES":
            data = [x.decode() if isinstance(x, bytes) else x for x in data]
        columns[name] = data
    missing = [f for f in fields if f not in columns]
    if missing:
        raise InputError(f"inputs.{missing[0]}", "missing input")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise InputError("inputs", f"all inputs must have the same length, got {sorted(lengths)}")
    n = lengths.pop()
    return [{k: columns[k][i] for k in columns} for i in range(n)]


def v2_json_inputs(body: Any) -> list[tuple[str, str, list[Any], Any]]:
    """The inputs of a V2 JSON body (what KServe's DataPlane parses for its own runtime)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InputError("inputs", "missing; expected {\"inputs\": [{\"name\", \"datatype\", \"shape\", \"data\"}]}")
    out = []
    for i, inp in enumerate(body["inputs"]):
        if not isinstance(inp, dict) or not {"name", "datatype", "shape", "data"} <= set(inp):
            raise InputError(f"inputs[{i}]", "expected an object with name, datatype, shape and data")
        out.append((str(inp["name"]), str(inp["datatype"]), inp["shape"], inp["data"]))
    return out


def v2_outputs(result: Result) -> list[tuple[str, list[int], str, list[Any]]]:
    """``score`` ([N], or [N, classes] for multiclass) and ``degraded`` ([N])."""
    n = len(result.scores)
    if result.classes is not None:
        flat = [x for row in result.scores for x in row]
        score = ("score", [n, len(result.classes)], "FP64", flat)
    else:
        score = ("score", [n], "FP64", list(result.scores))
    return [score, ("degraded", [n], "BOOL", list(result.degraded))]


def v2_metadata(name: str, predictor: Any) -> dict[str, Any]:
    kinds = predictor.online.types
    return {"name": name, "versions": [predictor.version], "platform": "keel",
            "inputs": [{"name": k, "datatype": V2_OF_KIND[kinds.get(k, "float")], "shape": [-1]}
                       for k in predictor.input_fields],
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]},
                        {"name": "degraded", "datatype": "BOOL", "shape": [-1]}]}
