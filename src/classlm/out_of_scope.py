"""Out-of-scope signals: how far a text is from every class the classifier knows, and what abstaining buys.

Pure numpy. Four scores per text, each *higher* for a text more likely out of scope:

- ``class_mass``: ``1 - class mass``, the share of the model's next-token probability that falls on *no* class token
  (methods with class tokens only). A text the prompt's classes do not fit makes the model want to say something
  else; no other classifier kind has this signal.
- ``energy``: ``-logsumexp(z)`` over the calibrated class logits (Liu et al. 2020): low when some class scores high
  in absolute terms, not just relative to the others.
- ``max_proba``: ``1 - max p``, the usual baseline (Hendrycks and Gimpel 2017); the only one the probabilities alone
  give.
- ``answer_mass``: ``1 - class mass * max p``, the share of the model's next-token probability that is not on the
  answer it gives (methods with class tokens only): low when the model both means to name a class and is sure which.

A fifth, ``mahalanobis``, needs more than one text's logits: the distance of its hidden features to the labelled
rows' classes (:mod:`classlm.feature_distance`), which estimators add where they fitted it.

:func:`out_of_scope_report` compares them on rows whose truth is known: AUROC for telling out-of-scope rows apart, and
the accuracy left when the classifier abstains on the rows each score ranks most out of scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from classlm.errors import ConfigError, DataError
from classlm.metrics import softmax

__all__ = [
    "COVERAGES",
    "OOS_SCORES",
    "abstain_value",
    "auroc",
    "out_of_scope_report",
    "out_of_scope_scores",
    "selective_accuracy",
]

OOS_SCORES = ("class_mass", "energy", "max_proba", "answer_mass")
COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def out_of_scope_scores(calibrated_logits: Any, class_mass: Any = None) -> dict[str, np.ndarray]:
    """The scores above for each row of ``calibrated_logits`` ``(n, k)``; ``class_mass`` ``(n,)`` where the method
    has class tokens (else that score is left out)."""
    z = np.asarray(calibrated_logits, dtype=np.float64)
    if z.ndim != 2:
        raise ConfigError(f"calibrated_logits: expected shape (n, k), got {z.shape}")
    m = z.max(axis=1)
    top = softmax(z, axis=1).max(axis=1)
    out = {"energy": -(m + np.log(np.exp(z - m[:, None]).sum(axis=1))), "max_proba": 1.0 - top}
    if class_mass is not None:
        mass = np.asarray(class_mass, dtype=np.float64)
        out = {"class_mass": 1.0 - mass, **out, "answer_mass": 1.0 - mass * top}
    return out


def auroc(positive: Any, score: Any) -> float | None:
    """Area under the ROC curve of ``score`` for telling ``positive`` rows (bool) from the rest: the chance that a
    positive row scores above a negative one, ties counting half. ``None`` when either side has no rows."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average ranks over ties (1-based): the Mann-Whitney U statistic needs them.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def selective_accuracy(
    score: Any, correct: Any, coverages: Sequence[float] = COVERAGES
) -> list[dict[str, float | None]]:
    """Abstain on the rows with the highest ``score``, answer the rest: per ``coverage`` (the share answered), the
    accuracy over the answered rows (``correct``: bool per row) and the score threshold that answers them."""
    s = np.asarray(score, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    order = np.argsort(s, kind="mergesort")  # most in scope first
    rows = []
    for coverage in coverages:
        if not 0 < coverage <= 1:
            raise ConfigError(f"coverages: expected shares in (0, 1], got {coverage!r}")
        kept = int(round(coverage * len(s)))
        answered = order[:kept]
        rows.append(
            {
                "coverage": float(coverage),
                "accuracy": float(ok[answered].mean()) if kept else None,
                "threshold": float(s[answered[-1]]) if kept else None,
            }
        )
    return rows


def out_of_scope_report(
    y_true: Any, proba: Any, scores: dict[str, np.ndarray], out_of_scope: Any, oos_class: int | None = None
) -> dict[str, Any]:
    """How well each score finds the ``out_of_scope`` rows (bool per row; their ``y_true`` is ignored unless the
    classifier has the out-of-scope class itself, index ``oos_class``), and the accuracy at each coverage when the
    classifier abstains by that score: an out-of-scope row answered counts as wrong, unless answered ``oos_class``.
    ``accuracy_at_90`` is the 90%-coverage point of each curve."""
    oos = np.asarray(out_of_scope, dtype=bool)
    pred = np.argmax(np.asarray(proba), axis=1)
    y = np.asarray(y_true)
    correct = np.where(oos, pred == oos_class if oos_class is not None else False, pred == y)
    report: dict[str, Any] = {"n": int(len(oos)), "n_out_of_scope": int(oos.sum()), "scores": {}}
    for name, score in scores.items():
        curve = selective_accuracy(score, correct)
        at_90 = next(r["accuracy"] for r in curve if r["coverage"] == 0.9)
        report["scores"][name] = {"auroc": auroc(oos, score), "accuracy_at_90": at_90, "coverage_curve": curve}
    return report


def abstain_value(classes: np.ndarray, below: Any, label: Any) -> Any:
    """``label`` checked as the answer for texts whose top probability is under ``below``: of ``classes``' type (a
    number for number classes) and not a class itself. ``None``: ``"abstain"`` for string classes."""
    if isinstance(below, bool) or not isinstance(below, (int, float)) or not 0 < below <= 1:
        raise DataError(f"abstain_below: expected a probability in (0, 1], got {below!r}")
    numeric = np.issubdtype(np.asarray(classes).dtype, np.number)
    if label is None:
        if numeric:
            raise DataError("abstain_label: the classes are numbers, so the abstain label must be one too (e.g. -1)")
        label = "abstain"
    is_number = isinstance(label, (int, float, np.integer, np.floating)) and not isinstance(label, (bool, np.bool_))
    if numeric != is_number:
        kind = "a number" if numeric else "a string"
        raise DataError(f"abstain_label: expected {kind} like the classes, got {label!r}")
    if str(label) in {str(c) for c in classes}:
        raise DataError(f"abstain_label: {label!r} is a class; choose a value that is not one")
    return label
