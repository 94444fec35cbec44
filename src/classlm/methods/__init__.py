"""Methods: each turns texts into class logits ``(n_samples, n_classes)`` ordered like ``classes_``.

A method registers itself under a name with :func:`register`; :class:`classlm.LMClassifier` looks it up with
:func:`get_method`. The registry is an explicit dict filled by the imports at the bottom of this file, so the set of
methods is what this package ships (artifacts name a method, they never name a class path to import).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from classlm.errors import ConfigError
from classlm.labels import LabelSet
from classlm.prompts import PromptTemplate
from classlm.scoring import Scores


class Method(ABC):
    """Base class of the methods of DESIGN.md §2."""

    name: ClassVar[str]
    letters: ClassVar[bool] = False

    def __init__(self, labels: LabelSet, prompt: PromptTemplate, *, scoring: str, max_length: int) -> None:
        self.labels = labels
        self.prompt = prompt
        self.scoring = scoring
        self.max_length = max_length

    @abstractmethod
    def prepare(self, backbone: Any) -> None:
        """Bind to a loaded backbone: render the prompt, resolve and check class tokens."""

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


from classlm.methods import label_tokens as _label_tokens  # noqa: E402,F401  (fills the registry)
