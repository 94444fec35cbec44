"""The ``classlm`` command line: classify, evaluate, train, calibrate, export, bench, serve and inspect.

User errors (bad labels, missing columns, unknown model, …) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from classlm.config import DEFAULT_BATCH_TOKENS
from classlm.errors import ClasslmError, ConfigError

app = typer.Typer(
    name="classlm",
    help="Causal language models as text classifiers with a calibrated probability for every class.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click usage errors ("Usage: … Error: No such option: --x", exit 2) instead of rich panels: they read
    # the same piped or in a terminal, and the usage line is what a user copies.
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are read whole (and grepped): never cut at 80 columns
# The rows `classlm bench` runs by default (classlm.bench.ENTRIES names them all); here to keep the CLI import light.
DEFAULT_BENCH_METHODS = (
    "label_tokens,letters,few_shot,generate,similarity,tfidf,embedding,hidden_head,hidden_head_prompt,lora"
)

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
ScoringOpt = Annotated[str, typer.Option("--scoring", help="first_token (fast) or exact (all answer tokens).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="At most this many texts per forward pass.")]
BatchTokensOpt = Annotated[
    int, typer.Option("--batch-tokens", min=0, help="At most this many padded tokens per forward pass (0: no limit).")
]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="Token limit per prompt; texts are cut inside.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


def parse_labels(spec: str | None) -> Any:
    """``--labels``: a comma list, a JSON file, or a dataset folder with labels.json."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_dir():
        from classlm.data import find_label_spec

        found = find_label_spec(path)
        if found is None:
            raise ConfigError(f"{path} has no labels.json; pass --labels name1,name2,…")
        return found
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"labels file not found: {path}")
        from classlm.data import read_labels_file

        return read_labels_file(path)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated class names, got {spec!r}")
    return names


# The library's messages name Python arguments (``method='letters'``); on the command line the same advice must
# name the flags. Ordered: the specific patterns come before the generic ``name=value`` ones.
def _flag(m: re.Match[str]) -> str:
    value = next((g for g in m.groups()[1:] if g), None)
    return f"--{m.group(1).replace('_', '-')}" + (f" {value}" if value else "")


_CLI_TERMS: tuple[tuple[str, Any], ...] = (
    (r"\s*\(--[a-z-]+( on the command line)?\)", ""),  # "(--split on the command line)": the rewrite says it
    (r"labels=\{name: \{'verbalizer': \.\.\.\}\}", '--labels FILE.json holding {"NAME": {"verbalizer": "..."}}'),
    (r"labels=\[([^\]]*)\]", lambda m: "--labels " + ",".join(re.findall(r"'([^']*)'", m.group(1)))),
    (r"\b(split|text_col|label_col)=(?:'\.\.\.'|\.\.\.|'([^']*)')", _flag),
    (r"\b(method|scoring|loss|device|max_length|eval_every)=(?:'([^']*)'|(\d+))", _flag),
    (r"\b(raise|lower) (max_length|eval_every)\b", lambda m: f"{m.group(1)} --{m.group(2).replace('_', '-')}"),
    (r"\bload with drop_invalid=True\b", "pass --drop-invalid"),
    (r", or pass label_col=None, require_labels=False for unlabelled data", ""),
    (r" and pass the Dataset\b", ", save it with Dataset.to_json('data.jsonl') and pass that file"),
)


def cli_terms(message: str) -> str:
    """A library error message with its Python spellings replaced by the CLI flags that do the same."""
    for pattern, replacement in _CLI_TERMS:
        message = re.sub(pattern, replacement, message)
    return message


