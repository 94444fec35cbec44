"""The classifier as the service sees it: classes, calibrated probabilities (moved to a request's class priors),
the abstain label, and the description ``GET /v1/model`` returns."""

from __future__ import annotations

from typing import Any

import numpy as np

from classlm.errors import ConfigError, DataError
from classlm.fields import TEXT, as_texts
from classlm.multilabel import answers
from classlm.out_of_scope import OOS_SCORES, abstain_value
from classlm.priors import prior_vector, shift_priors


class ServedModel:
    """What the service needs of a classifier: its classes, calibrated probabilities, and a description.

    Takes a classlm estimator (LMClassifier, Ensemble: raw scores turned into probabilities by their shared core;
    the class mass for methods with class tokens) or anything else with ``classes_`` and ``predict_proba``.
    """

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        # A multi-label classifier answers every class at or above its cut (``thresholds``), maybe none.
        self.multi_label = bool(getattr(classifier, "multi_label_", False))
        self.thresholds = np.asarray(classifier.thresholds_) if self.multi_label else None
        self.classes = [str(c) for c in classifier.classes_]
        self.labels = np.asarray(classifier.classes_).tolist()  # JSON values of their own type: ints stay ints
        # classlm's estimators (their shared core) give raw scores, with the class mass and truncation flags, and
        # turn them into probabilities; anything else with classes_ and predict_proba is asked for probabilities.
        self._core = hasattr(classifier, "probabilities")
        self.class_mass_available = bool(getattr(classifier, "class_mass_available", False))
        # The text fields each input has: one "text", or those of a classifier trained on inputs of several fields.
        prompt = getattr(getattr(classifier, "method_", None), "prompt", None)
        self.fields: tuple[str, ...] = prompt.fields if prompt is not None else (TEXT,)

    def read(self, items: list[Any]) -> list[str]:
        """A request's texts or ``inputs`` in the fields the classifier reads (DataError says what is wrong)."""
        if len(self.fields) > 1 and items and isinstance(items[0], str):
            raise DataError(
                f"this classifier reads inputs of the fields {list(self.fields)}: send them as 'inputs': "
                f"[{{{', '.join(f'{f!r}: …' for f in self.fields)}}}, …]"
            )
        for i, item in enumerate(items):  # a request's fields are all meant to be read: none is dropped unseen
            unread = sorted(set(item) - set(self.fields)) if isinstance(item, dict) else []
            if unread:
                raise DataError(
                    f"input #{i} has field(s) {unread} this classifier does not read; it reads {list(self.fields)}"
                )
        reader = getattr(self.classifier, "read_inputs", None)
        return reader(items) if reader is not None else as_texts(items, self.fields)

    @property
    def out_of_scope_names(self) -> list[str]:
        """The out-of-scope scores this classifier gives (:meth:`CalibratedClassifier.out_of_scope_scores`), in the
        order of :meth:`score`'s columns; empty for a classifier that is not classlm's."""
        if not self._core or self.multi_label:  # scores of one answer among classes that exclude each other
            return []
        # The class mass and answer mass need class tokens; energy and the top probability come from the logits.
        names = [n for n in OOS_SCORES if self.class_mass_available or n in ("energy", "max_proba")]
        return names + (["mahalanobis"] if getattr(self.classifier, "feature_model_", None) is not None else [])

    def score(
        self, texts: list[str], extras: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Per text: probabilities, and where ``extras`` are asked for (a request wants the class mass or the
        out-of-scope scores) the class mass (methods with class tokens) and the out-of-scope scores ``(n, m)`` in
        :attr:`out_of_scope_names` order; truncated (if the classifier says)."""
        if not self._core:
            return np.asarray(self.classifier.predict_proba(texts)), None, None, None
        clf = self.classifier
        scores = clf.predict_scores(texts, **(clf.scoring_for_out_of_scope() if extras else {}))
        proba = clf.probabilities(scores.logits)
        if not extras:
            return proba, None, scores.truncated, None
        # At the classifier's own balance: a request's priors move its probabilities, not these scores.
        found = clf.out_of_scope_of(scores, clf.calibrated_logits(scores.logits))
        oos = np.stack([found[name] for name in self.out_of_scope_names], axis=1)
        return proba, scores.class_mass, scores.truncated, oos

    def target_priors(self, priors: dict[str, float] | str | None) -> np.ndarray | str | None:
        """A request's priors as a vector in class order, or the estimator to run on the request's own texts once
        they are scored (``"em"`` or ``"bbse"``; ``"auto"`` resolved to one of them here), checked (ConfigError says
        what is wrong); else the classifier's deployment balance, or None: the probabilities are then for the
        training balance."""
        if not self._core:
            if priors is not None:
                raise ConfigError("priors need a classlm classifier (its training class balance); this one has none")
            return None
        if self.multi_label:
            if priors is not None:
                raise ConfigError(
                    "priors apply to single-label classifiers (one class per text); this one is multi-label"
                )
            return None
        if priors is None:
            return self.classifier.priors_
        if isinstance(priors, str):
            return self.classifier.prior_method(priors)
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

    def answers(self, proba: np.ndarray) -> list[Any]:
        """Per text: the most probable class, or (multi-label) the list of classes at or above their cuts."""
        return answers(proba, self.labels, self.thresholds)

    def abstain_label(self, label: str) -> Any:
        """The service's abstain label as an answer of the classes' type (a number for number classes)."""
        if self.multi_label:
            raise ConfigError("abstaining is for single-label classifiers: a multi-label one may answer no class")
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
        info["fields"] = list(self.fields)
        return info
