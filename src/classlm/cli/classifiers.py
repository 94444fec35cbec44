"""Loading what a verb runs on, with the CLI's face on :mod:`classlm.targets`: a status line while a model loads,
``--batch-tokens 0`` as no limit, and the one-line errors that name the flags to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classlm.cli.common import err, quiet_transformers
from classlm.cli.options import token_budget_arg
from classlm.errors import ConfigError


def load_run(
    run: Path,
    *,
    batch_size: int = 64,
    batch_tokens: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
) -> Any:
    """A saved classifier, with the run options of this command (``--batch-tokens 0``: no limit; ``dtype=None``: the
    run's own, usually ``auto``, which resolves on this machine)."""
    from classlm.targets import load_run as load_saved_run

    quiet_transformers()
    with err.status(f"loading {run}…"):
        return load_saved_run(
            run, batch_size=batch_size, batch_tokens=token_budget_arg(batch_tokens), device=device, dtype=dtype
        )


def build_classifier(
    *,
    run: Path | None,
    model: str,
    labels: Any,
    method: str,
    instruction: str | None,
    scoring: str,
    batch_size: int,
    max_length: int,
    device: str,
    dtype: str | None = None,
    batch_tokens: int | None = None,
    fit_texts: list[str] | None = None,
    fit_labels: list[str] | None = None,
    fields: tuple[str, ...] | None = None,
) -> Any:
    """A ready classifier: loaded from ``run``, or zero-shot from the options (labels required); with
    ``fit_texts``/``fit_labels`` the zero-shot classifier's temperature is fitted on them."""
    if run is not None:
        return load_run(run, batch_size=batch_size, batch_tokens=batch_tokens, device=device, dtype=dtype)
    from classlm.methods import get_method
    from classlm.targets import zero_shot

    if get_method(method).learns_from_data:
        raise ConfigError(
            f"method {method!r} learns from labelled data: train it first with `classlm train DATA --method {method} "
            "--out RUN`, then pass --run RUN"
        )
    quiet_transformers()
    with err.status("loading the model (the first use of a .gguf dequantises it once, ~40 s)…"):
        if labels is None:
            raise ConfigError("no classes given: pass --labels a,b,c (or --run RUN for a saved classifier)")
        return zero_shot(
            model,
            labels,
            method=method,
            instruction=instruction,
            scoring=scoring,
            batch_size=batch_size,
            batch_tokens=token_budget_arg(batch_tokens),
            max_length=max_length,
            device=device,
            dtype=dtype or "auto",
            fit_texts=fit_texts,
            fit_labels=fit_labels,
            fields=fields,
        )


def load_target(target: str, **build: Any) -> Any:
    """``classlm serve``'s TARGET: a saved run, a saved ensemble, or a model name (zero-shot, with --labels)."""
    from classlm.targets import load_ensemble, target_kind

    path = Path(target)
    kind = target_kind(path)
    if kind == "ensemble":
        quiet_transformers()
        with err.status(f"loading the ensemble {path}…"):
            return load_ensemble(
                path,
                batch_size=build["batch_size"],
                batch_tokens=token_budget_arg(build["batch_tokens"]),
                device=build["device"],
                dtype=build.get("dtype"),
            )
    return build_classifier(run=path if kind == "run" else None, model=target, **build)
