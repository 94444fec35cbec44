"""Class priors without labels: the model's own bias toward some classes (contextual and batch calibration), and the
class balance where the classifier is deployed (prior shift by EM or BBSE).

Pure numpy, like the rest of the calibration layer. Both corrections are one operation on the logits: divide each
class's probability by a prior and renormalise, i.e. subtract ``log prior`` from the logits.

- :class:`PriorCorrection` estimates the prior the model brings to *every* input and removes it:
  ``kind="contextual"`` from content-free inputs ("N/A", "", …; Zhao et al. 2021, "Calibrate Before Use"),
  ``kind="batch"`` from unlabelled inputs of the task (Zhou et al. 2023, "Batch Calibration"). Zero-shot label-token
  logits carry such a bias (`classlm demo`'s zero-shot classes get 0.08x to 4.42x their share), and a temperature
  cannot move it: it never changes the argmax.
- :func:`em_priors` (Saerens et al. 2002) and :func:`bbse_priors` (Lipton et al. 2018) estimate the class balance of
  a deployment set from a calibrated classifier's outputs on it; :func:`shift_priors` moves probabilities from the
  training balance to a known or estimated one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classlm.errors import ArtifactError, ConfigError
from classlm.metrics import softmax

__all__ = ["PRIOR_KINDS", "PriorCorrection", "PriorEstimate", "bbse_priors", "em_priors", "shift_priors"]

PRIOR_KINDS = ("contextual", "batch")
# A class whose estimated prior is below this is floored before its log is taken: a prior of 0 would send the class's
# logit to -inf (never predicted again, and nan where every class is floored).
_FLOOR = 1e-6


def _matrix(a: Any, name: str) -> np.ndarray:
    z = np.asarray(a, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ConfigError(f"{name}: expected a 2-D array of shape (n, k) with n >= 1, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ConfigError(f"{name}: expected finite numbers, got nan or inf")
    return z


def _proba(p: Any, name: str) -> np.ndarray:
    arr = _matrix(p, name)
    if np.any(arr < 0) or not np.allclose(arr.sum(axis=1), 1.0, atol=1e-3):
        raise ConfigError(f"{name}: expected probabilities (non-negative rows summing to 1); pass softmax(logits)")
    return arr


def _prior(q: Any, k: int, name: str) -> np.ndarray:
    arr = np.asarray(q, dtype=np.float64)
    if arr.shape != (k,) or not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() <= 0:
        raise ConfigError(f"{name}: expected {k} non-negative class weights (not all 0), got {np.asarray(q)!r}")
    return arr / arr.sum()


class PriorCorrection:
    """Subtract ``log prior`` from the logits, ``prior`` being the mean class probability over reference inputs.

    Parameters
    ----------
    kind:
        ``"contextual"`` (the reference inputs are content-free: the classifier scores inputs such as ``"N/A"`` and
        the prior is what it says about nothing) or ``"batch"`` (unlabelled inputs of the task: the prior is its mean
        answer over them, which assumes the classes are about balanced there). The arithmetic is the same; the kind
        says what the prior was estimated from, and is saved with it.
    """

    def __init__(self, kind: str = "batch") -> None:
        if kind not in PRIOR_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(PRIOR_KINDS)}, got {kind!r}")
        self.kind = kind
        self.log_prior_: np.ndarray | None = None
        self.n_fit_: int | None = None

    def __repr__(self) -> str:
        return f"PriorCorrection(kind={self.kind!r}, n_fit={self.n_fit_})"

    def fit(self, logits: Any) -> PriorCorrection:
        """Estimate the prior from the raw logits ``(n, k)`` of the reference inputs (no labels); returns ``self``."""
        z = _matrix(logits, "logits")
        prior = np.maximum(softmax(z, axis=1).mean(axis=0), _FLOOR)
        self.log_prior_ = np.log(prior / prior.sum())
        self.n_fit_ = int(z.shape[0])
        return self

    @property
    def prior_(self) -> np.ndarray:
        """The estimated prior (rows of probabilities' mean), shape ``(k,)``."""
        return np.exp(self._log_prior())

    def _log_prior(self) -> np.ndarray:
        if self.log_prior_ is None:
            raise ConfigError(f"PriorCorrection({self.kind!r}) is not fitted: call fit(logits) on reference inputs")
        return self.log_prior_

    def transform(self, logits: Any) -> np.ndarray:
        """Corrected logits ``logits - log prior`` (float64, shape ``(n, k)``)."""
        log_prior = self._log_prior()
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != log_prior.shape[0]:
            raise ConfigError(f"logits: expected shape (n, {log_prior.shape[0]}), got {z.shape}")
        return z - log_prior

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, read back by :meth:`from_dict`."""
        return {"method": self.kind, "log_prior": [float(v) for v in self._log_prior()], "n_fit": self.n_fit_}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorCorrection:
        """Rebuild from :meth:`to_dict` output. Raises ArtifactError on a bad dict."""
        if not isinstance(d, Mapping) or d.get("method") not in PRIOR_KINDS:
            got = d.get("method") if isinstance(d, Mapping) else type(d).__name__
            raise ArtifactError(f"calibration: expected method {' or '.join(map(repr, PRIOR_KINDS))}, got {got!r}")
        values = d.get("log_prior")
        if (
            not isinstance(values, Sequence)
            or isinstance(values, str)
            or not values
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            raise ArtifactError(f"calibration: expected 'log_prior' to be a list of finite numbers, got {values!r}")
        n_fit = d.get("n_fit")
        if n_fit is not None and (isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < 0):
            raise ArtifactError(f"calibration: expected 'n_fit' to be a non-negative integer or null, got {n_fit!r}")
        out = cls(str(d["method"]))
        out.log_prior_ = np.asarray(values, dtype=np.float64)
        out.n_fit_ = n_fit
        return out


def shift_priors(proba: Any, source: Any, target: Any) -> np.ndarray:
    """Probabilities ``proba`` (calibrated where the classes had balance ``source``) moved to balance ``target``:
    ``p_c * target_c / source_c``, renormalised per row (Bayes' rule with the likelihoods unchanged)."""
    p = _proba(proba, "proba")
    k = p.shape[1]
    w = _prior(target, k, "target") / np.maximum(_prior(source, k, "source"), _FLOOR)
    out = p * w
    total = out.sum(axis=1, keepdims=True)
    # A row whose only mass sat on classes the target gives 0 stays as it was rather than becoming 0/0.
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), p)


