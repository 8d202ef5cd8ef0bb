"""The peer predictor: KServe's xgbserver, on KServe's own ModelServer.

xgbserver is not published on PyPI (it ships only inside KServe's image), so this module is its model
class: load an XGBoost booster file, build a ``DMatrix`` from the V1 ``instances`` and call
``Booster.predict``, exactly the work xgbserver does per request. The server, protocol handling and
data plane are the ``kserve`` package's, bound to loopback (keel's ``loopback_server_class`` changes only that).
"""

from __future__ import annotations

import argparse
from typing import Any

import kserve
import numpy as np
import xgboost as xgb


class XGBoostModel(kserve.Model):
    def __init__(self, name: str, model_file: str, nthread: int = 1) -> None:
        super().__init__(name)
        self.model_file, self.nthread = model_file, nthread

    def load(self) -> bool:
        self._booster = xgb.Booster(params={"nthread": self.nthread}, model_file=self.model_file)
        self.ready = True
        return True

    def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers: Any = None) -> Any:
        dmatrix = xgb.DMatrix(np.asarray(payload["instances"], dtype="float64"), nthread=self.nthread)
        return {"predictions": self._booster.predict(dmatrix).tolist()}


def main() -> None:
    from keel.compat.kserve import loopback_server_class

    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--model-file", required=True)
    ap.add_argument("--port", type=int, required=True)
    args, _ = ap.parse_known_args()
    model = XGBoostModel(args.name, args.model_file)
    model.load()
    loopback_server_class()(host="127.0.0.1", http_port=args.port, enable_grpc=False, enable_docs_url=False,
                    workers=1).start([model])


if __name__ == "__main__":
    main()
