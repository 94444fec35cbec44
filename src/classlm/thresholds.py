"""Per-class calibration and decision thresholds for multi-label classifiers, fitted on held-out rows (pure numpy).

A multi-label classifier gives each class its own logit ``z_c`` and probability ``sigmoid(z_c)``. Two things are
learned after training, from labelled rows the weights never saw:

- :class:`PerClassScaler`: Platt scaling per class, ``sigmoid(a_c z_c + b_c)`` (Platt 1999), or a temperature per
  class (``b_c = 0``): rare labels and frequent ones are miscalibrated in different directions, so one scalar cannot
  fix both;
- :func:`best_thresholds`: the cut above which a class is answered, per class the one that maximises its F1 on the
  held-out rows (a fixed 0.5 is wrong for rare labels: their calibrated probability seldom reaches it), or one shared
  cut that maximises micro-F1 (:func:`global_threshold`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from classlm.errors import ArtifactError, ConfigError

__all__ = [
    "MIN_POSITIVES_FOR_OWN_CUT",
    "PER_CLASS_METHODS",
    "MultiLabelCalibrator",
    "PerClassScaler",
    "best_thresholds",
    "global_threshold",
    "sigmoid",
]

PER_CLASS_METHODS = ("platt", "temperature")
# Pulls (a, b) toward (1, 0) with the weight of one held-out row: a class its few held-out rows separate perfectly
# still gets a moderate scale (with 1e-2, twelve separable rows gave a = 2,490: every answer 0 or 1).
_RIDGE = 1.0
_NEWTON_ITERS = 50


def sigmoid(z: Any) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    x = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _fit_rows(logits: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ConfigError(f"logits: expected an (n, k) array with n, k >= 1, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ConfigError("logits: expected finite numbers")
    if y.shape != z.shape or y.dtype == object or not np.all((y == 0) | (y == 1)):
        raise ConfigError(f"y_true: expected a 0/1 indicator matrix of shape {z.shape}, got shape {y.shape}")
    return z, y.astype(np.float64)


def _fit_one(z: np.ndarray, y: np.ndarray, with_bias: bool) -> tuple[float, float]:
    """Newton's method on the mean BCE of ``sigmoid(a z + b)`` plus ``_RIDGE/n * ((a - 1)^2 + b^2)``: convex, and
    each step is halved until the objective goes down (a full Newton step overshoots on nearly separable rows)."""
    n = z.shape[0]
    lam = _RIDGE / n
    x = np.stack([z, np.ones_like(z)], axis=1) if with_bias else z[:, None]
    prior = np.array([1.0, 0.0]) if with_bias else np.array([1.0])

    def objective(theta: np.ndarray) -> float:
        s = x @ theta
        # log(1 + e^s) - y s, written to stay finite for large |s|
        return float(np.mean(np.logaddexp(0.0, s) - y * s) + lam * np.sum((theta - prior) ** 2))

    theta = prior.copy()
    current = objective(theta)
    for _ in range(_NEWTON_ITERS):
        p = sigmoid(x @ theta)
        grad = x.T @ (p - y) / n + 2 * lam * (theta - prior)
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + 2 * lam * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        for _ in range(40):
            candidate = theta - step
            value = objective(candidate)
            if value <= current:
                break
            step = step / 2
        else:
            break
        theta, moved, current = candidate, float(np.max(np.abs(step))), value
        if moved < 1e-10:
            break
    return float(theta[0]), float(theta[1]) if with_bias else 0.0


class PerClassScaler:
    """``sigmoid(a_c z_c + b_c)`` per class: ``method="platt"`` fits both, ``"temperature"`` only ``a_c = 1/T_c``.

    Fitted on held-out logits and their 0/1 indicators; unfitted, it is the identity (``a = 1``, ``b = 0``).
    """

    def __init__(self, method: str = "platt") -> None:
        if method not in PER_CLASS_METHODS:
            raise ConfigError(f"method: expected one of {', '.join(PER_CLASS_METHODS)}, got {method!r}")
        self.method = method
        self.scale_: np.ndarray | None = None
        self.offset_: np.ndarray | None = None
        self.n_fit_: int | None = None

    def __repr__(self) -> str:
        return f"PerClassScaler(method={self.method!r}, n_fit={self.n_fit_})"

    def fit(self, logits: Any, y_true: Any) -> PerClassScaler:
        z, y = _fit_rows(logits, y_true)
        fitted = [_fit_one(z[:, c], y[:, c], self.method == "platt") for c in range(z.shape[1])]
        self.scale_ = np.array([a for a, _ in fitted])
        self.offset_ = np.array([b for _, b in fitted])
        self.n_fit_ = int(z.shape[0])
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated logits ``a z + b`` (float64); their sigmoid is the calibrated probability."""
        z = np.asarray(logits, dtype=np.float64)
        if self.scale_ is None or self.offset_ is None:
            return z
        if z.ndim != 2 or z.shape[1] != self.scale_.shape[0]:
            raise ConfigError(f"logits: expected shape (n, {self.scale_.shape[0]}), got {z.shape}")
        return z * self.scale_ + self.offset_

    def predict_proba(self, logits: Any) -> np.ndarray:
        return sigmoid(self.transform(logits))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "scale": None if self.scale_ is None else self.scale_.tolist(),
            "offset": None if self.offset_ is None else self.offset_.tolist(),
            "n_fit": self.n_fit_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], k: int) -> PerClassScaler:
        """Rebuild from :meth:`to_dict` output for ``k`` classes. Raises ArtifactError on a bad dict."""
        if not isinstance(d, Mapping) or d.get("method") not in PER_CLASS_METHODS:
            raise ArtifactError(f"per-class calibration: expected method in {PER_CLASS_METHODS}, got {d!r:.80}")
        out = cls(str(d["method"]))
        scale, offset = d.get("scale"), d.get("offset")
        if scale is None and offset is None:
            return out
        try:
            a = np.asarray(scale, dtype=np.float64)
            b = np.asarray(offset, dtype=np.float64)
        except (TypeError, ValueError):
            raise ArtifactError("per-class calibration: 'scale' and 'offset' must be lists of numbers") from None
        if a.shape != (k,) or b.shape != (k,) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise ArtifactError(f"per-class calibration: expected {k} finite scales and offsets")
        out.scale_, out.offset_, out.n_fit_ = a, b, d.get("n_fit")
        return out


