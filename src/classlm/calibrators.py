"""The calibrator a classifier carries: one step or a chain of steps, named by a ``calibration=`` string.

``"temperature"`` (the default), ``"none"``, ``"bias"``, ``"contextual"``, ``"batch"``, or a label-free step and a
labelled one joined by ``+`` (``"contextual+temperature"``, ``"batch+bias"``): the label-free step runs first and
the labelled one is fitted on its output. What each step is fitted on:

========== ======================================================= ==================================================
step       fitted on                                                 needs
========== ======================================================= ==================================================
contextual the classifier's logits for content-free inputs           no labels (``CONTENT_FREE`` or your own inputs)
batch      the classifier's logits for unlabelled texts of the task  no labels; about balanced classes among them
temperature held-out labelled rows                                   a few labelled rows (one number)
bias       held-out labelled rows                                    ``BIAS_MIN_ROWS_PER_CLASS`` rows per class or more
========== ======================================================= ==================================================

Pure numpy: this module and the steps it chains (:mod:`classlm.calibration`, :mod:`classlm.priors`) import without
torch. A chain of one temperature is saved exactly as a lone :class:`TemperatureScaler` always was, so artifacts
written before chains existed load unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from classlm.calibration import BiasScaler, TemperatureScaler
from classlm.errors import ArtifactError, ConfigError
from classlm.priors import PRIOR_KINDS, PriorCorrection

__all__ = [
    "CONTENT_FREE",
    "LABELLED_STEPS",
    "CalibratorChain",
    "calibrator_from_dict",
    "logit_affine",
    "make_calibrator",
    "parse_calibration",
]

LABELLED_STEPS = ("temperature", "bias")
# The strengths of a label-free step tried with a temperature, strongest first.
STRENGTHS = tuple(round(1.0 - i / 20, 2) for i in range(21))
# Zhao et al. (2021) average the model's answer over a few inputs that carry no content; an empty text is one of theirs.
CONTENT_FREE = ("N/A", "", "[MASK]")


def parse_calibration(spec: Any) -> tuple[str, ...]:
    """``"batch+temperature"`` → ``("batch", "temperature")``; ``"none"`` → ``()``. Raises ConfigError, naming
    the accepted forms, on anything else."""
    accepted = (
        "'temperature', 'none', 'bias', 'contextual', 'batch', or a label-free step and a labelled one joined by '+' "
        "(e.g. 'contextual+temperature')"
    )
    if not isinstance(spec, str):
        raise ConfigError(f"calibration must be a string: {accepted}; got {spec!r}")
    if spec == "none":
        return ()
    steps = tuple(spec.split("+"))
    free = [s for s in steps if s in PRIOR_KINDS]
    labelled = [s for s in steps if s in LABELLED_STEPS]
    if len(free) + len(labelled) != len(steps) or len(free) > 1 or len(labelled) > 1 or steps != (*free, *labelled):
        raise ConfigError(f"calibration must be {accepted}; got {spec!r}")
    return steps


def make_calibrator(spec: str) -> TemperatureScaler | CalibratorChain:
    """An unfitted calibrator for ``calibration=spec``: a lone :class:`TemperatureScaler` (T = 1 until fitted) for
    ``"temperature"`` and ``"none"``, else a :class:`CalibratorChain`."""
    steps = parse_calibration(spec)
    if steps in ((), ("temperature",)):
        return TemperatureScaler()
    return CalibratorChain(steps)


def _read_step(name: str, d: Mapping[str, Any]) -> Any:
    if name == "temperature":
        return TemperatureScaler.from_dict(d)
    return BiasScaler.from_dict(d) if name == "bias" else PriorCorrection.from_dict(d)


def _step(name: str) -> Any:
    return TemperatureScaler() if name == "temperature" else BiasScaler() if name == "bias" else PriorCorrection(name)


class CalibratorChain:
    """A label-free step (``contextual`` or ``batch``), a labelled one (``temperature`` or ``bias``), or both in that
    order. ``transform`` applies the fitted steps; a label-free step not fitted yet is an error that says how to fit
    it, since its whole point is a correction the raw logits lack."""

    def __init__(self, steps: tuple[str, ...]) -> None:
        self.spec = "+".join(steps)
        parse_calibration(self.spec)
        self.steps: list[Any] = [_step(s) for s in steps]
        self.fitted: list[bool] = [False] * len(steps)
        self.strength = 1.0  # how much of the label-free step's correction applies (fitted with a temperature)

    def __repr__(self) -> str:
        return f"CalibratorChain({self.spec!r}, fitted={self.fitted})"

    @property
    def label_free(self) -> PriorCorrection | None:
        """The contextual or batch step, if the chain has one."""
        first = self.steps[0]
        return first if isinstance(first, PriorCorrection) else None

    @property
    def labelled(self) -> TemperatureScaler | BiasScaler | None:
        """The temperature or bias step, if the chain has one."""
        last = self.steps[-1]
        return last if isinstance(last, (TemperatureScaler, BiasScaler)) else None

    @property
    def temperature(self) -> float:
        """The labelled step's temperature; 1.0 without one (or before it is fitted)."""
        step = self.labelled
        return 1.0 if step is None else float(step.temperature)

    def fit_label_free(self, logits: Any) -> CalibratorChain:
        """Fit the contextual or batch step on the raw logits of its reference inputs; returns ``self``."""
        step = self.label_free
        if step is None:
            raise ConfigError(f"calibration={self.spec!r} has no label-free step (contextual or batch) to fit")
        step.fit(logits)
        self.fitted[0] = True
        return self

    def fit(self, logits: Any, y_true: Any) -> CalibratorChain:
        """Fit the labelled step on held-out raw logits and class indices, after the label-free step; ``self``.

        After a contextual or batch step, a temperature is fitted together with the step's ``strength`` (0 to 1,
        on a grid of :data:`STRENGTHS`): the labels say how much of the estimated bias to remove. Zhou et al.'s
        labelled variant of batch calibration does the same; without it, a batch step on a task whose classes are
        far from balanced (tweet_eval_emotion zero-shot) removed their real skew and raised the NLL after the
        temperature. A bias step needs no strength: its own offsets absorb any share of the correction."""
        step = self.labelled
        if step is None:
            raise ConfigError(f"calibration={self.spec!r} has no labelled step (temperature or bias) to fit")
        if self.label_free is not None and isinstance(step, TemperatureScaler):
            scaler = step

            def nll_at(strength: float) -> float:
                self.strength = strength
                value = scaler.fit(self._before_labelled(logits), y_true).nll_after_
                assert value is not None  # set by every fit
                return value

            self.strength = min(STRENGTHS, key=nll_at)  # of equal values min keeps the first: the strongest
        step.fit(self._before_labelled(logits), y_true)
        self.fitted[-1] = True
        return self

    def _before_labelled(self, logits: Any) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        free = self.label_free
        if free is None:
            return z
        if not self.fitted[0]:
            how = (
                "calibrate_unlabelled(texts) with unlabelled texts of the task, or fit(X)"
                if free.kind == "batch"
                else "calibrate_unlabelled() (it scores the content-free inputs)"
            )
            raise ConfigError(f"calibration={self.spec!r}: the {free.kind} step is not fitted yet; call {how}")
        return z + self.strength * (free.transform(z) - z)

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated logits (float64, shape ``(n, k)``); an unfitted labelled step counts as T = 1."""
        z = self._before_labelled(logits)
        step = self.labelled
        if step is None or not self.fitted[-1]:
            return z
        return np.asarray(step.transform(z))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, read back by :func:`calibrator_from_dict`."""
        return {
            "method": self.spec,
            "temperature": self.temperature,
            "strength": self.strength,
            "steps": [s.to_dict() if done else {"method": name, "fitted": False} for s, done, name in self._named()],
        }

    def _named(self) -> list[tuple[Any, bool, str]]:
        return list(zip(self.steps, self.fitted, self.spec.split("+"), strict=True))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibratorChain:
        try:
            chain = cls(parse_calibration(d.get("method")))
        except ConfigError as e:
            raise ArtifactError(f"calibration: {e}") from None
        strength = d.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ArtifactError(f"calibration: expected 'strength' to be a number in [0, 1], got {strength!r}")
        chain.strength = float(strength)
        saved = d.get("steps")
        if not isinstance(saved, list) or len(saved) != len(chain.steps):
            raise ArtifactError(f"calibration: expected 'steps' to list {len(chain.steps)} step(s), got {saved!r}")
        for i, (step_doc, (_, _, name)) in enumerate(zip(saved, chain._named(), strict=True)):
            if not isinstance(step_doc, Mapping) or step_doc.get("method") != name:
                raise ArtifactError(f"calibration: step {i + 1} should be {name!r}, got {step_doc!r}")
            if step_doc.get("fitted") is False:
                continue
            chain.steps[i] = _read_step(name, step_doc)
            chain.fitted[i] = True
        return chain


