"""``classlm serve``: a classifier over HTTP (POST /v1/classify, GET /v1/model, /health, /metrics; docs at /docs) and
a web playground at /."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.classifiers import load_target
from classlm.cli.common import err, parse_labels
from classlm.cli.options import (
    AbstainBelowOpt,
    AbstainLabelOpt,
    BatchTokensOpt,
    DeviceOpt,
    DtypeOpt,
    InstructionOpt,
    LabelsOpt,
    MaxLenOpt,
    MethodOpt,
    ScoringOpt,
)

# The options that are ServeSettings fields: flag's parameter name → field.
SETTINGS = {
    "host": "host",
    "port": "port",
    "batching": "batching",
    "max_batch": "max_batch_texts",
    "max_wait_ms": "max_wait_ms",
    "max_queue": "max_queue_texts",
    "max_texts": "max_texts",
    "max_chars": "max_chars",
    "max_body": "max_body_bytes",
    "api_key": "api_key",
    "request_timeout": "request_timeout_s",
    "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s",
    "keep_alive_timeout": "keep_alive_timeout_s",
    "max_connections": "max_connections",
    "abstain_below": "abstain_below",
    "abstain_label": "abstain_label",
}


def serve(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="A saved run or ensemble folder, or a model (alias, .gguf, HF folder) used with --labels.",
        ),
    ] = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "auto",
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback unless you mean to expose it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on.")] = 8000,
    batching: Annotated[
        bool, typer.Option("--batching/--no-batching", help="Micro-batch concurrent requests into one scoring call.")
    ] = True,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="At most this many texts per scoring call.")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="How long a batch's first request waits for company.")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Texts waiting at most; beyond it requests get 503.")
    ] = 1024,
    max_texts: Annotated[int, typer.Option("--max-texts", min=1, help="Texts per request at most.")] = 64,
    max_chars: Annotated[int, typer.Option("--max-chars", min=1, help="Characters per text at most.")] = 20_000,
    max_body: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Request body size at most.")] = 1_000_000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="CLASSLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."),
    ] = None,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.001, help="Seconds per request before a 504.")
    ] = 60.0,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", min=0.001, help="Seconds for a request's headers to arrive.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.001, help="Seconds for a request's body to arrive (else 408).")
    ] = 30.0,
    keep_alive_timeout: Annotated[
        float, typer.Option("--keep-alive-timeout", min=0.001, help="Seconds an idle connection stays open.")
    ] = 5.0,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, help="Open connections at most; beyond it requests get 503.")
    ] = 1000,
    abstain_below: AbstainBelowOpt = None,
    abstain_label: AbstainLabelOpt = "abstain",
    batch_tokens: BatchTokensOpt = None,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a classifier over HTTP: POST /v1/classify, GET /v1/model, /health, /metrics; docs at /docs; a web
    playground at /."""
    options = locals()  # first, while it holds the options only
    from classlm.serving import ServeSettings, run

    settings = ServeSettings(**{field: options[name] for name, field in SETTINGS.items()})
    # Loaded before uvicorn starts, so a bad TARGET or label list is a one-line error, not a lifespan traceback.
    classifier = load_target(
        target,
        labels=parse_labels(labels),
        method=method,
        instruction=instruction,
        scoring=scoring,
        batch_size=max_batch,
        batch_tokens=batch_tokens,
        max_length=max_length,
        device=device,
        dtype=dtype,
    )
    for member in getattr(classifier, "members_", [classifier]):
        member.progress = False  # a progress bar per micro-batch would flood the log
    url = f"http://{host}:{port}"
    err.print(f"serving {len(classifier.classes_)} classes on {url}: playground at {url}/, API docs at {url}/docs")
    run(classifier, settings, log_level=log_level, evaluation=stored_evaluation(Path(target)))


def stored_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The headline of a run folder's eval.json (written by `classlm train`), or None where there is none."""
    import json

    try:
        doc = json.loads((run_dir / "eval.json").read_text())
        metrics, info = doc["metrics"], doc.get("info", {})
    except (OSError, ValueError, KeyError, TypeError):  # not a run folder, or no readable evaluation: none to show
        return None
    keep = {k: metrics.get(k) for k in ("n", "accuracy", "macro_f1", "nll", "ece")}
    return {**keep, "data": info.get("data")}
