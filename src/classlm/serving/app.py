"""The FastAPI app factory: ``create_app(load, settings)``.

The model is loaded in the app's lifespan (at start-up, not at import), so importing this module is cheap and a
server that cannot load its model fails before it accepts a connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from classlm.errors import ConfigError, DataError
from classlm.fields import Record
from classlm.serving.batcher import MicroBatcher, QueueFull, ShuttingDown
from classlm.serving.docs import docs_page
from classlm.serving.guard import START_KEY, Guard, error_response
from classlm.serving.metrics import ServiceMetrics
from classlm.serving.schemas import (
    REQUEST_FIELDS,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
)
from classlm.serving.served import ServedModel
from classlm.serving.settings import ServeSettings

# The web playground served at /: one static page (its own JS calls /v1/model and /v1/classify).
PLAYGROUND = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")

log = logging.getLogger("classlm.serving")
# Characters that show nothing: a text made only of these (and whitespace) is empty to a reader, and to the model.
_INVISIBLE = frozenset({"Cf", "Cc"})  # format (zero-width space/joiners, BOM, bidi marks, soft hyphen), control


class ApiError(Exception):
    """An answer with a status code, an error type and a message (and optional headers)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


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


def create_app(
    load: Callable[[], Any] | Any, settings: ServeSettings | None = None, *, evaluation: dict[str, Any] | None = None
) -> FastAPI:
    """The classlm HTTP app.

    ``load`` is a classifier (fitted :class:`~classlm.LMClassifier` or :class:`~classlm.Ensemble`), or a
    callable returning one, which is called at start-up. ``evaluation``: the classifier's stored held-out metrics
    (a run folder's eval.json), shown by ``GET /v1/model`` and the playground at ``/``. Run it with uvicorn, or use
    ``classlm serve``.
    """
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    state: dict[str, Any] = {"evaluation": evaluation}
    app = FastAPI(
        title="classlm",
        summary="Text classification with a calibrated probability for every class.",
        lifespan=_lifespan(load, settings, metrics, state),
        responses={status: {"model": ErrorResponse} for status in (400, 401, 408, 413, 415, 422, 503, 504)},
        docs_url=None,  # served below, with a summary that works offline
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.serving = state
    # The key is checked in the Guard; this dependency only shows the scheme (and an Authorize button) in /docs.
    security = [Depends(HTTPBearer(auto_error=False))] if settings.api_key is not None else []
    _add_error_handlers(app)

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True, dependencies=security)
    async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        """Classify one text or several: the label and every class's calibrated probability for each."""
        model: ServedModel = state["model"]
        _check_count(body.all_texts(), settings)
        try:
            texts = model.read(body.all_texts())
        except DataError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        _check_limits(texts, settings)
        if body.class_mass and not model.class_mass_available:
            raise ApiError(
                422,
                "invalid_request",
                "class_mass is only available for methods with class tokens (their logits are LM-head rows); "
                "this classifier has none",
            )
        if body.out_of_scope and not model.out_of_scope_names:
            raise ApiError(
                422, "invalid_request", "out_of_scope needs a single-label classlm classifier; this one is not"
            )
        try:  # checked before the request takes a place in the queue
            target = model.target_priors(body.priors)
            below = settings.abstain_below if body.abstain_below is None else body.abstain_below
            abstain = None if below is None else (below, model.abstain_label(settings.abstain_label))
        except (ConfigError, DataError) as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        try:
            future = state["batcher"].submit(texts, body.class_mass or body.out_of_scope)
        except (QueueFull, ShuttingDown) as exc:
            reason = "queue_full" if isinstance(exc, QueueFull) else "shutting_down"
            metrics.rejected.inc(reason=reason)
            raise ApiError(503, reason, str(exc), {"Retry-After": str(settings.retry_after_s)}) from None
        proba, mass, truncated, oos = await _answer(future, request, settings)
        if truncated is not None:
            metrics.truncated.inc(int(np.count_nonzero(truncated)))
        method = target if isinstance(target, str) else None  # estimated from these texts: say how
        proba, target = model.shift(proba, target)
        results = _rows(model, proba, mass if body.class_mass else None, truncated, abstain)
        if body.out_of_scope and oos is not None:
            for row, values in zip(results, oos, strict=True):
                row["out_of_scope"] = dict(zip(model.out_of_scope_names, map(float, values), strict=True))
        if target is None:
            return {"results": results}
        answer = {"results": results, "priors": dict(zip(model.classes, map(float, target), strict=True))}
        if method is not None:
            answer["priors_method"] = method
        return answer

    _add_info_routes(app, state, settings, metrics, security)
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    return app


