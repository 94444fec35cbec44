"""The method contract and the registry (imports without torch: a method's description is pure data).

A method turns texts into class logits ``(n_samples, n_classes)`` ordered like ``classes_``. It registers itself
with :func:`register` under a name, paired with its options dataclass (which lives beside the method); artifacts
name a method, never a class path to import. What a caller may ask of a method is declared here, as class flags
and methods with defaults, so no caller probes for attributes:

- ``needs_lm``: LMClassifier loads the causal LM and hands it to ``prepare``; other methods load their own model.
- ``learns_from_data``: ``fit_data(texts, y)`` learns something beyond the temperature (calibration data is then
  held out), and ``state()`` / ``load_state()`` carry it through an artifact.
- ``trains_backbone``: the Trainer can train it (``LMClassifier(lora=...)``): ``trainable_module``,
  ``training_rows``, ``prepare_training``, ``train_logits``, ``warm_start``.
- ``has_class_tokens``: its logits are LM-head rows of the classes' answer tokens, so the class mass and the
  full-vocabulary loss (``vocab_ce``, through ``class_token_ids``) exist.
- ``has_features``: ``score(..., features=True)`` can also return the hidden state its logits are read from (for
  the out-of-scope distance, :mod:`classlm.feature_distance`); ``Scores.features`` is None where a scoring reads
  none.

The life of a method inside ``LMClassifier``: ``__init__`` (labels, prompt, validated options) → ``check(tokenizer)``
(what the tokenizer alone can refuse, before any weights load) → ``prepare(backbone)`` → ``fit_data`` when it learns
from data → ``score(texts)``. ``info()`` describes it (class tokens, prompt, options) for artifacts, ``classlm
inspect`` and the server; ``scoring_stats()`` says what its last scoring call observed beyond the logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from classlm.config import NoOptions, config_from_dict, config_to_dict
from classlm.errors import ConfigError, NotFittedError
from classlm.labels import LabelSet
from classlm.prompts import PromptTemplate
from classlm.scores import MethodInfo, Scores


@dataclass(frozen=True)
class ScoringRun:
    """How one ``score`` call runs: rows and padded tokens per forward pass, class mass wanted, a progress bar."""

    batch_size: int
    batch_tokens: int | None = None
    class_mass: bool = False
    progress: bool | str = False  # a string: the progress bar's label (e.g. "scoring the test rows")
    features: bool = False  # also the hidden state the logits are read from (methods with has_features)


class Method(ABC):
    """Base class of the methods of DESIGN.md §2."""

    name: ClassVar[str]
    options_class: ClassVar[type[Any]] = NoOptions
    letters: ClassVar[bool] = False
    needs_lm: ClassVar[bool] = True
    learns_from_data: ClassVar[bool] = False
    trains_backbone: ClassVar[bool] = False
    has_class_tokens: ClassVar[bool] = False
    has_features: ClassVar[bool] = False
    # A method that learns from data sets this once fit_data (or load_state) gave it what scoring needs.
    fitted: bool = False

    def __init__(
        self,
        labels: LabelSet,
        prompt: PromptTemplate,
        *,
        scoring: str,
        max_length: int,
        max_prompt_length: int | None = None,
        options: Any = None,
        device: str = "auto",
    ) -> None:
        self.labels = labels
        self.prompt = prompt
        self.scoring = scoring
        self.max_length = max_length  # the text's own tokens
        self.max_prompt_length = max_prompt_length  # the whole prompt's (None: the model's context only)
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

    # -- every method ------------------------------------------------------------------------------------------------
    def check(self, tokenizer: Any) -> None:
        """Raise what the tokenizer alone can tell (the prompt does not fit, class tokens collide) before any weights
        load: loading a model takes seconds to a minute, a user's mistake should not wait for it. Nothing to check
        by default."""
        return None

    @abstractmethod
    def prepare(self, backbone: Any) -> None:
        """Bind to a loaded backbone (``None`` when not ``needs_lm``): render the prompt, resolve class tokens, load
        an encoder."""

    def score(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        batch_tokens: int | None = None,
        class_mass: bool = False,
        progress: bool | str = False,
        features: bool = False,
    ) -> Scores:
        """Class logits for ``texts`` in input order; batches of at most ``batch_size`` rows and ``batch_tokens``
        padded tokens; with ``class_mass``, the class-token mass too (methods with class tokens); with
        ``features``, the hidden state the logits are read from (methods with ``has_features``, where scoring
        reads one)."""
        if self.learns_from_data and not self.fitted:
            raise NotFittedError(f"{self.name}: nothing learned yet (fit_data was not called, and no state loaded)")
        return self.scores(list(texts), ScoringRun(batch_size, batch_tokens, class_mass, progress, features))

    @abstractmethod
    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        """What ``score`` returns; a method implements this (``score`` checked that it learned what it needs)."""

    @abstractmethod
    def info(self) -> MethodInfo:
        """What the method is: class tokens, rendered prompt, options (artifacts, ``classlm inspect``, the server)."""

    def prompt_encoder(self, tokenizer: Any, rendered: Any, model: Any = None, max_length: int | None = None) -> Any:
        """A :class:`~classlm.scoring.PromptEncoder` for ``rendered`` under this method's limits: ``max_length``
        text tokens, the whole prompt within the model's context (``model``, else what the tokenizer states) and
        ``max_prompt_length``."""
        from classlm.scoring import PromptEncoder, context_length

        return PromptEncoder(
            tokenizer,
            rendered,
            self.max_length if max_length is None else max_length,
            context=context_length(tokenizer, model),
            max_prompt_length=self.max_prompt_length,
        )

    def describe(self) -> dict[str, Any]:
        """``info()`` as flat JSON."""
        return self.info().to_dict()

    def scoring_stats(self) -> dict[str, Any]:
        """What the last ``score`` call observed beyond the logits (e.g. generate's unparsed answers)."""
        return {}

    def torch_device(self) -> str:
        """``device`` resolved (``"auto"`` → cuda or cpu), for methods that load their own model."""
        from classlm.models import choose_device

        return str(choose_device(self.device))

    def base_identity(self) -> dict[str, Any]:
        """What the artifact records as the model under the method (checked at load where it can be)."""
        backbone = getattr(self, "backbone", None)
        return backbone.identity() if backbone is not None else {}

    # -- learns_from_data ---------------------------------------------------------------------------------------------
    def fit_data(
        self, texts: Sequence[str], y: np.ndarray, *, progress: bool = False, soft: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Learn from labelled texts (``y``: column indices); returns a JSON summary. Only for ``learns_from_data``."""
        raise ConfigError(f"method {self.name!r} learns nothing from data beyond the temperature")

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What ``fit_data`` learned: ``(tensors, json)``; tensors are numpy arrays or torch tensors."""
        return {}, {}

    def load_state(self, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        """Restore what ``state`` returned (after ``prepare``)."""
        if tensors or info:
            raise ConfigError(f"method {self.name!r} keeps no learned state, but a saved state was given")

    # -- trains_backbone ----------------------------------------------------------------------------------------------
    def _no_training(self) -> ConfigError:
        return ConfigError(f"method {self.name!r} does not train a backbone; lora= and top_k do not apply to it")

    def trainable_module(self) -> Any:
        """The ``torch.nn.Module`` whose parameters that require grad the Trainer optimises."""
        raise self._no_training()

    def training_rows(self, texts: Sequence[str]) -> list[list[int]]:
        """Token rows of ``texts`` as ``train_logits`` takes them."""
        raise self._no_training()

    def training_tokens(self, row: Sequence[int], reuse_prefix: bool) -> int:
        """The tokens a training row runs through the backbone (its share of a micro-batch's token budget)."""
        return len(row)

    def prepare_training(self) -> None:
        """One-time work before the first step that a fresh and a resumed run must both do (and that draws no RNG)."""
        return None

    def train_logits(self, rows: list[list[int]], *, full_vocab: bool = False, reuse_prefix: bool = True) -> Any:
        """``(class logits (b, k), full-vocabulary logits (b, V) or None)`` with gradients."""
        raise self._no_training()

    def warm_start(self, texts: Sequence[str], y: np.ndarray, seed: int) -> None:
        """Before backbone training (also on resume: deterministic): what must start from the data. Nothing by
        default."""
        return None

    # -- has_class_tokens ---------------------------------------------------------------------------------------------
    def class_token_ids(self) -> list[int]:
        """Each class's first answer token id (the full-vocabulary loss's targets)."""
        raise ConfigError(f"method {self.name!r} has no class tokens (its logits are not vocabulary logits)")


M = TypeVar("M", bound=type[Method])
_REGISTRY: dict[str, type[Method]] = {}
# The methods this package ships, imported (and so registered) on the first lookup: the contract above imports
# without torch, and the method modules do not import each other through the package.
SHIPPED = ("label_tokens", "few_shot", "generate", "hidden_head", "pairwise", "sentence", "tfidf")


def _load_shipped() -> None:
    import importlib

    for module in SHIPPED:
        importlib.import_module(f"classlm.methods.{module}")


def register(name: str, *, options: type[Any] = NoOptions) -> Callable[[M], M]:
    """Register a method class under ``name`` with its options dataclass (``method_options`` are parsed into it)."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise ConfigError(f"a method named {name!r} is registered already; register yours under another name")
        cls.name = name
        cls.options_class = options
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        _load_shipped()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available methods: {sorted(_REGISTRY)}") from None


def available_methods() -> list[str]:
    _load_shipped()
    return sorted(_REGISTRY)
