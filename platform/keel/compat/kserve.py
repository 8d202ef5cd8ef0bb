"""KServe internals keel relies on, in one place, checked against the installed version.

KServe's ModelServer hard-codes its REST server's bind address to 0.0.0.0; keel binds the host it is
given (127.0.0.1 locally, so nothing listens off loopback). That needs ModelServer's start-up sequence,
whose pieces are private.
"""

from __future__ import annotations

from typing import Any

from keel.compat import check_version

SUPPORTED = ("0.21.",)


def loopback_server_class() -> type:
    """A ``kserve.ModelServer`` whose REST server binds ``host``."""
    check_version("kserve", SUPPORTED)
    import kserve
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    class LoopbackModelServer(kserve.ModelServer):
        """KServe's ModelServer with a configurable bind address (upstream hard-codes 0.0.0.0)."""

        def __init__(self, host: str, before_start: Any = None, **kw: Any) -> None:
            super().__init__(**kw)
            self.host = host
            self.before_start = before_start

        def start(self, models: list[Any]) -> None:
            import asyncio

            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                                           self.http_port, grace_period=5, timeout_keep_alive=self.timeout_keep_alive)
            self._rest_server.config.host = self.host
            if self.before_start is not None:
                self.before_start()
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            asyncio.run(self._serve())

    return LoopbackModelServer