def best_thresholds(y_true: Any, proba: Any, *, default: float = 0.5) -> np.ndarray:
    """Per class, the cut on held-out probabilities that maximises that class's F1 (answer the class where
    ``p >= cut``). Each cut lies halfway between the lowest probability answered and the next one below, so a new
    row between the two goes to the nearer side. A class with no positive held-out row keeps ``default``: nothing
    there says where its cut belongs."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true).astype(bool)
    if p.ndim != 2 or p.shape != y.shape or p.shape[0] < 1:
        raise ConfigError(f"proba and y_true: expected the same (n, k) shape, got {p.shape} and {y.shape}")
    cuts = np.full(p.shape[1], float(default))
    for c in range(p.shape[1]):
        positives = int(y[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-p[:, c], kind="mergesort")
        sorted_p = p[order, c]
        tp = np.cumsum(y[order, c])
        answered = np.arange(1, len(order) + 1)
        f1 = 2 * tp / (answered + positives)
        # Only cut where the next probability is lower: rows with equal probabilities are answered alike.
        distinct = np.append(sorted_p[1:] < sorted_p[:-1], True)
        best = int(np.flatnonzero(distinct)[np.argmax(f1[distinct])])
        below = sorted_p[best + 1] if best + 1 < len(sorted_p) else 0.0
        cuts[c] = (sorted_p[best] + below) / 2
    return cuts


def global_threshold(y_true: Any, proba: Any) -> float:
    """One cut for every class, the one that maximises micro-F1 on the held-out rows (for classes too rare to get
    a cut of their own)."""
    p = np.asarray(proba, dtype=np.float64).ravel()
    y = np.asarray(y_true).astype(bool).ravel()
    if p.shape != y.shape or p.size == 0 or not y.any():
        raise ConfigError("global_threshold: expected probabilities and indicators of one shape, with a positive")
    return float(best_thresholds(y[:, None], p[:, None])[0])


# Below this many positive held-out rows a class's own F1-maximising cut follows the noise of those few rows; it
# takes the cut shared by every class instead (micro-F1).
MIN_POSITIVES_FOR_OWN_CUT = 5


class MultiLabelCalibrator:
    """What turns a multi-label classifier's raw class logits into probabilities and answers: ``offset`` (the
    per-class bias learned with LoRA, zero otherwise), then a :class:`PerClassScaler`, then per-class thresholds.

    ``transform(z) = a * (z + offset) + b``; ``sigmoid`` of it is the probability; a class is answered where it
    reaches ``thresholds_`` (0.5 until fitted). Fitted on held-out rows only: the scaler, then the cuts on the
    scaler's probabilities (each class's own where it has :data:`MIN_POSITIVES_FOR_OWN_CUT` positive rows, else the
    shared micro-F1 cut)."""

    method = "multi_label"

    def __init__(self, k: int, scaling: str = "platt", offset: Any = None) -> None:
        self.k = int(k)
        self.offset = np.zeros(self.k) if offset is None else np.asarray(offset, dtype=np.float64).reshape(self.k)
        self.scaler = PerClassScaler(scaling)
        self.thresholds_ = np.full(self.k, 0.5)
        self.threshold_source_: list[str] = ["default"] * self.k
        self.fitted = False

    def __repr__(self) -> str:
        return f"MultiLabelCalibrator(k={self.k}, scaling={self.scaler.method!r}, fitted={self.fitted})"

    @property
    def temperature(self) -> float:
        """No single temperature: each class has its own scale (``scaler.scale_``); 1.0 for the shared interface."""
        return 1.0

    def transform(self, logits: Any) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.k:
            raise ConfigError(f"logits: expected shape (n, {self.k}), got {z.shape}")
        return self.scaler.transform(z + self.offset)

    def fit(self, logits: Any, y_true: Any) -> MultiLabelCalibrator:
        """Fit the per-class scaling and then the thresholds on held-out raw logits and their 0/1 indicators."""
        z, y = _fit_rows(logits, y_true)
        self.scaler.fit(z + self.offset, y)
        p = sigmoid(self.transform(z))
        own = best_thresholds(y, p)
        positives = y.sum(axis=0)
        shared = global_threshold(y, p) if positives.any() else 0.5
        few = positives < MIN_POSITIVES_FOR_OWN_CUT
        self.thresholds_ = np.where(few, shared, own)
        self.threshold_source_ = ["shared" if f else "own" for f in few]
        self.fitted = True
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "k": self.k,
            "offset": self.offset.tolist(),
            "scaling": self.scaler.to_dict(),
            "thresholds": self.thresholds_.tolist(),
            "threshold_source": list(self.threshold_source_),
            "fitted": self.fitted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiLabelCalibrator:
        if not isinstance(d, Mapping) or d.get("method") != cls.method or not isinstance(d.get("k"), int):
            raise ArtifactError(f"calibration: expected a multi-label calibrator with 'k', got {str(d)[:80]}")
        k = int(d["k"])
        try:
            offset = np.asarray(d.get("offset"), dtype=np.float64)
            cuts = np.asarray(d.get("thresholds"), dtype=np.float64)
        except (TypeError, ValueError):
            raise ArtifactError("calibration: 'offset' and 'thresholds' must be lists of numbers") from None
        if offset.shape != (k,) or cuts.shape != (k,) or not (np.all(np.isfinite(offset)) and np.all(cuts >= 0)):
            raise ArtifactError(f"calibration: expected {k} finite offsets and {k} thresholds in [0, 1]")
        scaling = d.get("scaling")
        if not isinstance(scaling, Mapping):
            raise ArtifactError("calibration: expected the per-class 'scaling' as a JSON object")
        out = cls(k, str(scaling.get("method")) if scaling.get("method") in PER_CLASS_METHODS else "platt", offset)
        out.scaler = PerClassScaler.from_dict(scaling, k)
        out.thresholds_ = cuts
        source = d.get("threshold_source")
        out.threshold_source_ = list(source) if isinstance(source, list) and len(source) == k else ["saved"] * k
        out.fitted = bool(d.get("fitted", False))
        return out
