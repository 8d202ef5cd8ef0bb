"""Rendering rows for people (table) and programs (json, yaml)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")


def render(data: Any, fmt: str, columns: Sequence[str] | None = None) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    if fmt == "yaml":
        return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False).rstrip()
    rows = data if isinstance(data, list) else [data]
    return table(rows, columns)


def table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    return str(v)


def progress_wanted() -> bool:
    """Progress on stderr when a person is watching (a TTY); ``KEEL_PROGRESS=1`` forces it (an Airflow
    task log, CI), ``KEEL_PROGRESS=0`` silences it. Scripts and pipes otherwise get only the result."""
    import os
    import sys

    forced = os.environ.get("KEEL_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "always"):
        return True
    if forced in ("0", "false", "no", "never"):
        return False
    return sys.stderr.isatty()


def progress_printer() -> Any:
    """Progress lines for long work (training sets, training, uploads, drift) with elapsed time, on
    stderr when ``progress_wanted``."""
    import sys
    import time

    if not progress_wanted():
        return lambda msg: None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def row_bars() -> Any:
    """A factory of row-count progress bars, ``(label, total) -> bar``, on stderr when ``progress_wanted``;
    None otherwise (no bar at all, not a bar nobody reads)."""
    import sys

    if not progress_wanted():
        return None
    from tqdm import tqdm

    return lambda label, total: tqdm(total=total, desc=label, unit="rows", unit_scale=True, file=sys.stderr,
                                     dynamic_ncols=True)
