"""The run folder ``classlm train --out`` writes: refusing what is not a run, --resume and --overwrite, the options
file (``train_args.json``), and the files written when training ends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.markup import escape

from classlm.cli.common import command_line, err, out, quiet_transformers
from classlm.errors import ConfigError

ARGS_FILE = "train_args.json"
# What a run's options leave out when --resume compares them with the interrupted run's: how it runs, not what.
RESUME_IGNORES = ("resume", "overwrite", "device", "batch_size", "batch_tokens", "baseline")


def run_args(options: dict[str, Any]) -> dict[str, Any]:
    """What defines the run (a resumed run must be given the same), keyed by parameter name (``--lr``: ``lr``).

    Through JSON, as train_args.json holds them: a tuple or Path would never equal what was read back.
    """
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in RESUME_IGNORES}, default=str))


def prepare_run_folder(out_dir: Path, args: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
    """Refuse an --out holding other files; with --resume, options that differ from the interrupted run's; without
    it, an existing run unless --overwrite (which deletes its run files)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
    args_file = out_dir / ARGS_FILE
    existing = _run_entries(out_dir)
    if resume:
        if not args_file.is_file():
            raise ConfigError(f"nothing to resume: {args_file} not found (was {out_dir} made by `classlm train`?)")
        try:
            saved = json.loads(args_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{args_file} is unreadable ({exc}); it records the interrupted run's options, so --resume cannot "
                "check them: start a new run (--overwrite or a new --out)"
            ) from exc
        # An option the interrupted run did not record (made by an older classlm, e.g. before --dtype) counts as
        # unchanged: refusing would strand every run interrupted before an upgrade.
        changed = {k: (saved[k], v) for k, v in args.items() if k in saved and saved[k] != v}
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


def write_run_args(out_dir: Path, args: dict[str, Any]) -> None:
    from classlm.io import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / ARGS_FILE, json.dumps(args, indent=2))


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
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def fit_run(
    clf: Any,
    method: str,
    out_dir: Path,
    args: dict[str, Any],
    rows: tuple[Any, Any, Any],
    *,
    resume: bool,
    write: bool = True,
) -> None:
    """Fit ``clf`` on the training rows; backbone training runs through the Trainer into ``out_dir``: evaluated on
    the evaluation rows as it goes, checkpointed, resumable. ``write``: whether this process writes the run's files
    (False on the other ranks of a data-parallel run)."""
    dataset, evaluation, calibration = rows
    backbone_training = clf.trains_backbone()
    if resume and not backbone_training:
        raise ConfigError(f"--resume continues backbone training; method {method!r} here trains in one go: rerun it")
    if not resume and write:
        write_run_args(out_dir, args)
    quiet_transformers()
    loop: dict[str, Any] = {"eval_set": None, "run_dir": out_dir, "resume": resume} if backbone_training else {}
    if backbone_training:
        loop["eval_set"] = (list(evaluation.texts), list(evaluation.labels or []))
    calib_set = (list(calibration.texts), list(calibration.labels or [])) if calibration is not None else None
    clf.fit(list(dataset.texts), list(dataset.labels), calib_set=calib_set, **loop)


def finish_run(
    clf: Any, out_dir: Path, evaluation: Any, eval_source: str | None, *, baseline_rows: tuple[Any, Any] | None = None
) -> None:
    """Evaluate the trained classifier on the evaluation rows, check it (collapse; against TF-IDF + LR fitted on
    ``baseline_rows``, the same training and calibration rows, unless None), save it, and write its training
    curves, the summary, eval.json, the reliability plot, report.html and the markdown report on stdout."""
    from classlm.checkpoints import read_metrics
    from classlm.evaluation import evaluate
    from classlm.html_report import classifier_context, write_html
    from classlm.reports import plot_reliability, plot_training_curves

    clf.save(out_dir)  # first: nothing after this may cost the trained classifier
    texts, labels = list(evaluation.texts), list(evaluation.labels or [])
    info = {"data": eval_source or evaluation.source}
    report = evaluate(clf, texts, labels, info=info)
    baseline, notes = None, []
    if baseline_rows is not None and clf.method != "tfidf":
        try:
            baseline = _tfidf_baseline(clf, baseline_rows, texts, labels, info)
        except ValueError as exc:  # classlm's data/config errors and scikit-learn's: never at the trained run's cost
            notes.append(("info", f"the TF-IDF + LR baseline could not be fitted on these rows ({exc})"))
    checks, found = _checks(clf, report, baseline)
    notes = found + notes
    clf.training_ = {**clf.training_, "checks": checks}
    clf.save(out_dir)  # again, with the checks in the manifest's training summary
    if baseline is not None:
        _log_baseline(out_dir, clf.training_, baseline.metrics)
    metric_rows = read_metrics(out_dir)
    if any(isinstance(r.get("eval"), dict) for r in metric_rows):
        plot_training_curves(metric_rows, out_dir / "training_curves.png")
    summary = training_summary(clf.training_, clf.temperature_)
    err.print(summary)
    report.to_json(out_dir / "eval.json")
    plot_reliability(report, out_dir / "reliability.png")
    reports = [(f"held-out evaluation ({info['data']}), after temperature", report)]  # where its rows came from
    if baseline is not None:
        reports.append(("TF-IDF + LR on the same training rows (baseline), after temperature", baseline))
    write_html(
        out_dir / "report.html",
        f"classlm train: {out_dir.name}",
        reports,
        subtitle=summary,
        training=metric_rows,
        command=command_line(),
        notes=notes,
        **classifier_context(clf),
    )
    out.print(report.to_markdown(), soft_wrap=True, markup=False, highlight=False)
    if notes:
        out.print("## Checks\n\n" + "\n".join(f"- {text}" for _, text in notes), soft_wrap=True, markup=False)
    for level, text in notes:
        err.print(f"[bold red]warning:[/] {escape(text)}" if level == "warn" else escape(text), highlight=False)
    err.print(f"classifier saved to {out_dir}; report: {out_dir / 'report.html'}")


