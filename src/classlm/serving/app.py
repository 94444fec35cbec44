"""The FastAPI app factory: ``create_app(load, settings)``.

The model is loaded in the app's lifespan (at start-up, not at import), so importing this module is cheap and a
server that cannot load its model fails before it accepts a connection.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from classlm.metrics import softmax
from classlm.serving.batcher import MicroBatcher, QueueFull, ShuttingDown
from classlm.serving.metrics import ServiceMetrics
from classlm.serving.schemas import (
    REQUEST_FIELDS,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    error_body,
)
from classlm.serving.settings import ServeSettings

log = logging.getLogger("classlm.serving")
PATHS = ("/v1/classify", "/v1/model", "/health", "/metrics")


class ApiError(Exception):
    """An answer with a status code, an error type and a message (and optional headers)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


class ServedModel:
    """What the service needs of a classifier: its classes, calibrated probabilities, and a description.

    Takes an :class:`~classlm.LMClassifier` (the class mass is available for methods with class tokens) or
    anything with ``classes_`` and ``predict_proba`` (an :class:`~classlm.Ensemble`).
    """

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.classes = [str(c) for c in classifier.classes_]
        self.labels = np.asarray(classifier.classes_).tolist()  # JSON values of their own type: ints stay ints
        method = getattr(classifier, "method_", None)
        # LMClassifier's raw scores carry the class mass; anything else is asked for probabilities only.
        self._scores = classifier.predict_scores if method is not None else None
        self.class_mass_available = hasattr(method, "tokens")

    def score(self, texts: list[str], class_mass: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Per text: probabilities, class mass (if asked for and available), truncated (if the classifier says)."""
        if self._scores is None:
            return np.asarray(self.classifier.predict_proba(texts)), None, None
        scores = self._scores(texts, class_mass=class_mass and self.class_mass_available)
        return softmax(self.classifier.calibrator_.transform(scores.logits)), scores.class_mass, scores.truncated

    def describe(self) -> dict[str, Any]:
        clf = self.classifier
        info: dict[str, Any] = {"classes": self.classes, "kind": type(clf).__name__}
        label_set = getattr(clf, "label_set_", None)
        if label_set is not None:
            info["descriptions"] = dict(zip(self.classes, label_set.descriptions))
        method = getattr(clf, "method_", None)
        if method is not None:
            info["method"] = clf.method
            backbone = getattr(clf, "backbone_", None)
            info["base_model"] = backbone.identity() if backbone is not None else None
            info["adapter"] = backbone is not None and hasattr(backbone.model, "peft_config")
            info["calibration"] = {"temperature": clf.temperature_, **clf.calibration_info_}
        else:
            info["members"] = [getattr(m, "method", type(m).__name__) for m in getattr(clf, "_members_", [])]
            info["calibration"] = {"temperature": float(getattr(clf, "temperature_", 1.0))}
        info["class_mass_available"] = self.class_mass_available
        return info


def _protected(path: str) -> bool:
    """Paths that need the API key when one is set; /health stays open for load balancers, /docs for people."""
    return path.startswith("/v1/") or path == "/metrics"


def _path_label(path: str) -> str:
    # A label per known path only: arbitrary paths (scanners, typos) must not create unbounded metric series.
    return path if path in PATHS else "other"


def _error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


class _Guard:
    """Raw ASGI middleware: body-size and content-type limits before any parsing, and per-request metrics.

    The body is read here, bounded, and replayed to the app: a client that sends a huge body (with or without a
    Content-Length header) gets 413 after ``max_body_bytes``, not after the server buffered all of it.
    """

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: ServiceMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        path = _path_label(scope["path"])

        async def send_tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.settings.api_key is not None and _protected(scope["path"]) and not self._authorised(scope):
                # Before the body is read: an unauthenticated client learns nothing and costs nothing.
                denied = _error_response(
                    401,
                    "unauthorized",
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await denied(scope, receive, send_tracked)
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
        finally:
            self.metrics.requests.inc(path=path, status=str(status))
            if status >= 400:
                self.metrics.errors.inc(path=path)
            if path == "/v1/classify":
                self.metrics.latency.observe(time.perf_counter() - start)

    def _authorised(self, scope: Scope) -> bool:
        assert self.settings.api_key is not None
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"), "")
        scheme, _, token = header.partition(" ")
        expected = self.settings.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    def _too_big(self) -> JSONResponse:
        limit = self.settings.max_body_bytes
        return _error_response(
            413, "body_too_large", f"the request body is over the limit of {limit} bytes; send fewer or shorter texts"
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, Receive | None]:
        """``(refusal, receive)``: a 413/415 to send, or ``None`` and a ``receive`` that replays the body;
        ``(None, None)`` when the client disconnected before sending all of it."""
        limit = self.settings.max_body_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return _error_response(
                415,
                "unsupported_media_type",
                f"expected Content-Type: application/json, got {media or 'none'!r}",
            ), receive
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return self._too_big(), receive
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return self._too_big(), receive
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return 400, "invalid_json", f"the body is not valid JSON{': ' + str(detail) if detail else ''}"
    messages = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        kind = e.get("type")
        if kind == "extra_forbidden":
            messages.append(f"unknown field {where!r}; the fields are {', '.join(REQUEST_FIELDS)}")
        elif kind == "model_attributes_type" or (kind == "dict_type" and not loc):
            messages.append('the body must be a JSON object such as {"text": "..."} or {"texts": ["..."]}')
        else:
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            messages.append(f"{where}: {msg}" if where else msg)
    return 422, "invalid_request", "; ".join(messages)


def create_app(load: Callable[[], Any] | Any, settings: ServeSettings | None = None) -> FastAPI:
    """The classlm HTTP app.

    ``load`` is a classifier (fitted :class:`~classlm.LMClassifier` or :class:`~classlm.Ensemble`), or a
    callable returning one, which is called at start-up. Run it with uvicorn, or use ``classlm serve``.
    """
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        classifier = await run_in_threadpool(load) if callable(load) else load
        model = ServedModel(classifier)

        def on_batch(n_texts: int, n_requests: int) -> None:
            metrics.batch_texts.observe(n_texts)
            metrics.batch_requests.observe(n_requests)
            metrics.texts.inc(n_texts)

        batcher = MicroBatcher(
            model.score,
            max_batch_texts=settings.max_batch_texts,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue_texts=settings.max_queue_texts,
            batching=settings.batching,
            on_batch=on_batch,
        )
        state.update(model=model, batcher=batcher)
        log.info("classlm: serving %d classes (%s)", len(model.classes), ", ".join(model.classes[:8]))
        try:
            yield
        finally:
            # uvicorn stops accepting and waits for in-flight requests before this runs; close() answers anything
            # still queued before the worker stops.
            await run_in_threadpool(batcher.close, settings.shutdown_timeout_s)

    app = FastAPI(
        title="classlm",
        summary="Text classification with a calibrated probability for every class.",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.serving = state

    # The key is checked in _Guard; this dependency only shows the scheme (and an Authorize button) in /docs.
    security = [Depends(HTTPBearer(auto_error=False))] if settings.api_key is not None else []

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, kind, message = _validation_message(exc)
        return _error_response(status, kind, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers) if exc.headers else None
        return _error_response(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), headers)

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True, dependencies=security)
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        """Classify one text or several: the label and every class's calibrated probability for each."""
        texts = body.all_texts()
        _check_limits(texts, settings)
        model: ServedModel = state["model"]
        if body.class_mass and not model.class_mass_available:
            raise ApiError(
                422,
                "invalid_request",
                "class_mass is only available for methods with class tokens (label_tokens, "
                "letters, few_shot); this classifier has none",
            )
        try:
            future = state["batcher"].submit(texts, body.class_mass)
        except (QueueFull, ShuttingDown) as exc:
            reason = "queue_full" if isinstance(exc, QueueFull) else "shutting_down"
            metrics.rejected.inc(reason=reason)
            raise ApiError(503, reason, str(exc), {"Retry-After": str(settings.retry_after_s)}) from None
        try:
            proba, mass, truncated = await asyncio.wrap_future(future)
        except Exception as exc:
            # Every request of the micro-batch gets this, so it names no text and no detail of another client's
            # input; the batcher logged the traceback. Client errors were all caught before submit.
            raise ApiError(
                500, "internal_error", f"scoring failed ({type(exc).__name__}); the server log has the details"
            ) from None
        classes = model.classes
        results = []
        for i in range(len(texts)):
            row: dict[str, Any] = {
                "label": model.labels[int(np.argmax(proba[i]))],
                "probabilities": {c: float(p) for c, p in zip(classes, proba[i])},
            }
            if body.class_mass and mass is not None:
                row["class_mass"] = float(mass[i])
            if truncated is not None:
                row["truncated"] = bool(truncated[i])
            results.append(row)
        if truncated is not None:
            metrics.truncated.inc(int(np.count_nonzero(truncated)))
        return {"results": results}

    @app.get("/v1/model", dependencies=security)
    async def model_info() -> dict[str, Any]:
        """The classifier: classes, method, base model, calibration; and the service's limits."""
        info = state["model"].describe()
        info["limits"] = {
            "max_texts": settings.max_texts,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
            "batching": settings.batching,
            "max_batch_texts": settings.max_batch_texts,
            "max_wait_ms": settings.max_wait_ms,
        }
        # Round-trip through JSON so numpy scalars or tuples in the description never break the response.
        return json.loads(json.dumps(info, default=str))

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the model is loaded and the batcher runs; 503 while shutting down."""
        batcher = state.get("batcher")
        if batcher is None or not batcher.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "queue_texts": batcher.pending_texts})

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=security)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text format: requests, errors, texts, latency and batch-size histograms, queue depth."""
        batcher = state.get("batcher")
        metrics.queue.set(batcher.pending_texts if batcher is not None else 0)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(_Guard, settings=settings, metrics=metrics)
    return app


def _check_limits(texts: list[str], settings: ServeSettings) -> None:
    if not texts:
        raise ApiError(422, "invalid_request", "'texts' is empty; give at least one text")
    if len(texts) > settings.max_texts:
        raise ApiError(
            422,
            "too_many_texts",
            f"{len(texts)} texts in one request; the limit is {settings.max_texts}: split it into several requests",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(422, "empty_text", f"text {i} is empty or only whitespace; every text needs content")
        if len(text) > settings.max_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"text {i} has {len(text)} characters; the limit is {settings.max_chars}: shorten or split it",
            )
