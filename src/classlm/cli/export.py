"""``classlm export``: a fitted run as a plain Hugging Face model folder: the causal LM with the adapter merged in
(``--merge``), or a standard sequence-classification model (``--seq-cls``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from classlm.cli.classifiers import load_run
from classlm.cli.common import err, out
from classlm.errors import ConfigError


def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A saved classifier folder.")],
    merge: Annotated[
        Path | None, typer.Option("--merge", help="Write the causal LM with the LoRA adapter merged in here.")
    ] = None,
    seq_cls: Annotated[
        Path | None,
        typer.Option(
            "--seq-cls",
            help="Write a *ForSequenceClassification model here: score rows = the class tokens' LM-head rows / T.",
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="dtype the adapter is merged in and the weights are written in.")
    ] = "float32",
) -> None:
    """Export a saved classifier for engines that do not run classlm: --merge (the LM, adapter merged, with the prompt
    and class tokens in classlm_export.json) or --seq-cls (transformers' text-classification model and pipeline,
    vLLM's pooling runner: fed the rendered prompt, its softmax is classlm's calibrated probabilities)."""
    from classlm.export import export_merged, export_seq_cls

    if (merge is None) == (seq_cls is None):
        raise ConfigError("give one of --merge OUT (the merged causal LM) or --seq-cls OUT (a classification model)")
    # float32 by default, not auto: a merge in bf16 would round the adapter's update into the written weights.
    clf = load_run(run, device="cpu", dtype=dtype)
    with err.status("exporting…"):
        if merge is not None:
            target = export_merged(clf, merge)
            what = "merged model (prompt, class token ids and temperature in classlm_export.json)"
        else:
            assert seq_cls is not None
            target = export_seq_cls(clf, seq_cls)
            what = "sequence-classification model (feed it the prompt of classlm_prompt.json)"
    out.print(f"{what} written to {target}")
