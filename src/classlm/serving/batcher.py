"""Dynamic micro-batching with fair sharing: requests that arrive close together are scored in one call, and a
long request is split so that short ones interleave with it.

One worker thread owns the model. Request handlers (on the event loop) ``submit`` their texts and await a
``concurrent.futures.Future``. Each scoring call holds at most ``max_batch_texts`` texts, shared out **by texts**
among the waiting requests: every waiting request gets an equal share of the call (oldest first for what does not
divide evenly), so a 64-text request is scored over several calls and a one-text request that arrives meanwhile is
in the next call, not behind all 64. A call waits at most ``max_wait`` after its oldest request arrived for company
(requests that queued while the previous call ran are taken at once). The queue is bounded in texts: past the bound
``submit`` raises :class:`QueueFull` at once (the server answers 503 + Retry-After).

A caller that gives up cancels its future (client gone, deadline passed, shutdown); its texts not yet scored are
dropped at once, and its remaining parts are never computed. If a call fails and holds several requests, each is
re-scored alone, so only the request whose texts the scorer cannot take gets the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# score_fn(texts, extras) -> a tuple of per-text arrays (n, ...), each or None: probabilities, class mass, …
# ("extras": some request of the call asked for more than probabilities; its flag is the item's class_mass)
ScoreFn = Callable[[list[str], bool], tuple[Any, ...]]


class QueueFull(Exception):
    """The queue holds ``max_queue_texts`` texts already."""


class ShuttingDown(Exception):
    """The batcher is closing and accepts no new work."""


@dataclass(eq=False)
class _Item:
    texts: list[str]
    class_mass: bool
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    taken: int = 0  # texts handed to the scorer so far
    parts: list[tuple[Any, ...]] = field(default_factory=list)  # scored columns, one tuple per part, in order


# One part of a scoring call: (request, first text, end) — texts[start:stop] of that request.
_Part = tuple[_Item, int, int]


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
        self._cond = threading.Condition()
        self._waiting: list[_Item] = []  # requests with texts not yet handed out, oldest first
        self._pending_texts = 0
        self._closing = False
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
        """Queue ``texts``; the future resolves to the scorer's columns for them, in order. Cancel it to give up."""
        item = _Item(list(texts), class_mass)
        with self._cond:
            if not self.alive:
                raise ShuttingDown("the server is shutting down")
            if self._pending_texts + len(item.texts) > self.max_queue_texts:
                raise QueueFull(
                    f"{self._pending_texts} texts are waiting (limit {self.max_queue_texts}); retry shortly"
                )
            self._pending_texts += len(item.texts)
            self._waiting.append(item)
            self._cond.notify()
        # Registered after the lock is released: a cancel runs this callback in the canceller's thread at once.
        item.future.add_done_callback(lambda f: self._forget(item) if f.cancelled() else None)
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, answer everything already accepted, then stop the worker (waits ``timeout`` s)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- bookkeeping (under the lock) ------------------------------------------------------------------------------
    def _forget(self, item: _Item) -> None:
        """Drop a request's texts not yet handed out: its caller gave up, or it failed."""
        with self._cond:
            if item in self._waiting:
                self._waiting.remove(item)
                self._pending_texts -= len(item.texts) - item.taken

    def _plan(self) -> list[_Part]:
        """The next call's parts: an equal share of ``max_batch_texts`` per waiting request, by texts."""
        if not self.batching:
            # One request per call, still cut at max_batch_texts; a request with more goes to the back of the line
            # so the others each get a call in between.
            item = self._waiting.pop(0)
            stop = min(len(item.texts), item.taken + self.max_batch_texts)
            plan = [(item, item.taken, stop)]
        else:
            given = {id(item): 0 for item in self._waiting}
            room = self.max_batch_texts
            while room > 0:
                hungry = [it for it in self._waiting if it.taken + given[id(it)] < len(it.texts)]
                if not hungry:
                    break
                share = max(1, room // len(hungry))  # every round gives at least one text, so this loop ends
                for it in hungry[:room]:
                    n = min(share, len(it.texts) - it.taken - given[id(it)], room)
                    given[id(it)] += n
                    room -= n
            plan = [(it, it.taken, it.taken + given[id(it)]) for it in self._waiting if given[id(it)]]
            self._waiting = [it for it in self._waiting if it.taken + given[id(it)] < len(it.texts)]
        for item, start, stop in plan:
            item.taken = stop
            self._pending_texts -= stop - start
            if not self.batching and stop < len(item.texts):
                self._waiting.append(item)
        return plan

    def _next_call(self) -> list[_Part] | None:
        """Wait for work and for company; ``None`` once closing and nothing is left."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                if not self.batching or self._closing:
                    return self._plan()
                # Wait for company until the oldest request has waited max_wait (at once for one that queued while
                # the previous call ran), or until the call is full.
                left = self._waiting[0].arrived + self.max_wait_s - time.monotonic()
                available = sum(len(it.texts) - it.taken for it in self._waiting)
                if left <= 0 or available >= self.max_batch_texts:
                    return self._plan()
                self._cond.wait(left)

    # -- worker ---------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            plan = self._next_call()
            if plan is None:
                return
            try:
                self._score_call(plan)
            except BaseException as exc:  # the worker must outlive any one call, or every later request hangs
                log.exception("the batcher failed on a scoring call")
                for item, _, _ in plan:
                    self._fail(item, exc)

    def _fail(self, item: _Item, exc: BaseException) -> None:
        self._forget(item)
        # set_running_or_notify_cancel: False when the caller cancelled first; after it, no cancel can race us.
        if not item.future.done() and item.future.set_running_or_notify_cancel():
            item.future.set_exception(exc)

    def _score_call(self, plan: list[_Part]) -> None:
        # A caller that gave up since the plan was made is skipped: its part is never computed.
        plan = [p for p in plan if not p[0].future.done()]
        if not plan:
            return
        texts = [t for item, start, stop in plan for t in item.texts[start:stop]]
        try:
            columns = self._score(texts, any(item.class_mass for item, _, _ in plan))
        except Exception as exc:
            log.exception("scoring a call of %d texts from %d requests failed", len(texts), len(plan))
            if len(plan) == 1:
                self._fail(plan[0][0], exc)
                return
            # One request's bad text must not fail the others: each part again, alone.
            for part in plan:
                self._score_call([part])
            return
        offset = 0
        for item, start, stop in plan:
            n = stop - start
            item.parts.append(tuple(None if c is None else c[offset : offset + n] for c in columns))
            offset += n
            if stop == len(item.texts) and item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(_join(item.parts))
                except Exception as exc:  # the future is RUNNING now: _fail would raise on it, and kill the worker
                    log.exception("joining the parts of a request failed")
                    item.future.set_exception(exc)
        if self._on_batch is not None:
            try:
                self._on_batch(len(texts), len(plan))
            except Exception:  # metrics must never stop the worker
                log.exception("the on_batch callback failed")


def _join(parts: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """A request's columns from its parts, in order. A column left out of any part is ``None``: the parts of a
    request split over calls may come from calls that computed different columns (the class mass is computed for
    a whole call when any request in it asks for it)."""
    if len(parts) == 1:
        return parts[0]
    return tuple(None if any(c is None for c in col) else np.concatenate(col) for col in zip(*parts))
