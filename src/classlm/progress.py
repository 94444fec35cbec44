"""Progress bars that read well in a terminal and in a log.

In a terminal: tqdm's bar, redrawn in place. Anywhere else (``make demo 2>&1 | tee log``, CI, a service's log) a
redrawn bar is a single line of carriage returns thousands of characters long: there each refresh becomes a line of
its own, at most one every :data:`LOG_INTERVAL_S` seconds, in ASCII and 80 columns, so a log shows steady progress
with an ETA.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 10.0


class _Lines:
    """tqdm's output stream off a terminal: every refresh on its own line, the clearing of a closed bar dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, *, stream: TextIO | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr (or ``stream``): a live bar on a terminal, log lines elsewhere."""
    stream = stream or sys.stderr
    # A notebook (tqdm.auto picks its widget bar there) draws its own way: only plain streams are turned into lines.
    if kwargs.get("disable") or "notebook" in tqdm.__module__ or getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, file=stream, **kwargs)
    kwargs = {"mininterval": LOG_INTERVAL_S, "ncols": 80, "ascii": True, **kwargs}
    bar = tqdm(iterable, file=_Lines(stream), **kwargs)
    # set_postfix redraws at once by default (the training loop sets one every step): in a log that would be a line
    # per step, so here the postfix waits for the next timed refresh.
    postfix = bar.set_postfix
    bar.set_postfix = lambda *a, **kw: postfix(*a, **{**kw, "refresh": False})
    return bar
