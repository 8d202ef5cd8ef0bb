"""The sending side of ``keel feedback``: outcomes from a file or a list, to the controller.

Batches go in chunks of at most ``CHUNK`` rows (the endpoint's bound is 10,000), each stored whole or
refused whole; resending everything after a failure is safe, since the same outcome twice counts once.
A refusal names the row by its index in what the caller sent, not in the chunk.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from keel.config import Settings
from keel.errors import KeelError, ServiceUnavailableError

CHUNK = 2_000


def load_rows(path: str | Path, label_column: str | None = None) -> list[dict[str, Any]]:
    """Outcome rows from a CSV, parquet, JSON (a list) or JSON Lines file; ``label_column`` is renamed
    to ``label``. Times become ISO 8601 strings; missing values are left out of their row."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise KeelError(f"{path}: no such file (expected a .csv, .parquet, .json or .jsonl file of outcomes)")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(p)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        elif suffix == ".jsonl":
            df = pd.read_json(p, lines=True, dtype=False)
        elif suffix == ".json":
            raw = json.loads(p.read_text())
            if not isinstance(raw, list):
                raise KeelError(f"{path}: expected a JSON list of outcome objects")
            df = pd.DataFrame.from_records(raw)
        else:
            raise KeelError(f"{path}: unknown format '{suffix or '(none)'}'; expected .csv, .parquet, .json or .jsonl")
    except (ValueError, OSError) as exc:
        raise KeelError(f"{path}: cannot be read as {suffix.lstrip('.')} ({exc})") from None
    if label_column and label_column != "label":
        if label_column not in df:
            raise KeelError(f"{path}: no column '{label_column}' (--label-column); columns: {', '.join(df.columns)}")
        df = df.rename(columns={label_column: "label"})
    return [{k: _plain(v) for k, v in rec.items() if not _missing(v)} for rec in df.to_dict("records")]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "NaT"


def _plain(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v.item() if hasattr(v, "item") else v


def _post(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{settings.controller_url}/v1/feedback", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {settings.token()}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read() or b"{}")
        except json.JSONDecodeError:
            err = {}
        raise _Refused(exc.code, err.get("error") or f"controller said HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError):
        raise ServiceUnavailableError("keel controller", settings.controller_url) from None


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def send(settings: Settings, model: str, outcomes: list[dict[str, Any]], chunk: int = CHUNK) -> dict[str, Any]:
    """Send outcomes for ``model``; returns the summed counts (rows, accepted, duplicates, corrected)."""
    if not outcomes:
        raise KeelError("no outcomes to send (an empty list or file)")
    total = {"model": model, "rows": 0, "accepted": 0, "duplicates": 0, "corrected": 0}
    for start in range(0, len(outcomes), chunk):
        try:
            got = _post(settings, {"model": model, "outcomes": outcomes[start:start + chunk]})
        except _Refused as exc:
            text = re.sub(r"outcomes\[(\d+)\]", lambda m, at=start: f"outcomes[{int(m.group(1)) + at}]",
                          exc.message)
            kept = f"; the {start} rows before were stored (resending them is safe)" if start else ""
            raise KeelError(f"feedback for '{model}' refused (HTTP {exc.code}): {text}{kept}") from None
        for k in ("rows", "accepted", "duplicates", "corrected"):
            total[k] += int(got.get(k, 0))
    return total
