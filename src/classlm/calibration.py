"""Calibration with labels (Guo et al., 2017): temperature scaling, one scalar ``T`` so that ``softmax(logits / T)``
is calibrated, and bias scaling, ``softmax(logits / T + b)`` with a per-class offset ``b`` as well.

Pure numpy. The temperature fit minimises the mean NLL over ``s = log T`` on ``[log 0.01, log 100]``: a
golden-section search finds the minimum (the NLL is convex in ``1/T``, so unimodal in ``log T``), a few safeguarded
Newton steps polish it. The bias fit is Newton's method on ``(1/T, b)``, in which the NLL is convex.
Label-free corrections (contextual, batch) and prior shift are in :mod:`classlm.priors`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from classlm.errors import ArtifactError, ConfigError
from classlm.metrics import softmax

__all__ = ["BIAS_MIN_ROWS_PER_CLASS", "T_MAX", "T_MIN", "BiasScaler", "TemperatureScaler"]

T_MIN = 0.01
T_MAX = 100.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_GOLDEN_ITERS = 60  # shrinks the 9.2-wide log-T bracket below 1e-11
_NEWTON_ITERS = 8


def _check_temperature(t: Any, error: type[Exception]) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)):
        raise error(f"temperature: expected a positive finite number, got {t!r}")
    value = float(t)
    if not (math.isfinite(value) and value > 0):
        raise error(f"temperature: expected a positive finite number, got {value!r}")
    return value


def _logits(logits: Any, *, allow_empty: bool) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ConfigError(f"logits: expected a 2-D array of shape (n, k), got shape {z.shape}")
    if not allow_empty and z.shape[0] < 1:
        raise ConfigError("logits: expected at least one row to fit the temperature, got 0")
    if np.any(np.isnan(z)):
        raise ConfigError("logits: expected numbers, got nan")
    return z


def _fit_data(logits: Any, y_true: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    z = _logits(logits, allow_empty=False)
    if not np.all(np.isfinite(z)):
        raise ConfigError(f"logits: expected finite numbers to fit {what}, got inf")
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ConfigError(f"y_true: expected shape ({z.shape[0]},) to match the logits, got {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"y_true: expected integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ConfigError(
            f"y_true: expected class indices in 0..{z.shape[1] - 1}, got values from {y.min()} to {y.max()}"
        )
    return z, y.astype(np.int64)


class _Objective:
    """Mean NLL of ``softmax(z * exp(-s))`` and its first two derivatives in ``s = log T``."""

    def __init__(self, z: np.ndarray, y: np.ndarray) -> None:
        # Shifting each row by its max leaves the softmax unchanged and keeps z * a <= 0, so exp never overflows.
        self.z = z - z.max(axis=1, keepdims=True)
        self.zy = self.z[np.arange(z.shape[0]), y]

    def value(self, s: float) -> float:
        a = math.exp(-s)
        # NLL_i = logsumexp(a z_i) - a z_iy; each row of a z has max 0, so the sum is in [1, k]: no overflow.
        lse = np.log(np.sum(np.exp(self.z * a), axis=1))
        return float(np.mean(lse - a * self.zy))

    def derivatives(self, s: float) -> tuple[float, float]:
        # With a = 1/T: dNLL/da = E_p[z] - z_y and d2NLL/da2 = Var_p[z] >= 0; then the chain rule, da/ds = -a.
        a = math.exp(-s)
        p = softmax(self.z * a, axis=1)
        ez = np.sum(p * self.z, axis=1)
        g_a = float(np.mean(ez - self.zy))
        h_a = float(np.mean(np.sum(p * self.z**2, axis=1) - ez**2))
        return -a * g_a, a * a * h_a + a * g_a


class TemperatureScaler:
    """Divide logits by one fitted temperature ``T``; never changes the argmax.

    Parameters
    ----------
    temperature:
        Initial (or known) temperature, a positive finite number. ``fit`` replaces it.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature: float = _check_temperature(temperature, ConfigError)
        self.n_fit_: int | None = None
        self.nll_before_: float | None = None
        self.nll_after_: float | None = None

    def __repr__(self) -> str:
        return f"TemperatureScaler(temperature={self.temperature:.6g}, n_fit={self.n_fit_})"

    def fit(self, logits: Any, y_true: Any) -> TemperatureScaler:
        """Find ``T`` in ``[0.01, 100]`` minimising the mean NLL of ``softmax(logits / T)``; returns ``self``."""
        z, y = _fit_data(logits, y_true, "the temperature")
        f = _Objective(z, y)
        before = f.value(0.0)
        if not np.any(f.z):
            # Every row has all-equal logits: the NLL is log k whatever T is, so keep T = 1.
            s_best = 0.0
        else:
            s_best = self._minimise(f)
        after = f.value(s_best)
        if not after <= before:  # also catches nan; T = 1 is in the bracket, so never end worse than the input
            s_best, after = 0.0, before
        # exp(log(0.01)) is 0.010000000000000004: report a bound as exactly the bound.
        lo, hi = math.log(T_MIN), math.log(T_MAX)
        self.temperature = T_MIN if s_best <= lo else T_MAX if s_best >= hi else math.exp(s_best)
        self.n_fit_ = int(z.shape[0])
        self.nll_before_ = before
        self.nll_after_ = after
        return self

    @staticmethod
    def _minimise(f: _Objective) -> float:
        lo, hi = math.log(T_MIN), math.log(T_MAX)
        a, b = lo, hi
        c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        fc, fd = f.value(c), f.value(d)
        for _ in range(_GOLDEN_ITERS):
            if fc <= fd:
                b, d, fd = d, c, fc
                c = b - _GOLDEN * (b - a)
                fc = f.value(c)
            else:
                a, c, fc = c, d, fd
                d = a + _GOLDEN * (b - a)
                fd = f.value(d)
        s, fs = (c, fc) if fc <= fd else (d, fd)
        # Newton polishes what golden-section cannot resolve (the NLL is flat to ~1e-16 within ~1e-8 of the optimum).
        # A step is kept only when it stays in the bracket and does not raise the NLL.
        for _ in range(_NEWTON_ITERS):
            g, h = f.derivatives(s)
            if not (h > 0 and math.isfinite(g)):
                break
            s_new = min(max(s - g / h, lo), hi)
            f_new = f.value(s_new)
            if not f_new <= fs:
                break
            step, s, fs = abs(s_new - s), s_new, f_new
            if step < 1e-12:
                break
        # Separable data drive the optimum to a bound: the interior search only approaches it, so test the ends.
        for edge in (lo, hi):
            f_edge = f.value(edge)
            if f_edge < fs:
                s, fs = edge, f_edge
        return s

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated logits ``logits / T`` (float64, shape ``(n, k)``)."""
        return _logits(logits, allow_empty=True) / self.temperature

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)``."""
        return softmax(self.transform(logits), axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, read back by :meth:`from_dict`."""
        return {
            "method": "temperature",
            "temperature": float(self.temperature),
            "n_fit": self.n_fit_,
            "nll_before": self.nll_before_,
            "nll_after": self.nll_after_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TemperatureScaler:
        """Rebuild from :meth:`to_dict` output; unknown extra keys are ignored. Raises ArtifactError on a bad dict."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"calibration: expected a JSON object, got {type(d).__name__}")
        if d.get("method") != "temperature":
            raise ArtifactError(f"calibration: expected method 'temperature', got {d.get('method')!r}")
        if "temperature" not in d:
            raise ArtifactError("calibration: expected a 'temperature' field, it is missing")
        scaler = cls(_check_temperature(d["temperature"], ArtifactError))
        _read_fit_record(scaler, d)
        return scaler


# Bias scaling fits k + 1 numbers where temperature fits one: below about this many labelled rows per class the
# offsets follow the noise of the few rows (a class seen once gets whatever offset makes that row right).
BIAS_MIN_ROWS_PER_CLASS = 5
_BIAS_NEWTON_ITERS = 100


class BiasScaler:
    """``softmax(logits / T + b)``: a temperature and a per-class offset ``b`` (mean 0), fitted together by NLL.

    The offset moves a class the model over- or under-predicts, which a temperature cannot (it never changes the
    argmax); the price is ``k`` more numbers to fit, so it wants :data:`BIAS_MIN_ROWS_PER_CLASS` labelled rows per
    class or more. ``l2`` is a ridge penalty on ``b``: it fixes the offsets' common level (softmax ignores it) and
    keeps a class seen in few rows from taking an extreme offset.
    """

    def __init__(self, l2: float = 1e-4) -> None:
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not (math.isfinite(l2) and l2 > 0):
            raise ConfigError(f"l2: expected a positive finite number, got {l2!r}")
        self.l2 = float(l2)
        self.temperature: float = 1.0
        self.bias_: np.ndarray | None = None
        self.n_fit_: int | None = None
        self.nll_before_: float | None = None
        self.nll_after_: float | None = None

    def __repr__(self) -> str:
        return f"BiasScaler(temperature={self.temperature:.6g}, n_fit={self.n_fit_})"

    def _objective(self, z: np.ndarray, y: np.ndarray, a: float, b: np.ndarray) -> float:
        return _Objective(a * z + b, y).value(0.0) + 0.5 * self.l2 * float(b @ b)

    def fit(self, logits: Any, y_true: Any) -> BiasScaler:
        """Fit ``1/T`` in ``[0.01, 100]`` and ``b`` minimising the mean NLL (plus the ridge on ``b``); ``self``."""
        z, y = _fit_data(logits, y_true, "the bias")
        z = z - z.max(axis=1, keepdims=True)  # a row shift changes no softmax; keeps exp in range
        n, k = z.shape
        onehot = np.zeros((n, k))
        onehot[np.arange(n), y] = 1.0
        a, b = 1.0, np.zeros(k)
        f = before = self._objective(z, y, a, b)
        for _ in range(_BIAS_NEWTON_ITERS):
            p = softmax(a * z + b, axis=1)
            ez = np.sum(p * z, axis=1)
            grad = np.concatenate([[np.mean(ez - z[np.arange(n), y])], (p - onehot).mean(axis=0) + self.l2 * b])
            hess = np.empty((k + 1, k + 1))
            hess[0, 0] = np.mean(np.sum(p * z * z, axis=1) - ez * ez)
            hess[0, 1:] = hess[1:, 0] = np.mean(p * (z - ez[:, None]), axis=0)
            hess[1:, 1:] = np.diag(p.mean(axis=0)) - p.T @ p / n + self.l2 * np.eye(k)
            hess[0, 0] += 1e-12  # all-equal logits leave 1/T without curvature
            step = np.linalg.solve(hess, grad)
            # Backtracking keeps 1/T inside [1/T_MAX, 1/T_MIN] and the NLL from rising (it is convex: Newton's
            # direction descends; a full step may overshoot far from the optimum).
            t = 1.0
            while t > 1e-10:
                a_new = a - t * step[0]
                if 1 / T_MAX <= a_new <= 1 / T_MIN:
                    f_new = self._objective(z, y, a_new, b - t * step[1:])
                    if f_new <= f:
                        break
                t *= 0.5
            else:
                break
            decrease = f - f_new
            a, b, f = a_new, b - t * step[1:], f_new
            if decrease < 1e-14 and float(np.max(np.abs(t * step))) < 1e-10:
                break
        self.temperature = 1.0 / a
        self.bias_ = b - b.mean()
        self.n_fit_ = n
        self.nll_before_ = before
        self.nll_after_ = _Objective(a * z + self.bias_, y).value(0.0)
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated logits ``logits / T + b`` (float64, shape ``(n, k)``)."""
        z = _logits(logits, allow_empty=True)
        if self.bias_ is None:
            raise ConfigError("BiasScaler is not fitted: call fit(logits, y_true) on held-out labelled rows")
        if z.shape[1] != self.bias_.shape[0]:
            raise ConfigError(f"logits: expected shape (n, {self.bias_.shape[0]}), got {z.shape}")
        return z / self.temperature + self.bias_

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T + b)``."""
        return softmax(self.transform(logits), axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, read back by :meth:`from_dict`."""
        if self.bias_ is None:
            raise ConfigError("BiasScaler is not fitted: call fit(logits, y_true) before saving it")
        return {
            "method": "bias",
            "temperature": float(self.temperature),
            "bias": [float(v) for v in self.bias_],
            "l2": self.l2,
            "n_fit": self.n_fit_,
            "nll_before": self.nll_before_,
            "nll_after": self.nll_after_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BiasScaler:
        """Rebuild from :meth:`to_dict` output. Raises ArtifactError on a bad dict."""
        if not isinstance(d, Mapping) or d.get("method") != "bias":
            got = d.get("method") if isinstance(d, Mapping) else type(d).__name__
            raise ArtifactError(f"calibration: expected method 'bias', got {got!r}")
        bias = d.get("bias")
        if not isinstance(bias, list) or not bias or not all(_finite(v) for v in bias):
            raise ArtifactError(f"calibration: expected 'bias' to be a list of finite numbers, got {bias!r}")
        try:
            scaler = cls(d.get("l2", 1e-4))
        except ConfigError as e:
            raise ArtifactError(f"calibration: {e}") from None
        scaler.temperature = _check_temperature(d.get("temperature"), ArtifactError)
        scaler.bias_ = np.asarray(bias, dtype=np.float64)
        _read_fit_record(scaler, d)
        return scaler


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_fit_record(scaler: Any, d: Mapping[str, Any]) -> None:
    """``n_fit``, ``nll_before`` and ``nll_after`` of a saved scaler onto ``scaler`` (ArtifactError when bad)."""
    n_fit = d.get("n_fit")
    if n_fit is not None and (isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < 0):
        raise ArtifactError(f"calibration: expected 'n_fit' to be a non-negative integer or null, got {n_fit!r}")
    scaler.n_fit_ = n_fit
    for key in ("nll_before", "nll_after"):
        v = d.get(key)
        if v is not None and not _finite(v):
            raise ArtifactError(f"calibration: expected {key!r} to be a finite number or null, got {v!r}")
        setattr(scaler, key + "_", None if v is None else float(v))
