"""Evaluation reports: metrics plus context, as JSON, markdown, one summary line and a reliability diagram.

Stdlib + numpy; matplotlib is imported only inside :func:`plot_reliability` (it is the optional ``plots`` extra).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classlm.errors import ArtifactError, ConfigError
from classlm.io import write_bytes_atomic, write_text_atomic
from classlm.metrics import classification_metrics

__all__ = [
    "EvalReport",
    "build_report",
    "plot_reliability",
    "plot_training_curves",
]


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy of ``value``: numpy scalars/arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # paths and other objects: keep something readable rather than failing the whole report


# -- formatting ---------------------------------------------------------------------------------------------------
def _num(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _nll(v: Any) -> str:
    # Two decimals read well for typical NLLs; a very small one would print as 0.00, so give it two significant digits.
    return "–" if v is None else format(v, ".2f" if abs(v) >= 0.1 else ".2g")


PER_CLASS_HEADER = ("class", "precision", "recall", "F1", "support", "calibration ratio")
# Classes up to which the markdown report prints the whole confusion matrix; past it (an intent set of 151 classes
# would print 151 columns) the most confused pairs, the matrix staying in the JSON and the HTML heat map.
MARKDOWN_CONFUSION = 20


def per_class_rows(per_class: Mapping[str, Mapping[str, Any]], num: Any = _num) -> list[list[Any]]:
    """The per-class table's rows (:data:`PER_CLASS_HEADER`), numbers formatted by ``num(value, fmt)``: the
    markdown report's and the HTML report's."""
    return [
        [
            name,
            num(pc.get("precision"), ".3f"),
            num(pc.get("recall"), ".3f"),
            num(pc.get("f1"), ".3f"),
            pc.get("support", "–"),
            num(pc.get("calibration_ratio"), ".2f"),
        ]
        for name, pc in per_class.items()
    ]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


# -- report -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalReport:
    """Metrics of one evaluation plus free JSON-able context.

    Parameters
    ----------
    classes:
        Class names, in the column order of the probabilities.
    metrics:
        Output of :func:`classlm.metrics.classification_metrics`.
    info:
        Context such as model, method, temperature, dataset, split, texts_per_second, n_truncated.
    """

    classes: tuple[str, ...]
    metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ so a list of classes still gives a tuple field.
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``classes``, ``metrics``, ``info``)."""
        return {"classes": list(self.classes), "metrics": _jsonable(self.metrics), "info": _jsonable(self.info)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalReport:
        """Rebuild from :meth:`to_dict` output; raises ArtifactError on a bad dict."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"report: expected a JSON object, got {type(d).__name__}")
        classes = d.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ArtifactError(f"report: expected 'classes' to be a non-empty list of strings, got {classes!r}")
        metrics = d.get("metrics")
        if not isinstance(metrics, Mapping):
            raise ArtifactError(f"report: expected 'metrics' to be an object, got {type(metrics).__name__}")
        info = d.get("info", {})
        if not isinstance(info, Mapping):
            raise ArtifactError(f"report: expected 'info' to be an object, got {type(info).__name__}")
        return cls(tuple(classes), dict(metrics), dict(info))

    def to_json(self, path: str | Path) -> Path:
        """Write the report as indented JSON, atomically; returns the path."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        return write_text_atomic(path, text + "\n")

    def summary_line(self) -> str:
        """One line, e.g. ``acc 0.912 · macro-F1 0.905 · NLL 0.31 · ECE 0.021`` (multi-label: micro- and macro-F1,
        BCE, per-class ECE)."""
        m = self.metrics
        if m.get("multi_label"):
            return (
                f"micro-F1 {_num(m.get('micro_f1'))} · macro-F1 {_num(m.get('macro_f1'))} · "
                f"BCE {_nll(m.get('bce'))} · per-class ECE {_num(m.get('per_class_ece_mean'))}"
            )
        return (
            f"acc {_num(m.get('accuracy'))} · macro-F1 {_num(m.get('macro_f1'))} · "
            f"NLL {_nll(m.get('nll'))} · ECE {_num(m.get('ece'))}"
        )

    def to_markdown(self) -> str:
        """Headline metrics, per-class table, confusion matrix and the info items, as markdown."""
        m = self.metrics
        if m.get("multi_label"):
            return self._multi_label_markdown()
        lo, hi = m.get("calibration_ratio_min"), m.get("calibration_ratio_max")
        ratio = "–" if lo is None or hi is None else f"{lo:.2f} – {hi:.2f}"
        lines = [f"## Evaluation ({m.get('n', '?')} texts, {len(self.classes)} classes)", ""]
        present, over = m.get("n_classes_present"), m.get("macro_over")
        if present is not None and present < len(self.classes):
            lines += [
                f"Only {present} of the {len(self.classes)} classes occur in these rows; macro averages are over the "
                f"{over} classes present in the labels or the predictions.",
                "",
            ]
        lines += _table(
            ["accuracy", "macro-F1", "weighted-F1", "NLL", "Brier", "ECE", "classwise ECE", "calibration ratio"],
            [
                [
                    _num(m.get("accuracy")),
                    _num(m.get("macro_f1")),
                    _num(m.get("weighted_f1")),
                    _num(m.get("nll")),
                    _num(m.get("brier")),
                    _num(m.get("ece")),
                    _num(m.get("classwise_ece")),
                    ratio,
                ]
            ],
        )
        per_class = m.get("per_class") or {}
        if per_class:
            lines += ["", "### Per class", ""]
            lines += _table(PER_CLASS_HEADER, per_class_rows(per_class))
        confusion = m.get("confusion")
        if confusion and len(confusion) == len(self.classes) <= MARKDOWN_CONFUSION:
            lines += ["", "### Confusion matrix (rows: true, columns: predicted)", ""]
            lines += _table(
                ["true \\ predicted", *self.classes], [[c, *row] for c, row in zip(self.classes, confusion)]
            )
        elif confusion and len(confusion) == len(self.classes):
            pairs = confused_pairs(confusion, self.classes)
            lines += ["", f"### Most confused pairs (of {len(self.classes)} classes; the whole matrix is in the JSON "
                      "and HTML reports)", ""]  # fmt: skip
            lines += _table(["true", "predicted", "rows", "share of the true class"], pairs) if pairs else ["none"]
        if m.get("out_of_scope"):
            lines += ["", *out_of_scope_lines(m["out_of_scope"])]
        if self.info:
            lines += ["", "### Info", ""]
            lines += [f"- **{_cell(k)}**: {_cell(_jsonable(v))}" for k, v in self.info.items()]
        return "\n".join(lines) + "\n"

    def _multi_label_markdown(self) -> str:
        m = self.metrics
        lines = [f"## Evaluation ({m.get('n', '?')} texts, {len(self.classes)} classes, multi-label)", ""]
        headline, per_class = multi_label_tables(m)
        lines += _table(*headline)
        if per_class[1]:
            lines += ["", "### Per class", "", *_table(*per_class)]
        if self.info:
            lines += ["", "### Info", ""]
            lines += [f"- **{_cell(k)}**: {_cell(_jsonable(v))}" for k, v in self.info.items()]
        return "\n".join(lines) + "\n"


def multi_label_tables(m: Mapping[str, Any], num: Any = _num) -> tuple[tuple[list[str], list[list[Any]]], ...]:
    """A multi-label evaluation's two tables as ``(header, rows)``: the headline metrics, and per class (with its
    ECE and cut); shared by the markdown and HTML reports."""
    keys = ("micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "bce", "per_class_ece_mean")
    headline = (
        ["micro-F1", "macro-F1", "samples-F1", "Hamming loss", "subset accuracy", "BCE", "per-class ECE",
         "labels per text (true / predicted)"],
        [[*(num(m.get(k)) for k in keys), f"{num(m.get('cardinality_true'))} / {num(m.get('cardinality_predicted'))}"]],
    )  # fmt: skip
    fields = ("precision", "recall", "f1", "support", "ece", "calibration_ratio", "threshold")
    per_class = (
        ["class", "precision", "recall", "F1", "support", "ECE", "calibration ratio", "cut"],
        [[name, *(num(row.get(k)) for k in fields)] for name, row in (m.get("per_class") or {}).items()],
    )
    return headline, per_class


def out_of_scope_lines(oos: Mapping[str, Any]) -> list[str]:
    """The out-of-scope section: per score, its AUROC for the out-of-scope rows and the accuracy at each coverage."""
    scores: dict[str, Any] = dict(oos.get("scores") or {})
    first: dict[str, Any] = next(iter(scores.values()), {})
    coverages = [r["coverage"] for r in first.get("coverage_curve", [])]
    where = "a class of the classifier" if oos.get("is_a_class") else "not a class: the metrics above leave them out"
    lines = [
        f"### Out of scope ({oos.get('n_out_of_scope')} of {oos.get('n')} rows labelled {oos.get('label')!r}, {where})",
        "",
        "Abstaining on the rows a score ranks most out of scope: accuracy over the rows answered (an out-of-scope row "
        "answered counts as wrong) at each share answered.",
        "",
    ]
    header = ["score", "AUROC", *[f"{c:.0%} answered" for c in coverages]]
    rows = [
        [name, _num(s.get("auroc")), *[_num(r.get("accuracy")) for r in s.get("coverage_curve", [])]]
        for name, s in scores.items()
    ]
    return lines + _table(header, rows)


def confused_pairs(confusion: Sequence[Sequence[int]], classes: Sequence[str], n: int = 10) -> list[list[str]]:
    """The ``n`` largest off-diagonal cells: ``[true, predicted, count, share of the true class's rows]``."""
    cells = [(c, i, j) for i, row in enumerate(confusion) for j, c in enumerate(row) if i != j and c]
    cells.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [[classes[i], classes[j], str(c), f"{c / max(sum(confusion[i]), 1):.0%}"] for c, i, j in cells[:n]]


def build_report(
    y_true: Any,
    proba: Any,
    classes: Sequence[str],
    info: Mapping[str, Any] | None = None,
    n_bins: int = 15,
) -> EvalReport:
    """Compute :func:`classification_metrics` and wrap them, with ``info``, in an :class:`EvalReport`."""
    metrics = classification_metrics(y_true, proba, classes, n_bins=n_bins)
    return EvalReport(tuple(str(c) for c in classes), metrics, _jsonable(dict(info or {})))


# -- plot ---------------------------------------------------------------------------------------------------------
def plot_reliability(report_or_bins: EvalReport | Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a PNG reliability diagram: accuracy per confidence bin against the diagonal, with bin counts.

    ``report_or_bins`` is an :class:`EvalReport` or the ``reliability`` list of
    :func:`classlm.metrics.reliability_bins`. Needs matplotlib (``pip install 'classlm[plots]'``).
    """
    try:
        # Figure + the Agg canvas directly, not pyplot: no global backend switch, no GUI, no figure leaks.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plot_reliability needs matplotlib: pip install 'classlm[plots]'") from exc

    title = "Reliability diagram"
    if isinstance(report_or_bins, EvalReport):
        bins = list(report_or_bins.metrics.get("reliability") or [])
        title += f"  ({report_or_bins.summary_line()})"
    else:
        bins = list(report_or_bins)
    if not bins or not all(isinstance(b, Mapping) and {"lo", "hi", "count"} <= set(b) for b in bins):
        raise ConfigError("plot_reliability: expected an EvalReport or a non-empty list of bins with lo, hi, count")

    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for b in bins:
        lo, hi, count = float(b["lo"]), float(b["hi"]), int(b["count"])
        if not count:
            continue
        acc, conf = b.get("accuracy"), b.get("confidence")
        ax.bar(lo, acc, width=hi - lo, align="edge", color="tab:blue", edgecolor="white", alpha=0.85)
        if conf is not None:
            # The red gap marks where the mean confidence sits: above the bar = over-confident.
            ax.plot([lo, hi], [conf, conf], color="tab:red", linewidth=1.5)
        ax.text((lo + hi) / 2, min(float(acc or 0) + 0.02, 0.97), str(count), ha="center", va="bottom", fontsize=7)
    ax.plot([], [], color="tab:red", linewidth=1.5, label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    pooled = isinstance(report_or_bins, EvalReport) and report_or_bins.metrics.get("multi_label")
    # Multi-label: every (text, class) probability against how often that label is there.
    ax.set_xlabel("probability of each class for each text" if pooled else "confidence (top-class probability)")
    ax.set_ylabel("share of them with the label" if pooled else "accuracy")
    ax.set_title(title, fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())


def logged_baseline(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The ``baseline`` entry (TF-IDF + LR on the same rows) of a run's metrics.jsonl rows, if it logged one."""
    return next(
        (r["baseline"] for r in rows if isinstance(r, Mapping) and isinstance(r.get("baseline"), Mapping)), None
    )


def plot_training_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a PNG of a training run's evaluations (the rows of ``metrics.jsonl``): accuracy and macro-F1 against
    the step, and each class's calibration ratio sum(p)/sum(y) against the step, which should settle at 1."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plot_training_curves needs matplotlib: pip install 'classlm[plots]'") from exc
    baseline = logged_baseline(rows)
    rows = [r for r in rows if isinstance(r, Mapping) and isinstance(r.get("eval"), Mapping)]
    if not rows:
        raise ConfigError("plot_training_curves: no evaluation rows (set eval_every > 0 and give an eval set)")
    steps = [int(r["step"]) for r in rows]
    fig = Figure(figsize=(10.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, style in (("accuracy", "-o"), ("macro_f1", "--s")):
        left.plot(steps, [r["eval"][key] for r in rows], style, markersize=3, label=key)
    if baseline is not None and baseline.get("macro_f1") is not None:  # classlm train's TF-IDF + LR, same rows
        left.axhline(baseline["macro_f1"], color="0.45", linestyle=":", label="TF-IDF + LR macro_f1")
    left.set_xlabel("step")
    left.set_ylabel("held-out score")
    left.set_ylim(0, 1)
    left.set_title("accuracy during training", fontsize=9)
    left.legend(fontsize=8)
    classes = list(rows[-1]["eval"].get("calibration_ratio", {}))
    for name in classes:
        ratios = [r["eval"].get("calibration_ratio", {}).get(name) for r in rows]
        right.plot(steps, [float("nan") if v is None else v for v in ratios], "-o", markersize=3, label=name)
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set_xlabel("step")
    right.set_ylabel("sum(p) / sum(y)")
    right.set_title("calibration ratio per class (1 = calibrated)", fontsize=9)
    if classes and len(classes) <= 12:
        right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())
