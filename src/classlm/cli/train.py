"""``classlm train``: fine-tune (LoRA, a head, TF-IDF, few-shot examples) into a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.config_options import ConfigOptions, with_config_options
from classlm.cli.options import (
    BatchOpt,
    BatchTokensOpt,
    CalibrationOpt,
    DeviceOpt,
    DropInvalidOpt,
    DtypeOpt,
    InstructionOpt,
    LabelColOpt,
    LabelsOpt,
    MaxLenOpt,
    MethodOpt,
    ModelOpt,
    ScoringOpt,
    TextColOpt,
    token_budget_arg,
)
from classlm.cli.rows import held_out_rows, label_spec_for, load_rows
from classlm.cli.runs import finish_run, fit_run, prepare_run_folder, run_args
from classlm.config import LoraConfig, TrainConfig
from classlm.errors import ConfigError

BaselineOpt = Annotated[
    bool,
    typer.Option(
        "--baseline/--no-baseline",
        help="Also fit TF-IDF + LR on the same rows (seconds) and report the classifier against it.",
    ),
]
ClassWeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--class-weights",
        help="'balanced': weight the loss by inverse class frequency (imbalanced data), or a JSON object "
        '{"class": weight}.',
    ),
]

EvalSplitOpt = Annotated[
    str | None,
    typer.Option(
        "--eval-split",
        help="Held-out split evaluated during training and at the end (default: 'validation' when DATA has one, else "
        "a stratified 10% of the training rows, disjoint from the calibration rows).",
    ),
]
CalibSplitOpt = Annotated[
    str | None,
    typer.Option("--calib-split", help="Split for the temperature (default: a stratified slice of train)."),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="Train on a seeded random sample of N rows, stratified by class.")
]
MethodOptionsOpt = Annotated[
    str | None, typer.Option("--options", help='The method\'s options as JSON, e.g. \'{"head": "mlp"}\'.')
]

# The TrainConfig and LoraConfig fields that `train` exposes, in --help order, under the flags they have always had.
# A field added here becomes a flag (and a key of train_args.json, which --resume compares).
TRAIN_OPTIONS = ConfigOptions(
    TrainConfig,
    {
        "eval_limit": "eval_limit",
        "loss": "loss",
        "lr": "lr",
        "epochs": "epochs",
        "max_steps": "max_steps",
        "batch_size": "train_batch",
        "grad_accum": "grad_accum",
        "micro_batch_tokens": "micro_batch_tokens",
        "eval_every": "eval_every",
        "patience": "patience",
        "seed": "seed",  # also seeds the --limit sample and the held-out evaluation rows
    },
    minimum={
        "eval_limit": 1,
        "max_steps": 1,
        "batch_size": 1,
        "grad_accum": 1,
        "eval_every": 0,
        "patience": 1,
        "micro_batch_tokens": 1,
    },
)
LORA_OPTIONS = ConfigOptions(
    LoraConfig,
    {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "quantize": "lora_quantize"},
    minimum={"r": 1, "alpha": 1},
)


@with_config_options(training=TRAIN_OPTIONS, lora=LORA_OPTIONS)
def train(
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="A dataset folder (train/validation/test files) or a labelled file.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder: metrics, checkpoints, plots, classifier.")],
    labels: LabelsOpt = None,
    model: ModelOpt = "smollm2-135m",
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "auto",
    split: Annotated[str, typer.Option("--split", help="Training split when DATA is a folder.")] = "train",
    eval_split: EvalSplitOpt = None,
    calib_split: CalibSplitOpt = None,
    limit: LimitOpt = None,
    *,
    training: dict[str, Any],  # TRAIN_OPTIONS' flags (--lr, --epochs, …), as {TrainConfig field: value}
    lora: dict[str, Any],  # --lora-r, --lora-alpha, as {LoraConfig field: value}
    use_lora: Annotated[
        bool, typer.Option("--lora/--no-lora", help="LoRA on the backbone, for methods that train one.")
    ] = True,
    options: MethodOptionsOpt = None,
    baseline: BaselineOpt = True,
    class_weights: ClassWeightsOpt = None,
    calibration: CalibrationOpt = "temperature",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete the run already in --out (its run files only) and start anew.")
    ] = False,
    drop_invalid: DropInvalidOpt = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = None,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
) -> None:
    """Train a classifier: LoRA adapters (label_tokens, letters; with hidden_head also its head), or what another
    method learns (a head, TF-IDF, few-shot examples: use --no-lora or a method without a backbone)."""
    # First, while locals() holds only the options; the generated ones under their flags' names, as always.
    given = {k: v for k, v in locals().items() if k not in ("training", "lora")}
    args = run_args({**given, **TRAIN_OPTIONS.as_params(training), **LORA_OPTIONS.as_params(lora)})
    from classlm import distributed
    from classlm.classifier import LMClassifier
    from classlm.methods import get_method

    # Started by `accelerate launch` / `torchrun` several times: one rank of a data-parallel run (rank 0 writes).
    world = distributed.current()  # joins the process group, before any collective below

    method_options, trains_lora = _method_options(options, method, get_method(method), use_lora=use_lora)
    training = {**training, "class_weights": _class_weights(class_weights, method, trains_lora)}
    seed = training["seed"]
    rows: dict[str, Any] = dict(
        text_col=text_col, label_col=label_col, labels_given=labels is not None, drop_invalid=drop_invalid
    )
    dataset = load_rows(data, split=split, limit=limit, seed=seed, **rows)
    label_spec = label_spec_for(labels, data, dataset)  # before the hold-outs: the labels of all the rows
    dataset, evaluation, calib, eval_source = held_out_rows(data, dataset, (split, eval_split, calib_split), seed, rows)
    clf = LMClassifier(
        model=model,
        method=method,
        labels=label_spec,
        instruction=instruction,
        scoring=scoring,
        calibration=calibration,
        batch_size=batch_size,
        batch_tokens=token_budget_arg(batch_tokens),
        max_length=max_length,
        device=device,
        dtype=dtype or "auto",
        progress=world.main,
        method_options=method_options,
        lora=lora if trains_lora else None,
        train=training,
    )
    # Only now, with every option and the data checked: --overwrite must not delete a run for a command that fails.
    world.main_first(lambda: prepare_run_folder(out_dir, args, resume=resume, overwrite=overwrite))
    fit_run(clf, method, out_dir, args, (dataset, evaluation, calib), resume=resume, write=world.main)
    if world.main:
        finish_run(clf, out_dir, evaluation, eval_source, baseline_rows=(dataset, calib) if baseline else None)
    distributed.finish()


def _class_weights(value: str | None, method: str, lora: bool) -> str | dict[str, float] | None:
    """--class-weights: 'balanced', or a JSON object of class weights (checked further by TrainConfig); only where
    LoRA trains (the other methods' fits take no weights)."""
    if value is not None and not lora:
        raise ConfigError(f"--class-weights weights the LoRA training loss; method {method!r} here trains none")
    if value is None or value == "balanced":
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(f"--class-weights must be 'balanced' or a JSON object like '{{\"spam\": 3}}', got {value!r}")
    return parsed


def _method_options(options: str | None, method: str, method_cls: Any, *, use_lora: bool) -> tuple[Any, bool]:
    """--options parsed, and whether LoRA trains; a refusal of a method that would learn nothing (zero-shot, or its
    LoRA switched off)."""
    try:
        parsed = json.loads(options) if options is not None else None
    except ValueError as exc:
        raise ConfigError(f"--options must be a JSON object, got {options!r} ({exc})") from exc
    if not (method_cls.learns_from_data or (use_lora and method_cls.trains_backbone)):
        raise ConfigError(f"method {method!r} learns nothing to train; use `classlm evaluate --method {method}`")
    return parsed, use_lora and method_cls.trains_backbone
