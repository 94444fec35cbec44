"""What the HTTP service accepts and how it batches: one frozen, validated settings object."""

from __future__ import annotations

from dataclasses import dataclass

from classlm.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """Settings of ``classlm serve`` / :func:`classlm.serving.create_app`.

    Parameters
    ----------
    host, port:
        Where uvicorn listens. The default host is loopback: exposing the service is a decision, not a default.
    batching:
        Micro-batching: requests that arrive while the scorer is busy, or within ``max_wait_ms`` of the first one,
        are scored together in one call (one forward pass per length bucket). ``False``: one request per call.
    max_batch_texts:
        At most this many texts per scoring call. A request with more is split over several calls, and each call
        is shared out by texts among the waiting requests, so short requests interleave with a long one.
    max_wait_ms:
        How long the first request of a batch waits for company. Costs up to this much latency at low load.
    max_queue_texts:
        Texts accepted but not yet scored. A request that would exceed it gets 503 with ``Retry-After`` rather than
        waiting in a queue that grows without bound.
    max_body_bytes, max_texts, max_chars:
        Limits per request: body size (413), texts per request and characters per text (422).
    api_key:
        When set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <api_key>`` (401 otherwise).
    retry_after_s:
        The ``Retry-After`` a 503 carries.
    shutdown_timeout_s:
        On SIGTERM/SIGINT uvicorn stops accepting connections and waits this long for accepted requests; requests
        still running then are answered 503 and dropped, and the batcher gets as long again to finish the call in
        progress. The process exits after at most about twice this.
    request_timeout_s:
        Deadline per request, from the arrival of its headers to its answer: past it the answer is 504 and the
        request's texts not yet scored are dropped.
    header_timeout_s:
        A connection must deliver a request's complete headers within this many seconds of opening (or of the
        previous answer), or it is closed: idle and slow-header ("slowloris") sockets do not pile up.
    body_timeout_s:
        The whole body of ``POST /v1/classify`` must arrive within this many seconds of the headers (408 and the
        connection closed otherwise).
    keep_alive_timeout_s:
        An idle kept-alive connection is closed after this many seconds.
    max_connections:
        Open connections at most; past it uvicorn answers new requests 503 (its ``limit_concurrency``).
    abstain_below, abstain_label:
        A text whose top probability is below ``abstain_below`` is answered ``abstain_label`` (``"abstained":
        true``; every class's probability still given); ``None``: never, unless a request asks. For number classes
        the label must be a number (``"-1"``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    batching: bool = True
    max_batch_texts: int = 32
    max_wait_ms: float = 5.0
    max_queue_texts: int = 1024
    max_body_bytes: int = 1_000_000
    max_texts: int = 64
    max_chars: int = 20_000
    api_key: str | None = None
    retry_after_s: int = 1
    shutdown_timeout_s: float = 30.0
    request_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 1000
    abstain_below: float | None = None
    abstain_label: str = "abstain"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty string, got {self.host!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535 (0: any free port), got {self.port!r}")
        for name in (
            "max_batch_texts",
            "max_queue_texts",
            "max_body_bytes",
            "max_texts",
            "max_chars",
            "retry_after_s",
            "max_connections",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_wait_ms", "shutdown_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self, name)
            # 0 would refuse every request; a deadline is a positive number of seconds.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.abstain_below is not None and (
            isinstance(self.abstain_below, bool)
            or not isinstance(self.abstain_below, (int, float))
            or not 0 < self.abstain_below <= 1
        ):
            raise ConfigError(f"abstain_below must be a probability in (0, 1] or None, got {self.abstain_below!r}")
        if not isinstance(self.abstain_label, str) or not self.abstain_label:
            raise ConfigError(f"abstain_label must be a non-empty string, got {self.abstain_label!r}")
        if self.max_queue_texts < self.max_texts:
            raise ConfigError(
                f"max_queue_texts ({self.max_queue_texts}) must be at least max_texts ({self.max_texts}), or a "
                "request at the text limit could never be accepted"
            )
        if self.api_key is not None and (
            not isinstance(self.api_key, str)
            or not self.api_key
            or self.api_key != self.api_key.strip()
            or not self.api_key.isascii()
            or not self.api_key.isprintable()
        ):
            # A header carries it: spaces around it are stripped and non-ASCII bytes mangled, so it could never match.
            raise ConfigError("api_key must be a non-empty printable ASCII string without surrounding spaces, or None")
