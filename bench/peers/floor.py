"""The floor: the least a server can do for this request. A bare asyncio HTTP/1.1 server, one redis-py
pipeline of HMGETs in Feast's Redis layout, the doubles unpacked, ``inplace_predict`` in process.

No framework, no validation beyond what parsing needs, no metrics: what keel adds over this is its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct

import numpy as np
import redis
import xgboost as xgb
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

_D = struct.Struct("<d")
_Q = struct.Struct("<q")


class Floor:
    def __init__(self, model_file: str, redis_addr: str, project: str, view: str, features: list[str],
                 entity_key: str) -> None:
        host, port = redis_addr.split(":")
        self.r = redis.Redis(host=host, port=int(port))
        self.booster = xgb.Booster(params={"nthread": 1}, model_file=model_file)
        self.project, self.entity_key = project.encode(), entity_key
        self.fields = [_mmh3(f"{view}:{f}") for f in features]
        # Feast's key for one int64 join key is fixed bytes around the value: find them once
        k0, k1 = self._feast_key(0), self._feast_key(1)
        i = next(j for j in range(len(k0)) if k0[j:j + 8] == _Q.pack(0) and k1[j:j + 8] == _Q.pack(1))
        self._head, self._tail = k0[:i], k0[i + 8:]

    def _feast_key(self, v: int) -> bytes:
        return serialize_entity_key(EntityKey(join_keys=[self.entity_key], entity_values=[Value(int64_val=v)]),
                                    entity_key_serialization_version=3) + self.project

    def key(self, v: int) -> bytes:
        return self._head + _Q.pack(v) + self._tail

    def answer(self, body: bytes) -> bytes:
        ids = [i[self.entity_key] for i in json.loads(body)["instances"]]
        pipe = self.r.pipeline(transaction=False)
        for v in ids:
            pipe.hmget(self.key(v), self.fields)
        rows = pipe.execute()
        flat = [b for row in rows for b in row]
        if all(b is not None and len(b) == 9 for b in flat):  # every value a double: one vectorized unpack
            X = np.frombuffer(b"".join(flat), dtype=np.uint8).reshape(-1, 9)[:, 1:].copy().view("<f8")
            X = X.reshape(len(rows), len(self.fields)).astype("float32")
        else:
            X = np.array([[_D.unpack_from(b, 1)[0] if b and len(b) == 9 else np.nan for b in row]
                          for row in rows], dtype="float32")
        return json.dumps({"predictions": self.booster.inplace_predict(X).tolist()}).encode()


async def _handle(floor: Floor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            out = b"{}" if head.startswith(b"GET") else floor.answer(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(out), out))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(floor: Floor, port: int) -> None:
    srv = await asyncio.start_server(lambda r, w: _handle(floor, r, w), "127.0.0.1", port)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model-file", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--view", required=True)
    ap.add_argument("--features", required=True, help="comma-separated, in the model's order")
    ap.add_argument("--entity-key", required=True)
    a = ap.parse_args()
    floor = Floor(a.model_file, a.redis, a.project, a.view, a.features.split(","), a.entity_key)
    asyncio.run(_serve(floor, a.port))


if __name__ == "__main__":
    main()
