"""What a multi-label classifier answers: independent probabilities, an indicator matrix, label lists.

A mixin placed before the estimator core (:class:`~classlm.estimator.CalibratedClassifier`) in a classifier's bases:
where ``calibrator_`` is a :class:`~classlm.thresholds.MultiLabelCalibrator` it answers in scikit-learn's
multi-label conventions (``predict`` an ``(n, k)`` 0/1 matrix, ``predict_proba`` ``(n, k)`` independent
probabilities), and otherwise hands every call to the core unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from classlm.errors import ConfigError
from classlm.multilabel import label_lists
from classlm.thresholds import MultiLabelCalibrator, sigmoid


class MultiLabelOutputs:
    """Multi-label answers over the estimator core's single-label ones."""

    if TYPE_CHECKING:  # the estimator's
        calibrator_: Any

    @property
    def multi_label_(self) -> bool:
        """Whether the classifier was fitted multi-label (``fit`` with label lists or an indicator matrix)."""
        return isinstance(getattr(self, "calibrator_", None), MultiLabelCalibrator)

    @property
    def thresholds_(self) -> np.ndarray:
        """Per class, the probability at and above which it is answered (multi-label only)."""
        self._multi_label_only("thresholds_")
        return np.asarray(self.calibrator_.thresholds_)

    def _multi_label_only(self, what: str) -> None:
        self.check_fitted()  # type: ignore[attr-defined]
        if not self.multi_label_:
            raise ConfigError(f"{what} is for multi-label classifiers (fit with a list of labels per text)")

    def _no_priors(self, priors: Any) -> None:
        if priors is not None and not (isinstance(priors, str) and priors == "training"):
            raise ConfigError("priors apply to single-label classifiers (one class per text); this one is multi-label")

    def check_prior_method(self, method: str) -> None:
        if self.multi_label_:  # EM and BBSE estimate one class balance over classes that exclude each other
            self._no_priors(method)
        super().check_prior_method(method)  # type: ignore[misc]

    def set_priors(self, priors: Any) -> None:
        if self.multi_label_:
            self._no_priors(priors)
        super().set_priors(priors)  # type: ignore[misc]

    def calibrated_logits(self, logits: np.ndarray, priors: Any = None) -> np.ndarray:
        if not self.multi_label_:
            return super().calibrated_logits(logits, priors)  # type: ignore[misc]
        self._no_priors(priors)
        return np.asarray(self.calibrator_.transform(logits))

    def probabilities(self, logits: np.ndarray, priors: Any = None) -> np.ndarray:
        if not self.multi_label_:
            return super().probabilities(logits, priors)  # type: ignore[misc]
        return sigmoid(self.calibrated_logits(logits, priors))

    def predict_proba(self, X: Any, priors: Any = None) -> np.ndarray:
        """Single-label: rows summing to 1. Multi-label: each class's own probability, ``(n, k)``."""
        if not self.multi_label_:
            return super().predict_proba(X, priors)  # type: ignore[misc]
        return self.probabilities(self.predict_scores(X).logits, priors)  # type: ignore[attr-defined]

    def decision_function(self, X: Any, priors: Any = None) -> np.ndarray:
        if not self.multi_label_:
            return super().decision_function(X, priors)  # type: ignore[misc]
        return self.calibrated_logits(self.predict_scores(X).logits, priors)  # type: ignore[attr-defined]

    def predict(
        self, X: Any, priors: Any = None, *, abstain_below: float | None = None, abstain_label: Any = None
    ) -> np.ndarray:
        """Single-label: a class per text. Multi-label: the ``(n, k)`` 0/1 matrix of the classes at or above their
        cuts (``thresholds_``); :meth:`predict_labels` gives them as lists."""
        if not self.multi_label_:
            return super().predict(X, priors, abstain_below=abstain_below, abstain_label=abstain_label)  # type: ignore[misc]
        if abstain_below is not None:
            raise ConfigError("abstain_below is for single-label classifiers: a multi-label one may answer no class")
        return (self.predict_proba(X, priors) >= self.thresholds_).astype(np.int64)

    def predict_labels(self, X: Any) -> list[list[Any]]:
        """Multi-label: each text's classes (those at or above their cuts), in class order."""
        self._multi_label_only("predict_labels")
        return label_lists(self.predict(X), list(self.classes_))  # type: ignore[attr-defined]

    def out_of_scope_scores(self, X: Any, priors: Any = None) -> dict[str, np.ndarray]:
        if self.multi_label_:
            raise ConfigError("out-of-scope scores are for single-label classifiers; a multi-label one may answer none")
        return super().out_of_scope_scores(X, priors)  # type: ignore[misc]

    def calibrate(self, X: Any, y: Any, *, source: str = "calibrate(X, y)") -> Any:
        """Multi-label: refit the per-class scaling and cuts on held-out ``(X, y)`` (label lists or a matrix)."""
        if not self.multi_label_:
            return super().calibrate(X, y, source=source)  # type: ignore[misc]
        texts, target = self._multi_label_rows((X, y), "calibration data", [str(c) for c in self.classes_])  # type: ignore[attr-defined]
        self.calibrate_multi_label(texts, target, source)  # type: ignore[attr-defined]
        return self
