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
        help="label_tokens, letters, pairwise, few_shot, generate, hidden_head, embedding, similarity or tfidf.",
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
TextColOpt = Annotated[
    str,
    typer.Option(
        "--text-col",
        help="Name of the text column; several for inputs of several fields ('premise,hypothesis'). The default "
        "'text' also reads a 'text_pair' column where the data has one.",
    ),
]
LabelColOpt = Annotated[str, typer.Option("--label-col", help="Name of the label column.")]


def _calibration(value: str) -> str:
    """--calibration checked as the option is read: a usage error before any data or model loads."""
    from classlm.calibrators import parse_calibration
    from classlm.errors import ConfigError

    try:
        parse_calibration(value)
    except ConfigError as exc:
        raise typer.BadParameter("expected " + str(exc).removeprefix("calibration must be ")) from None
    return value


CalibrationOpt = Annotated[
    str,
    typer.Option(
        "--calibration",
        callback=_calibration,
        help="temperature, bias (temperature + a per-class offset), none, or a label-free step first: "
        "contextual+temperature, batch+temperature, … (the README's Calibration section).",
    ),
]
PriorsOpt = Annotated[
    str | None,
    typer.Option(
        "--priors",
        help="The class balance these texts come from, when not the training rows': a JSON object "
        '\'{"spam": 0.1, "ham": 0.9}\', a .json file, or auto / em / bbse to estimate it from the texts themselves '
        "(auto: BBSE where the classifier was calibrated on 50 or more labelled rows of every class, else EM).",
    ),
]
OosLabelOpt = Annotated[
    str | None,
    typer.Option(
        "--oos-label",
        help="The label of out-of-scope rows (e.g. oos): also report how well each out-of-scope score finds them "
        "and the accuracy when abstaining on them.",
    ),
]
AbstainBelowOpt = Annotated[
    float | None,
    typer.Option(
        "--abstain-below",
        min=0.0,
        max=1.0,
        help="Answer --abstain-label for a text whose top probability is below this (requests may set their own).",
    ),
]
AbstainLabelOpt = Annotated[
    str, typer.Option("--abstain-label", help="The label of an abstained answer (a number for number classes).")
]