class _WarningsToStderr(logging.Handler):
    """classlm's warnings (e.g. an --eval-every longer than the run) as one ``warning:`` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]warning:[/] {escape(cli_terms(record.getMessage()))}", highlight=False, soft_wrap=True)


def _log_warnings() -> None:
    logger = logging.getLogger("classlm")
    if not any(isinstance(h, _WarningsToStderr) for h in logger.handlers):
        handler = _WarningsToStderr(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.WARNING, logging.WARNING))


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_run(run: Path, *, batch_size: int = 64, batch_tokens: int = DEFAULT_BATCH_TOKENS, device: str = "auto") -> Any:
    """A saved classifier, with the run options of this command."""
    from classlm.classifier import LMClassifier

    _quiet_transformers()
    with err.status(f"loading {run}…"):
        return LMClassifier.load(
            run, batch_size=batch_size, batch_tokens=batch_tokens or None, device=device, progress=True
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
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    fit_texts: list[str] | None = None,
    fit_labels: list[str] | None = None,
) -> Any:
    """A ready classifier: loaded from ``run``, or zero-shot from the options (labels required); with
    ``fit_texts``/``fit_labels`` the zero-shot classifier's temperature is fitted on them."""
    from classlm.classifier import LMClassifier

    if run is not None:
        return load_run(run, batch_size=batch_size, batch_tokens=batch_tokens, device=device)
    from classlm.methods import get_method

    if get_method(method).learns_from_data:
        raise ConfigError(
            f"method {method!r} learns from labelled data: train it first with `classlm train DATA --method {method} "
            "--out RUN`, then pass --run RUN"
        )
    _quiet_transformers()
    with err.status("loading the model (the first use of a .gguf dequantises it once, ~40 s)…"):
        if labels is None:
            raise ConfigError("no classes given: pass --labels a,b,c (or --run RUN for a saved classifier)")
        clf = LMClassifier(
            model=model,
            method=method,
            labels=labels,
            instruction=instruction,
            scoring=scoring,
            batch_size=batch_size,
            batch_tokens=batch_tokens or None,
            max_length=max_length,
            device=device,
            progress=True,
        )
        return clf.fit(fit_texts or [], fit_labels)


@app.command()
def classify(
    texts: Annotated[
        list[str] | None, typer.Argument(metavar="TEXTS", help="Texts to classify (or use --file, or pipe stdin).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="One text per line (.txt), or a data file; '-' is stdin.")
    ] = None,
    run: RunOpt = None,
    model: ModelOpt = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    fmt: Annotated[str, typer.Option("--format", help="table or jsonl.")] = "table",
    text_col: Annotated[str, typer.Option("--text-col", help="Text column of a data file.")] = "text",
    class_mass: Annotated[bool, typer.Option("--class-mass", help="Also report the class-token mass.")] = False,
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = DEFAULT_BATCH_TOKENS,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    backend: Annotated[
        str, typer.Option("--backend", help="local (the model runs here) or openai (a server with logprobs).")
    ] = "local",
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="openai backend: the server, e.g. http://127.0.0.1:8080.")
    ] = None,
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="openai backend: completions (prompt rendered here) or chat.")
    ] = "completions",
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer", help="openai backend, completions: render the prompt with this model's chat template."
        ),
    ] = None,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", min=1, help="openai backend: top-k asked for.")] = 20,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai backend: requests at once.")] = 4,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="openai backend: seconds per request.")] = 30.0,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="openai backend: Bearer token.")
    ] = None,
) -> None:
    """Classify texts: the predicted label and every class's probability.

    With --backend openai the model runs on an OpenAI-compatible server that returns logprobs (vLLM, llama.cpp's
    llama-server, …); --model is then the server's model name.
    """
    from classlm.data import read_texts

    if fmt not in ("table", "jsonl"):
        raise ConfigError(f"--format must be 'table' or 'jsonl', got {fmt!r}")
    items = list(texts or [])
    if file is not None:
        items += read_texts(str(file), text_col=text_col)
    elif not items and not sys.stdin.isatty():
        items = read_texts("-")
    if not items:
        raise ConfigError("no texts: give them as arguments, with --file FILE, or on stdin")
    missing = None
    if backend == "openai":
        if base_url is None:
            raise ConfigError("--backend openai needs --base-url (e.g. http://127.0.0.1:8080)")
        if run is not None:
            raise ConfigError("--run is a locally trained classifier; the openai backend classifies zero-shot")
        if scoring != "first_token":
            raise ConfigError(
                "--scoring exact needs every answer token's log-probability; the openai backend "
                "reads the next token's top-k only, so it scores the first token"
            )
        from classlm import RemoteClassifier

        remote = RemoteClassifier(
            base_url,
            model,
            parse_labels(labels),
            method=method,
            instruction=instruction,
            endpoint=endpoint,
            tokenizer=tokenizer,
            top_logprobs=top_logprobs,
            api_key=api_key,
            timeout=timeout,
            concurrency=concurrency,
            progress=True,
        )
        if remote.labels is None:
            raise ConfigError("no classes given: pass --labels a,b,c")
        clf: Any = remote.fit()
        scores: Any = remote.predict_scores(items)
        missing = scores.missing_mass
    elif backend == "local":
        clf = build_classifier(
            run=run,
            model=model,
            labels=parse_labels(labels),
            method=method,
            instruction=instruction,
            scoring=scoring,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            max_length=max_length,
            device=device,
        )
        scores = clf.predict_scores(items, class_mass=class_mass)
    else:
        raise ConfigError(f"--backend must be 'local' or 'openai', got {backend!r}")
    from classlm.metrics import softmax

    proba = softmax(clf.calibrator_.transform(scores.logits))
    classes = [str(c) for c in clf.classes_]
    values = clf.classes_.tolist()  # the labels as JSON values of their own type: integer classes stay integers
    if fmt == "jsonl":
        for i, text in enumerate(items):
            row: dict[str, Any] = {
                "text": text,
                "label": values[int(proba[i].argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, proba[i])},
            }
            if class_mass and scores.class_mass is not None:
                row["class_mass"] = round(float(scores.class_mass[i]), 6)
            if missing is not None:
                # Probability given to classes absent from the server's top-k: an upper-bound estimate, not a reading.
                row["missing_mass"] = round(float(missing[i]), 6)
            if scores.truncated is not None:
                row["truncated"] = bool(scores.truncated[i])
            print(json.dumps(row, ensure_ascii=False))
    else:
        table = Table(show_lines=False)
        table.add_column("text", overflow="ellipsis", max_width=48, no_wrap=True)
        table.add_column("label", style="bold")
        shown = classes if len(classes) <= 8 else []
        for c in shown:
            table.add_column(c, justify="right")
        if not shown:
            table.add_column("top classes")
        if class_mass and scores.class_mass is not None:
            table.add_column("class mass", justify="right")
        if missing is not None:
            table.add_column("missing", justify="right")
        for i, text in enumerate(items):
            cells = [text.replace("\n", " "), classes[int(proba[i].argmax())]]
            if shown:
                cells += [f"{p:.3f}" for p in proba[i]]
            else:
                top = proba[i].argsort()[::-1][:3]
                cells.append(", ".join(f"{classes[j]} {proba[i, j]:.3f}" for j in top))
            if class_mass and scores.class_mass is not None:
                cells.append(f"{scores.class_mass[i]:.3f}")
            if missing is not None:
                cells.append(f"{missing[i]:.3f}")
            table.add_row(*cells)
        out.print(table)
    if scores.n_truncated:
        err.print(
            f"{scores.n_truncated} text(s) were longer than the classifier reads and were truncated (raise "
            "--max-length for the prompt methods; a sentence encoder reads a fixed number of tokens)"
        )


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


