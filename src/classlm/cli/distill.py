"""``classlm distill``: train a (fast) student on a teacher's probabilities over unlabelled texts, into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.config_options import ConfigOptions, with_config_options
from classlm.cli.options import DtypeOpt, InstructionOpt, LabelColOpt, LabelsOpt, MethodOpt, ModelOpt, TextColOpt
from classlm.cli.rows import held_out_rows, label_spec_for, load_rows
from classlm.cli.runs import finish_run, prepare_run_folder, run_args, write_run_args
from classlm.cli.train import LORA_OPTIONS, TRAIN_OPTIONS, EvalSplitOpt, MethodOptionsOpt, _method_options
from classlm.config import TrainConfig
from classlm.errors import ConfigError, DataError

TEACHER_CACHE = ".teacher-probabilities.jsonl"  # a dot-name: a run folder may hold it (classlm.artifacts)
DISTILL_OPTIONS = ConfigOptions(
    TrainConfig,
    {
        **TRAIN_OPTIONS.params,
        "distill_alpha": "distill_alpha",
        "distill_temperature": "distill_temperature",
    },
    minimum=TRAIN_OPTIONS.minimum,
)


@with_config_options(training=DISTILL_OPTIONS, lora=LORA_OPTIONS)
def distill(
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher",
            help="A trained run or saved ensemble folder, or the URL of an OpenAI-compatible server "
            "(then --teacher-model).",
        ),
    ],
    unlabelled: Annotated[Path, typer.Option("--unlabelled", help="Texts the teacher labels (.txt, .jsonl, .csv…).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder, as `classlm train` writes it.")],
    labelled: Annotated[
        str | None, typer.Option("--labelled", help="Labelled data too (a dataset folder or file): mixed in.")
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option("--teacher-model", help="A server teacher: the model name it serves.")
    ] = None,
    teacher_tokenizer: Annotated[
        str | None, typer.Option("--teacher-tokenizer", help="A server teacher: render its prompt with this model.")
    ] = None,
    labels: LabelsOpt = None,
    model: ModelOpt = "smollm2-135m",
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    eval_split: EvalSplitOpt = None,
    *,
    training: dict[str, Any],
    lora: dict[str, Any],
    use_lora: Annotated[bool, typer.Option("--lora/--no-lora", help="LoRA for methods that train a backbone.")] = True,
    options: MethodOptionsOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run in --out: its labelling, then its training.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.")] = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    dtype: DtypeOpt = None,
) -> None:
    """Distil a teacher into a student: the teacher scores --unlabelled (cached in the run folder: --resume continues
    an interrupted run's labelling, then its training), the student trains on its probabilities (and on --labelled's
    labels), then the run is evaluated and reported like `classlm train`'s."""
    given = {k: v for k, v in locals().items() if k not in ("training", "lora")}
    args = run_args({**given, **DISTILL_OPTIONS.as_params(training), **LORA_OPTIONS.as_params(lora)})
    from classlm.classifier import LMClassifier
    from classlm.cli.common import parse_labels
    from classlm.methods import get_method

    method_options, trains_lora = _method_options(options, method, get_method(method), use_lora=use_lora)
    if training["loss"] != "class_ce":
        raise ConfigError("distill trains with --loss class_ce: the teacher's probabilities are over the classes")
    seed = training["seed"]
    texts = _unlabelled_texts(unlabelled, text_col)
    source = _teacher(teacher, teacher_model, teacher_tokenizer, labels)
    rows: dict[str, Any] = dict(text_col=text_col, label_col=label_col, labels_given=labels is not None)
    calib = None
    if labelled is not None:
        data = load_rows(labelled, split="train", seed=seed, **rows)
        spec = label_spec_for(labels, labelled, data, order=[str(c) for c in source.classes_])
        data, evaluation, calib, eval_source = held_out_rows(labelled, data, ("train", eval_split, None), seed, rows)
        hard_texts, hard_labels = list(data.texts), list(data.labels or [])
    else:  # no labels at all: the held-out rows are judged against the teacher's own answers
        spec = parse_labels(labels) or [str(c) for c in source.classes_]
        texts, evaluation = _teacher_held_out(texts, source, str(unlabelled), seed)
        eval_source = evaluation.source
        hard_texts, hard_labels = [], []
    clf = LMClassifier(model=model, method=method, labels=spec, instruction=instruction, dtype=dtype or "auto",
                       progress=True, method_options=method_options, lora=lora if trains_lora else None,
                       train=training)  # fmt: skip
    from classlm.checkpoints import has_checkpoints
    from classlm.distill import teacher_columns
    from classlm.labels import LabelSet

    teacher_columns(source, LabelSet.from_spec(spec).names)  # the same classes, before anything is written
    prepare_run_folder(out_dir, args, resume=resume, overwrite=overwrite)  # writes nothing on resume
    if resume:
        _check_resumable(out_dir)
    else:
        write_run_args(out_dir, args)
    fit: dict[str, Any] = {"teacher": source, "teacher_cache": out_dir / TEACHER_CACHE}
    if clf.trains_backbone():
        fit |= {"run_dir": out_dir, "eval_set": (list(evaluation.texts), list(evaluation.labels or []))}
        fit["resume"] = resume and has_checkpoints(out_dir)  # stopped while labelling: no checkpoint yet
    if calib is not None:
        fit["calib_set"] = (list(calib.texts), list(calib.labels or []))
    clf.fit(hard_texts + texts, hard_labels + [None] * len(texts), **fit)
    finish_run(clf, out_dir, evaluation, eval_source, baseline_rows=None)


