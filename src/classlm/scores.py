"""What a method returns and what it says about itself: :class:`Scores` and :class:`MethodInfo` (pure layer).

Every method ends in ``Scores``: class logits ``(n, k)`` whose columns follow ``classes_``, and what scoring observed.
``MethodInfo`` is the typed description a method gives of itself (class tokens, rendered prompt, options): what
artifacts record, ``classlm inspect`` shows and the server reports, without any caller probing for attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Scores:
    """Class logits for ``n`` texts (columns in ``classes_`` order), plus what scoring observed.

    ``truncated`` marks, per text, a text cut to fit (the prompt's text slot, or the encoder's input limit); None
    means unknown (no texts). ``class_mass`` is the share of the full-vocabulary probability on the class tokens,
    where asked for and the method has class tokens. ``features`` ``(n, d)`` is the hidden state the logits are
    read from, where asked for and the method has one (the out-of-scope distance). ``cut_fields``: for inputs of
    several text fields read by a prompt, the names of the fields cut, per text.
    """

    logits: np.ndarray
    class_mass: np.ndarray | None = None
    truncated: np.ndarray | None = None
    features: np.ndarray | None = None
    cut_fields: tuple[tuple[str, ...], ...] | None = None

    @property
    def n_truncated(self) -> int:
        return 0 if self.truncated is None else int(np.count_nonzero(self.truncated))


@dataclass(frozen=True)
class ClassTokenInfo:
    """Each class's answer as the model writes it, its token ids and tokens; the first token is the one scored."""

    answers: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class PromptInfo:
    """The rendered prompt around the text: head and tail (text and token ids), and the room left for the text."""

    head: str
    tail: str
    head_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]
    chat_template: bool
    text_budget: int
    class_list: str = "descriptions"  # what the prompt's class list shows (prompts.CLASS_LISTS)


@dataclass(frozen=True)
class MethodInfo:
    """A method's description of itself. ``class_tokens`` and ``prompt`` are None for methods without them;
    ``extra`` holds the method's own JSON-able facts (options, example counts, the encoder, …)."""

    method: str
    scoring: str | None = None
    class_tokens: ClassTokenInfo | None = None
    prompt: PromptInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON (the manifest's ``class_tokens`` / ``rendered_prompt`` and ``classlm inspect --json``)."""
        out: dict[str, Any] = {"method": self.method}
        if self.scoring is not None:
            out["scoring"] = self.scoring
        if self.class_tokens is not None:
            ct = self.class_tokens
            out["answers"] = list(ct.answers)
            out["token_ids"] = [list(s) for s in ct.token_ids]
            out["tokens"] = [list(s) for s in ct.tokens]
        if self.prompt is not None:
            p = self.prompt
            out.update(
                prompt_head=p.head,
                prompt_tail=p.tail,
                prompt_head_ids=list(p.head_ids),
                prompt_tail_ids=list(p.tail_ids),
                chat_template=p.chat_template,
                prompt_tokens=len(p.head_ids) + len(p.tail_ids),
                text_budget=p.text_budget,
                class_list=p.class_list,
            )
        out.update(self.extra)
        return out