def load_rows(
    data: str,
    *,
    split: str,
    text_col: str,
    label_col: str,
    limit: int | None = None,
    seed: int = 0,
    labels_given: bool = False,
    drop_invalid: bool = False,
) -> Any:
    """A labelled split for a CLI verb: ``--limit`` as a seeded stratified sample, ``--drop-invalid`` reported.

    With ``--labels`` given, a ``labels.json`` beside the data is not read: the explicit classes win.
    """
    from classlm.data import load_dataset

    dataset = load_dataset(
        data,
        split=split,
        text_col=text_col,
        label_col=label_col,
        label_names=not labels_given,
        drop_invalid=drop_invalid,
    )
    if dataset.dropped:
        err.print(f"--drop-invalid: left out {dataset.dropped} row(s) of {dataset.source} (empty text or no label)")
    return dataset.sample(limit, seed)


def label_spec_for(labels: str | None, data: str, dataset: Any) -> Any:
    """``--labels`` if given, else the data's ``labels.json`` (its descriptions too), else the labels seen."""
    from classlm.data import find_label_spec

    spec = parse_labels(labels)
    if spec is None and Path(data).exists():
        spec = find_label_spec(data)
    return spec if spec is not None else sorted(set(dataset.labels))


@app.command()
def evaluate(
    data: Annotated[
        str,
        typer.Argument(metavar="DATA", help="A data file or a dataset folder; or RUN then DATA: `evaluate RUN DATA`."),
    ],
    data2: Annotated[str | None, typer.Argument(metavar="DATA", help="The data, when the first is a RUN.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate when DATA is a folder.")] = "test",
    run: RunOpt = None,
    model: ModelOpt = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    limit: LimitOpt = None,
    calibrate_on: Annotated[
        str | None,
        typer.Option("--calibrate-on", help="Zero-shot only: fit the temperature on this split (must differ)."),
    ] = None,
    calibrate_limit: Annotated[
        int | None,
        typer.Option("--calibrate-limit", min=1, help="A seeded stratified sample of N rows of --calibrate-on."),
    ] = None,
    seed: SeedOpt = 0,
    drop_invalid: DropInvalidOpt = False,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report as JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the report as markdown here.")] = None,
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = DEFAULT_BATCH_TOKENS,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
) -> None:
    """Evaluate on a labelled dataset: accuracy, F1, NLL, Brier, ECE, per-class calibration ratio."""
    from classlm.evaluation import evaluate as run_evaluation

    if data2 is not None:  # `classlm evaluate RUN DATA`
        if run is not None:
            raise ConfigError("give the run once: either `evaluate RUN DATA` or `evaluate DATA --run RUN`")
        run, data = Path(data), data2
    rows: dict[str, Any] = {"text_col": text_col, "label_col": label_col, "seed": seed, "drop_invalid": drop_invalid}
    given = labels is not None or run is not None
    dataset = load_rows(data, split=split, limit=limit, labels_given=given, **rows)
    label_spec = None if run is not None else label_spec_for(labels, data, dataset)
    calib = None
    if calibrate_on is not None:
        if run is not None:
            raise ConfigError("--calibrate-on is for zero-shot evaluation; use `classlm calibrate` for a saved run")
        if not Path(data).is_dir():
            raise ConfigError(
                "--calibrate-on needs DATA to be a dataset folder with several splits; with a single file, "
                "calibrate on another file with `classlm calibrate`, or split the file into a folder"
            )
        if calibrate_on == split:
            raise ConfigError(f"--calibrate-on {calibrate_on!r} is the evaluated split; calibration data must differ")
        calib = load_rows(data, split=calibrate_on, limit=calibrate_limit, labels_given=given, **rows)
    clf = build_classifier(
        run=run,
        model=model,
        labels=label_spec,
        method=method,
        instruction=instruction,
        scoring=scoring,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        max_length=max_length,
        device=device,
        fit_texts=list(calib.texts) if calib is not None else None,
        fit_labels=list(calib.labels or []) if calib is not None else None,
    )
    info: dict[str, Any] = {"data": dataset.source, "n": len(dataset)}
    if limit is not None:
        info["sample"] = f"seeded stratified sample of {len(dataset)} rows (--limit {limit}, --seed {seed})"
    report = run_evaluation(clf, list(dataset.texts), list(dataset.labels), info=info)
    out.print(report.to_markdown(), soft_wrap=True, markup=False, highlight=False)
    if output is not None:
        report.to_json(output)
        err.print(f"report written to {output}")
    if markdown is not None:
        from classlm.reports import write_text_atomic

        write_text_atomic(markdown, report.to_markdown())


