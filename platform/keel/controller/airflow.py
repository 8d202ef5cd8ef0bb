"""Airflow's REST API v2: token auth, trigger a DAG run with a chosen run id, read its state."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


class AirflowError(Exception):
    """Airflow refused or could not be reached; the trigger stays queued.

    ``permanent`` marks a refusal that retrying cannot change (a 4xx such as 404 for a DAG Airflow does not
    have, or 400/422 for a conf it will not take), as opposed to an outage or a 5xx."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


RETRYABLE_4XX = (401, 403, 408, 425, 429)  # auth may be mid-rotation; the rest say "try later"


class Airflow:
    def __init__(self, url: str, username: str, password: str | Callable[[], str], timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.username, self.password = username, password
        self.timeout = timeout
        self._token: str | None = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token or self._login()}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and auth and self._token:
                self._token = None  # expired: log in again, once
                return self._call(method, path, body)
            raise AirflowError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}",
                               permanent=400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowError(f"Airflow at {self.url} is unreachable ({exc})") from None

    def _login(self) -> str:
        try:
            password = self.password() if callable(self.password) else self.password
        except Exception as exc:  # e.g. the local password file is not written yet
            raise AirflowError(str(exc)) from None
        body = self._call("POST", "/auth/token", {"username": self.username, "password": password}, auth=False)
        self._token = str(body["access_token"])
        return self._token

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> str:
        """Start ``dag_id`` as ``run_id`` (unpausing it first); an existing run with that id counts as
        started, so a retried submission never makes a second run."""
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        try:
            self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                       {"dag_run_id": run_id, "logical_date": None, "conf": conf})
        except AirflowError as exc:
            if "HTTP 409" not in str(exc):
                raise
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        body = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit={limit}&order_by=-run_after")
        return list(body.get("dag_runs", []))

    def result(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value (its XCom), e.g. the rollout's outcome."""
        body = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                                 f"return_value?deserialize=true")
        return body.get("value") if isinstance(body, dict) else None
