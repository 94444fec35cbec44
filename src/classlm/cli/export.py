"""``classlm export``: a fine-tuned run as a plain Hugging Face model folder, the adapter merged in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from classlm.cli.classifiers import load_run
from classlm.cli.common import err, out


def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A saved fine-tuned classifier folder.")],
    merge: Annotated[Path, typer.Option("--merge", help="Write the merged Hugging Face model folder here.")],
    dtype: Annotated[
        str, typer.Option("--dtype", help="dtype the adapter is merged in and the weights are written in.")
    ] = "float32",
) -> None:
    """Merge the LoRA adapter into the base weights: a plain transformers model folder (tokenizer included)."""
    from classlm.artifacts import export_merged

    # float32 by default, not auto: a merge in bf16 would round the adapter's update into the written weights.
    clf = load_run(run, device="cpu", dtype=dtype)
    with err.status("merging…"):
        target = export_merged(clf, merge)
    out.print(f"merged model written to {target} (prompt, class token ids and temperature in classlm_export.json)")
