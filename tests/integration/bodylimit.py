"""Oversized request bodies against a real server: refused with 413 before the body is read."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

MAX = 8 * 2**20  # Settings.max_body_bytes' default


def _answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        got = sock.recv(65536)
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def assert_bodies_bounded(base_url: str, path: str) -> None:
    """A declared 50 MB body is answered 413 at once (the test sends only 1 KB of it, so an answer can
    only come from the header), and a chunked body is cut off with 413 once it passes the bound."""
    url = urlparse(base_url)
    head = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"{head}Content-Length: {50 * 2**20}\r\n\r\n".encode() + b"[" * 1024)
        status, body = _answer(sock)
    assert status == 413, body
    assert body["error"] == f"body: {50 * 2**20} bytes is too large; at most {MAX} bytes (KEEL_MAX_BODY_BYTES)"
    chunk = b" " * 2**20
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for _ in range(MAX // len(chunk) + 2):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest arrived
        status, body = _answer(sock)
    assert status == 413 and "too large" in body["error"], body
