"""Dynamic micro-batching: requests that arrive close together are scored in one call.

One worker thread owns the model. Request handlers (on the event loop) ``submit`` their texts and await a
``concurrent.futures.Future``; the worker takes the oldest request, keeps taking more until the batch holds
``max_batch_texts`` texts or ``max_wait`` has passed since it took that first one (requests that queued while the
previous batch ran are taken at once), scores them all in one call and hands each caller its own rows. The queue is
bounded in texts: past the bound ``submit`` raises :class:`QueueFull` at once (the server answers 503 +
Retry-After) instead of letting latency grow without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# score_fn(texts, class_mass) -> a tuple of per-text arrays (n, ...), each or None: probabilities, class mass, …
ScoreFn = Callable[[list[str], bool], tuple[Any, ...]]


class QueueFull(Exception):
    """The queue holds ``max_queue_texts`` texts already."""


class ShuttingDown(Exception):
    """The batcher is closing and accepts no new work."""


@dataclass
class _Item:
    texts: list[str]
    class_mass: bool
    future: Future = field(default_factory=Future)


_STOP = object()


class MicroBatcher:
    def __init__(
        self,
        score_fn: ScoreFn,
        *,
        max_batch_texts: int = 32,
        max_wait_s: float = 0.005,
        max_queue_texts: int = 1024,
        batching: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._score = score_fn
        self.max_batch_texts = max_batch_texts
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self.batching = batching
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._pending_texts = 0
        self._closing = False
        self._carry: _Item | None = None  # taken from the queue but over the batch limit: first of the next batch
        self._thread = threading.Thread(target=self._run, name="classlm-batcher", daemon=True)
        self._thread.start()

    @property
    def pending_texts(self) -> int:
        """Texts accepted and not yet handed to the scorer."""
        return self._pending_texts

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def submit(self, texts: Sequence[str], class_mass: bool = False) -> Future:
        """Queue ``texts``; the future resolves to ``(probabilities, class_mass)`` for them, in order."""
        item = _Item(list(texts), class_mass)
        with self._lock:
            if not self.alive:
                raise ShuttingDown("the server is shutting down")
            if self._pending_texts + len(item.texts) > self.max_queue_texts:
                raise QueueFull(
                    f"{self._pending_texts} texts are waiting (limit {self.max_queue_texts}); retry shortly"
                )
            self._pending_texts += len(item.texts)
            # Inside the lock: close() puts _STOP under the same lock, so no item can land behind it unanswered.
            self._queue.put(item)
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, answer everything already accepted, then stop the worker."""
        with self._lock:
            if not self._closing:
                self._closing = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- worker ---------------------------------------------------------------------------------------------------
    def _take_batch(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` plus whatever fits and arrives in time; also whether the stop marker was met."""
        batch, n = [first], len(first.texts)
        if not self.batching:
            return batch, False
        deadline = time.monotonic() + self.max_wait_s
        while n < self.max_batch_texts:
            try:
                # Whatever queued up while the previous batch ran is taken without waiting; only an empty queue
                # waits, and never past the first request's deadline.
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if n + len(item.texts) > self.max_batch_texts:
                self._carry = item
                break
            batch.append(item)
            n += len(item.texts)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            elif stopping:
                # The stop marker was seen: drain what is left without waiting, then exit.
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self._queue.get()
                if first is _STOP:
                    stopping = True
                    continue
            batch, saw_stop = self._take_batch(first)
            stopping = stopping or saw_stop
            try:
                self._score_batch(batch)
            except BaseException as exc:  # the worker must outlive any one batch, or every later request hangs
                log.exception("the batcher failed on a batch")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _score_batch(self, batch: list[_Item]) -> None:
        with self._lock:
            self._pending_texts -= sum(len(item.texts) for item in batch)
        # A caller that gave up (its handler was cancelled: client gone, shutdown timeout) cancelled its future; it
        # is dropped here, and the others can no longer be cancelled, so setting their results cannot raise.
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        texts = [t for item in batch for t in item.texts]
        try:
            columns = self._score(texts, any(item.class_mass for item in batch))
        except Exception as exc:  # every caller of the batch gets the error, none waits forever
            log.exception("scoring a batch of %d texts failed", len(texts))
            for item in batch:
                item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            stop = start + len(item.texts)
            item.future.set_result(tuple(None if c is None else c[start:stop] for c in columns))
            start = stop
        if self._on_batch is not None:
            try:
                self._on_batch(len(texts), len(batch))
            except Exception:  # metrics must never stop the worker
                log.exception("the on_batch callback failed")
