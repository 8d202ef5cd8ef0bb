"""keel.serving.limits.BodyLimit as plain ASGI: what reaches the app and what is refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from keel.serving.limits import BodyLimit


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _run(headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int = 10) -> tuple[int, bytes, int]:
    sent: list[dict[str, Any]] = []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(BodyLimit(_echo, limit)({"type": "http", "headers": headers}, receive, send))
    return sent[0]["status"], sent[1]["body"], read


def test_a_declared_body_over_the_bound_is_refused_unread() -> None:
    status, body, read = _run([(b"content-length", b"11")], [b"x" * 11])
    assert (status, read) == (413, 0)
    assert json.loads(body)["error"] == "body: 11 bytes is too large; at most 10 bytes (KEEL_MAX_BODY_BYTES)"


def test_bodies_within_the_bound_reach_the_app_whole() -> None:
    assert _run([(b"content-length", b"10")], [b"x" * 10])[:2] == (200, b"10")
    assert _run([], [b"abc", b"defg"])[:2] == (200, b"7")  # chunked, replayed after counting


def test_a_chunked_body_is_cut_off_once_it_passes_the_bound() -> None:
    status, body, read = _run([], [b"x" * 6, b"x" * 6, b"x" * 6])
    assert status == 413 and read == 2 and "too large" in json.loads(body)["error"]


def test_a_malformed_content_length_is_a_400() -> None:
    status, body, _ = _run([(b"Content-Length", b"-1")], [b""])
    assert status == 400 and json.loads(body)["error"] == "Content-Length: '-1' is not a byte count"
