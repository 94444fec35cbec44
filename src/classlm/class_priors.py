"""Class priors for :class:`~classlm.estimator.CalibratedClassifier`: the class balance its probabilities are
calibrated for, a deployment balance set or estimated from unlabelled texts (:mod:`classlm.priors`), and the facts
behind them, kept in ``calibration_info_["priors"]`` so that they are saved with the classifier.

A mixin, apart from the estimator core so that each stays readable; it expects the core's ``classes_``,
``calibration_info_``, ``check_fitted``, ``predict_scores`` and ``calibrated_logits``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from classlm.errors import ConfigError
from classlm.metrics import softmax


class ClassPriors:
    """Prior shift for an estimator: ``training_priors_``, ``priors_``, :meth:`adapt_priors`, :meth:`set_priors`."""

    classes_: np.ndarray

    if TYPE_CHECKING:  # the estimator core's, which this mixin is part of

        def check_fitted(self) -> None: ...
        def predict_scores(self, X: Any, *, class_mass: bool = False) -> Any: ...
        def calibrated_logits(self, logits: np.ndarray, priors: Any = None) -> np.ndarray: ...

    def _priors_info(self) -> dict[str, Any]:
        info = getattr(self, "calibration_info_", None)
        return dict(info.get("priors") or {}) if isinstance(info, Mapping) else {}

    @property
    def training_priors_(self) -> np.ndarray:
        """The class balance the calibrated probabilities hold for: the training rows' where the classifier learned
        from labelled rows, else its calibration rows'; uniform when it saw no labels."""
        saved = self._priors_info().get("training")
        k = len(self.classes_)
        return np.full(k, 1.0 / k) if saved is None else np.asarray(saved, dtype=np.float64)

    @property
    def priors_(self) -> np.ndarray | None:
        """The deployment class balance :meth:`adapt_priors` estimated (or :meth:`set_priors` set); ``None``."""
        saved = self._priors_info().get("deployment")
        return None if saved is None else np.asarray(saved, dtype=np.float64)

    def _target_priors(self, priors: Any) -> np.ndarray | None:
        from classlm.priors import prior_vector

        if priors is None:
            return self.priors_
        if isinstance(priors, str) and priors == "training":
            return None
        return prior_vector(priors, [str(c) for c in self.classes_])

    def record_priors(self, **entries: Any) -> None:
        """Keep class-prior facts (``training``, ``deployment``, their sources, the calibration rows' confusion
        counts) in ``calibration_info_``, which is saved with the classifier."""
        info: dict[str, Any] = dict(getattr(self, "calibration_info_", None) or {})
        priors = {**(info.get("priors") or {}), **entries}
        for key, value in priors.items():
            if isinstance(value, np.ndarray):
                priors[key] = value.tolist()
        self.calibration_info_ = {**info, "priors": priors}

    def record_calibration_rows(self, y: np.ndarray, proba: np.ndarray, source: str) -> None:
        """What prior shift needs of the labelled rows the probabilities were calibrated on (class indices ``y``,
        calibrated probabilities ``proba``): their confusion counts and summed probabilities per class (BBSE, hard
        and soft) and, unless training rows set it already, their class balance as the one the probabilities hold
        for."""
        from classlm.metrics import confusion_matrix
        from classlm.priors import class_balance, soft_confusion

        k = len(self.classes_)
        # Six decimals: 150 classes make 22,500 sums, which the artifact's JSON keeps (full floats: ~0.4 MB).
        soft = np.round(soft_confusion(y, proba), 6)
        self.record_priors(confusion=confusion_matrix(y, np.argmax(proba, axis=1), k), soft_confusion=soft)
        if self._priors_info().get("training_source") != "training rows":
            self.record_priors(training=class_balance(y, k), training_source=source)

    def set_priors(self, priors: Any) -> None:
        """Use ``priors`` (``{class: weight}`` or ``k`` weights in class order) for every prediction from now on;
        ``None`` goes back to the training balance."""
        self.check_fitted()
        target = None if priors is None else self._target_priors(priors)
        self.record_priors(deployment=target, deployment_source=None if target is None else "set_priors")

    def adapt_priors(self, X: Any, method: str = "auto") -> dict[str, float]:
        """Estimate the class balance of the unlabelled texts ``X`` and use it for every prediction from now on
        (saved with the classifier): ``method="em"`` (Saerens et al. 2002: needs calibrated probabilities),
        ``"bbse"`` (Lipton et al. 2018, BBSE-soft: from the labelled calibration rows' answers; unbiased where EM
        follows the classifier's confusions, but noisier with few of those rows), or ``"auto"`` (default): BBSE-soft
        when the calibration rows hold ``BBSE_MIN_ROWS_PER_CLASS`` (50) rows of every class, else EM. Returns the
        estimate per class; ``priors()["deployment_source"]`` says which method made it."""
        return self.adapt_priors_to(self.predict_scores(X).logits, method)

    def adapt_priors_to(self, logits: np.ndarray, method: str = "auto") -> dict[str, float]:
        """:meth:`adapt_priors` from the raw logits of the texts (``predict_scores(X).logits``), scored already."""
        p = softmax(self.calibrated_logits(logits, "training"))
        used = self.prior_method(method)
        estimate = self.estimate_priors(p, used)
        source = {"method": used, "n": int(p.shape[0])}
        self.record_priors(
            deployment=estimate, deployment_source={**source, "requested": method} if used != method else source
        )
        return {str(c): float(q) for c, q in zip(self.classes_, estimate, strict=True)}

    def prior_method(self, method: str) -> str:
        """The estimator ``method`` stands for on this classifier (``"auto"`` resolved by its calibration rows);
        ConfigError where it cannot estimate (``bbse`` needs labelled calibration rows)."""
        from classlm.priors import prior_method

        self.check_prior_method(method)
        # On the summed probabilities BBSE-soft needs: an artifact saved before they were kept stays with EM, rather
        # than moving to BBSE from counts, the noisiest of the three (benchmarks/calibration.py's prior_shift).
        return prior_method(method, self._priors_info().get("soft_confusion"))

    def check_prior_method(self, method: str) -> None:
        """ConfigError unless ``method`` can estimate priors for this classifier (``bbse`` needs confusion counts)."""
        from classlm.priors import prior_method

        prior_method(method)  # a known name
        if method == "bbse" and self._priors_info().get("confusion") is None:
            raise ConfigError(
                "method='bbse' needs the confusion counts of labelled calibration rows; this classifier has "
                "none: calibrate(X, y) on held-out labelled rows first, or use method='em'"
            )

    def estimate_priors(self, proba: np.ndarray, method: str = "auto") -> np.ndarray:
        """The class balance of texts whose calibrated probabilities for the training balance are ``proba``, by EM
        or BBSE (see :meth:`adapt_priors`); the classifier is left as it is (a server estimates per request)."""
        from classlm.priors import bbse_priors, em_priors

        if self.prior_method(method) == "em":
            return em_priors(proba, self.training_priors_).priors
        info = self._priors_info()
        if info.get("soft_confusion") is not None:
            return bbse_priors(info["soft_confusion"], proba, soft=True)
        return bbse_priors(info["confusion"], proba)  # saved before the summed probabilities were kept

    def priors(self) -> dict[str, Any]:
        """The class balances by class name: ``training`` (what the probabilities are calibrated for) and
        ``deployment`` (what :meth:`adapt_priors` estimated or :meth:`set_priors` set, else ``None``), with where
        each came from."""
        names = [str(c) for c in self.classes_]
        info = self._priors_info()
        deployment = self.priors_
        return {
            "training": dict(zip(names, map(float, self.training_priors_), strict=True)),
            "training_source": info.get("training_source", "uniform: no labelled rows seen"),
            "deployment": None if deployment is None else dict(zip(names, map(float, deployment), strict=True)),
            "deployment_source": info.get("deployment_source"),
        }
