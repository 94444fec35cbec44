"""Label sets and their class tokens.

A :class:`LabelSet` holds the class names (in ``classes_`` order), optional one-line descriptions shown in the prompt,
and verbalizers: the text the model is expected to answer with. In letters mode the answers are ``A``, ``B``, … and
the prompt lists the classes next to their letters.

Token resolution is duck-typed on a Hugging Face tokenizer (``encode`` and ``convert_ids_to_tokens``), so this module
stays in the pure layer and imports without torch.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from classlm.errors import ArtifactError, ConfigError

LETTERS = string.ascii_uppercase


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


@dataclass(frozen=True)
class LabelSet:
    """Class names, descriptions and verbalizers, in the column order of ``predict_proba``.

    Parameters
    ----------
    names:
        Class names; they are what ``predict`` returns.
    descriptions:
        Optional one-line description per class, shown in the prompt's class list ("" or None: none).
    verbalizers:
        The answer text per class (default: the name). Ignored in letters mode.
    letters:
        Answer with ``A``, ``B``, … instead of the verbalizers (at most 26 classes).
    """

    names: tuple[str, ...]
    descriptions: tuple[str | None, ...] = ()
    verbalizers: tuple[str, ...] = ()
    letters: bool = False

    def __post_init__(self) -> None:
        names = tuple(self.names) if not isinstance(self.names, str) else None
        if names is None:
            raise ConfigError(f"labels must be a sequence of class names, got the string {self.names!r}")
        if len(names) < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {len(names)}: {list(names)}")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"class names must be non-empty strings, got {name!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"class names must be unique; repeated: {duplicates}")
        descriptions = tuple(self.descriptions) or (None,) * len(names)
        verbalizers = tuple(self.verbalizers) or names
        if len(descriptions) != len(names):
            raise ConfigError(f"got {len(descriptions)} descriptions for {len(names)} classes")
        if len(verbalizers) != len(names):
            raise ConfigError(f"got {len(verbalizers)} verbalizers for {len(names)} classes")
        descriptions = tuple(d.strip() if isinstance(d, str) and d.strip() else None for d in descriptions)
        for name, verbalizer in zip(names, verbalizers):
            if not isinstance(verbalizer, str) or not verbalizer.strip():
                raise ConfigError(f"class {name!r}: the verbalizer must be a non-empty string, got {verbalizer!r}")
        # The leading space is decided by the prompt (rule 2 of DESIGN.md), so it must not be baked in here.
        verbalizers = tuple(v.strip() for v in verbalizers)
        if len(set(verbalizers)) != len(verbalizers):
            raise ConfigError(f"verbalizers must be distinct, got {list(verbalizers)}")
        if self.letters and len(names) > len(LETTERS):
            raise ConfigError(
                f"letters mode supports at most {len(LETTERS)} classes, got {len(names)}; "
                "use method='label_tokens' with distinct class names instead"
            )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "descriptions", descriptions)
        object.__setattr__(self, "verbalizers", verbalizers)
        object.__setattr__(self, "letters", bool(self.letters))

    @classmethod
    def from_spec(cls, spec: Any, *, letters: bool = False) -> LabelSet:
        """Build from a list of names, a ``{name: description}`` mapping, a mapping of
        ``{name: {"description": …, "verbalizer": …}}``, or an existing LabelSet."""
        if isinstance(spec, LabelSet):
            return spec if spec.letters == letters else cls(spec.names, spec.descriptions, spec.verbalizers, letters)
        if isinstance(spec, str):
            raise ConfigError(
                f"labels must be a list of class names or a mapping name -> description, got the string {spec!r}; "
                "e.g. labels=['negative', 'positive']"
            )
        if isinstance(spec, Mapping):
            names, descriptions, verbalizers = [], [], []
            for name, value in spec.items():
                names.append(str(name))
                if isinstance(value, Mapping):
                    unknown = set(value) - {"description", "verbalizer"}
                    if unknown:
                        raise ConfigError(
                            f"class {name!r}: unknown keys {sorted(unknown)}; "
                            "expected 'description' and/or 'verbalizer'"
                        )
                    descriptions.append(value.get("description"))
                    verbalizers.append(value.get("verbalizer") or str(name))
                else:
                    if value is not None and not isinstance(value, str):
                        raise ConfigError(f"class {name!r}: the description must be a string, got {value!r}")
                    descriptions.append(value)
                    verbalizers.append(str(name))
            return cls(tuple(names), tuple(descriptions), tuple(verbalizers), letters)
        if isinstance(spec, Sequence) or hasattr(spec, "__iter__"):
            return cls(tuple(spec), letters=letters)
        raise ConfigError(f"labels must be a list or a mapping, got {type(spec).__name__}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def answers(self) -> tuple[str, ...]:
        """What the model should answer for each class, without any leading space."""
        return tuple(LETTERS[: len(self.names)]) if self.letters else self.verbalizers

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "descriptions": list(self.descriptions),
            "verbalizers": list(self.verbalizers),
            "letters": self.letters,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSet:
        try:
            return cls(
                tuple(data["names"]),
                tuple(data.get("descriptions") or ()),
                tuple(data.get("verbalizers") or ()),
                bool(data.get("letters", False)),
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(
                f"bad label set in artifact: {exc!r}; expected keys names/descriptions/verbalizers"
            ) from exc


@dataclass(frozen=True)
class ClassTokens:
    """The exact answer strings of a label set and their token ids for one tokenizer."""

    strings: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]

    @property
    def first_ids(self) -> tuple[int, ...]:
        return tuple(seq[0] for seq in self.sequences)

    @property
    def multi_token(self) -> bool:
        return any(len(seq) > 1 for seq in self.sequences)


def needs_leading_space(prompt_end: str) -> bool:
    """Whether the answer follows the prompt with a space.

    After ``"Answer:"`` a model writes ``" World"`` (its own token, with the space glued on); after a chat template's
    ``"<|im_start|>assistant\\n"`` it writes ``"World"``. Picking the wrong variant moved the class-token mass from
    0.75 to 0.000 on SmolLM2 (DESIGN.md §6).
    """
    return bool(prompt_end) and not prompt_end[-1].isspace()


def resolve_class_tokens(
    labels: LabelSet,
    tokenizer: TokenizerLike,
    *,
    leading_space: bool,
    require_distinct_first: bool = True,
) -> ClassTokens:
    """Tokenize every class answer and check that the first tokens tell the classes apart.

    With ``require_distinct_first`` (first-token scoring) two classes starting with the same token cannot be
    separated by one logit, so that is an error naming the classes, their tokens and the ways out. Exact scoring
    sums all tokens' log-probabilities, so it only needs the full sequences to differ.
    """
    prefix = " " if leading_space else ""
    strings = tuple(prefix + answer for answer in labels.answers)
    sequences = tuple(tuple(tokenizer.encode(s, add_special_tokens=False)) for s in strings)
    for name, s, seq in zip(labels.names, strings, sequences):
        if not seq:
            raise ConfigError(f"class {name!r}: its answer {s!r} encodes to no tokens; give it a verbalizer")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, seq in enumerate(sequences):
        key = seq[:1] if require_distinct_first else seq
        groups.setdefault(key, []).append(i)
    clashes = [idx for idx in groups.values() if len(idx) > 1]
    if clashes:
        lines = []
        for idx in clashes[:5]:
            shown = ", ".join(
                f"{labels.names[i]!r} -> {tokenizer.convert_ids_to_tokens(list(sequences[i]))}" for i in idx
            )
            lines.append(shown)
        what = "first token" if require_distinct_first else "tokens"
        more = f" (and {len(clashes) - 5} more groups)" if len(clashes) > 5 else ""
        hint = (
            "use method='letters' (answers A, B, C, …), give those classes distinct verbalizers "
            "(labels={name: {'verbalizer': ...}}), rename them"
        )
        if require_distinct_first:
            hint += ", or use scoring='exact' to score every token"
        raise ConfigError(
            f"{len(clashes)} group(s) of classes share their {what}, so they cannot be told apart: "
            + "; ".join(lines)
            + more
            + f". To fix: {hint}."
        )
    return ClassTokens(strings, sequences)
