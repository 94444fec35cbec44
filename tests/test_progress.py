"""Progress bars: redrawn in place on a terminal; in a log, one readable line per refresh (no carriage returns)."""

from __future__ import annotations

import io

from classlm import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_refresh_is_a_line_of_its_own(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    for _ in progress.progress_bar(range(5), stream=log, desc="training", unit="step", mininterval=0.0):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) >= 2 and all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("training:") and "0/5" in lines[0] and "5/5" in lines[-1]


def test_in_a_log_a_postfix_waits_for_the_timed_refresh():
    log = io.StringIO()
    with progress.progress_bar(total=50, stream=log, desc="training", unit="step") as bar:
        for step in range(50):
            bar.update(1)
            bar.set_postfix(loss=1.0 / (step + 1))  # every step, as the training loop does
    # The first line, and the closing one: not a line per step (refreshes are at most one every 10 s).
    assert len(log.getvalue().splitlines()) <= 3


def test_a_closed_transient_bar_leaves_nothing_in_a_log():
    log = io.StringIO()
    with progress.progress_bar(total=3, stream=log, desc="scoring", leave=False) as bar:
        bar.update(3)
    assert all(line.startswith("scoring:") for line in log.getvalue().splitlines())  # no blank clearing lines


def test_on_a_terminal_the_bar_is_redrawn_in_place():
    tty = _Terminal()
    for _ in progress.progress_bar(range(3), stream=tty, desc="training", mininterval=0.0):
        pass
    assert "\r" in tty.getvalue()
    assert progress.progress_bar(range(3), stream=io.StringIO(), disable=True).disable
