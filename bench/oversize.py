"""Scenario ``oversize``: what an oversized request costs a serving runtime (issue 17, item 4).

Two bodies, each sent whole to a freshly started keel deployment on each runtime:
- one instance padded to 50 MB (valid JSON: before the limit it was parsed and answered 200);
- 970,000 instances (~19 MB: parsed in full before the 1,000-row limit refused it).
Figures: the answer's status and how far the peak RSS (VmHWM) of the server's process tree grew. Goal:
413 from the declared length, and under 10 MB of growth (the body is never read into memory).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import Profile, Row, say

GOAL_MB = 10.0


def _bodies() -> dict[str, bytes]:
    from bench.online import KEY

    pad = json.dumps({"instances": [{KEY: 1, "note": "x" * 50_000_000}]}).encode()
    rows = json.dumps({"instances": [{KEY: i % 1000} for i in range(970_000)]}).encode()
    return {"one instance padded to 50 MB": pad, f"970,000 instances ({len(rows) / 1e6:.0f} MB)": rows}


def _tree(pid: int) -> list[int]:
    import psutil

    root = psutil.Process(pid)
    return [root.pid, *(p.pid for p in root.children(recursive=True))]


def _server_pid(w: dict[str, Any]) -> int:
    from bench.online import MODEL

    for path in w["settings"].home.rglob(f"serve-{MODEL}.json"):  # the supervisor's pid record
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "pid" in rec:
            return int(rec["pid"])
    raise RuntimeError(f"no pid record for the deployment of {MODEL}")


def _peak_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _post(url: str, body: bytes) -> int:
    """Send the whole body (a server that answers early and closes is fine) and return the status."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=120) as sock:
        sock.sendall(f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        try:
            view = memoryview(body)
            for i in range(0, len(body), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the body was all sent
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def run(profile: Profile, w: dict[str, Any]) -> list[Row]:
    from bench import online

    rows: list[Row] = []
    for case, body in _bodies().items():
        for runtime in ("kserve", "ray"):
            name = f"keel {'KServe' if runtime == 'kserve' else 'Ray Serve'} runtime"
            with online.keel_serving(w, runtime) as url:
                pids = _tree(_server_pid(w))
                before = _peak_mb(pids)
                status = _post(url, body)
                grew = _peak_mb(pids) - before
            say(f"oversize: {name}, {case}: {status}, peak RSS +{grew:.0f} MB")
            rows.append(Row("oversize", case, name, "peak RSS growth", grew, "MB", [grew], None, None,
                            f"413, < {GOAL_MB:.0f} MB", status == 413 and grew < GOAL_MB, f"answered {status}"))
    return rows
