"""Prompt templates.

A prompt is rendered once per (template, label set, tokenizer) into a ``head`` (everything before the text: system
message, instruction, class list, few-shot examples) and a ``tail`` (everything after it: the answer cue, or the chat
template's end-of-turn plus assistant tag). The text goes between them. Keeping the three parts apart is what lets
the scorer truncate inside the text slot only, and what makes the shared head computable once.

The rendered prompt ends exactly where the class token is expected; :func:`classlm.labels.needs_leading_space` reads
the tail to decide between ``" World"`` and ``"World"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from classlm.config import config_from_dict, config_to_dict
from classlm.errors import ConfigError
from classlm.fields import TEXT, Record, default_layout, fill_slots, layout_fields, layout_pieces
from classlm.labels import LabelSet, needs_leading_space

# A private-use code point cannot occur in a chat template, so splitting the rendered chat on it is unambiguous.
_TEXT_SLOT = "\ue000classlm-text\ue000"
# What the prompt's class list shows: each class with its description (where it has one), its name only, or no list.
CLASS_LISTS = ("descriptions", "names", "none")
# show_classes="auto": the fullest list under these sizes (characters of the list, about 4 per token). The prompt
# head runs once per batch (prefix reuse), but every text token attends to it: 2,000 characters (~500 tokens) with
# descriptions, 6,000 (~1,500: clinc150's 151 names take ~2,300) with names; past that, no list.
AUTO_LIST_CHARS = {"descriptions": 2000, "names": 6000}


class ChatTokenizerLike(Protocol):
    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt split around its text slot."""

    head: str
    tail: str
    chat: bool
    class_list: str = "descriptions"  # what the head's class list shows: one of CLASS_LISTS
    # Inputs of several fields: the text between their slots (one fewer than the fields); the head ends before the
    # first slot and the tail starts after the last.
    separators: tuple[str, ...] = ()

    def format(self, text: str) -> str:
        if isinstance(text, Record) and len(text.values) == len(self.separators) + 1:
            return fill_slots([self.head, *self.separators, self.tail], text.values)
        return self.head + text + self.tail

    @property
    def leading_space(self) -> bool:
        return needs_leading_space(self.tail)