def _has_split(data: str, split: str) -> bool:
    folder = Path(data)
    return folder.is_dir() and any(
        (folder / f"{split}{ext}").is_file() for ext in (".jsonl", ".csv", ".tsv", ".parquet")
    )


# What a run's options leave out when --resume compares them with the interrupted run's: how it runs, not what.
RESUME_IGNORES = ("resume", "overwrite", "device", "batch_size", "batch_tokens")


def _run_entries(folder: Path) -> list[Path]:
    """What a run (``classlm train`` and the classifier's save) left in ``folder``; refuses a folder that holds
    anything else, before any training: the save at the end would refuse it, after the work was done."""
    from classlm.artifacts import is_run_entry

    if not folder.is_dir():
        return []
    entries = sorted(folder.iterdir())
    foreign = [p.name for p in entries if not is_run_entry(p.name)]
    if foreign:
        raise ConfigError(
            f"--out {folder} holds files that are not a classlm run's ({', '.join(foreign[:3])}); choose a new "
            "or empty --out"
        )
    return entries


def _clear_run(entries: list[Path]) -> None:
    import shutil

    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _held_out_eval(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(training rows, evaluation rows): a stratified ``fraction`` of the training split held out for evaluation
    when DATA has no validation split, so that the temperature's calibration rows are not also the eval set."""
    from classlm.data import stratified_split

    keep, held = stratified_split(list(dataset.labels), fraction, seed=seed + 1)
    return dataset.subset(keep), dataset.subset(held)


@app.command()
def train(
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="A dataset folder (train/validation/test files) or a labelled file.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder: metrics, checkpoints, plots, classifier.")],
    labels: LabelsOpt = None,
    model: ModelOpt = "smollm2-135m",
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    split: Annotated[str, typer.Option("--split", help="Training split when DATA is a folder.")] = "train",
    eval_split: Annotated[
        str | None,
        typer.Option(
            "--eval-split",
            help="Held-out split evaluated during training and at the end (default: 'validation' when DATA has "
            "one, else a stratified 10% of the training rows, disjoint from the calibration rows).",
        ),
    ] = None,
    calib_split: Annotated[
        str | None,
        typer.Option("--calib-split", help="Split for the temperature (default: a stratified slice of train)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Train on a seeded random sample of N rows, stratified by class."),
    ] = None,
    eval_limit: Annotated[int, typer.Option("--eval-limit", min=1, help="Rows evaluated during training.")] = 500,
    loss: Annotated[
        str, typer.Option("--loss", help="class_ce (over the k class logits) or vocab_ce (SFT).")
    ] = "class_ce",
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-4,
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over the training data.")] = 1.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after N steps.")] = None,
    train_batch: Annotated[int, typer.Option("--train-batch", min=1, help="Examples per optimiser step.")] = 16,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per step.")] = 1,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha.")] = 32,
    use_lora: Annotated[
        bool, typer.Option("--lora/--no-lora", help="LoRA on the backbone, for methods that train one.")
    ] = True,
    options: Annotated[
        str | None, typer.Option("--options", help='The method\'s options as JSON, e.g. \'{"head": "mlp"}\'.')
    ] = None,
    eval_every: Annotated[
        int, typer.Option("--eval-every", min=0, help="Evaluate every N steps (0: at the end).")
    ] = 50,
    patience: Annotated[
        int | None, typer.Option("--patience", min=1, help="Early stop after N evals w/o gain.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for LoRA init, data order and held-out splits.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete the run already in --out (its run files only) and start anew.")
    ] = False,
    drop_invalid: DropInvalidOpt = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = DEFAULT_BATCH_TOKENS,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
) -> None:
    """Train a classifier: LoRA adapters (label_tokens, letters; with hidden_head also its head), or what another
    method learns (a head, TF-IDF, few-shot examples: use --no-lora or a method without a backbone)."""
    # What defines the run (a resumed run must be given the same); first, while locals() holds only the options.
    # Through JSON, as train_args.json holds them: a tuple or Path would never equal what was read back.
    args = json.loads(json.dumps({k: v for k, v in locals().items() if k not in RESUME_IGNORES}, default=str))
    from classlm.classifier import LMClassifier
    from classlm.evaluation import evaluate as run_evaluation
    from classlm.methods import get_method
    from classlm.reports import plot_reliability, plot_training_curves, write_text_atomic
    from classlm.training import read_metrics

    method_cls = get_method(method)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
    args_file = out_dir / "train_args.json"
    existing = _run_entries(out_dir)
    if resume:
        if not args_file.is_file():
            raise ConfigError(f"nothing to resume: {args_file} not found (was {out_dir} made by `classlm train`?)")
        saved = json.loads(args_file.read_text())
        changed = {k: (saved.get(k), v) for k, v in args.items() if saved.get(k) != v}
        if changed:
            shown = ", ".join(
                f"--{k.replace('_', '-')}: {was!r} then, {now!r} now" for k, (was, now) in changed.items()
            )
            raise ConfigError(f"--resume needs the options of the interrupted run; these differ: {shown}")
    elif existing:
        if not overwrite:
            raise ConfigError(
                f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, or "
                "choose a new --out"
            )
        _clear_run(existing)
    try:
        method_options = json.loads(options) if options is not None else None
    except ValueError as exc:
        raise ConfigError(f"--options must be a JSON object, got {options!r} ({exc})") from exc
    if not (method_cls.learns_from_data or (use_lora and method_cls.trains_backbone)):
        raise ConfigError(f"method {method!r} learns nothing to train; use `classlm evaluate --method {method}`")
    rows: dict[str, Any] = {"text_col": text_col, "label_col": label_col, "labels_given": labels is not None}
    dataset = load_rows(data, split=split, limit=limit, seed=seed, drop_invalid=drop_invalid, **rows)
    label_spec = label_spec_for(labels, data, dataset)
    evaluation = calibration = None
    eval_source = None
    if eval_split is not None and not _has_split(data, eval_split):
        raise ConfigError(f"--eval-split {eval_split!r}: {data} has no such split (a folder with {eval_split}.jsonl)")
    if eval_split is None and _has_split(data, "validation") and "validation" not in (split, calib_split):
        eval_split = "validation"
    if eval_split is not None:
        evaluation = load_rows(data, split=eval_split, drop_invalid=drop_invalid, **rows)
    else:
        dataset, evaluation = _held_out_eval(dataset, 0.1, seed)
        eval_source = f"{evaluation.source}: {len(evaluation)} rows held out of the training split for evaluation"
        err.print(
            f"{data} has no validation split: evaluating on {len(evaluation)} training rows held out for it, "
            "apart from the calibration rows (name a split with --eval-split)"
        )
    if calib_split is not None:
        if calib_split in (split, eval_split):
            raise ConfigError(f"--calib-split {calib_split!r} must differ from the training and evaluation splits")
        calibration = load_rows(data, split=calib_split, drop_invalid=drop_invalid, **rows)
    clf = LMClassifier(
        model=model,
        method=method,
        labels=label_spec,
        instruction=instruction,
        scoring=scoring,
        batch_size=batch_size,
        batch_tokens=batch_tokens or None,
        max_length=max_length,
        device=device,
        progress=True,
        method_options=method_options,
        lora={"r": lora_r, "alpha": lora_alpha} if use_lora and method_cls.trains_backbone else None,
        train={
            "loss": loss,
            "lr": lr,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": train_batch,
            "grad_accum": grad_accum,
            "eval_every": eval_every,
            "eval_limit": eval_limit,
            "patience": patience,
            "seed": seed,
        },
    )
    backbone_training = clf.trains_backbone()
    if resume and not backbone_training:
        raise ConfigError(f"--resume continues backbone training; method {method!r} here trains in one go: rerun it")
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args_file, json.dumps(args, indent=2))
    _quiet_transformers()
    loop: dict[str, Any] = {"eval_set": None, "run_dir": out_dir, "resume": resume} if backbone_training else {}
    if backbone_training:
        loop["eval_set"] = (list(evaluation.texts), list(evaluation.labels or []))
    clf.fit(
        list(dataset.texts),
        list(dataset.labels),
        calib_set=(list(calibration.texts), list(calibration.labels or [])) if calibration is not None else None,
        **loop,
    )
    clf.save(out_dir)
    metric_rows = read_metrics(out_dir)
    if metric_rows:
        plot_training_curves(metric_rows, out_dir / "training_curves.png")
    err.print(training_summary(clf.training_, clf.temperature_))
    report = run_evaluation(
        clf, list(evaluation.texts), list(evaluation.labels or []), info={"data": eval_source or evaluation.source}
    )
    report.to_json(out_dir / "eval.json")
    plot_reliability(report, out_dir / "reliability.png")
    out.print(report.to_markdown(), soft_wrap=True, markup=False, highlight=False)
    err.print(f"classifier saved to {out_dir}")


