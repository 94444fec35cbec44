"""Multi-label classification in plain numpy: each class is its own yes/no question, so a text carries any number of
labels (none included).

Conventions (scikit-learn's ``MultiLabelBinarizer``): ``y`` is an ``(n, k)`` 0/1 indicator matrix with columns in
class order, or a list of label lists; ``proba`` is ``(n, k)`` independent probabilities (rows need not sum to 1);
``y_pred`` is an indicator matrix, usually ``proba >= thresholds``. Part of the pure layer: no torch, scipy or
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from classlm.errors import ConfigError, DataError
from classlm.metrics import DEFAULT_BINS, _binned_gap, _positive_int, _safe_div, binned_table, prf_from_counts

__all__ = [
    "bce",
    "indicator_matrix",
    "answers",
    "is_label_lists",
    "label_classes",
    "label_lists",
    "multilabel_eval",
    "multilabel_metrics",
    "multilabel_prf",
    "multilabel_split",
    "per_class_ece",
]


# -- formats ------------------------------------------------------------------------------------------------------
def is_label_lists(y: Any) -> bool:
    """Whether ``y`` holds a list (or tuple/set) of labels per row, the multi-label form of ``fit(X, y)``."""
    if isinstance(y, np.ndarray):
        return y.dtype == object and y.ndim == 1 and any(isinstance(v, (list, tuple, set)) for v in y)
    return isinstance(y, Sequence) and not isinstance(y, str) and any(isinstance(v, (list, tuple, set)) for v in y)


def indicator_matrix(y: Any, classes: Sequence[Any]) -> np.ndarray:
    """``(n, k)`` uint8 indicators from label lists (every label one of ``classes``) or from an indicator matrix
    with ``k`` columns (checked: 0/1 only)."""
    names = list(classes)
    k = len(names)
    if is_label_lists(y):
        index = {str(c): j for j, c in enumerate(names)}
        out = np.zeros((len(y), k), dtype=np.uint8)
        for i, labels in enumerate(y):
            if not isinstance(labels, (list, tuple, set)):
                raise DataError(f"row {i}: expected a list of labels (the other rows have one), got {labels!r}")
            for label in labels:
                j = index.get(str(label))
                if j is None:
                    raise DataError(f"row {i}: label {label!r} is not one of the {k} classes {names[:10]}")
                out[i, j] = 1
        return out
    arr = np.asarray(y)
    if arr.ndim != 2 or arr.shape[1] != k:
        raise DataError(f"expected label lists or an (n, {k}) 0/1 indicator matrix, got shape {arr.shape}")
    if arr.dtype == object or not np.all((arr == 0) | (arr == 1)):
        raise DataError("expected an indicator matrix of 0s and 1s (or label lists), got other values")
    return arr.astype(np.uint8)


def label_lists(indicators: Any, classes: Sequence[Any]) -> list[list[Any]]:
    """The label lists of an indicator matrix, labels in class order."""
    arr = np.asarray(indicators)
    names = list(classes)
    return [[names[j] for j in np.flatnonzero(row)] for row in arr]


def label_classes(rows: Any) -> list[Any]:
    """The classes that label lists name, sorted (by ``str``: numbers and names alike)."""
    return sorted({label for row in rows for label in row}, key=str)


def answers(proba: Any, classes: Sequence[Any], thresholds: Any = None) -> list[Any]:
    """Per row of ``proba``: the most probable of ``classes``, or with ``thresholds`` (a multi-label classifier's
    cuts) the list of classes at or above their cut, maybe empty."""
    p = np.asarray(proba)
    if thresholds is not None:
        return label_lists(p >= np.asarray(thresholds), classes)
    names = list(classes)
    return [names[int(i)] for i in p.argmax(axis=1)]


def multilabel_split(y: Any, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(keep, held_out)`` of an indicator matrix, sorted and disjoint: a seeded ``fraction`` of the
    rows held out, then, rarest class first, one positive row of every class with two or more moved to the side
    that lacks it (so the held-out rows can calibrate and set a cut for each class, and training sees each)."""
    arr = _indicators(y, "y")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction < 1:
        raise ConfigError(f"fraction must be strictly between 0 and 1 (0.2 holds out 20%), got {fraction!r}")
    n = arr.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    held = np.zeros(n, dtype=bool)
    held[order[: int(np.floor(fraction * n + 0.5))]] = True
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    for c in np.argsort(arr.sum(axis=0), kind="mergesort"):
        rows = np.flatnonzero(arr[:, c])
        if len(rows) < 2:
            continue
        for side in (True, False):  # the held-out side first, then training
            if not np.any(held[rows] == side):
                movable = rows[held[rows] != side]
                held[movable[np.argmin(rank[movable])]] = side
    return np.flatnonzero(~held), np.flatnonzero(held)