@dataclass(frozen=True)
class PriorEstimate:
    """An estimated deployment prior (``priors``, shape ``(k,)``) and the probabilities moved to it."""

    priors: np.ndarray
    proba: np.ndarray
    iterations: int
    converged: bool


def em_priors(proba: Any, source: Any, *, max_iter: int = 1000, tol: float = 1e-8) -> PriorEstimate:
    """Saerens et al. (2002): the class balance of the rows of ``proba`` (a calibrated classifier's probabilities,
    calibrated where the balance was ``source``), by expectation-maximisation — shift the probabilities to the current
    estimate, take their mean as the next estimate, until it moves less than ``tol``."""
    p = _proba(proba, "proba")
    src = _prior(source, p.shape[1], "source")
    q = src.copy()
    adapted = p
    for i in range(1, max_iter + 1):
        adapted = shift_priors(p, src, q)
        new = adapted.mean(axis=0)
        step = float(np.max(np.abs(new - q)))
        q = new
        if step < tol:
            return PriorEstimate(q, shift_priors(p, src, q), i, True)
    return PriorEstimate(q, shift_priors(p, src, q), max_iter, False)


def bbse_priors(y_true: Any, proba_held_out: Any, proba_target: Any) -> np.ndarray:
    """Lipton et al. (2018), black-box shift estimation: with ``C[i, j]`` the share of labelled held-out rows predicted
    ``i`` whose class is ``j`` and ``mu[i]`` the share of target rows predicted ``i``, solve ``C w = mu`` for the
    weights ``w = target prior / source prior`` (least squares, clipped at 0) and return the target prior."""
    held = _proba(proba_held_out, "proba_held_out")
    target = _proba(proba_target, "proba_target")
    k = held.shape[1]
    if target.shape[1] != k:
        raise ConfigError(f"proba_target: expected {k} columns like proba_held_out, got {target.shape[1]}")
    y = np.asarray(y_true)
    if y.shape != (held.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ConfigError(f"y_true: expected {held.shape[0]} class indices in 0..{k - 1}, got {np.asarray(y_true)!r}")
    confusion = np.zeros((k, k))
    np.add.at(confusion, (held.argmax(axis=1), y), 1.0)
    confusion /= held.shape[0]
    mu = np.bincount(target.argmax(axis=1), minlength=k) / target.shape[0]
    w, *_ = np.linalg.lstsq(confusion, mu, rcond=None)
    q = np.maximum(w, 0.0) * confusion.sum(axis=0)  # w_j * source_j; source_j = share of held-out rows of class j
    if q.sum() <= 0:
        raise ConfigError("bbse_priors: the estimate is 0 for every class; the held-out predictions carry no signal")
    return q / q.sum()