def training_summary(t: dict[str, Any], temperature: float) -> str:
    """One line: steps, examples seen (not the rows there were to see), time, throughput, temperature."""
    if "steps" in t:
        what = f"trained {t['steps']} steps, {t['examples_seen']} examples seen of {t['n_train']} training rows"
    else:
        what = f"trained on {t['n_train']} examples"
    speed = f"{t['examples_per_second'] or 0:.2f} examples/s"
    return f"{what} in {t['seconds']:.0f} s ({speed}); temperature {temperature:.3f}"


@app.command()
def calibrate(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A saved classifier folder.")],
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Labelled data held out from training (file or dataset folder).")
    ],
    split: Annotated[str, typer.Option("--split", help="Split when DATA is a folder.")] = "validation",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    drop_invalid: DropInvalidOpt = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
) -> None:
    """Refit a saved classifier's temperature on held-out data and save it (metrics before/after are recorded)."""
    dataset = load_rows(
        data,
        split=split,
        text_col=text_col,
        label_col=label_col,
        limit=limit,
        seed=seed,
        labels_given=True,
        drop_invalid=drop_invalid,
    )
    clf = load_run(run, batch_size=batch_size, device=device)
    clf.calibrate(list(dataset.texts), list(dataset.labels or []), source=f"classlm calibrate: {dataset.source}")
    clf.save(run)
    info = clf.calibration_info_
    out.print(
        f"temperature {clf.temperature_:.4f} on {info['n']} rows: NLL {info['before']['nll']:.4f} -> "
        f"{info['after']['nll']:.4f}, ECE {info['before']['ece']:.4f} -> {info['after']['ece']:.4f}"
    )


