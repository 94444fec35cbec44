"""Prometheus text-format metrics for the service: counters and histograms, thread-safe, no dependency.

Written by hand rather than with ``prometheus_client`` because the service needs four series and the exposition
format is a few lines; one fewer dependency for every install.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + body + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self._values.items())]
        return lines


class Gauge:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = float(value)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(self._value)}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last slot is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            cumulative = 0
            for bound, n in zip(self.buckets, self._counts):
                cumulative += n
                lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
            cumulative += self._counts[-1]
            lines.append(f'{self.name}_bucket{{le="+Inf"}} {cumulative}')
            lines.append(f"{self.name}_sum {_number(self._sum)}")
            lines.append(f"{self.name}_count {cumulative}")
        return lines


class ServiceMetrics:
    """The service's series; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self.requests = Counter("classlm_requests_total", "HTTP requests answered, by path and status code.")
        self.errors = Counter("classlm_request_errors_total", "Requests answered with status >= 400, by path.")
        self.texts = Counter("classlm_texts_classified_total", "Texts classified.")
        self.truncated = Counter("classlm_texts_truncated_total", "Texts cut to fit what the classifier reads.")
        self.latency = Histogram(
            "classlm_request_latency_seconds",
            "POST /v1/classify: time from receiving a request to its answer.",
            LATENCY_BUCKETS,
        )
        self.batch_texts = Histogram(
            "classlm_batch_size_texts", "Texts per scoring call (micro-batch size).", BATCH_BUCKETS
        )
        self.batch_requests = Histogram(
            "classlm_batch_size_requests", "Requests merged into one scoring call.", BATCH_BUCKETS
        )
        self.queue = Gauge("classlm_queue_texts", "Texts accepted and waiting to be scored.")
        self.rejected = Counter("classlm_rejected_total", "Requests refused with 503, by reason.")

    def render(self) -> str:
        series = (
            self.requests,
            self.errors,
            self.texts,
            self.truncated,
            self.latency,
            self.batch_texts,
            self.batch_requests,
            self.queue,
            self.rejected,
        )
        return "\n".join(line for s in series for line in s.render()) + "\n"
