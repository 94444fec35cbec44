"""The classifier as the service sees it: classes, calibrated probabilities (moved to a request's class priors),
the abstain label, and the description ``GET /v1/model`` returns."""

from __future__ import annotations

from typing import Any

import numpy as np

from classlm.errors import ConfigError
from classlm.out_of_scope import abstain_value
from classlm.priors import prior_vector, shift_priors


class ServedModel:
    """What the service needs of a classifier: its classes, calibrated probabilities, and a description.

    Takes a classlm estimator (LMClassifier, Ensemble: raw scores turned into probabilities by their shared core;
    the class mass for methods with class tokens) or anything else with ``classes_`` and ``predict_proba``.
    """

    def __init__(self, classifier: Any) -> None:
        if getattr(classifier, "multi_label_", False):
            raise ConfigError("the service answers one class per text; serving multi-label classifiers comes later")
        self.classifier = classifier
        self.classes = [str(c) for c in classifier.classes_]
        self.labels = np.asarray(classifier.classes_).tolist()  # JSON values of their own type: ints stay ints
        # classlm's estimators (their shared core) give raw scores, with the class mass and truncation flags, and
        # turn them into probabilities; anything else with classes_ and predict_proba is asked for probabilities.
        self._core = hasattr(classifier, "probabilities")
        self.class_mass_available = bool(getattr(classifier, "class_mass_available", False))

    def score(self, texts: list[str], class_mass: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Per text: probabilities, class mass (if asked for and available), truncated (if the classifier says)."""
        if not self._core:
            return np.asarray(self.classifier.predict_proba(texts)), None, None
        wanted = class_mass and self.class_mass_available
        scores = self.classifier.predict_scores(texts, class_mass=wanted)
        return self.classifier.probabilities(scores.logits), scores.class_mass if wanted else None, scores.truncated

    def target_priors(self, priors: dict[str, float] | str | None) -> np.ndarray | str | None:
        """A request's priors as a vector in class order, or ``"em"``/``"bbse"`` (estimated from the request's own
        texts once they are scored), checked (ConfigError says what is wrong); else the classifier's deployment
        balance, or None: the probabilities are then for the training balance."""
        if not self._core:
            if priors is not None:
                raise ConfigError("priors need a classlm classifier (its training class balance); this one has none")
            return None
        if priors is None:
            return self.classifier.priors_
        if isinstance(priors, str):
            self.classifier.check_prior_method(priors)
            return priors
        return prior_vector(priors, self.classes)

    def shift(self, proba: np.ndarray, target: np.ndarray | str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities as the classifier gives them (for its deployment balance, else its training one) moved to
        ``target`` (estimated here from ``proba`` when it names a method); with the balance they are for."""
        if target is None:
            return proba, None
        current = self.classifier.priors_
        source = self.classifier.training_priors_ if current is None else current
        if isinstance(target, str):  # the classifier is not changed: each request gets its own estimate
            at_training = proba if current is None else shift_priors(proba, current, self.classifier.training_priors_)
            wanted = np.asarray(self.classifier.estimate_priors(at_training, target))
        else:
            wanted = target
        if current is not None and np.array_equal(wanted, current):
            return proba, wanted
        return shift_priors(proba, source, wanted), wanted

    def abstain_label(self, label: str) -> Any:
        """The service's abstain label as an answer of the classes' type (a number for number classes)."""
        value: Any = label
        if np.issubdtype(np.asarray(self.classifier.classes_).dtype, np.number):
            try:
                value = int(label) if label.lstrip("-").isdigit() else float(label)
            except ValueError:
                raise ConfigError(
                    f"the classes are numbers, so the abstain label must be one too; start the service with "
                    f"--abstain-label -1 (it is {label!r})"
                ) from None
        return abstain_value(np.asarray(self.classifier.classes_), 1.0, value)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"classes": self.classes, "kind": type(self.classifier).__name__}
        if self._core:
            info.update(self.classifier.model_info())
        info["class_mass_available"] = self.class_mass_available
        return info