def _unlabelled_texts(unlabelled: Path, text_col: str) -> list[str]:
    """--unlabelled's texts, checked before anything is written (a rerun would find a half-made folder)."""
    from classlm.data import read_texts

    texts = read_texts(str(unlabelled), text_col=text_col)
    if len(texts) < 2:
        raise DataError(
            f"--unlabelled {unlabelled}: expected at least 2 texts for the teacher to label (one per line in a .txt "
            f"file, or a {text_col!r} column), found {len(texts)}"
        )
    return texts


def _check_resumable(out_dir: Path) -> None:
    """A run stopped while labelling has no checkpoint and no classifier yet: it resumes. One that finished without a
    checkpoint (TF-IDF writes none; nor does --eval-every 0) would silently train again from step 0: refused."""
    from classlm.artifacts import MANIFEST
    from classlm.checkpoints import has_checkpoints

    if not has_checkpoints(out_dir) and (out_dir / MANIFEST).is_file():
        raise ConfigError(
            f"nothing to resume in {out_dir}: its run finished and wrote no checkpoint; pass --overwrite to train it "
            "again"
        )


def _teacher_held_out(texts: list[str], teacher: Any, name: str, seed: int) -> tuple[list[str], Any]:
    """Without --labelled: a seeded 10% of the texts held out for evaluation, labelled by the teacher's answers; the
    rest to train on."""
    import numpy as np

    from classlm.data import TextDataset

    held = sorted(np.random.default_rng(seed).permutation(len(texts))[: max(1, len(texts) // 10)].tolist())
    answers = tuple(str(v) for v in teacher.predict([texts[i] for i in held]))
    source = f"{name} (10% held out, labelled by the teacher)"
    evaluation = TextDataset(tuple(texts[i] for i in held), answers, source=source)
    kept = set(held)
    return [t for i, t in enumerate(texts) if i not in kept], evaluation


def _teacher(teacher: str, model: str | None, tokenizer: str | None, labels: str | None) -> Any:
    """--teacher: a saved run or ensemble, or a server (zero-shot over --labels, with the classes' names)."""
    if teacher.startswith(("http://", "https://")):
        from classlm import RemoteClassifier
        from classlm.cli.common import parse_labels

        if model is None or labels is None:
            raise ConfigError("a server --teacher needs --teacher-model (the name it serves) and --labels a,b,c")
        return RemoteClassifier(teacher, model, parse_labels(labels), tokenizer=tokenizer, progress=True).fit()
    from classlm.cli.classifiers import load_target

    if not Path(teacher).is_dir():
        raise ConfigError(f"--teacher {teacher!r} is neither a run folder nor an http(s):// server URL")
    return load_target(teacher, batch_size=64, batch_tokens=None, device="auto", labels=None, method="label_tokens",
                       instruction=None, scoring="auto", max_length=512)  # fmt: skip