def _lifespan(load: Any, settings: ServeSettings, metrics: ServiceMetrics, state: dict[str, Any]) -> Any:
    """Load the model and start the micro-batcher at start-up; at shutdown, answer what is queued, then stop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        classifier = await run_in_threadpool(load) if callable(load) else load
        model = ServedModel(classifier)
        if model.multi_label and settings.abstain_below is not None:
            raise ConfigError(
                "--abstain-below is for single-label classifiers: a multi-label one answers the classes at or above "
                "their cuts, maybe none; start the service without it"
            )

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

    return lifespan


def _rows(model: ServedModel, proba: Any, mass: Any, truncated: Any, abstain: Any = None) -> list[dict[str, Any]]:
    """One answer per text, in request order: the label and every class's probability (and what was asked);
    ``abstain``: ``(threshold, label)`` for texts whose top probability is below the threshold."""
    results = []
    key = "labels" if model.multi_label else "label"
    for i, answer in enumerate(model.answers(proba)):
        row: dict[str, Any] = {key: answer, "probabilities": {c: float(p) for c, p in zip(model.classes, proba[i])}}
        if abstain is not None:
            row["abstained"] = bool(np.max(proba[i]) < abstain[0])
            if row["abstained"]:
                row["label"] = abstain[1]
        if mass is not None:
            row["class_mass"] = float(mass[i])
        if truncated is not None:
            row["truncated"] = bool(truncated[i])
        results.append(row)
    return results


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": {"type", "message"}}``, saying what to fix."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, kind, message = _validation_message(exc)
        return error_response(status, kind, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        parse_error = _parse_error(exc)
        if parse_error is not None:
            return error_response(400, "invalid_json", parse_error)
        kinds = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), headers)


def _add_info_routes(
    app: FastAPI, state: dict[str, Any], settings: ServeSettings, metrics: ServiceMetrics, security: list[Any]
) -> None:
    """/docs, /v1/model, /health and /metrics."""

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        # Public like /health: the page holds no data; its calls to /v1/* carry the key the user types.
        return HTMLResponse(PLAYGROUND)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi(), app.openapi_url or "/openapi.json"))

    @app.get("/v1/model", dependencies=security)
    async def model_info() -> dict[str, Any]:
        """The classifier: classes, method, base model, calibration; and the service's limits."""
        info = state["model"].describe()
        info["evaluation"] = state["evaluation"]
        info["limits"] = {
            "max_texts": settings.max_texts,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
            "batching": settings.batching,
            "max_batch_texts": settings.max_batch_texts,
            "max_wait_ms": settings.max_wait_ms,
            "abstain_below": settings.abstain_below,
            "abstain_label": settings.abstain_label,
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


def _parse_error(exc: StarletteHTTPException) -> str | None:
    """What FastAPI's generic ``400 "There was an error parsing the body"`` hides, said so that it can be fixed.

    FastAPI turns a JSON syntax error into a validation error, but any other failure of ``json.loads`` into that
    400, with the cause chained: bytes that are not UTF-8, and nesting past Python's recursion limit."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"the body is not valid UTF-8: byte {cause.object[cause.start]:#04x} at offset {cause.start} "
            f"({cause.reason}); send JSON encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return 'the body nests arrays or objects too deeply to parse; a request is {"texts": ["..."]}, two levels deep'
    return None


async def _until_disconnect(receive: Receive) -> None:
    # The body was read (and replayed) already, so the next message is the disconnect: uvicorn sends it when the
    # client closes its connection, and never sends a second body.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(future: Any, request: Request, settings: ServeSettings) -> tuple[Any, ...]:
    """The scored columns, or an ApiError: 504 past the request's deadline, 499 when the client left first.

    Giving up cancels the batcher's future, which drops the request's texts not yet scored: nobody is left to
    read their answer."""
    start = request.scope.get(START_KEY, time.monotonic())
    left = start + settings.request_timeout_s - time.monotonic()
    scored = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        await asyncio.wait({scored, gone}, timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not scored.done():
            scored.cancel()  # also on our own cancellation (shutdown): the batcher drops the texts
    if not scored.done() or scored.cancelled():
        if gone.done() and not gone.cancelled():
            raise ApiError(499, "client_closed", "the client closed the connection before the answer")
        timeout = settings.request_timeout_s
        raise ApiError(
            504,
            "request_timeout",
            f"the request was not answered within the server's deadline of {timeout:g} s (--request-timeout); "
            "retry later, or send fewer or shorter texts",
        )
    exc = scored.exception()
    if exc is not None:
        # Only this request's own texts failed (the batcher re-scores a failed call request by request). The
        # message names the error's type only; the server log has the traceback.
        raise ApiError(500, "internal_error", f"scoring failed ({type(exc).__name__}); the server log has the details")
    return scored.result()


def _field_values(texts: list[str]) -> list[tuple[str, str]]:
    """What the limits apply to, named: each text, or each field of an input of several fields (an empty field is
    refused even when the others have content)."""
    return [
        (f"input {i} field {f!r}", v) if isinstance(t, Record) else (f"text {i}", t)
        for i, t in enumerate(texts)
        for f, v in (zip(t.fields, t.values) if isinstance(t, Record) else [("text", t)])
    ]


def _check_count(texts: list[Any], settings: ServeSettings) -> None:
    """Before anything is read: at least one text, at most ``max_texts``."""
    if not texts:
        raise ApiError(422, "invalid_request", "'texts' is empty; give at least one text")
    if len(texts) > settings.max_texts:
        raise ApiError(
            422,
            "too_many_texts",
            f"{len(texts)} texts in one request; the limit is {settings.max_texts}: split it into several requests",
        )


def _check_limits(texts: list[str], settings: ServeSettings) -> None:
    for where, text in _field_values(texts):
        visible = text.strip()
        # Stops at the first visible character, which is the first one in almost every text.
        if not any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE for c in visible):
            raise ApiError(
                422,
                "empty_text",
                f"{where} is empty or only whitespace or invisible characters (zero-width, control); every text "
                "needs content",
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer takes: refused here, per
                # request, instead of failing the micro-batch this text would have joined.
                raise ApiError(
                    422,
                    "invalid_text",
                    f"{where} has a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}, which is "
                    "not a Unicode character; send valid Unicode (a \\ud83d\\ude00-style escape needs both halves)",
                ) from None
        if len(text) > settings.max_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"{where} has {len(text)} characters; the limit is {settings.max_chars}: shorten or split it",
            )
