"""A small read-only client of MLflow's public REST API, for checks that must answer in seconds.

Importing the ``mlflow`` package takes 5-7 s on a 2-core machine. Deciding whether a version can be
served at all (does it exist, what did keel record, what does its MLmodel file say, which packages
does it need) needs none of that: three documented REST calls and two small artifact files. Anything
this client cannot read (artifacts outside MLflow's own artifact proxy) returns None and the caller uses
the full MLflow client instead.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from keel.errors import KeelError, NotFoundError, ServiceUnavailableError


@dataclass(frozen=True)
class RestVersion:
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: dict[str, str]


class RestRegistry:
    def __init__(self, tracking_uri: str, timeout: float = 5.0) -> None:
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            return {"Authorization": f"Bearer {token}"}
        if user and password:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        return {}

    def _get(self, path: str, params: dict[str, str] | None = None, raw: bool = False) -> Any:
        url = f"{self.base}/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        req = urllib.request.Request(url, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # the configured tracking URI
                body = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise KeelError("MLflow refused the request (401 not authenticated): set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
            if exc.code == 404:
                return None
            detail = exc.read()[:300].decode(errors="replace")
            if b"RESOURCE_DOES_NOT_EXIST" in detail.encode():
                return None
            raise KeelError(f"MLflow answered {exc.code} for {path}: {detail}") from None
        except (urllib.error.URLError, OSError):
            raise ServiceUnavailableError("MLflow tracking server", self.base) from None
        return body if raw else json.loads(body or b"{}")

    def model_names(self) -> list[str]:
        out = self._get("api/2.0/mlflow/registered-models/search", {"max_results": "1000"}) or {}
        return sorted(m["name"] for m in out.get("registered_models", []))

    def version(self, name: str, version: str | None = None, alias: str | None = None) -> RestVersion:
        rm = self._get("api/2.0/mlflow/registered-models/get", {"name": name})
        if rm is None:
            raise NotFoundError("model", name, self.model_names())
        aliases = {a["alias"]: str(a["version"]) for a in rm["registered_model"].get("aliases", [])}
        if version is None:
            if alias not in aliases:
                raise NotFoundError("alias", str(alias), aliases, of=f"model '{name}'")
            version = aliases[alias]
        mv = self._get("api/2.0/mlflow/model-versions/get", {"name": name, "version": str(version)})
        if mv is None:
            raise NotFoundError("version", str(version), [], of=f"model '{name}'")
        mv = mv["model_version"]
        tags = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}
        return RestVersion(name, str(mv["version"]), mv.get("run_id") or None, mv.get("source", ""), tags, aliases)

    def model_file(self, v: RestVersion, filename: str) -> str | None:
        """A file of the version's model directory (MLmodel, requirements.txt) as text; None when the
        artifacts are not behind MLflow's artifact proxy or the file is absent."""
        root = self._artifact_root(v)
        if root is None:
            return None
        body = self._get(f"api/2.0/mlflow-artifacts/artifacts/{root}/{filename}", raw=True)
        return None if body is None else body.decode()

    def _artifact_root(self, v: RestVersion) -> str | None:
        uri = v.source
        if uri.startswith("models:/m-"):
            got = self._get(f"api/2.0/mlflow/logged-models/{uri.removeprefix('models:/')}")
            uri = ((got or {}).get("model") or {}).get("info", {}).get("artifact_uri", "")
        if not uri.startswith("mlflow-artifacts:"):
            return None
        path = urllib.parse.urlparse(uri).path
        return path.strip("/")
