"""What :class:`~classlm.LMClassifier` and :class:`~classlm.Ensemble` share as scikit-learn classifiers.

scikit-learn's conventions, where its own code relies on them: ``classes_`` keeps the type of ``y`` (``np.unique``
semantics: integer labels give integer classes and integer predictions, or ``score`` compares ``1`` with ``'1'``);
a two-class ``decision_function`` is one column (``CalibratedClassifierCV`` and the scorers expect ``(n,)``);
targets that are not classes (continuous values, ``None``) are refused in its words; and the estimators' not-fitted
error is also scikit-learn's. Inside, classes are matched by their ``str()``: that is the name the prompt shows and
the manifest stores, and how labels read from text files (always strings) find their class.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.multiclass import type_of_target

from classlm import errors
from classlm.calibration import BIAS_MIN_ROWS_PER_CLASS
from classlm.class_priors import ClassPriors
from classlm.data import as_texts, is_missing, validate_labels
from classlm.errors import DataError
from classlm.labels import LabelSet
from classlm.metrics import softmax

log = logging.getLogger(__name__)
_SHOW = 5
_NUMBER = (int, float, np.integer, np.floating, np.bool_)


class NotFittedError(errors.NotFittedError, _SklearnNotFittedError):
    """The estimator is used before ``fit``: catchable as classlm's and as scikit-learn's ``NotFittedError``.

    Defined here, not in :mod:`classlm.errors`, which is pure-layer and must import without scikit-learn.
    """


class CalibratedClassifier(ClassPriors, ClassifierMixin, BaseEstimator):
    """The estimator core of ``LMClassifier``, ``RemoteClassifier`` and ``Ensemble``, written once: raw class logits
    from ``predict_scores``, the fitted ``calibrator_`` on them, then ``decision_function`` / ``predict_proba`` /
    ``predict``. A subclass provides ``predict_scores(X, class_mass=...)`` (Scores-like: ``logits`` ``(n, k)`` with
    columns in ``classes_`` order, ``class_mass``, ``truncated``), ``check_fitted()``, and after ``fit`` the
    attributes ``classes_`` and ``calibrator_``. The CLI, the server and ``evaluate`` turn scores into probabilities
    with :meth:`probabilities`, the same step ``predict_proba`` takes."""

    # Whether predict_scores(X, class_mass=True) gives the class-token mass (methods with class tokens).
    class_mass_available: bool = False

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # The input is a 1-D collection of texts, not a feature matrix.
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        try:
            self.check_fitted()
        except NotFittedError:
            return False
        return True

    def predict_scores(self, X: Any, *, class_mass: bool = False) -> Any:
        raise NotImplementedError

    def read_inputs(self, X: Any) -> list[str]:
        """``X`` checked as this classifier's inputs (:func:`classlm.fields.as_texts`); a classifier that reads
        inputs of several fields lays them out in its own fields and order."""
        return as_texts(X)

    def check_fitted(self) -> None:
        """Raise NotFittedError (saying how to fit) unless the classifier is fitted."""
        raise NotImplementedError

    def calibrated_logits(self, logits: np.ndarray, priors: Any = None) -> np.ndarray:
        """Raw logits ``(n, k)`` → calibrated logits (float64), moved to the class priors ``priors`` (see
        :meth:`predict_proba`)."""
        self.check_fitted()
        z = np.asarray(self.calibrator_.transform(logits))
        target = self._target_priors(priors)
        if target is None:
            return z
        # Bayes' rule with the likelihoods kept: p_c * q_c / pi_c, i.e. a per-class shift of the logits. A class
        # given prior 0 is floored, not -inf, so that a row can never become 0/0.
        return z + np.log(np.maximum(target, 1e-12)) - np.log(np.maximum(self.training_priors_, 1e-12))

    def probabilities(self, logits: np.ndarray, priors: Any = None) -> np.ndarray:
        """Raw logits ``(n, k)`` (``predict_scores(X).logits``) → calibrated probabilities, rows summing to 1."""
        return softmax(self.calibrated_logits(logits, priors))

    def _calibrated(self, X: Any, priors: Any = None) -> np.ndarray:
        # predict_scores checks that the classifier is fitted, before any fitted attribute is read.
        return self.calibrated_logits(self.predict_scores(X).logits, priors)

    def decision_function(self, X: Any, priors: Any = None) -> np.ndarray:
        """Calibrated logits (float64), ``(n, k)`` with columns in ``classes_`` order; for two classes
        scikit-learn's ``(n,)``: ``z1 - z0``, whose sigmoid is ``predict_proba(X)[:, 1]``."""
        return decision(self._calibrated(X, priors))

    def predict_proba(self, X: Any, priors: Any = None) -> np.ndarray:
        """Class probabilities ``(n, k)`` (float64, rows sum to 1), columns in ``classes_`` order.

        ``priors``: the class balance where ``X`` comes from, when it differs from the training rows' —
        ``{class: weight}`` or ``k`` weights in class order; ``None`` (default): the one :meth:`adapt_priors`
        estimated, if any; ``"training"``: none (as calibrated)."""
        return softmax(self._calibrated(X, priors))

    def predict(
        self, X: Any, priors: Any = None, *, abstain_below: float | None = None, abstain_label: Any = None
    ) -> np.ndarray:
        """The most probable class of each text, an array of ``classes_``' type (``priors``: as for
        :meth:`predict_proba`). With ``abstain_below``: ``abstain_label`` wherever the top probability is below it
        (default ``"abstain"`` for string classes; for number classes give a number that is not a class)."""
        z = self._calibrated(X, priors)  # first: it raises NotFittedError before classes_ is looked up
        pred = self.classes_[np.argmax(z, axis=1)]
        if abstain_below is None:
            return pred
        from classlm.out_of_scope import abstain_value

        label = abstain_value(self.classes_, abstain_below, abstain_label)
        low = softmax(z).max(axis=1) < abstain_below
        out = pred.copy()
        out[low] = label
        return out

    def out_of_scope_scores(self, X: Any, priors: Any = None) -> dict[str, np.ndarray]:
        """Per text, how likely it is out of scope (:mod:`classlm.out_of_scope`; higher: more likely): ``energy``
        and ``max_proba`` always, ``class_mass`` and ``answer_mass`` for methods with class tokens, ``mahalanobis``
        (:mod:`classlm.feature_distance`) where ``fit`` saw labelled rows and the method reads a hidden state."""
        scores = self.predict_scores(X, **self.scoring_for_out_of_scope())
        return self.out_of_scope_of(scores, self.calibrated_logits(scores.logits, priors))

    def scoring_for_out_of_scope(self) -> dict[str, bool]:
        """What ``predict_scores`` must return for every out-of-scope score: the class mass (methods with class
        tokens) and the hidden features (a classifier with a fitted ``feature_model_``)."""
        wanted = {"class_mass": self.class_mass_available}
        if getattr(self, "feature_model_", None) is not None:
            wanted["features"] = True
        return wanted

    def out_of_scope_of(self, scores: Any, calibrated: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`out_of_scope_scores` from scores taken with :meth:`scoring_for_out_of_scope`."""
        from classlm.out_of_scope import out_of_scope_scores

        out = out_of_scope_scores(calibrated, scores.class_mass)
        model, features = getattr(self, "feature_model_", None), getattr(scores, "features", None)
        if model is not None and features is not None:
            out["mahalanobis"] = model.distance(features)
        return out

    @property
    def temperature_(self) -> float:
        """The fitted temperature (1.0 with ``calibration="none"``)."""
        self.check_fitted()
        return float(self.calibrator_.temperature)

    # -- calibration --------------------------------------------------------------------------------------------
    def labelled_rows(self, pair: Any, name: str) -> tuple[list[str], list[str]]:
        """``(texts, labels)`` checked: the same non-zero count, every label one of ``classes_`` (by name)."""
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise errors.ConfigError(f"{name} must be a (texts, labels) pair, got {type(pair).__name__}")
        texts, labels = self.read_inputs(pair[0]), [str(v) for v in check_targets(pair[1], name)]
        if len(texts) != len(labels) or not texts:
            raise DataError(f"{name}: {len(texts)} texts and {len(labels)} labels; expected the same, non-zero count")
        validate_labels(labels, [str(c) for c in self.classes_])
        return texts, labels

    def class_indices(self, labels: Sequence[str]) -> np.ndarray:
        """Column indices of class names (checked ones: see :meth:`labelled_rows`)."""
        index = {str(c): i for i, c in enumerate(self.classes_)}
        return np.array([index[v] for v in labels], dtype=np.int64)

    def calibrate(self, X: Any, y: Any, *, source: str = "calibrate(X, y)") -> Any:
        """Refit the calibration on held-out ``(X, y)`` (never data the weights were trained on): the temperature
        (or bias), and a batch step on the texts of ``X``; the metrics before and after are kept in
        ``calibration_info_`` and saved with the classifier. Returns ``self``."""
        from classlm.calibrators import parse_calibration

        self.check_fitted()
        if not parse_calibration(self.calibration):
            raise errors.ConfigError(
                "calibration='none' fits nothing; set calibration='temperature' (or 'bias', 'batch+temperature', …) "
                "to fit one"
            )
        texts, labels = self.labelled_rows((X, y), "calibration data")
        self.fit_calibration(texts, self.class_indices(labels), source)
        return self

    def calibrate_unlabelled(self, X: Any = None) -> Any:
        """Refit the label-free step of ``calibration`` without labels: ``batch`` on the texts ``X`` (texts of the
        task, about balanced across classes; a few hundred are plenty), ``contextual`` on its content-free inputs
        (``X`` not needed). A temperature or bias fitted before stays as it is. Returns ``self``."""
        from classlm.calibrators import parse_calibration

        self.check_fitted()
        steps = parse_calibration(self.calibration)
        if not steps or steps[0] not in ("contextual", "batch"):
            raise errors.ConfigError(
                f"calibrate_unlabelled fits a contextual or batch step, and calibration={self.calibration!r} has "
                "none; use e.g. LMClassifier(calibration='batch+temperature')"
            )
        texts = self.read_inputs(X) if X is not None else []
        if steps[0] == "batch" and not texts:
            raise DataError("batch calibration learns from unlabelled texts of the task: calibrate_unlabelled(texts)")
        self.fit_calibration(texts, None, "calibrate_unlabelled(X)")
        return self

    def fit_calibration(self, texts: list[str], y: np.ndarray | None, source: str) -> None:
        """Fit what ``calibrator_`` can learn from held-out ``texts`` and, where given, their class indices ``y``:
        a contextual step from the content-free inputs, a batch step from ``texts`` (their labels unused), then the
        temperature or bias on ``(texts, y)``. ``calibration_info_`` records what was fitted on what."""
        from classlm.calibrators import CONTENT_FREE, LABELLED_STEPS, parse_calibration

        steps = parse_calibration(self.calibration)
        free = getattr(self.calibrator_, "label_free", None)
        labelled = y is not None and bool(steps) and steps[-1] in LABELLED_STEPS
        batch = free is not None and free.kind == "batch"
        logits = self.predict_scores(texts).logits if texts and (labelled or batch) else None
        info_free = None
        if free is not None and free.kind == "contextual":
            self.calibrator_.fit_label_free(self.predict_scores(list(CONTENT_FREE)).logits)
            info_free = {"kind": "contextual", "n": len(CONTENT_FREE), "inputs": list(CONTENT_FREE)}
        elif batch and logits is not None:
            self.calibrator_.fit_label_free(logits)
            info_free = {"kind": "batch", "n": len(texts), "source": source}
        if labelled and logits is not None:
            assert y is not None
            per_class = len(y) / len(self.classes_)
            if steps[-1] == "bias" and per_class < BIAS_MIN_ROWS_PER_CLASS:
                log.warning(
                    "calibration='%s' fits an offset per class on %d rows of %d classes (%.1f per class): below %d "
                    "per class the offsets follow the noise of the few rows; use calibration='temperature', or more "
                    "calibration rows",
                    self.calibration, len(y), len(self.classes_), per_class, BIAS_MIN_ROWS_PER_CLASS,
                )  # fmt: skip
            self.fit_temperature(logits, y, source)
        if info_free is not None:
            info: dict[str, Any] = getattr(self, "calibration_info_", {})
            self.calibration_info_ = {**info, "fitted": True, "label_free": info_free}

    def fit_temperature(self, logits: np.ndarray, y: np.ndarray, source: str) -> None:
        """Fit ``calibrator_`` on held-out raw logits and column indices ``y``; ``calibration_info_`` keeps where
        they came from and the metrics before and after (saved with the classifier)."""
        from classlm.metrics import classification_metrics

        self.calibrator_.fit(logits, y)
        keys = ("accuracy", "macro_f1", "nll", "ece", "calibration_ratio_min", "calibration_ratio_max")
        names = [str(c) for c in self.classes_]
        before = classification_metrics(y, softmax(logits), names)
        after = classification_metrics(y, softmax(self.calibrator_.transform(logits)), names)
        kept = ("label_free", "priors")  # fitted apart from the temperature: a refit keeps them
        self.calibration_info_ = {
            **{k: v for k, v in getattr(self, "calibration_info_", {}).items() if k in kept},
            "fitted": True,
            "n": len(y),
            "source": source,
            "before": {k: before[k] for k in keys},
            "after": {k: after[k] for k in keys},
        }
        self.record_calibration_rows(y, softmax(self.calibrator_.transform(logits)), "calibration rows")

    def model_info(self) -> dict[str, Any]:
        """What the fitted classifier is, as JSON (the server's ``GET /v1/model``); subclasses add their parts."""
        self.check_fitted()
        return {"kind": type(self).__name__, "calibration": {"temperature": self.temperature_}, "priors": self.priors()}

    def run_info(self) -> dict[str, Any]:
        """How this classifier runs here (:func:`classlm.machine.run_info`): the dtype of its backbone (``backbone_``,
        where it has one) and why, the CPU and its flags, torch threads, library versions."""
        from classlm.machine import run_info

        return run_info(getattr(getattr(self, "backbone_", None), "dtype_choice", None))


def check_targets(y: Any, what: str = "y") -> np.ndarray:
    """``y`` as a 1-D array of class labels of y's own type: strings (an object array) or numbers.

    A Hugging Face ``datasets`` column of a ``ClassLabel`` feature (ints) becomes its class names. ``None``/NaN,
    continuous numbers, other objects and a mix of strings and numbers raise DataError in scikit-learn's words
    ("Unknown label type", "Mix of label input types").
    """
    if isinstance(y, (str, bytes)) or not hasattr(y, "__iter__"):
        raise DataError(f"{what} must be a list of class labels, one per text; got {type(y).__name__}")
    if getattr(y, "ndim", 1) != 1:
        raise DataError(f"{what} must be 1-D (one class label per text), got shape {getattr(y, 'shape', '?')}")
    values = list(y)
    names = getattr(getattr(y, "features", None), "names", None)  # datasets.Column of a ClassLabel feature
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        values = _class_label_names(values, names, what)
    missing = [i for i, v in enumerate(values) if is_missing(v)]
    if missing:
        raise DataError(
            f"Unknown label type: {_show(values, missing)} in {what}; expected a class label (a string or an "
            "integer) in every row: drop or fill these rows"
        )
    odd = [i for i, v in enumerate(values) if not isinstance(v, (str, *_NUMBER))]
    if odd:
        raise DataError(f"Unknown label type: {_show(values, odd)} in {what}; expected strings or integers")
    strings = [isinstance(v, str) for v in values]
    if any(strings) and not all(strings):
        first_number = strings.index(False)
        raise DataError(
            f"Mix of label input types (string and number) in {what}: {_show(values, [strings.index(True)])} and "
            f"{_show(values, [first_number])}; use one type for every label"
        )
    if not values or all(strings):
        return np.array(values, dtype=object)
    arr = np.asarray(values)
    kind = type_of_target(arr)
    if kind not in ("binary", "multiclass"):
        raise DataError(
            f"Unknown label type: {kind} ({what} holds values such as {sorted(set(arr.tolist()))[:_SHOW]}); a "
            "classifier expects discrete classes, not a regression target: use class names or integer labels"
        )
    return arr


def classes_from_targets(y: np.ndarray) -> np.ndarray:
    """The sorted distinct labels, typed like ``y`` (``np.unique``; strings as an object array)."""
    if y.dtype == object:
        return np.array(sorted(set(y.tolist())), dtype=object)
    return np.unique(y)


def resolve_classes(labels: Any, y: Any) -> tuple[Any, np.ndarray | None, list[str] | None]:
    """An estimator's ``labels=`` and ``fit``'s ``y``: the spec for LabelSet.from_spec (None when neither gives
    classes), the typed ``classes_`` (None: the label set's names), and ``y`` as class names (None without ``y``).
    Without ``labels=`` the classes are y's (``np.unique``); a kind mismatch between them and ``y`` is refused."""
    y_arr = None if y is None else check_targets(y)
    # Inside, a label is its class's name, str(label): what the prompt shows and the manifest stores.
    y_names = None if y_arr is None else [str(v) for v in y_arr]
    if labels is not None:
        spec, classes = classes_from_spec(labels)
    elif y_arr is not None:
        classes = classes_from_targets(y_arr)
        spec = [str(c) for c in classes]
    else:
        return None, None, None
    if classes is not None and y_arr is not None:
        check_label_kind(classes, y_arr)
    return spec, classes, y_names


def classes_from_spec(spec: Any) -> tuple[Any, np.ndarray | None]:
    """A ``labels=`` argument as LabelSet.from_spec takes it (class names are strings), and its classes typed as
    given: ``[0, 1]`` or ``{0: "negative", 1: "positive"}`` give integer classes. None where the spec is not a
    plain list or mapping of labels (LabelSet.from_spec then says what is wrong)."""
    if isinstance(spec, LabelSet):
        return spec, as_classes(spec.names)
    if isinstance(spec, Mapping):
        keys = list(spec)
    elif isinstance(spec, (list, tuple, np.ndarray)):
        keys = list(spec)
    else:
        return spec, None
    if not keys or not all(isinstance(k, (str, *_NUMBER)) and not is_missing(k) for k in keys):
        return spec, None
    if isinstance(spec, Mapping) or all(isinstance(k, str) for k in keys):
        return spec, as_classes(keys)  # from_spec names a mapping's classes by str(key) itself
    return [str(k) for k in keys], as_classes(keys)


def as_classes(values: Any) -> np.ndarray:
    """Classes as an array: strings as an object array (as scikit-learn keeps them), numbers with their dtype."""
    values = list(values)
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    return np.asarray(values)


def check_label_kind(classes: np.ndarray, y: np.ndarray, what: str = "y") -> None:
    """Refuse string classes with number labels and the reverse: predictions would never equal ``y`` (``score``
    would be 0 or NaN), though matching by ``str()`` would accept them."""
    if not len(y) or (classes.dtype == object) == (y.dtype == object):
        return
    have, want = ("strings", "numbers") if classes.dtype == object else ("numbers", "strings")
    raise DataError(
        f"{what} holds {want} ({_show(list(y), [0])}) but the classes are {have} ({list(classes)[:_SHOW]}): "
        f"predictions would be {have} and never equal {what}; give labels= in the type of {what} "
        "(e.g. labels=[0, 1] or {0: 'description', 1: 'description'}), or leave labels=None to take y's classes"
    )


def decision(z: np.ndarray) -> np.ndarray:
    """scikit-learn's decision_function shape: ``(n,)`` for two classes (the logit of the second class against the
    first, whose sigmoid is the second class's probability), else ``(n, k)``."""
    return z[:, 1] - z[:, 0] if z.ndim == 2 and z.shape[1] == 2 else z


def _class_label_names(values: list[Any], names: list[str], what: str) -> list[Any]:
    def index(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= int(v) < len(names)

    bad = [i for i, v in enumerate(values) if not index(v)]
    if bad:
        raise DataError(
            f"{what} is a ClassLabel column with names {names[:_SHOW]}, but {_show(values, bad)} index none "
            "of them (Hugging Face test splits often use -1 for 'unlabelled'): use a labelled split"
        )
    return [names[int(v)] for v in values]


def _show(values: list[Any], rows: list[int]) -> str:
    shown = ", ".join(f"row {i}: {values[i]!r}" for i in rows[:_SHOW])
    return shown + (f", … ({len(rows)} rows)" if len(rows) > _SHOW else "")