def calibrator_from_dict(d: Any) -> Any:
    """A saved calibrator: a lone temperature (every artifact before chains, and ``"temperature"`` / ``"none"``
    since), a chain, or a multi-label classifier's per-class calibrator. Raises ArtifactError on a bad dict."""
    if not isinstance(d, Mapping):
        raise ArtifactError(f"calibration: expected a JSON object, got {type(d).__name__}")
    if d.get("method") == "temperature":
        return TemperatureScaler.from_dict(d)
    if d.get("method") == "multi_label":
        from classlm.thresholds import MultiLabelCalibrator

        return MultiLabelCalibrator.from_dict(d)
    return CalibratorChain.from_dict(d)


def logit_affine(calibrator: TemperatureScaler | CalibratorChain) -> tuple[float, np.ndarray | None]:
    """``(T, offset)`` with ``calibrator.transform(z) == z / T + offset`` for every ``z`` (offset ``None``: zero):
    each step is affine in the logits, so a whole chain is one temperature and one per-class offset, which is what
    an exported model needs to reproduce it."""
    if isinstance(calibrator, TemperatureScaler):
        return float(calibrator.temperature), None
    free, step = calibrator.label_free, calibrator.labelled
    fitted_step = step is not None and calibrator.fitted[-1]
    t = float(step.temperature) if fitted_step and step is not None else 1.0
    offset = None
    if free is not None and free.log_prior_ is not None:
        offset = -calibrator.strength * free.log_prior_ / t
    if isinstance(step, BiasScaler) and fitted_step and step.bias_ is not None:
        offset = step.bias_ if offset is None else offset + step.bias_
    return t, offset
