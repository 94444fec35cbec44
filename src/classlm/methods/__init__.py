"""Methods: each turns texts into class logits ``(n_samples, n_classes)`` ordered like ``classes_``.

A method registers itself under a name with :func:`register`; :class:`classlm.LMClassifier` looks it up with
:func:`get_method`. The registry is an explicit dict filled by the imports at the bottom of this file, so the set of
methods is what this package ships (artifacts name a method, they never name a class path to import).

The life of a method inside ``LMClassifier``: ``__init__`` (labels, prompt, validated options) → ``prepare(backbone)``
(the causal LM when ``needs_lm``, else ``None``: the method loads what it needs itself) → ``fit_data(texts, y)`` when
``learns_from_data`` (a head, a vectoriser, few-shot examples: what the method learns beyond the temperature) →
``score(texts)``. What it learned comes back as ``state()`` (tensors for ``method-<id>.safetensors`` + JSON for
the manifest) and goes in again with ``load_state``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from classlm.config import NoOptions, config_from_dict, config_to_dict
from classlm.errors import ConfigError
from classlm.labels import LabelSet
from classlm.prompts import PromptTemplate
from classlm.scores import Scores


class Method(ABC):
    """Base class of the methods of DESIGN.md §2."""

    name: ClassVar[str]
    letters: ClassVar[bool] = False
    # Whether LMClassifier loads the causal LM and hands it to prepare(); other methods load their own encoder.
    needs_lm: ClassVar[bool] = True
    # Whether fit(X, y) teaches the method something beyond the temperature (then calibration data is held out).
    learns_from_data: ClassVar[bool] = False
    # Whether the backbone can be trained through the Trainer (LMClassifier(lora=...)).
    trains_backbone: ClassVar[bool] = False
    options_class: ClassVar[type[Any]] = NoOptions

    def __init__(
        self,
        labels: LabelSet,
        prompt: PromptTemplate,
        *,
        scoring: str,
        max_length: int,
        options: Any = None,
        device: str = "auto",
    ) -> None:
        self.labels = labels
        self.prompt = prompt
        self.scoring = scoring
        self.max_length = max_length
        self.options = self.parse_options(options)
        self.device = device  # for methods that load their own model (needs_lm=False)

    @classmethod
    def parse_options(cls, options: Any) -> Any:
        """``None``, an instance of ``options_class`` or a dict of its fields → a validated instance."""
        if options is None:
            return cls.options_class()
        if isinstance(options, cls.options_class):
            return options
        if isinstance(options, dict):
            return config_from_dict(cls.options_class, options)
        raise ConfigError(
            f"method_options for {cls.name!r} must be a dict of {cls.options_class.__name__} fields, "
            f"got {type(options).__name__}"
        )

    def options_dict(self) -> dict[str, Any]:
        return config_to_dict(self.options)

    def check(self, tokenizer: Any) -> None:
        """Raise what the tokenizer alone can tell (the prompt does not fit, class tokens collide) before any weights
        load: loading a model takes seconds to a minute, a user's mistake should not wait for it. Nothing to check
        by default."""
        return None

    @abstractmethod
    def prepare(self, backbone: Any) -> None:
        """Bind to a loaded backbone (``None`` when not ``needs_lm``): render the prompt, resolve class tokens, load
        an encoder."""

    def fit_data(self, texts: Sequence[str], y: np.ndarray, *, progress: bool = False) -> dict[str, Any]:
        """Learn from labelled texts (``y``: column indices); returns a JSON summary. Only for ``learns_from_data``."""
        raise ConfigError(f"method {self.name!r} learns nothing from data beyond the temperature")

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What ``fit_data`` learned: ``(tensors, json)``; tensors are numpy arrays or torch tensors."""
        return {}, {}

    def load_state(self, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        """Restore what ``state`` returned (after ``prepare``)."""
        if tensors or info:
            raise ConfigError(f"method {self.name!r} keeps no learned state, but a saved state was given")

    def torch_device(self) -> str:
        """``device`` resolved (``"auto"`` → cuda or cpu), for methods that load their own model."""
        from classlm.models import choose_device

        return str(choose_device(self.device))

    def base_identity(self) -> dict[str, Any]:
        """What the artifact records as the model under the method (checked at load where it can be)."""
        backbone = getattr(self, "backbone", None)
        return backbone.identity() if backbone is not None else {}

    @abstractmethod
    def score(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        batch_tokens: int | None = None,
        class_mass: bool = False,
        progress: bool = False,
    ) -> Scores:
        """Class logits for ``texts`` in input order; batches of at most ``batch_size`` rows and ``batch_tokens``
        padded tokens."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able description (class tokens, rendered prompt) for artifacts and ``classlm inspect``."""


M = TypeVar("M", bound=type[Method])
_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[M], M]:
    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available methods: {sorted(_REGISTRY)}") from None


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


# Importing the modules fills the registry.
from classlm.methods import few_shot as _few_shot  # noqa: E402,F401
from classlm.methods import generate as _generate  # noqa: E402,F401
from classlm.methods import hidden_head as _hidden_head  # noqa: E402,F401
from classlm.methods import label_tokens as _label_tokens  # noqa: E402,F401
from classlm.methods import sentence as _sentence  # noqa: E402,F401
from classlm.methods import tfidf as _tfidf  # noqa: E402,F401
