"""The peer chain's first hop: a KServe transformer that looks features up in Feast's Python feature
server and forwards the rows to the predictor, as in KServe's Feast transformer example.

Per request: POST ``/get-online-features`` to Feast's server, reshape its column-major answer into
V1 ``instances`` (in the feature service's order), then KServe's own client calls the predictor.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import kserve
from kserve.predictor_config import PredictorConfig


class FeastTransformer(kserve.Model):
    def __init__(self, name: str, feast_url: str, entity_key: str, service: str, features: list[str]) -> None:
        super().__init__(name)
        self.feast_url, self.entity_key, self.service = feast_url, entity_key, service
        self.features = features  # the model's input order
        self._client = httpx.AsyncClient(timeout=30)
        self.ready = True

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        ids = [inst[self.entity_key] for inst in payload["instances"]]
        r = await self._client.post(f"{self.feast_url}/get-online-features",
                                    json={"feature_service": self.service, "entities": {self.entity_key: ids}})
        r.raise_for_status()
        body = r.json()
        by_name = {name.split("__")[-1]: res["values"]
                   for name, res in zip(body["metadata"]["feature_names"], body["results"], strict=True)}
        cols = [by_name[f] for f in self.features]
        rows = [[float("nan") if v is None else v for v in row] for row in zip(*cols, strict=True)]
        return {"instances": rows}


def main() -> None:
    from keel.compat.kserve import loopback_server_class

    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True,
                    help="host:port of the predictor (not --predictor: KServe's own parser reads argv too)")
    ap.add_argument("--feast", required=True, help="URL of Feast's feature server")
    ap.add_argument("--entity-key", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--features", required=True, help="comma-separated, in the model's input order")
    args, _ = ap.parse_known_args()
    model = FeastTransformer(args.name, args.feast, args.entity_key, args.service, args.features.split(","))
    loopback_server_class()(host="127.0.0.1", http_port=args.port, enable_grpc=False, enable_docs_url=False, workers=1,
                    predictor_config=PredictorConfig(predictor_host=args.upstream)).start([model])


if __name__ == "__main__":
    main()
