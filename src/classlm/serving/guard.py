"""The raw ASGI layer in front of the app: framing, auth, body limits and the body-read deadline, metrics, and a
quiet answer when the server cancels a request at shutdown.

It runs before any parsing, so a hostile or slow client costs a bounded amount: a body is read at most
``max_body_bytes`` far and for at most ``body_timeout_s``; an unauthenticated one costs nothing past its headers.
(Deadlines on the headers themselves and on idle connections live in :mod:`classlm.serving.protocol`, which sees
the connection before there is a request.)
"""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from classlm.serving.metrics import ServiceMetrics
from classlm.serving.schemas import error_body
from classlm.serving.settings import ServeSettings

PATHS = ("/v1/classify", "/v1/model", "/health", "/metrics")
# Where the guard leaves the request's arrival time for the handler's deadline (a key no framework uses).
START_KEY = "classlm.start"


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


def _protected(path: str) -> bool:
    """Paths that need the API key when one is set; /health stays open for load balancers, /docs for people."""
    return path.startswith("/v1/") or path == "/metrics"


def _path_label(path: str) -> str:
    # A label per known path only: arbitrary paths (scanners, typos) must not create unbounded metric series.
    return path if path in PATHS else "other"


# The connection is closed after these answers: the rest of the request's bytes (a body not read, or framed two
# ways) must not be read as the next request on a kept-alive connection.
_CLOSE = {"Connection": "close"}


class Guard:
    """Raw ASGI middleware: framing, body-size, content-type and body-time limits before any parsing, and
    per-request metrics.

    The body is read here, bounded in size and time, and replayed to the app: a client that sends a huge body (with
    or without a Content-Length header) gets 413 after ``max_body_bytes``, one that sends it too slowly 408 after
    ``body_timeout_s``, not after the server held its connection for as long as the client liked.
    """

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: ServiceMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope[START_KEY] = time.monotonic()
        status = 500
        started = False
        path = _path_label(scope["path"])

        async def send_tracked(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            refusal = self._framing_refusal(scope)
            if refusal is None and self.settings.api_key is not None and _protected(scope["path"]):
                refusal = None if self._authorised(scope) else self._unauthorised()
            if refusal is not None:
                await refusal(scope, receive, send_tracked)
                return
            if scope["method"] == "POST" and scope["path"] == "/v1/classify":
                refusal, replay = await self._read_body(scope, receive)
                if replay is None:
                    # The client left before its body arrived: nobody to answer. Counted as nginx's 499, not as
                    # an invalid request.
                    status = 499
                    return
                if refusal is not None:
                    await refusal(scope, replay, send_tracked)
                    return
                receive = replay
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when the graceful-shutdown timeout passes. Each would
            # otherwise end in an 'Exception in ASGI application' traceback and a bare 500; the client gets a clear
            # 503 instead and the log one line from uvicorn. The task ends here, as its canceller wants.
            if not started:
                gone = error_response(503, "shutting_down", "the server is shutting down; retry shortly", _CLOSE)
                await gone(scope, receive, send_tracked)
        finally:
            self.metrics.requests.inc(path=path, status=str(status))
            if status >= 400:
                self.metrics.errors.inc(path=path)
            if path == "/v1/classify":
                self.metrics.latency.observe(time.perf_counter() - start)

    def _framing_refusal(self, scope: Scope) -> JSONResponse | None:
        names = {k.lower() for k, _ in scope["headers"]}
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 6.3: a server may let Transfer-Encoding win (h11 does), but a proxy in front may have used
            # Content-Length: the two then disagree on where this request ends, which is request smuggling.
            return error_response(
                400,
                "ambiguous_framing",
                "the request has both Content-Length and Transfer-Encoding headers; send exactly one of them",
                _CLOSE,
            )
        return None

    def _authorised(self, scope: Scope) -> bool:
        assert self.settings.api_key is not None
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"), "")
        scheme, _, token = header.partition(" ")
        expected = self.settings.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    @staticmethod
    def _unauthorised() -> JSONResponse:
        # Before the body is read: an unauthenticated client learns nothing and costs nothing.
        return error_response(
            401,
            "unauthorized",
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
        )

    def _too_big(self) -> JSONResponse:
        limit = self.settings.max_body_bytes
        return error_response(
            413,
            "body_too_large",
            f"the request body is over the limit of {limit} bytes; send fewer or shorter texts",
            _CLOSE,
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, Receive | None]:
        """``(refusal, receive)``: a 408/413/415 to send, or ``None`` and a ``receive`` that replays the body;
        ``(None, None)`` when the client disconnected before sending all of it."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return error_response(
                415,
                "unsupported_media_type",
                f"expected Content-Type: application/json, got {media or 'none'!r}",
                _CLOSE,
            ), receive
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            return self._too_big(), receive
        timeout = self.settings.body_timeout_s
        try:
            # One deadline for the whole body, not per receive(): a client that drips a byte at a time would
            # renew a per-read timeout forever.
            body = await asyncio.wait_for(self._collect(receive), timeout)
        except asyncio.TimeoutError:
            return error_response(
                408,
                "body_timeout",
                f"the request body did not arrive within {timeout:g} s; send the whole body at once",
                _CLOSE,
            ), receive
        if body is None:
            return None, None
        if isinstance(body, JSONResponse):
            return body, receive
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay

    async def _collect(self, receive: Receive) -> bytes | JSONResponse | None:
        """The body, a 413 once it passes the limit, or ``None`` if the client disconnected first."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                return self._too_big()
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)
