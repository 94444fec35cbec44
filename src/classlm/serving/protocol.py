"""uvicorn's h11 protocol with a header deadline, and the uvicorn configuration ``classlm serve`` runs with.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``) and the number of connections
(``limit_concurrency``), but nothing bounds a connection that opens and never sends a request, or sends its
headers a byte at a time: no ASGI layer can see those, since there is no request yet. :class:`DeadlineH11Protocol`
closes a connection whose next request's headers are not complete within ``header_timeout_s`` of the connection
opening or of the previous answer. The body's deadline is the ASGI guard's (:mod:`classlm.serving.guard`), where a
408 can still be answered.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from classlm.serving.settings import ServeSettings


class DeadlineH11Protocol(H11Protocol):
    """:class:`uvicorn.protocols.http.h11_impl.H11Protocol` plus the header deadline (``header_timeout``)."""

    header_timeout = 10.0  # set per server by :func:`uvicorn_config` (uvicorn builds one protocol per connection)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: Any = None  # the request cycle that was current when the timer was armed

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._timed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_passed)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            # No request has started, so there is nobody to answer: the connection is dropped.
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A new request cycle means its headers were complete (h11 emits the Request event only then).
        if self._header_timer is not None and self.cycle is not self._timed_cycle:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this kept-alive connection gets its own header deadline; uvicorn's keep-alive timer
        # stops at its first byte, this one only at its last header.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def uvicorn_config(app: Any, settings: ServeSettings, *, log_level: str = "info") -> Any:
    """The ``uvicorn.Config`` for ``app`` under ``settings``: deadlines, keep-alive and the connection limit."""
    import uvicorn

    protocol = type("ServeH11Protocol", (DeadlineH11Protocol,), {"header_timeout": settings.header_timeout_s})
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works (call_later)
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]  # a float works
    )
