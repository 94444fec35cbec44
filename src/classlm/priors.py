"""Class priors without labels: the model's own bias toward some classes (contextual and batch calibration), and the
class balance where the classifier is deployed (prior shift by EM or BBSE).

Pure numpy, like the rest of the calibration layer. Both corrections are one operation on the logits: divide each
class's probability by a prior and renormalise, i.e. subtract ``log prior`` from the logits.

- :class:`PriorCorrection` estimates the prior the model brings to *every* input and removes it:
  ``kind="contextual"`` from content-free inputs ("N/A", "", …; Zhao et al. 2021, "Calibrate Before Use"),
  ``kind="batch"`` from unlabelled inputs of the task (Zhou et al. 2023, "Batch Calibration", with a geometric mean:
  see the class). Zero-shot label-token
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
from classlm.metrics import log_softmax, softmax

__all__ = [
    "BBSE_MIN_ROWS_PER_CLASS",
    "PRIOR_KINDS",
    "PRIOR_METHODS",
    "PriorCorrection",
    "PriorEstimate",
    "bbse_priors",
    "check_saved_priors",
    "class_balance",
    "em_priors",
    "prior_method",
    "prior_vector",
    "shift_priors",
    "soft_confusion",
]

PRIOR_KINDS = ("contextual", "batch")
PRIOR_METHODS = ("auto", "em", "bbse")
# BBSE is unbiased under label shift, but its error shrinks only with the labelled calibration rows of each class; EM
# has no such variance but follows the classifier's own miscalibration. benchmarks/calibration.py's prior_shift redraws
# 100 and 300 of its 500 calibration rows 200 times ("calibration rows redrawn"): with 75 rows per class (ag_news, 300
# rows) BBSE-soft was within 0.03 in 73-97% of the draws and EM in 0-14%; with about 13 and 40 rows of the rarer class
# (sms_spam, 100 and 300 rows) EM did as well or better; with 25 per class both mostly missed. "auto" switches between.
BBSE_MIN_ROWS_PER_CLASS = 50
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
    """Subtract ``log prior`` from the logits, ``prior`` being the mean answer over reference inputs.

    Parameters
    ----------
    kind:
        ``"contextual"`` (the reference inputs are content-free: the classifier scores inputs such as ``"N/A"`` and
        the prior is its mean probability over them, as in Zhao et al. 2021) or ``"batch"`` (unlabelled inputs of the
        task: the prior is its mean answer over them, which assumes the classes are about balanced there). The kind
        says what the prior was estimated from, and is saved with it.

    ``batch`` averages log-probabilities (a geometric mean: each class's logit is centred on its mean), not the
    probabilities themselves: raw zero-shot logits are over-confident (the fitted temperatures reach 4–9), and an
    arithmetic mean of such probabilities follows the few texts the model is surest of. The log mean is the same at
    any temperature, so the correction and a temperature fitted after it do not fight. Measured on six datasets
    zero-shot (``benchmarks/calibration.py``): trec's NLL after temperature 1.814 -> 1.801, ag_news's macro-F1
    0.512 -> 0.537, the other four within 0.003. ``contextual`` keeps the probability mean: over three
    content-free inputs the two agree to 0.02 NLL, and it is the published method.
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
        if self.kind == "batch":  # the geometric mean: see the class docstring for why not the arithmetic one
            self.log_prior_ = log_softmax(log_softmax(z, axis=1).mean(axis=0))
        else:
            prior = np.maximum(softmax(z, axis=1).mean(axis=0), _FLOOR)
            self.log_prior_ = np.log(prior / prior.sum())
        self.n_fit_ = int(z.shape[0])
        return self

    @property
    def prior_(self) -> np.ndarray:
        """The estimated prior (the mean answer over the reference inputs, normalised), shape ``(k,)``."""
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
            or not all(_finite(v) for v in values)
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


def em_priors(
    proba: Any, source: Any, *, max_iter: int = 1000, tol: float = 1e-8, pseudo_rows: float | None = None
) -> PriorEstimate:
    """Saerens et al. (2002): the class balance of the rows of ``proba`` (a calibrated classifier's probabilities,
    calibrated where the balance was ``source``), by expectation-maximisation — shift the probabilities to the current
    estimate, take their mean as the next estimate, until it moves less than ``tol``.

    ``pseudo_rows`` (default: one per class) rows at the ``source`` balance join every mean: plain EM on a handful of
    rows runs to a corner (two texts gave one class all of the prior, and every later answer became that class);
    over a few hundred rows they move the estimate by well under 0.01."""
    p = _proba(proba, "proba")
    src = _prior(source, p.shape[1], "source")
    extra = float(p.shape[1] if pseudo_rows is None else pseudo_rows)
    q = src.copy()
    for i in range(1, max_iter + 1):
        adapted = shift_priors(p, src, q)
        new = (adapted.sum(axis=0) + extra * src) / (p.shape[0] + extra)
        step = float(np.max(np.abs(new - q)))
        q = new
        if step < tol:
            return PriorEstimate(q, shift_priors(p, src, q), i, True)
    return PriorEstimate(q, shift_priors(p, src, q), max_iter, False)


def bbse_priors(confusion: Any, proba_target: Any, *, soft: bool = False) -> np.ndarray:
    """Lipton et al. (2018), black-box shift estimation. ``confusion``: labelled held-out rows, true class by row and
    predicted class by column — counts (:func:`classlm.metrics.confusion_matrix`), or with ``soft`` each row's
    summed probabilities (:func:`soft_confusion`); with ``C[i, j]`` the share of them predicted ``i`` whose class is
    ``j`` and ``mu[i]`` the share of target rows predicted ``i`` (``soft``: their mean probability of ``i``), solve
    ``C w = mu`` for the weights ``w = target prior / source prior`` (least squares, clipped at 0) and return the
    target prior.

    ``soft`` is the paper's BBSE-soft: every row adds all of its answer to ``C`` and ``mu``, not one count, so a
    hundred calibration rows give a steadier ``C`` (``benchmarks/calibration.py``'s ``prior_shift``)."""
    target = _proba(proba_target, "proba_target")
    k = target.shape[1]
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.shape != (k, k) or not np.all(np.isfinite(counts)) or np.any(counts < 0) or counts.sum() <= 0:
        raise ConfigError(f"confusion: expected ({k}, {k}) non-negative counts, not all 0; got shape {counts.shape}")
    c = counts.T / counts.sum()  # c[i, j]: predicted i, true j
    mu = target.mean(axis=0) if soft else np.bincount(target.argmax(axis=1), minlength=k) / target.shape[0]
    w, *_ = np.linalg.lstsq(c, mu, rcond=None)
    q = np.maximum(w, 0.0) * c.sum(axis=0)  # w_j * source_j; source_j = share of held-out rows of class j
    if q.sum() <= 0:
        raise ConfigError("bbse_priors: the estimate is 0 for every class; the held-out predictions carry no signal")
    return q / q.sum()


def prior_method(method: str, confusion: Any = None) -> str:
    """The estimator ``method`` names: ``"em"`` or ``"bbse"`` as given; ``"auto"``: BBSE-soft when the labelled
    calibration rows (``confusion``: their :func:`soft_confusion`, true class by row, whose rows sum to the classes'
    counts; ``None`` without it) hold at least ``BBSE_MIN_ROWS_PER_CLASS`` rows of every class, else EM."""
    if method not in PRIOR_METHODS:
        raise ConfigError(f"method: expected one of {', '.join(map(repr, PRIOR_METHODS))}, got {method!r}")
    if method != "auto":
        return method
    if confusion is None:
        return "em"
    rows = np.asarray(confusion, dtype=np.float64).sum(axis=1)
    # The saved sums are rounded to six decimals: a class of exactly 50 rows may sum to 49.99999.
    return "bbse" if rows.size and float(rows.min()) >= BBSE_MIN_ROWS_PER_CLASS - 1e-3 else "em"


def soft_confusion(y: Any, proba: Any) -> np.ndarray:
    """BBSE-soft's confusion: row ``j`` sums the probabilities ``proba`` (shape ``(n, k)``) of the rows of class
    ``j`` (class indices ``y``), so each row sums to that class's count."""
    p = _proba(proba, "proba")
    k = p.shape[1]
    idx = np.asarray(y, dtype=np.int64)
    if idx.shape != (p.shape[0],) or np.any(idx < 0) or np.any(idx >= k):
        raise ConfigError(f"y: expected {p.shape[0]} class indices in 0..{k - 1}, got shape {idx.shape}")
    out = np.zeros((k, k))
    np.add.at(out, idx, p)
    return out


def class_balance(y: Any, k: int) -> np.ndarray:
    """The share of each of ``k`` classes among class indices ``y``."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=k).astype(np.float64)
    if counts.shape != (k,) or counts.sum() <= 0:
        raise ConfigError(f"y: expected at least one class index in 0..{k - 1}")
    return counts / counts.sum()


def prior_vector(priors: Any, classes: Sequence[str]) -> np.ndarray:
    """Class priors given as ``{class: weight}`` (every class named once, by its name) or as ``k`` weights in class
    order → a vector that sums to 1. Raises ConfigError saying which classes are missing or unknown."""
    names = [str(c) for c in classes]
    if isinstance(priors, Mapping):
        given = {str(key): value for key, value in priors.items()}
        missing = [c for c in names if c not in given]
        unknown = [c for c in given if c not in names]
        if missing or unknown:
            parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
            raise ConfigError(f"priors: expected a weight for each class of {names}; {', '.join(parts)}")
        values = [given[c] for c in names]
    elif isinstance(priors, (Sequence, np.ndarray)) and not isinstance(priors, str):
        values = list(priors)
    else:
        raise ConfigError(f"priors: expected {{class: weight}} or {len(names)} weights in class order, got {priors!r}")
    if len(values) != len(names) or not all(_finite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ConfigError(
            f"priors: expected {len(names)} non-negative weights (not all 0), one per class of {names}; got {values!r}"
        )
    arr = np.asarray(values, dtype=np.float64)
    return arr / arr.sum()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_saved_priors(saved: Any, k: int, where: str = "") -> dict[str, Any]:
    """A saved classifier's prior facts (``training`` and ``deployment`` balances, ``confusion`` counts and
    ``soft_confusion`` probability sums, their sources) checked against its ``k`` classes; ``{}`` for none. Raises
    ArtifactError, saying which field is bad (after ``where``, the file)."""
    if saved is None:
        return {}
    if not isinstance(saved, Mapping):
        raise ArtifactError(f"{where}priors: expected an object, got {type(saved).__name__}")
    for key in ("training", "deployment"):
        v = saved.get(key)
        if v is not None and (
            not isinstance(v, list) or len(v) != k or not all(_finite(x) and x >= 0 for x in v) or sum(v) <= 0
        ):
            raise ArtifactError(f"{where}priors: expected {key!r} to be {k} non-negative numbers or null, got {v!r}")
    for key in ("confusion", "soft_confusion"):
        m = saved.get(key)
        if m is not None and (
            not isinstance(m, list)
            or len(m) != k
            or not all(isinstance(r, list) and len(r) == k and all(_finite(x) and x >= 0 for x in r) for r in m)
        ):
            raise ArtifactError(f"{where}priors: expected {key!r} to be {k} rows of {k} non-negative numbers or null")
    return dict(saved)
