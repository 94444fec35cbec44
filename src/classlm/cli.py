"""The ``classlm`` command line: ``classify``, ``evaluate`` and ``inspect``.

User errors (bad labels, missing columns, unknown model, …) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import json
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
)
out = Console()
err = Console(stderr=True)

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
MethodOpt = Annotated[str, typer.Option("--method", help="label_tokens or letters.")]
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
        from classlm.data import find_label_names

        names = find_label_names(path)
        if names is None:
            raise ConfigError(f"{path} has no labels.json; pass --labels name1,name2,…")
        return names
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"labels file not found: {path}")
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated class names, got {spec!r}")
    return names


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


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

    _quiet_transformers()
    with err.status("loading the model (the first use of a .gguf dequantises it once, ~40 s)…"):
        if run is not None:
            return LMClassifier.load(
                run, batch_size=batch_size, batch_tokens=batch_tokens or None, device=device, progress=True
            )
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
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify (or use --file, or pipe stdin).")] = None,
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
) -> None:
    """Classify texts: the predicted label and every class's probability."""
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
    from classlm.metrics import softmax

    scores = clf.predict_scores(items, class_mass=class_mass)
    proba = softmax(clf.calibrator_.transform(scores.logits))
    classes = [str(c) for c in clf.classes_]
    if fmt == "jsonl":
        for i, text in enumerate(items):
            row: dict[str, Any] = {
                "text": text,
                "label": classes[int(proba[i].argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, proba[i])},
            }
            if scores.class_mass is not None:
                row["class_mass"] = round(float(scores.class_mass[i]), 6)
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
        if scores.class_mass is not None:
            table.add_column("class mass", justify="right")
        for i, text in enumerate(items):
            cells = [text.replace("\n", " "), classes[int(proba[i].argmax())]]
            if shown:
                cells += [f"{p:.3f}" for p in proba[i]]
            else:
                top = proba[i].argsort()[::-1][:3]
                cells.append(", ".join(f"{classes[j]} {proba[i, j]:.3f}" for j in top))
            if scores.class_mass is not None:
                cells.append(f"{scores.class_mass[i]:.3f}")
            table.add_row(*cells)
        out.print(table)
    if scores.n_truncated:
        err.print(f"{scores.n_truncated} text(s) were longer than the prompt allows and were truncated")


@app.command()
def evaluate(
    data: Annotated[str, typer.Argument(help="A data file, or a dataset folder with train/validation/test files.")],
    split: Annotated[str, typer.Option("--split", help="Split to evaluate when DATA is a folder.")] = "test",
    run: RunOpt = None,
    model: ModelOpt = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    text_col: Annotated[str, typer.Option("--text-col", help="Name of the text column.")] = "text",
    label_col: Annotated[str, typer.Option("--label-col", help="Name of the label column.")] = "label",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate the first N rows only.")] = None,
    calibrate_on: Annotated[
        str | None,
        typer.Option("--calibrate-on", help="Zero-shot only: fit the temperature on this split (must differ)."),
    ] = None,
    calibrate_limit: Annotated[
        int | None, typer.Option("--calibrate-limit", min=1, help="Rows of --calibrate-on to use.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report as JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the report as markdown here.")] = None,
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = DEFAULT_BATCH_TOKENS,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
) -> None:
    """Evaluate on a labelled dataset: accuracy, F1, NLL, Brier, ECE, per-class calibration ratio."""
    from classlm.data import load_dataset
    from classlm.evaluate import evaluate as run_evaluation

    dataset = load_dataset(data, split=split, text_col=text_col, label_col=label_col, limit=limit)
    assert dataset.labels is not None
    label_spec = parse_labels(labels)
    if label_spec is None and run is None:
        label_spec = list(dataset.label_names) if dataset.label_names else sorted(set(dataset.labels))
    calib = None
    if calibrate_on is not None:
        if run is not None:
            raise ConfigError("--calibrate-on is for zero-shot evaluation; use `classlm calibrate` for a saved run")
        if not Path(data).is_dir():
            raise ConfigError(
                "--calibrate-on needs DATA to be a dataset folder with several splits; with a single file, pass "
                "a separate calibration file to LMClassifier.fit in Python"
            )
        if calibrate_on == split:
            raise ConfigError(f"--calibrate-on {calibrate_on!r} is the evaluated split; calibration data must differ")
        calib = load_dataset(data, split=calibrate_on, text_col=text_col, label_col=label_col, limit=calibrate_limit)
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
    report = run_evaluation(
        clf, list(dataset.texts), list(dataset.labels), info={"data": dataset.source, "n": len(dataset)}
    )
    out.print(report.to_markdown(), soft_wrap=True, markup=False, highlight=False)
    if output is not None:
        report.to_json(output)
        err.print(f"report written to {output}")
    if markdown is not None:
        from classlm.reports import write_text_atomic

        write_text_atomic(markdown, report.to_markdown())


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
    if as_json:
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


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except ClasslmError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Exit):
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    main()