def _tfidf_baseline(clf: Any, rows: tuple[Any, Any], texts: list[str], labels: list[str], info: dict[str, Any]) -> Any:
    """TF-IDF + LR fitted on the classifier's own training rows (and calibration rows, or the same hold-out:
    the train config's seed and fraction), evaluated on the same evaluation rows: seconds at a few thousand rows
    (a few hundred rows/s to fit), a fraction of any LoRA run on the same rows."""
    from classlm.classifier import LMClassifier
    from classlm.evaluation import evaluate

    dataset, calibration = rows
    tfidf = LMClassifier(method="tfidf", labels=clf.labels, train=clf.train)
    calib_set = (list(calibration.texts), list(calibration.labels or [])) if calibration is not None else None
    tfidf.fit(list(dataset.texts), list(dataset.labels), calib_set=calib_set)
    return evaluate(tfidf, texts, labels, info={**info, "baseline": "tfidf"})


def _checks(clf: Any, report: Any, baseline: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The verdicts (classlm.verdict) as JSON for the manifest, and as ``(level, text)`` notes for the reports."""
    from classlm.verdict import against_baseline, collapse, collapse_multi_label

    checks: dict[str, Any] = {}
    notes: list[tuple[str, str]] = []
    multi = bool(report.metrics.get("multi_label"))
    found = collapse_multi_label(report.metrics) if multi else collapse(report.metrics, list(report.classes))
    checks["collapse"] = found.to_dict() if found is not None else None
    if found is not None:
        tries = (
            "more training rows (--limit), more passes (--epochs), a lower --lr, or --class-weights balanced when "
            + ("rare labels are missed" if multi else "one class dominates the labels")
            if clf.trains_backbone()
            else "more training rows (--limit), or another --method"
        )
        notes.append(("warn", f"{found.message}: try {tries}"))
    if baseline is not None:
        versus = against_baseline(report.metrics, baseline.metrics)
        checks["baseline"] = {"method": "tfidf", **versus.to_dict(), "eval": _headline(baseline.metrics)}
        notes.append(("info" if versus.earns_its_cost else "warn", versus.message))
    return checks, notes


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    """The baseline's figures under the curves' keys (multi-label: subset accuracy, BCE, per-class ECE, as
    ``multilabel_eval`` logs them)."""
    if m.get("multi_label"):
        return {"accuracy": m.get("subset_accuracy"), "macro_f1": m.get("macro_f1"), "nll": m.get("bce"),
                "ece": m.get("per_class_ece_mean")}  # fmt: skip
    return {k: m.get(k) for k in ("accuracy", "macro_f1", "nll", "ece")}


def _log_baseline(out_dir: Path, training: dict[str, Any], metrics: dict[str, Any]) -> None:
    """One row in metrics.jsonl for the baseline, at the run's last step (it has no curve: it trains in one go);
    only in a run that logged its evaluations there."""
    from classlm.checkpoints import METRICS_FILE

    if not (out_dir / METRICS_FILE).is_file():
        return
    row = {"step": training.get("steps", 0), "baseline": {"method": "tfidf", **_headline(metrics)}}
    with open(out_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, allow_nan=False) + "\n")


def training_summary(t: dict[str, Any], temperature: float) -> str:
    """One line: steps, examples seen (not the rows there were to see), time, throughput, temperature."""
    if "steps" in t:
        what = f"trained {t['steps']} steps, {t['examples_seen']} examples seen of {t['n_train']} training rows"
        if t.get("epochs"):
            what += f" ({t['epochs']:g} passes)"
    else:
        what = f"trained on {t['n_train']} examples"
    speed = f"{t.get('examples_per_second') or 0:.2f} examples/s"
    return f"{what} in {t['seconds']:.0f} s ({speed}); temperature {temperature:.3f}"
