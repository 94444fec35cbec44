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
) -> None:
    """Merge the LoRA adapter into the base weights: a plain transformers model folder (tokenizer included)."""
    from classlm.artifacts import export_merged

    clf = load_run(run, device="cpu")
    with err.status("merging…"):
        target = export_merged(clf, merge)
    out.print(f"merged model written to {target} (prompt, class token ids and temperature in classlm_export.json)")
