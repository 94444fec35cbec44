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
from classlm.labels import LabelSet, needs_leading_space

# A private-use code point cannot occur in a chat template, so splitting the rendered chat on it is unambiguous.
_TEXT_SLOT = "\ue000classlm-text\ue000"


class ChatTokenizerLike(Protocol):
    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt split around its text slot."""

    head: str
    tail: str
    chat: bool

    def format(self, text: str) -> str:
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
        List the classes (with descriptions, and letters in letters mode) in the prompt.
    text_header:
        Line printed above the text.
    answer_cue:
        Plain-text mode only: what ends the prompt, e.g. ``"Answer:"``. Chat mode ends at the assistant tag.
    examples:
        Few-shot ``(text, class name)`` pairs placed before the text.
    """

    instruction: str | None = None
    system: str | None = None
    chat: bool | None = None
    show_classes: bool = True
    answer_hint: bool = True
    text_header: str = "Text:"
    answer_cue: str = "Answer:"
    examples: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
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
        if chat:
            assert tokenizer is not None
            messages = []
            if self.system is not None:
                messages.append({"role": "system", "content": self.system})
            messages.append({"role": "user", "content": body + _TEXT_SLOT})
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if not isinstance(rendered, str) or rendered.count(_TEXT_SLOT) != 1:
                raise ConfigError("the tokenizer's chat template did not keep the user message intact; use chat=False")
            head, tail = rendered.split(_TEXT_SLOT)
        else:
            head = (self.system + "\n\n" if self.system else "") + body
            # The cue ends the prompt with no trailing space: the model's next token carries the space (" World").
            tail = "\n" + self.answer_cue.rstrip()
        return RenderedPrompt(head=head, tail=tail, chat=chat)

    def body(self, labels: LabelSet) -> str:
        """The user message before the text: instruction, class list, examples, text header."""
        parts = []
        instruction = self.instruction or "Classify the text into one of the classes."
        if self.answer_hint:
            what = "the letter of the class" if labels.letters else "the class name"
            instruction = instruction.rstrip() + f" Answer with {what} only."
        parts.append(instruction)
        if self.show_classes:
            lines = []
            for i, name in enumerate(labels.names):
                shown = labels.verbalizers[i]
                if labels.letters:
                    shown = f"{labels.answers[i]}. {name}"
                desc = labels.descriptions[i]
                lines.append(f"- {shown}: {desc}" if desc else f"- {shown}")
            parts.append("Classes:\n" + "\n".join(lines))
        if self.examples:
            answers = dict(zip(labels.names, labels.answers))
            shots = [
                f"{self.text_header}\n{text.strip()}\n{self.answer_cue.rstrip()} {answers[label]}"
                for text, label in self.examples
            ]
            parts.append("Examples:\n\n" + "\n\n".join(shots))
        parts.append(self.text_header + "\n")
        return "\n\n".join(parts)

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
