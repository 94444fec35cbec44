"""The HTTP service: ``create_app`` (FastAPI app factory), its settings, and ``run`` (uvicorn with graceful shutdown).

Routes: ``POST /v1/classify``, ``GET /v1/model``, ``GET /health``, ``GET /metrics`` (Prometheus), ``/docs`` (OpenAPI),
and the web playground at ``/``.
"""

from __future__ import annotations

from typing import Any

from classlm.serving.app import create_app
from classlm.serving.served import ServedModel
from classlm.serving.settings import ServeSettings

__all__ = ["ServeSettings", "ServedModel", "create_app", "run"]


def run(
    load: Any,
    settings: ServeSettings | None = None,
    *,
    log_level: str = "info",
    evaluation: dict[str, Any] | None = None,
) -> None:
    """Serve with uvicorn until SIGINT/SIGTERM; requests already accepted are answered before it exits.
    ``evaluation``: stored held-out metrics for ``GET /v1/model`` and the playground (see :func:`create_app`)."""
    import uvicorn

    from classlm.serving.protocol import uvicorn_config

    settings = settings or ServeSettings()
    uvicorn.Server(
        uvicorn_config(create_app(load, settings, evaluation=evaluation), settings, log_level=log_level)
    ).run()