@dataclass(frozen=True)
class PromptTemplate:
    """What the model reads before and after each text.

    Parameters
    ----------
    instruction:
        The task, e.g. "Classify the news article by topic." ``None``: a generic instruction. The answer format
        ("Answer with the class name only." / "… the letter …") is appended unless ``answer_hint`` is False.
    system:
        System message for chat templates (``None``: the template's default).
    chat:
        Use the tokenizer's chat template (``None``: when it has one).
    show_classes:
        The class list in the prompt: ``"descriptions"`` (each class with its description where it has one, and
        its letter in letters mode; ``True`` means this), ``"names"`` (names only), ``"none"`` (no list; ``False``)
        or ``"auto"`` (default: the fullest of these under :data:`AUTO_LIST_CHARS`, so 150 classes do not make a
        prompt of thousands of tokens). ``classlm inspect`` shows what was chosen.
    text_header:
        Line printed above the text.
    answer_cue:
        Plain-text mode only: what ends the prompt, e.g. ``"Answer:"``. Chat mode ends at the assistant tag.
    examples:
        Few-shot ``(text, class name)`` pairs placed before the text.
    input_format:
        Where each field of an input goes, with a ``{name}`` slot per field, e.g.
        ``"Premise:\n{text}\n\nHypothesis:\n{text_pair}"``; it replaces ``text_header``. ``None``: the text
        under ``text_header``, or for inputs of several fields each under a header made from its name (``Text:``,
        ``Text pair:``). A newline before each slot and after it tokenises each field as it reads alone.
    fields:
        The input's field names (set by ``fit`` from the inputs, or by ``input_format``'s slots): ``("text",)``.
    """

    instruction: str | None = None
    system: str | None = None
    chat: bool | None = None
    show_classes: bool | str = "auto"
    answer_hint: bool = True
    text_header: str = "Text:"
    answer_cue: str = "Answer:"
    examples: tuple[tuple[str, str], ...] = ()
    input_format: str | None = None
    fields: tuple[str, ...] = (TEXT,)

    def __post_init__(self) -> None:
        fields = layout_fields(self.input_format) if self.input_format is not None else self.fields
        if isinstance(fields, str) or not fields or not all(isinstance(f, str) and f for f in fields):
            raise ConfigError(f"fields must be a list of field names, got {self.fields!r}")
        object.__setattr__(self, "fields", tuple(fields))
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ConfigError(f"instruction must be a string or None, got {type(self.instruction).__name__}")
        if not isinstance(self.answer_cue, str) or not self.answer_cue.strip():
            raise ConfigError(f"answer_cue must be a non-empty string, got {self.answer_cue!r}")
        examples = []
        for ex in self.examples:
            if isinstance(ex, Mapping):
                ex = (ex.get("text"), ex.get("label"))
            if not (isinstance(ex, Sequence) and len(ex) == 2 and all(isinstance(v, str) and v for v in ex)):
                raise ConfigError(f"each few-shot example must be a (text, label) pair of strings, got {ex!r}")
            examples.append((ex[0], ex[1]))
        object.__setattr__(self, "examples", tuple(examples))
        if self.show_classes not in (True, False, "auto", *CLASS_LISTS):
            raise ConfigError(f"show_classes must be one of {['auto', *CLASS_LISTS]}, got {self.show_classes!r}")

    def render(self, labels: LabelSet, tokenizer: ChatTokenizerLike | None = None) -> RenderedPrompt:
        """Split the prompt for ``labels`` around its text slot, with the chat template when there is one."""
        unknown = sorted({label for _, label in self.examples} - set(labels.names))
        if unknown:
            raise ConfigError(f"few-shot examples use labels {unknown} that are not classes {list(labels.names)}")
        has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        chat = has_template if self.chat is None else self.chat
        if chat and not has_template:
            raise ConfigError("chat=True but the tokenizer has no chat template; use chat=False (plain text)")
        body = self.body(labels)
        pieces = self.slot_pieces()
        if chat:
            assert tokenizer is not None
            messages = []
            if self.system is not None:
                messages.append({"role": "system", "content": self.system})
            messages.append({"role": "user", "content": body + _TEXT_SLOT + pieces[-1]})
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if not isinstance(rendered, str) or rendered.count(_TEXT_SLOT) != 1:
                raise ConfigError("the tokenizer's chat template did not keep the user message intact; use chat=False")
            head, tail = rendered.split(_TEXT_SLOT)
        else:
            head = (self.system + "\n\n" if self.system else "") + body
            # The cue ends the prompt with no trailing space: the model's next token carries the space (" World").
            tail = pieces[-1] + "\n" + self.answer_cue.rstrip()
        return RenderedPrompt(
            head=head, tail=tail, chat=chat, class_list=self.class_list(labels), separators=tuple(pieces[1:-1])
        )

    def layout(self) -> str | None:
        """The input's layout with a slot per field; None: the single text under ``text_header``."""
        if self.input_format is not None:
            return self.input_format
        return None if self.fields == (TEXT,) else default_layout(self.fields, self.text_header)

    def slot_pieces(self) -> list[str]:
        """The literal text before, between and after the fields' slots (``len(fields) + 1`` pieces)."""
        layout = self.layout()
        return [self.text_header + "\n", ""] if layout is None else layout_pieces(layout, self.fields)

    def input_text(self, text: str) -> str:
        """One input as the prompt lays it out (a few-shot example's text): slots filled, headers included."""
        if isinstance(text, Record):
            return self.format_fields(text.values)
        return self.format_fields((text,)) if len(self.fields) == 1 else text

    def format_fields(self, values: tuple[str, ...]) -> str:
        return fill_slots(self.slot_pieces(), values).rstrip("\n")

    def body(self, labels: LabelSet) -> str:
        """The user message before the text: instruction, class list, examples, text header."""
        parts = []
        instruction = self.instruction or "Classify the text into one of the classes."
        if self.answer_hint:
            what = "the letter of the class" if labels.letters else "the class name"
            instruction = instruction.rstrip() + f" Answer with {what} only."
        parts.append(instruction)
        shown = self.class_list(labels)
        if shown != "none":
            parts.append(_class_list(labels, shown == "descriptions"))
        if self.examples:
            answers = dict(zip(labels.names, labels.answers))
            shots = [
                f"{self.input_text(text)}\n{self.answer_cue.rstrip()} {answers[label]}" for text, label in self.examples
            ]
            parts.append("Examples:\n\n" + "\n\n".join(shots))
        parts.append(self.slot_pieces()[0])
        return "\n\n".join(parts)

    def class_list(self, labels: LabelSet) -> str:
        """What the class list shows for ``labels`` (``show_classes`` resolved): one of :data:`CLASS_LISTS`."""
        mode = self.show_classes
        if mode == "auto":
            fits = [m for m in AUTO_LIST_CHARS if len(_class_list(labels, m == "descriptions")) <= AUTO_LIST_CHARS[m]]
            mode = fits[0] if fits else "none"
        elif isinstance(mode, bool):
            mode = "descriptions" if mode else "none"
        return "names" if mode == "descriptions" and not any(labels.descriptions) else str(mode)

    @classmethod
    def resolve(cls, prompt: PromptTemplate | Mapping[str, Any] | None, instruction: str | None) -> PromptTemplate:
        """An estimator's ``prompt=`` (a template, a dict of its options or None) with ``instruction=`` applied."""
        if prompt is None:
            template = cls()
        elif isinstance(prompt, PromptTemplate):
            template = prompt
        elif isinstance(prompt, Mapping):
            template = cls.from_dict(dict(prompt))
        else:
            raise ConfigError(f"prompt must be a PromptTemplate or a dict of its options, got {type(prompt)}")
        if instruction is not None:
            template = cls.from_dict({**template.to_dict(), "instruction": instruction})
        return template

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        return config_from_dict(cls, data)


def _class_list(labels: LabelSet, descriptions: bool) -> str:
    lines = []
    for i, name in enumerate(labels.names):
        # Letters mode: "A. World", the letter being the answer; otherwise the answer itself.
        shown = f"{labels.answers[i]}. {name}" if labels.letters else labels.verbalizers[i]
        desc = labels.descriptions[i] if descriptions else None
        lines.append(f"- {shown}: {desc}" if desc else f"- {shown}")
    return "Classes:\n" + "\n".join(lines)