@app.command()
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


@app.command()
def bench(
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="A dataset folder with train and test splits (and labels.json).")
    ],
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated rows to run; see classlm.bench.ENTRIES.")
    ] = DEFAULT_BENCH_METHODS,
    budget: Annotated[
        int, typer.Option("--budget", min=1, help="Training examples every learning method gets (the same ones).")
    ] = 1000,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="Test rows (a seeded sample).")] = 1000,
    n_calib: Annotated[int, typer.Option("--n-calib", min=1, help="Calibration rows, held out of train.")] = 500,
    n_eval: Annotated[int, typer.Option("--n-eval", min=1, help="Eval rows (ensemble weights, LoRA evals).")] = 300,
    ensemble: Annotated[
        str | None, typer.Option("--ensemble", help="Also an Ensemble of these rows (comma-separated).")
    ] = None,
    prompt_file: Annotated[
        Path | None,
        typer.Option("--prompt", help='JSON {"instruction": …, "labels": {name: description}} for the dataset.'),
    ] = None,
    labels: LabelsOpt = None,
    instruction: InstructionOpt = None,
    model: ModelOpt = "smollm2-135m",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits and of LoRA / backbone training.")] = 0,
    output: Annotated[Path, typer.Option("--out", "-o", help="Folder for bench_<dataset>.json and .md.")] = Path("."),
    device: DeviceOpt = "auto",
) -> None:
    """Compare methods side by side on one dataset: same splits, same seed, same training budget."""
    from classlm.bench import check_methods, machine, make_splits, run_bench, write_results
    from classlm.data import load_dataset

    names = [m.strip() for m in methods.split(",") if m.strip()]
    members = [m.strip() for m in (ensemble or "").split(",") if m.strip()]
    check_methods(names, members)
    if not Path(data).is_dir():
        raise ConfigError(f"bench needs a dataset folder with train and test splits, got {data}")
    train_set = load_dataset(data, split="train")
    test_set = load_dataset(data, split="test")
    assert train_set.labels is not None and test_set.labels is not None
    label_spec = parse_labels(labels)
    if prompt_file is not None:
        try:
            spec = json.loads(prompt_file.read_text())
            label_spec = label_spec or spec["labels"]
            instruction = instruction or spec.get("instruction")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f'--prompt {prompt_file}: expected JSON {{"instruction", "labels"}} ({exc})') from exc
    if label_spec is None:
        label_spec = list(train_set.label_names) if train_set.label_names else sorted(set(train_set.labels))
    splits = make_splits(
        list(train_set.texts),
        list(train_set.labels),
        list(test_set.texts),
        list(test_set.labels),
        budget=budget,
        n_calib=n_calib,
        n_eval=n_eval,
        n_test=n_test,
        seed=seed,
    )
    dataset = Path(data).resolve().name
    doc: dict[str, Any] = {
        "benchmark": "bench",
        "dataset": dataset,
        "command": shlex.join(["classlm", "bench", *sys.argv[2:]]),
        "machine": machine(device),
        "model": model,
        "seed": seed,
        "budget": budget,
        "splits": splits.info,
        "rows": {},
    }

    def on_row(name: str, row: dict[str, Any]) -> None:
        doc["rows"][name] = row  # written after every row: a long run keeps what it finished
        write_results(doc, output, f"bench_{dataset}")
        err.print(f"[{dataset}] {name}: macro-F1 {row['macro_f1']:.3f}, NLL {row['nll']:.3f}, ECE {row['ece']:.3f}")

    _quiet_transformers()
    run_bench(
        splits,
        names,
        labels=label_spec,
        instruction=instruction,
        model=model,
        device=device,
        seed=seed,
        ensemble=members,
        progress=True,
        on_row=on_row,
    )
    json_path, md_path = write_results(doc, output, f"bench_{dataset}")
    md = md_path.read_text()
    out.print(md, soft_wrap=True, markup=False, highlight=False)
    err.print(f"results written to {json_path} and {md_path}")


