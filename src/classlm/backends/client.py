"""A small, thread-safe HTTP client for OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions``.

Retries with exponential backoff and jitter (honouring ``Retry-After``) on 429/5xx answers, timeouts and dropped
connections, at most ``concurrency`` requests at once. Three clocks bound one request: ``timeout`` any one read,
connect or write; ``deadline`` one whole attempt, checked as the bytes arrive (a per-read timeout alone lets a server
that drips its answer a byte at a time hold the client for ever); ``max_retry_time`` all attempts and the waits
between them, so a ``Retry-After: 3600`` fails at once instead of being slept on. The error names the clock that ran
out.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from classlm.errors import ConfigError, RemoteError

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# An answer of one next token's top-k is a few kB; a body past this is not one, and is not read to its end.
MAX_RESPONSE_BYTES = 8 * 2**20


class _DeadlinePassed(Exception):
    """An attempt ran past its deadline while the server was still sending."""


class OpenAIClient:
    """A small, thread-safe client for ``/v1/completions`` and ``/v1/chat/completions`` with retries.

    ``timeout`` bounds each read, connect or write; ``deadline`` one whole attempt (checked whenever bytes arrive,
    and no read waits past it); ``max_retry_time`` all attempts of one request and the waits between them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        deadline: float = 60.0,
        max_retry_time: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        concurrency: int = 4,
        prefix: str = "/v1",
    ) -> None:
        import httpx

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        for name, value in (("timeout", timeout), ("deadline", deadline), ("max_retry_time", max_retry_time)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        # The OpenAI routes live under /v1 (added when missing); prefix="" for a server's own routes (vLLM's /classify).
        self.base_url = base_url.rstrip("/")
        if prefix and not self.base_url.endswith(prefix):
            self.base_url += prefix
        elif not prefix:
            self.base_url = self.base_url.removesuffix("/v1")
        self.timeout, self.deadline, self.max_retry_time = float(timeout), float(deadline), float(max_retry_time)
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self._count_lock = threading.Lock()
        self.concurrency = concurrency
        self.retries = 0  # retried attempts so far, for reporting

    def close(self) -> None:
        self._http.close()

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            # Seconds or an HTTP date, honoured as asked; post() gives up at once when the wait would pass
            # max_retry_time, rather than sleeping on it first.
            seconds: float | None
            try:
                seconds = float(retry_after)
            except ValueError:
                try:
                    seconds = (parsedate_to_datetime(retry_after) - datetime.now(timezone.utc)).total_seconds()
                except (TypeError, ValueError):
                    seconds = None
            if seconds is not None and math.isfinite(seconds):
                return max(0.0, seconds)
        # Full jitter: concurrent clients that failed together do not retry together.
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _attempt(self, url: str, payload: dict[str, Any], deadline: float) -> tuple[int, Any, bytes]:
        """``(status, headers, body)`` of one POST; raises _DeadlinePassed past ``deadline`` (monotonic)."""
        import httpx

        # No single read may wait past the deadline; the deadline itself is checked as the bytes come.
        read = max(0.001, min(self.timeout, deadline - time.monotonic()))
        with self._http.stream("POST", url, json=payload, timeout=httpx.Timeout(read)) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise RemoteError(f"{url} sent more than {MAX_RESPONSE_BYTES} bytes for one token's logprobs")
                if time.monotonic() > deadline:
                    raise _DeadlinePassed(f"{size} bytes of the answer had arrived")
            return response.status_code, response.headers, b"".join(chunks)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        import httpx

        url = self.base_url + path
        start = time.monotonic()
        budget_end = start + self.max_retry_time
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            with self._slots:
                attempt_start = time.monotonic()
                deadline = min(attempt_start + self.deadline, budget_end)
                # Which clock stops this attempt, to name it if it does.
                clock = (
                    f"the deadline of {self.deadline:g} s per request (deadline=)"
                    if attempt_start + self.deadline <= budget_end
                    else f"the retry budget of {self.max_retry_time:g} s (max_retry_time=)"
                )
                try:
                    status, headers, body = self._attempt(url, payload, deadline)
                except _DeadlinePassed as exc:
                    last = f"the answer did not complete within {clock}: {exc}"
                except httpx.TimeoutException:
                    waited = time.monotonic() - attempt_start
                    last = (
                        f"passed {clock} waiting for the server"
                        if time.monotonic() >= deadline
                        else f"timed out after {min(self.timeout, waited):g}s (timeout=, per read)"
                    )
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if status == 200:
                        try:
                            return json.loads(body)
                        except ValueError:
                            raise RemoteError(f"{url} answered 200 with a body that is not JSON") from None
                    detail = body[:300].decode("utf-8", "replace").strip()
                    if status not in RETRY_STATUS:
                        raise RemoteError(f"{url} answered {status}: {detail}")
                    last = f"{status}: {detail}"
                    retry_after = headers.get("retry-after")
            if attempt == self.max_retries:
                break
            wait = self._wait(attempt, retry_after)
            left = budget_end - time.monotonic()
            if wait >= left:
                asked = f"Retry-After: {retry_after}, " if retry_after is not None else ""
                raise RemoteError(
                    f"{url}: gave up after {attempt + 1} attempts: waiting {wait:.3g} s ({asked}the retry budget "
                    f"of {self.max_retry_time:g} s, max_retry_time=, has {max(0.0, left):.3g} s left); "
                    f"last error: {last}"
                )
            with self._count_lock:
                self.retries += 1
            time.sleep(wait)
        hint = ""
        if last.startswith("ConnectError"):  # nothing listens there: the usual first mistake
            hint = "; nothing answered at that address: is a server running at that URL?"
        raise RemoteError(f"{url}: gave up after {self.max_retries + 1} attempts; last error: {last}{hint}")
