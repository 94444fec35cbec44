"""Classification and calibration metrics in plain numpy.

Conventions: ``y_true`` / ``y_pred`` are integer class indices ``0..k-1`` of shape ``(n,)``; ``proba`` is an
``(n, k)`` array of probabilities whose rows sum to one. Everything is computed in float64. This module must import
without torch, scikit-learn or scipy (it is part of the pure layer used by saved-model loading and the CLI).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from classlm.errors import ConfigError

__all__ = [
    "DEFAULT_BINS",
    "accuracy",
    "brier",
    "calibration_ratio",
    "classification_metrics",
    "classwise_ece",
    "confusion_matrix",
    "ece",
    "ece_floor",
    "log_softmax",
    "nll",
    "precision_recall_f1",
    "prf_from_counts",
    "reliability_bins",
    "softmax",
]

DEFAULT_BINS = 15
# Rows of ``proba`` may come from float32 softmax or be rounded for display; this tolerance accepts those but still
# catches logits passed by mistake.
_ROW_SUM_TOL = 1e-3


# -- softmax ------------------------------------------------------------------------------------------------------
def _shifted(z: Any, axis: int) -> np.ndarray:
    arr = np.asarray(z, dtype=np.float64)
    m = np.max(arr, axis=axis, keepdims=True)
    # A row that is all -inf has max -inf; shifting by it would give nan (-inf - -inf), so shift by 0 instead.
    m = np.where(np.isfinite(m), m, 0.0)
    return arr - m


def softmax(z: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float64)."""
    e = np.exp(_shifted(z, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(z: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax along ``axis`` (float64)."""
    s = _shifted(z, axis)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


# -- validation ---------------------------------------------------------------------------------------------------
def _labels(y: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ConfigError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise ConfigError(f"{name}: expected at least one sample, got 0")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        bound = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
        raise ConfigError(f"{name}: expected class indices in {bound}, got values from {lo} to {hi}")
    return arr


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _proba(proba: Any) -> np.ndarray:
    arr = np.asarray(proba, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ConfigError(f"proba: expected a 2-D array of shape (n, k), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("proba: expected finite probabilities, got nan or inf")
    if arr.size and (arr.min() < -_ROW_SUM_TOL or arr.max() > 1 + _ROW_SUM_TOL):
        raise ConfigError(f"proba: expected values in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_TOL
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ConfigError(f"proba: expected rows summing to 1 (got logits?), row {i} sums to {sums[i]:.6g}")
    return arr


def _pair(y_true: Any, proba: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _proba(proba)
    y = _labels(y_true, "y_true", p.shape[1])
    if y.shape[0] != p.shape[0]:
        raise ConfigError(f"y_true has {y.shape[0]} rows but proba has {p.shape[0]}; expected the same number")
    return y, p


def _preds(y_true: Any, y_pred: Any, n_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    yt = _labels(y_true, "y_true", n_classes)
    yp = _labels(y_pred, "y_pred", n_classes)
    if yt.shape != yp.shape:
        raise ConfigError(f"y_true has {yt.shape[0]} rows but y_pred has {yp.shape[0]}; expected the same number")
    return yt, yp


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0.0 where ``den == 0`` (sklearn's ``zero_division=0``)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


# -- label metrics ------------------------------------------------------------------------------------------------
def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of rows where ``y_pred == y_true``."""
    yt, yp = _preds(y_true, y_pred, None)
    return float(np.mean(yt == yp))


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """``(k, k)`` int64 counts; rows are true classes, columns predicted classes."""
    k = _positive_int(n_classes, "n_classes")
    yt, yp = _preds(y_true, y_pred, k)
    # Encode each (true, pred) pair as one index so a single bincount fills the whole matrix.
    return np.bincount(yt * k + yp, minlength=k * k).reshape(k, k).astype(np.int64)


def precision_recall_f1(y_true: Any, y_pred: Any, n_classes: int) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, plus their macro and support-weighted means.

    Undefined ratios (no predictions / no true rows) count as 0.0, like sklearn's ``zero_division=0``. Macro means
    are over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default): a class absent from both
    has no F1 to speak of, and counting it as 0 would make a sample that misses classes look worse than it is.
    ``macro_over`` says how many classes they average.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    support = cm.sum(axis=1)
    out = prf_from_counts(np.diag(cm), cm.sum(axis=0), support)
    weights = support / support.sum()  # support.sum() == n >= 1
    out.update({f"weighted_{k}": float(out[k] @ weights) for k in ("precision", "recall", "f1")})
    return out


def prf_from_counts(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support from per-class counts (true positives, rows predicted, true rows),
    and their macro means over the classes present in the labels or the predictions (0.0 where there is none)."""
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    # 2TP / (2TP + FP + FN) equals the harmonic mean where it is defined and is 0 exactly where sklearn says 0.
    f1 = _safe_div(2 * tp, predicted + support)
    seen = (support > 0) | (predicted > 0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "macro_over": int(seen.sum()),
        "macro_precision": float(precision[seen].mean()) if seen.any() else 0.0,
        "macro_recall": float(recall[seen].mean()) if seen.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
    }


# -- probability metrics ------------------------------------------------------------------------------------------
def nll(y_true: Any, proba: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class (log loss); probabilities are clipped below at ``eps``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConfigError(f"eps: expected a number in (0, 1), got {eps!r}")
    y, p = _pair(y_true, proba)
    picked = np.maximum(p[np.arange(y.shape[0]), y], eps)
    return float(-np.mean(np.log(picked)))


def brier(y_true: Any, proba: Any) -> float:
    """Multi-class Brier score: mean over rows of ``sum_c (p_ic - y_ic)^2`` (0 best, 2 worst)."""
    y, p = _pair(y_true, proba)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _bin_index(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin of each value for equal-width bins ``(lo, hi]`` over [0, 1]; the first bin also holds 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges puts a value equal to an edge into the bin that edge closes: (lo, hi]. Using the
    # same edges as the reported lo/hi (not ceil(v * n)) keeps values like 0.6 out of the wrong bin by rounding.
    idx = np.searchsorted(edges[1:-1], np.clip(values, 0.0, 1.0), side="left")
    return idx, edges


def _binned_gap(p: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    """``sum_b |b|/n * |mean(hit in b) - mean(p in b)|``."""
    idx, _ = _bin_index(p, n_bins)
    p_sum = np.bincount(idx, weights=p, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=hit.astype(np.float64), minlength=n_bins)
    # |b|/n * |hit_sum/|b| - p_sum/|b|| simplifies to |hit_sum - p_sum| / n: no division, no empty-bin guard.
    return float(np.sum(np.abs(hit_sum - p_sum)) / p.shape[0])


def ece(y_true: Any, proba: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins."""
    nb = _positive_int(n_bins, "n_bins")
    y, p = _pair(y_true, proba)
    pred = np.argmax(p, axis=1)
    return _binned_gap(p[np.arange(y.shape[0]), pred], pred == y, nb)


def ece_floor(proba: Any, n_bins: int = DEFAULT_BINS, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """The ECE a perfectly calibrated classifier with these probabilities scores on this many rows, from chance
    alone: each draw makes every row's top class right with probability its confidence (what perfect calibration
    means) and takes the ECE; returns the draws' ``median`` and ``p90``. An ECE target below the median cannot be
    told apart from noise on these rows (0.028 for a two-class recipe run on 860 test rows)."""
    nb, nd = _positive_int(n_bins, "n_bins"), _positive_int(draws, "draws")
    p = _proba(proba)
    if not p.shape[0]:
        raise ConfigError("proba: expected at least one row, got none")
    conf = p.max(axis=1)
    rng = np.random.default_rng(seed)
    gaps = [_binned_gap(conf, rng.random(conf.shape[0]) < conf, nb) for _ in range(nd)]
    return {"median": float(np.median(gaps)), "p90": float(np.percentile(gaps, 90))}


def classwise_ece(y_true: Any, proba: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Mean over classes of the ECE of ``p_c`` against the indicator ``y == c`` (equal-width bins on ``p_c``)."""
    nb = _positive_int(n_bins, "n_bins")
    y, p = _pair(y_true, proba)
    return float(np.mean([_binned_gap(p[:, c], y == c, nb) for c in range(p.shape[1])]))


def calibration_ratio(y_true: Any, proba: Any) -> np.ndarray:
    """Per class, predicted mass over true count: ``sum_i p_ic / sum_i y_ic`` (NaN for a class with no true rows).

    1.0 means the model predicts the class as often, in expectation, as it occurs; above 1 it over-predicts it.
    """
    y, p = _pair(y_true, proba)
    counts = np.bincount(y, minlength=p.shape[1]).astype(np.float64)
    out = np.full(p.shape[1], np.nan)
    np.divide(p.sum(axis=0), counts, out=out, where=counts > 0)
    return out


def reliability_bins(y_true: Any, proba: Any, n_bins: int = DEFAULT_BINS) -> list[dict[str, Any]]:
    """Top-label reliability table: per bin ``lo``, ``hi``, ``count``, mean ``confidence`` and ``accuracy``.

    ``confidence`` and ``accuracy`` are None for an empty bin.
    """
    nb = _positive_int(n_bins, "n_bins")
    y, p = _pair(y_true, proba)
    pred = np.argmax(p, axis=1)
    return binned_table(p[np.arange(y.shape[0]), pred], pred == y, nb)


def binned_table(confidence: np.ndarray, hit: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Per equal-width bin of ``confidence``: ``lo``, ``hi``, ``count``, the mean ``confidence`` and the share of
    ``hit`` (``accuracy``); None for an empty bin. Top-label (:func:`reliability_bins`) or pooled multi-label."""
    conf = np.asarray(confidence, dtype=np.float64)
    idx, edges = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=np.asarray(hit, dtype=np.float64), minlength=n_bins)
    bins = []
    for b in range(n_bins):
        c = int(count[b])
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": c,
                "confidence": float(conf_sum[b] / c) if c else None,
                "accuracy": float(hit_sum[b] / c) if c else None,
            }
        )
    return bins


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def classification_metrics(
    y_true: Any, proba: Any, class_names: Sequence[str], n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """All metrics above in one JSON-able dict (plain floats/ints/None, never NaN).

    Keys: ``n``, ``n_classes``, ``n_classes_present`` (classes with a true row), ``macro_over`` (classes the macro
    means average: present in the labels or the predictions), ``accuracy``, ``macro_f1``, ``weighted_f1``,
    ``macro_precision``, ``macro_recall``, ``nll``, ``brier``, ``ece``, ``classwise_ece``,
    ``calibration_ratio_min``/``_max`` (over classes with support), ``per_class``, ``confusion`` and ``reliability``.
    """
    y, p = _pair(y_true, proba)
    names = [str(c) for c in class_names]
    k = p.shape[1]
    if len(names) != k:
        raise ConfigError(f"class_names: expected {k} names (one per proba column), got {len(names)}")
    if len(set(names)) != k:
        raise ConfigError(f"class_names: expected unique names, got {names}")
    pred = np.argmax(p, axis=1)
    prf = precision_recall_f1(y, pred, k)
    ratio = calibration_ratio(y, p)
    present = ratio[~np.isnan(ratio)]  # never empty: n >= 1 so some class has support
    mean_proba = p.mean(axis=0)
    per_class = {
        name: {
            "precision": float(prf["precision"][c]),
            "recall": float(prf["recall"][c]),
            "f1": float(prf["f1"][c]),
            "support": int(prf["support"][c]),
            "calibration_ratio": _opt(float(ratio[c])),
            "mean_proba": float(mean_proba[c]),
        }
        for c, name in enumerate(names)
    }
    return {
        "n": int(y.shape[0]),
        "n_classes": k,
        "n_classes_present": int(np.count_nonzero(prf["support"])),
        "macro_over": prf["macro_over"],
        "accuracy": accuracy(y, pred),
        "macro_f1": prf["macro_f1"],
        "weighted_f1": prf["weighted_f1"],
        "macro_precision": prf["macro_precision"],
        "macro_recall": prf["macro_recall"],
        "nll": nll(y, p),
        "brier": brier(y, p),
        "ece": ece(y, p, n_bins),
        "classwise_ece": classwise_ece(y, p, n_bins),
        "calibration_ratio_min": float(present.min()),
        "calibration_ratio_max": float(present.max()),
        "per_class": per_class,
        "confusion": confusion_matrix(y, pred, k).tolist(),
        "reliability": reliability_bins(y, p, n_bins),
    }