# -- validation ---------------------------------------------------------------------------------------------------
def _indicators(y: Any, name: str, k: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ConfigError(f"{name}: expected an (n, k) indicator matrix with n, k >= 1, got shape {arr.shape}")
    if k is not None and arr.shape[1] != k:
        raise ConfigError(f"{name}: expected {k} columns, got {arr.shape[1]}")
    if arr.dtype == object or not np.all((arr == 0) | (arr == 1)):
        raise ConfigError(f"{name}: expected 0s and 1s only")
    return arr.astype(bool)


def _probabilities(proba: Any, n: int, k: int) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.shape != (n, k):
        raise ConfigError(f"proba: expected shape ({n}, {k}) like y_true, got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ConfigError("proba: expected independent probabilities in [0, 1] (got logits?)")
    return p


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    yt = _indicators(y_true, "y_true")
    yp = _indicators(y_pred, "y_pred", yt.shape[1])
    if yp.shape[0] != yt.shape[0]:
        raise ConfigError(f"y_true has {yt.shape[0]} rows but y_pred has {yp.shape[0]}; expected the same number")
    return yt, yp


# -- metrics ------------------------------------------------------------------------------------------------------
def multilabel_prf(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support; micro, macro and samples F1; Hamming loss; subset accuracy.

    Undefined ratios count as 0 (scikit-learn's ``zero_division=0``). Macro means are over the classes present in
    ``y_true`` or ``y_pred`` (as for single-label, ``macro_over`` says how many). Samples F1 is the mean over rows of
    ``2|T∩P| / (|T| + |P|)``, where a row with no true and no predicted label scores 1 (it was answered right).
    """
    yt, yp = _pair(y_true, y_pred)
    tp = (yt & yp).sum(axis=0).astype(np.float64)
    predicted = yp.sum(axis=0).astype(np.float64)
    support = yt.sum(axis=0).astype(np.float64)
    row_tp = (yt & yp).sum(axis=1).astype(np.float64)
    row_sum = (yt.sum(axis=1) + yp.sum(axis=1)).astype(np.float64)
    samples = np.where(row_sum > 0, _safe_div(2 * row_tp, row_sum), 1.0)
    return {
        **prf_from_counts(tp, predicted, support),
        "micro_f1": float(_safe_div(2 * tp.sum(), predicted.sum() + support.sum())),
        "samples_f1": float(samples.mean()),
        "hamming_loss": float(np.mean(yt != yp)),
        "subset_accuracy": float(np.mean(np.all(yt == yp, axis=1))),
    }


def bce(y_true: Any, proba: Any, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy over rows and classes (each class a yes/no question); probabilities clipped to
    ``[eps, 1 - eps]``."""
    y = _indicators(y_true, "y_true")
    p = np.clip(_probabilities(proba, *y.shape), eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def per_class_ece(y_true: Any, proba: Any, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Per class, the ECE of ``p_c`` against its indicator (equal-width bins on ``p_c``), shape ``(k,)``."""
    nb = _positive_int(n_bins, "n_bins")
    y = _indicators(y_true, "y_true")
    p = _probabilities(proba, *y.shape)
    return np.array([_binned_gap(p[:, c], y[:, c], nb) for c in range(y.shape[1])])


def multilabel_metrics(
    y_true: Any, proba: Any, class_names: Sequence[str], thresholds: Any = 0.5, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Every multi-label metric in one JSON-able dict, for answers ``proba >= thresholds`` (one number, or one per
    class). Keys: ``n``, ``n_classes``, ``macro_f1``, ``micro_f1``, ``samples_f1``, ``macro_precision``,
    ``macro_recall``, ``hamming_loss``, ``subset_accuracy``, ``bce``, ``per_class_ece_mean``,
    ``calibration_ratio_min``/``_max`` (classes with support), ``cardinality_true``/``_predicted`` (labels per
    text), and ``per_class`` (precision, recall, F1, support, ECE, calibration ratio, threshold)."""
    y = _indicators(y_true, "y_true")
    n, k = y.shape
    names = [str(c) for c in class_names]
    if len(names) != k or len(set(names)) != k:
        raise ConfigError(f"class_names: expected {k} unique names (one per column), got {len(names)}")
    p = _probabilities(proba, n, k)
    nb = _positive_int(n_bins, "n_bins")
    cut = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (k,))
    pred = p >= cut
    prf = multilabel_prf(y, pred)
    eces = per_class_ece(y, p, n_bins)
    support = y.sum(axis=0)
    ratio = np.full(k, np.nan)
    np.divide(p.sum(axis=0), support, out=ratio, where=support > 0)
    present = ratio[support > 0]
    per_class = {
        name: {
            "precision": float(prf["precision"][c]),
            "recall": float(prf["recall"][c]),
            "f1": float(prf["f1"][c]),
            "support": int(support[c]),
            "ece": float(eces[c]),
            "calibration_ratio": None if support[c] == 0 else float(ratio[c]),
            "threshold": float(cut[c]),
        }
        for c, name in enumerate(names)
    }
    return {
        "n": n,
        "n_classes": k,
        "multi_label": True,
        **{key: prf[key] for key in ("macro_over", "macro_f1", "micro_f1", "samples_f1")},
        **{key: prf[key] for key in ("macro_precision", "macro_recall", "hamming_loss", "subset_accuracy")},
        "bce": bce(y, p),
        "per_class_ece_mean": float(eces.mean()),
        "calibration_ratio_min": float(present.min()) if present.size else None,
        "calibration_ratio_max": float(present.max()) if present.size else None,
        "cardinality_true": float(y.sum(axis=1).mean()),
        "cardinality_predicted": float(pred.sum(axis=1).mean()),
        "per_class": per_class,
        # Pooled over every (text, class): how often a label is there at each predicted probability.
        "reliability": binned_table(p.ravel(), y.ravel(), nb),
    }


def multilabel_eval(y_true: Any, proba: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """The training curve's row for multi-label (answers at 0.5), under the single-label keys the early stopping
    and the curves read: ``accuracy`` is the subset accuracy, ``nll`` the mean binary NLL (BCE), ``ece`` the mean
    per-class ECE; plus ``micro_f1``."""
    m = multilabel_metrics(y_true, proba, class_names)
    return {
        "accuracy": m["subset_accuracy"],
        "macro_f1": m["macro_f1"],
        "micro_f1": m["micro_f1"],
        "nll": m["bce"],
        "ece": m["per_class_ece_mean"],
        "calibration_ratio_min": m["calibration_ratio_min"],
        "calibration_ratio_max": m["calibration_ratio_max"],
        "calibration_ratio": {c: v["calibration_ratio"] for c, v in m["per_class"].items()},
    }
