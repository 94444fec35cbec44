"""Temperature scaling (Guo et al., 2017): one scalar ``T`` so that ``softmax(logits / T)`` is calibrated.

Pure numpy. The fit minimises the mean NLL over ``s = log T`` on ``[log 0.01, log 100]``: a golden-section search
finds the minimum (the NLL is convex in ``1/T``, so unimodal in ``log T``), a few safeguarded Newton steps polish it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from classlm.errors import ArtifactError, ConfigError
from classlm.metrics import softmax

__all__ = ["T_MAX", "T_MIN", "TemperatureScaler"]

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
        z = _logits(logits, allow_empty=False)
        if not np.all(np.isfinite(z)):
            raise ConfigError("logits: expected finite numbers to fit the temperature, got inf")
        y = np.asarray(y_true)
        if y.ndim != 1 or y.shape[0] != z.shape[0]:
            raise ConfigError(f"y_true: expected shape ({z.shape[0]},) to match the logits, got {y.shape}")
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"y_true: expected integer class indices, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= z.shape[1]:
            raise ConfigError(
                f"y_true: expected class indices in 0..{z.shape[1] - 1}, got values from {y.min()} to {y.max()}"
            )
        f = _Objective(z, y.astype(np.int64))
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
        n_fit = d.get("n_fit")
        if n_fit is not None and (isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < 0):
            raise ArtifactError(f"calibration: expected 'n_fit' to be a non-negative integer or null, got {n_fit!r}")
        scaler.n_fit_ = n_fit
        for key in ("nll_before", "nll_after"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ArtifactError(f"calibration: expected {key!r} to be a finite number or null, got {v!r}")
            setattr(scaler, key + "_", None if v is None else float(v))
        return scaler
