"""``classlm evaluate``: accuracy, F1, NLL, Brier, ECE and per-class calibration ratios on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.classifiers import build_classifier
from classlm.cli.common import command_line, err, out
from classlm.cli.options import (
    BatchOpt,
    BatchTokensOpt,
    DeviceOpt,
    DropInvalidOpt,
    DtypeOpt,
    InstructionOpt,
    LabelColOpt,
    LabelsOpt,
    LimitOpt,
    MaxLenOpt,
    MethodOpt,
    ModelOpt,
    OosLabelOpt,
    RunOpt,
    ScoringOpt,
    SeedOpt,
    TextColOpt,
)
from classlm.cli.rows import label_spec_for, load_rows
from classlm.errors import ConfigError
from classlm.fields import input_fields
from classlm.multilabel import is_label_lists


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
    scoring: ScoringOpt = "auto",
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
    oos_label: OosLabelOpt = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report as JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the report as markdown here.")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report (charts inline) here.")
    ] = None,
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = None,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
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
    multi = _multi_label(dataset, zero_shot=run is None and calibrate_on is None)
    calib = None
    if calibrate_on is not None:
        _check_calibrate_on(calibrate_on, run=run, data=data, split=split)
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
        dtype=dtype,
        fit_texts=list(calib.texts) if calib is not None else None,
        fit_labels=list(calib.labels or []) if calib is not None else None,
        fields=None if run is not None else input_fields(dataset.texts),  # zero-shot: the data's text fields
    )
    if multi != bool(getattr(clf, "multi_label_", False)):
        kinds = ("one label per row", "a list of labels per row (multi-label)")
        raise ConfigError(f"{dataset.source} has {kinds[multi]}, but the classifier was trained on {kinds[not multi]}")
    info: dict[str, Any] = {"data": dataset.source, "n": len(dataset)}
    if limit is not None:
        info["sample"] = f"seeded stratified sample of {len(dataset)} rows (--limit {limit}, --seed {seed})"
    if getattr(clf, "progress", False):  # named apart from the calibration rows' bar before it
        clf.progress = f"scoring the {len(dataset)} evaluated rows"
    report = run_evaluation(clf, list(dataset.texts), list(dataset.labels), info=info, oos_label=oos_label)
    out.print(report.to_markdown(), soft_wrap=True, markup=False, highlight=False)
    _write_reports(report, clf, dataset.source, output=output, markdown=markdown, html=html)


def _write_reports(report: Any, clf: Any, source: str, *, output: Any, markdown: Any, html: Any) -> None:
    """--out (JSON), --markdown and --html, where asked for."""
    if output is not None:
        report.to_json(output)
        err.print(f"report written to {output}")
    if markdown is not None:
        from classlm.io import write_text_atomic

        write_text_atomic(markdown, report.to_markdown())
    if html is not None:
        from classlm.html_report import classifier_context, write_html

        title = f"classlm evaluate: {source}"
        write_html(html, title, [("evaluation", report)], command=command_line(), **classifier_context(clf))
        err.print(f"HTML report written to {html}")


def _multi_label(dataset: Any, *, zero_shot: bool) -> bool:
    """Whether the rows carry label lists; a zero-shot multi-label evaluation needs labelled rows for its cuts."""
    multi = is_label_lists(dataset.labels or ())
    if multi and zero_shot:
        raise ConfigError(
            f"{dataset.source} has a list of labels per row (multi-label): a zero-shot classifier needs labelled rows "
            "for its per-class calibration and cuts: pass --calibrate-on SPLIT (e.g. validation), or --run RUN"
        )
    return multi


def _check_calibrate_on(calibrate_on: str, *, run: Path | None, data: str, split: str) -> None:
    """--calibrate-on fits a zero-shot classifier's temperature on another split of the same dataset folder."""
    if run is not None:
        raise ConfigError("--calibrate-on is for zero-shot evaluation; use `classlm calibrate` for a saved run")
    if not Path(data).is_dir():
        raise ConfigError(
            "--calibrate-on needs DATA to be a dataset folder with several splits; with a single file, "
            "calibrate on another file with `classlm calibrate`, or split the file into a folder"
        )
    if calibrate_on == split:
        raise ConfigError(f"--calibrate-on {calibrate_on!r} is the evaluated split; calibration data must differ")
