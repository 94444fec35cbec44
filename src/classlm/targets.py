"""What a verb runs on: a saved run, a saved ensemble, or a zero-shot model.

``classlm classify/evaluate/inspect/serve`` take one of the three; :func:`target_kind` tells them apart by the
manifest a folder holds, and the loaders here build each with a command's run options. Presentation (status lines,
the one-line errors that name flags) stays in the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from classlm.config import DEFAULT_BATCH_TOKENS

if TYPE_CHECKING:
    from classlm.classifier import LMClassifier
    from classlm.ensemble import Ensemble

TargetKind = Literal["ensemble", "run", "model"]


def target_kind(target: str | Path) -> TargetKind:
    """``"ensemble"`` (a folder with ``ensemble.json``), ``"run"`` (one with ``classlm.json``), else ``"model"``."""
    from classlm.artifacts import MANIFEST
    from classlm.ensemble import ENSEMBLE_MANIFEST

    path = Path(target)
    if (path / ENSEMBLE_MANIFEST).is_file():
        return "ensemble"
    return "run" if (path / MANIFEST).is_file() else "model"


def load_run(
    run: str | Path,
    *,
    batch_size: int = 64,
    batch_tokens: int | str | None = DEFAULT_BATCH_TOKENS,
    device: str = "auto",
    dtype: str | None = None,
    progress: bool = True,
) -> LMClassifier:
    """A saved classifier, with the run options given (they are how it runs, not what it learnt); ``dtype=None``
    keeps the saved one (usually ``auto``)."""
    from classlm.classifier import LMClassifier

    run_options = {"dtype": dtype} if dtype is not None else {}
    return LMClassifier.load(
        run, batch_size=batch_size, batch_tokens=batch_tokens, device=device, progress=progress, **run_options
    )


def load_ensemble(
    path: str | Path,
    *,
    batch_size: int = 64,
    batch_tokens: int | str | None = DEFAULT_BATCH_TOKENS,
    device: str = "auto",
    dtype: str | None = None,
) -> Ensemble:
    """A saved ensemble, every member with the run options given (``dtype=None``: each member's saved one)."""
    from classlm.ensemble import Ensemble

    run_options = {"dtype": dtype} if dtype is not None else {}
    return Ensemble.load(path, batch_size=batch_size, batch_tokens=batch_tokens, device=device, **run_options)


def zero_shot(
    model: str,
    labels: Any,
    *,
    method: str = "label_tokens",
    instruction: str | None = None,
    scoring: str = "auto",
    batch_size: int = 64,
    batch_tokens: int | str | None = DEFAULT_BATCH_TOKENS,
    max_length: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    fit_texts: Sequence[str] | None = None,
    fit_labels: Sequence[Any] | None = None,
    fields: Sequence[str] | None = None,
) -> LMClassifier:
    """A zero-shot classifier of ``model`` over ``labels``, fitted: on ``fit_texts``/``fit_labels`` when given (its
    temperature is fitted on them), else on no data (temperature 1). ``fields``: the text fields of its inputs
    (default: one text, or those of ``fit_texts``)."""
    from classlm.classifier import LMClassifier

    clf = LMClassifier(
        model=model,
        method=method,
        labels=labels,
        instruction=instruction,
        prompt={"fields": tuple(fields)} if fields else None,
        scoring=scoring,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        max_length=max_length,
        device=device,
        dtype=dtype,
        progress="scoring the calibration rows" if progress and fit_texts else progress,
    )
    clf.fit(fit_texts or [], fit_labels)
    clf.progress = progress
    return clf
