"""Label sets and their class tokens.

A :class:`LabelSet` holds the class names (in ``classes_`` order), optional one-line descriptions shown in the prompt,
and verbalizers: the text the model is expected to answer with. In letters mode the answers are ``A``, ``B``, … and
the prompt lists the classes next to their letters.

Token resolution is duck-typed on a Hugging Face tokenizer (``encode`` and ``convert_ids_to_tokens``), so this module
stays in the pure layer and imports without torch.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping, Sequence
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
        Answer with ``A``, ``B``, … instead of the verbalizers.
    codes:
        Letters mode with more than 26 classes: each class's code (``AA``, ``AB``, …), chosen by
        :func:`single_token_codes` so that each is one token of the model's vocabulary.
    """

    names: tuple[str, ...]
    descriptions: tuple[str | None, ...] = ()
    verbalizers: tuple[str, ...] = ()
    letters: bool = False
    codes: tuple[str, ...] = ()

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
        codes = tuple(self.codes)
        if codes and (not self.letters or len(codes) != len(names) or len(set(codes)) != len(codes)):
            raise ConfigError(f"codes are for letters mode, one distinct code per class; got {list(codes)}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "descriptions", descriptions)
        object.__setattr__(self, "verbalizers", verbalizers)
        object.__setattr__(self, "letters", bool(self.letters))
        object.__setattr__(self, "codes", codes)

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
    def needs_codes(self) -> bool:
        """Letters mode with more classes than letters and no codes assigned yet (see :func:`single_token_codes`)."""
        return self.letters and not self.codes and len(self.names) > len(LETTERS)

    @property
    def answers(self) -> tuple[str, ...]:
        """What the model should answer for each class, without any leading space."""
        if not self.letters:
            return self.verbalizers
        if self.needs_codes:
            raise ConfigError(f"{len(self.names)} classes in letters mode need two-letter codes: none assigned yet")
        return self.codes or tuple(LETTERS[: len(self.names)])

    def with_codes(self, tokenizer: TokenizerLike, *, leading_space: bool) -> LabelSet:
        """Letters mode past 26 classes: this label set with a single-token code per class; else itself."""
        if not self.needs_codes:
            return self
        codes = single_token_codes(tokenizer, len(self.names), leading_space=leading_space)
        return LabelSet(self.names, self.descriptions, self.verbalizers, True, codes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "descriptions": list(self.descriptions),
            "verbalizers": list(self.verbalizers),
            "letters": self.letters,
            **({"codes": list(self.codes)} if self.codes else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSet:
        try:
            return cls(
                tuple(data["names"]),
                tuple(data.get("descriptions") or ()),
                tuple(data.get("verbalizers") or ()),
                bool(data.get("letters", False)),
                tuple(data.get("codes") or ()),
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
            hint = "use scoring='auto' (it rewrites such answers, or scores every name token), " + hint
            hint += ", or use scoring='exact' to score every token"
        raise ConfigError(
            f"{len(clashes)} group(s) of classes share their {what}, so they cannot be told apart: "
            + "; ".join(lines)
            + more
            + f". To fix: {hint}."
        )
    return ClassTokens(strings, sequences)


# -- class names that share first tokens ------------------------------------------------------------------------------
_WORD_BREAKS = re.compile(r"[_\-/:.\s]+|(?<=[a-z])(?=[A-Z])")  # snake, kebab, paths, "ENTY:animal", camelCase


def words(answer: str) -> list[str]:
    """``"refund_not_received"`` / ``"refundNotReceived"`` / ``"refund-not received"`` → ``["refund", "not",
    "received"]``, ``"ENTY:animal"`` → ``["ENTY", "animal"]``: identifier-style names as the words a model reads and
    writes."""
    return [w for w in _WORD_BREAKS.split(answer.strip()) if w]


def readable(answer: str) -> str:
    """An answer with its identifier separators as spaces (``"bill_balance"`` → ``"bill balance"``)."""
    return " ".join(words(answer)) or answer.strip()


def first_token_groups(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of the classes whose answers start with the same token, one list per shared token (≥ 2 classes)."""
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(sequences):
        groups.setdefault(seq[0], []).append(i)
    return [idx for idx in groups.values() if len(idx) > 1]


def auto_verbalizers(labels: LabelSet, tokenizer: TokenizerLike, *, leading_space: bool) -> LabelSet:
    """``labels`` with the answers of classes that share a first token rewritten so that every first token differs.

    Deterministic, and an identity when the first tokens already differ. Classes outside a clash keep their answers
    (and first tokens). In each group of classes sharing a first token (in class order) the first keeps its
    answer's words in order (``"credit_limit"`` → ``"credit limit"``); the others put first a word of theirs that
    no other class of the group has (``"credit_score"`` → ``"score credit"``, ``"credit_limit_change"`` →
    ``"change credit limit"``), else one the group does not all share, the first whose first token no class holds
    yet. A class left with no free first token gets a code that is one token of its own in front (``"AB credit
    limit"``).
    """
    prefix = " " if leading_space else ""

    def first(answer: str) -> int | None:
        ids = tokenizer.encode(prefix + answer, add_special_tokens=False)
        return ids[0] if ids else None

    answers = list(labels.answers)
    groups = first_token_groups([tokenizer.encode(prefix + a, add_special_tokens=False) or [-1] for a in answers])
    if not groups or labels.letters:
        return labels
    clashing = {i for g in groups for i in g}
    taken = {first(a) for i, a in enumerate(answers) if i not in clashing}
    codes = _codes(tokenizer, prefix)
    pending: list[tuple[int, list[str]]] = []
    for group in groups:  # first, each group's first class keeps its words in order (its clash's own token)
        sets = {i: set(words(answers[i])) for i in group}
        shared = set.intersection(*sets.values())
        for rank, i in enumerate(group):
            w = words(answers[i]) or [answers[i]]
            if rank == 0 and first(" ".join(w)) not in taken:
                answers[i] = " ".join(w)
                taken.add(first(answers[i]))
                continue
            others = set().union(*(sets[j] for j in group if j != i))
            order = sorted(dict.fromkeys(d for d in w if d not in shared), key=lambda d: d in others)  # stable
            pending.append((i, [*(" ".join([d, *(x for x in w if x != d)]) for d in order), " ".join(w)]))
    for i, candidates in pending:  # then the others, each on the first candidate whose first token is free
        chosen = next((c for c in candidates if first(c) not in taken), None)
        while chosen is None:  # every word's first token is held: a code of its own in front
            code = next(codes, None)
            if code is None:
                raise ConfigError(
                    f"auto_verbalizer found no distinct first token for class {labels.names[i]!r} (its words and "
                    "every single-token code are taken); use scoring='name_rows', which needs none"
                )
            chosen = f"{code} {candidates[-1]}" if first(f"{code} {candidates[-1]}") not in taken else None
        taken.add(first(chosen))
        answers[i] = chosen
    return LabelSet(labels.names, labels.descriptions, tuple(answers), labels.letters)


def single_token_codes(tokenizer: TokenizerLike, n: int, *, leading_space: bool) -> tuple[str, ...]:
    """``n`` short codes, each ONE token of the tokenizer after the prompt (with its leading space or not) and each
    a distinct token: ``A`` … ``Z``, then two-letter codes ``AA``, ``AB``, … that the vocabulary holds whole."""
    out: list[str] = []
    for code in _codes(tokenizer, " " if leading_space else ""):
        out.append(code)
        if len(out) == n:
            return tuple(out)
    raise ConfigError(
        f"the tokenizer has single-token codes for {len(out)} classes only, {n} needed; use method='label_tokens' "
        "(the class names as answers; scoring='auto' handles names that share first tokens)"
    )


def _codes(tokenizer: TokenizerLike, prefix: str) -> Iterator[str]:
    """Letters, then letter pairs, that encode (after ``prefix``) to one token each, each a different token."""
    seen: set[int] = set()
    for code in [*LETTERS, *(a + b for a in LETTERS for b in LETTERS)]:
        ids = tokenizer.encode(prefix + code, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in seen:
            seen.add(ids[0])
            yield code
