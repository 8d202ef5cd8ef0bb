"""A request-body bound for every HTTP server keel runs (KServe's ModelServer, Ray Serve's ingress, Feast's
feature server), as plain ASGI middleware so it works the same under each framework.

Row limits apply after parsing, which is too late: a 50 MB body would already have been read and turned
into Python objects. This answers 413 from the Content-Length header before the body is read; a chunked
body (no Content-Length) is read up to the bound and refused as soon as it passes it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes}: expected a positive byte count")
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send: Send, status: int, error: str) -> None:
        body = json.dumps({"error": error, "field": "body"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _too_large(self, n: int | str) -> str:
        return f"body: {n} bytes is too large; at most {self.max_bytes} bytes (KEEL_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                declared = value.decode("latin-1").strip()
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(send, 400, f"Content-Length: {declared!r} is not a byte count")
                return
            if int(declared) > self.max_bytes:
                await self._refuse(send, 413, self._too_large(declared))
                return
            await self.app(scope, receive, send)  # the server frames the body by Content-Length
            return
        # no Content-Length (chunked, or no body): read up to the bound, then replay what was read
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, 413, self._too_large(f"more than {self.max_bytes}"))
                return
            chunks.append(message)
            more = message.get("more_body", False)

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)