def load_target(target: str, **build: Any) -> Any:
    """``classlm serve``'s TARGET: a saved run, a saved ensemble, or a model name (zero-shot, with --labels)."""
    from classlm.ensemble import ENSEMBLE_MANIFEST

    path = Path(target)
    if (path / ENSEMBLE_MANIFEST).is_file():
        from classlm.ensemble import Ensemble

        _quiet_transformers()
        with err.status(f"loading the ensemble {path}…"):
            return Ensemble.load(
                path, batch_size=build["batch_size"], batch_tokens=build["batch_tokens"] or None, device=build["device"]
            )
    from classlm.artifacts import MANIFEST

    is_run = (path / MANIFEST).is_file()
    return build_classifier(run=path if is_run else None, model=target, **build)


@app.command()
def serve(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="A saved run or ensemble folder, or a model (alias, .gguf, HF folder) used with --labels.",
        ),
    ] = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback unless you mean to expose it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on.")] = 8000,
    batching: Annotated[
        bool, typer.Option("--batching/--no-batching", help="Micro-batch concurrent requests into one scoring call.")
    ] = True,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="At most this many texts per scoring call.")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="How long a batch's first request waits for company.")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Texts waiting at most; beyond it requests get 503.")
    ] = 1024,
    max_texts: Annotated[int, typer.Option("--max-texts", min=1, help="Texts per request at most.")] = 64,
    max_chars: Annotated[int, typer.Option("--max-chars", min=1, help="Characters per text at most.")] = 20_000,
    max_body: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Request body size at most.")] = 1_000_000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="CLASSLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."),
    ] = None,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.001, help="Seconds per request before a 504.")
    ] = 60.0,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", min=0.001, help="Seconds for a request's headers to arrive.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.001, help="Seconds for a request's body to arrive (else 408).")
    ] = 30.0,
    keep_alive_timeout: Annotated[
        float, typer.Option("--keep-alive-timeout", min=0.001, help="Seconds an idle connection stays open.")
    ] = 5.0,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, help="Open connections at most; beyond it requests get 503.")
    ] = 1000,
    batch_tokens: BatchTokensOpt = DEFAULT_BATCH_TOKENS,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a classifier over HTTP: POST /v1/classify, GET /v1/model, /health, /metrics; docs at /docs."""
    from classlm.serving import ServeSettings, run

    settings = ServeSettings(
        host=host,
        port=port,
        batching=batching,
        max_batch_texts=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue_texts=max_queue,
        max_texts=max_texts,
        max_chars=max_chars,
        max_body_bytes=max_body,
        api_key=api_key,
        request_timeout_s=request_timeout,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
        max_connections=max_connections,
    )
    # Loaded before uvicorn starts, so a bad TARGET or label list is a one-line error, not a lifespan traceback.
    classifier = load_target(
        target,
        labels=parse_labels(labels),
        method=method,
        instruction=instruction,
        scoring=scoring,
        batch_size=max_batch,
        batch_tokens=batch_tokens,
        max_length=max_length,
        device=device,
    )
    for member in getattr(classifier, "_members_", [classifier]):
        member.progress = False  # a progress bar per micro-batch would flood the log
    err.print(f"serving {len(classifier.classes_)} classes on http://{host}:{port} (docs at /docs)")
    run(classifier, settings, log_level=log_level)


@app.command()
def inspect(
    run: RunOpt = None,
    model: ModelOpt = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    text: Annotated[str, typer.Option("--text", help="Example text shown in the rendered prompt.")] = "<text>",
    max_length: MaxLenOpt = 512,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show how the labels map to tokens and the exact prompt the model reads."""
    clf = build_classifier(
        run=run,
        model=model,
        labels=parse_labels(labels),
        method=method,
        instruction=instruction,
        scoring=scoring,
        batch_size=1,
        max_length=max_length,
        device="auto",
    )
    desc = clf.method_.describe()
    if as_json or "token_ids" not in desc:  # methods without class tokens: their description as it is
        print(json.dumps({**desc, "classes": list(map(str, clf.classes_))}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"classes → tokens ({desc['scoring']} scoring)")
    for col in ("class", "answer", "tokens", "ids"):
        table.add_column(col)
    for name, answer, toks, ids in zip(clf.classes_, desc["answers"], desc["tokens"], desc["token_ids"]):
        table.add_row(str(name), repr(answer), " ".join(toks), " ".join(map(str, ids)))
    out.print(table)
    out.print(
        f"prompt: {desc['prompt_tokens']} tokens around the text (chat template: {desc['chat_template']}); "
        f"room for {desc['text_budget']} text tokens"
    )
    out.rule("rendered prompt")
    out.print(desc["prompt_head"] + text + desc["prompt_tail"], markup=False, highlight=False)
    out.rule()


def _version_callback(value: bool) -> None:
    if value:
        from classlm import __version__

        print(f"classlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Causal language models as text classifiers with a calibrated probability for every class."""


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2.

    Usage errors (unknown option, missing argument, bad number) are left to typer's standalone mode, which prints
    click's usage message and exits 2: typer bundles its own copy of click, so catching ``click``'s exception
    classes here would miss them (they surfaced as tracebacks). Only classlm's own errors are caught.
    """
    _log_warnings()
    try:
        app(prog_name="classlm")
    except ClasslmError as exc:
        err.print(f"[bold red]error:[/] {escape(cli_terms(str(exc)))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
