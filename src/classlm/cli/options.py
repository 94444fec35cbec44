"""The options several verbs share, as ``Annotated`` types: one flag spelling, one help text everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Alias, .gguf file, HF folder or hub id.")]
RunOpt = Annotated[
    Path | None, typer.Option("--run", "-r", help="A saved classifier folder (overrides --model/--labels).")
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        "-l",
        help="Comma-separated class names, a .json file (list or {name: description}), or a dataset folder.",
    ),
]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="label_tokens, letters, few_shot, generate, hidden_head, embedding, similarity or tfidf.",
    ),
]
InstructionOpt = Annotated[str | None, typer.Option("--instruction", "-i", help="The task sentence of the prompt.")]
ScoringOpt = Annotated[
    str,
    typer.Option(
        "--scoring",
        help="auto (first_token when the classes' first tokens differ, else a head for shared first tokens), "
        "first_token, auto_verbalizer, name_rows or exact (all answer tokens, k times slower).",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="At most this many texts per forward pass.")]
BatchTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-tokens",
        min=0,
        help="At most this many padded tokens per forward pass (0: no limit; default: 512 in float32, 1536 in "
        "bf16 on CPU).",
    ),
]


def token_budget_arg(batch_tokens: int | None) -> int | str | None:
    """--batch-tokens as LMClassifier takes it: not given -> "auto", 0 -> None (no limit)."""
    return "auto" if batch_tokens is None else (batch_tokens or None)


MaxLenOpt = Annotated[int, typer.Option("--max-length", help="Token limit per prompt; texts are cut inside.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="auto (bfloat16 on CUDA and on CPUs with AMX-BF16 or AVX512-BF16, else float32; training on CPU also "
        "needs tcmalloc or jemalloc for bfloat16; $CLASSLM_DTYPE overrides auto for scoring), float32, bfloat16 or "
        "float16. Default: a saved run's own, else auto.",
    ),
]

# The labelled-data verbs (evaluate, train, calibrate).
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", min=1, help="Use a seeded random sample of N rows, stratified by class (see --seed)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the --limit samples (and of training).")]
DropInvalidOpt = Annotated[
    bool,
    typer.Option(
        "--drop-invalid", help="Leave out rows with an empty text or a missing label (counted) instead of stopping."
    ),
]
TextColOpt = Annotated[str, typer.Option("--text-col", help="Name of the text column.")]
LabelColOpt = Annotated[str, typer.Option("--label-col", help="Name of the label column.")]
