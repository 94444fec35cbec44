"""Turning texts into token batches and batches into last-token hidden states.

Shared by every method that reads a causal LM: prompts are tokenised as head + text + tail with the text truncated
inside its slot, batches are length-sorted, right-padded, and the hidden state is read at each row's last real token
by index. Right padding keeps position ids and the causal mask of real tokens exactly as in an unpadded run (left
padding gave NaN losses under bf16 SDPA on an H100), which is why results do not depend on batch size or padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classlm.errors import ConfigError
from classlm.prompts import RenderedPrompt

# The text slot must keep room for at least this many tokens, or the prompt leaves no space for the text at all.
MIN_TEXT_TOKENS = 8


@dataclass
class Scores:
    """Class logits for ``n`` texts (columns in ``classes_`` order), plus what scoring observed."""

    logits: np.ndarray
    class_mass: np.ndarray | None = None
    n_truncated: int = 0


@dataclass(frozen=True)
class EncodedTexts:
    ids: list[list[int]]
    n_truncated: int


class PromptEncoder:
    """Tokenises head, text and tail separately and truncates inside the text slot only.

    The head ends with a newline and the tail starts with one (or with a special token), so the three pieces
    tokenise the same apart as joined: byte-level BPE never merges across a newline followed by a letter.
    """

    def __init__(self, tokenizer: Any, rendered: RenderedPrompt, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.rendered = rendered
        self.max_length = max_length
        self.head_ids = self._encode(rendered.head)
        if not rendered.chat:
            bos = getattr(tokenizer, "bos_token_id", None)
            # Plain-text prompts get the BOS the model was trained with; chat templates carry their own.
            if isinstance(bos, int) and tokenizer("a").input_ids[:1] == [bos]:
                self.head_ids = [bos, *self.head_ids]
        self.tail_ids = self._encode(rendered.tail)
        self.text_budget = max_length - len(self.head_ids) - len(self.tail_ids)
        if self.text_budget < MIN_TEXT_TOKENS:
            raise ConfigError(
                f"the prompt takes {len(self.head_ids) + len(self.tail_ids)} tokens, leaving {self.text_budget} of "
                f"max_length={max_length} for the text; raise max_length or shorten the instruction/class list"
            )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        if not texts:
            return EncodedTexts([], 0)
        text_ids = self.tokenizer([t.strip() for t in texts], add_special_tokens=False).input_ids
        n_truncated = 0
        ids = []
        for t in text_ids:
            if len(t) > self.text_budget:
                n_truncated += 1
                t = t[: self.text_budget]
            ids.append([*self.head_ids, *t, *self.tail_ids])
        return EncodedTexts(ids, n_truncated)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches, longest first: similar lengths share a batch so little compute goes to padding, and the
    first batch is the largest, so running out of memory shows up at once."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row right-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def decoder_of(model: Any) -> Any:
    """The transformer stack without the LM head (``LlamaModel`` inside ``LlamaForCausalLM``), also under peft."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model.base_model


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states ``(b, L, d)``: the LM head is skipped, so no full-vocabulary logits anywhere."""
    out = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def output_head(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight ``(V, d)`` and bias (usually None)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no LM head; label-token scoring needs a causal LM")
    return head.weight, getattr(head, "bias", None)


class SharedPrefix:
    """Keys and values of the prompt head, computed once and expanded over every batch.

    Every prompt starts with the same head tokens (system message, instruction, class list, few-shot examples), and
    a causal model's keys and values for them depend on nothing after them. So the head runs once and each batch
    runs only its texts' own tokens (text + tail) on top of the expanded cache. With right padding, suffix token j
    of every row sits at position ``P + j`` exactly as in the full sequence, so the result is the plain path's.
    """

    def __init__(self, model: Any, head_ids: Sequence[int], device: torch.device) -> None:
        from transformers import DynamicCache

        self.length = len(head_ids)
        self.config = model.config
        ids = torch.as_tensor([list(head_ids)], dtype=torch.long, device=device)
        out = decoder_of(model)(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
        cache = out.past_key_values
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]
        if len(self.layers) == 0 or any(k is None or k.shape[-2] != self.length for k, _ in self.layers):
            raise TypeError(f"{type(model).__name__} returned a cache that cannot be reused as a prompt prefix")

    def expand(self, batch: int) -> Any:
        """A fresh cache for ``batch`` rows (the forward pass appends to it, so it is never shared)."""
        from transformers import DynamicCache

        data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.layers]
        return DynamicCache(ddp_cache_data=data, config=self.config)


def last_token_hidden(
    model: Any,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """Hidden state at each row's last real token, ``(b, d)``, in the model's dtype.

    With ``prefix``, each row holds only the tokens after it (text + tail) and runs on top of its cached keys/values.
    """
    ids, mask = pad_right(rows, pad_id, device)
    if prefix is None:
        h = hidden_states(model, ids, mask)
    else:
        ones = torch.ones((len(rows), prefix.length), dtype=mask.dtype, device=device)
        h = decoder_of(model)(
            input_ids=ids,
            attention_mask=torch.cat([ones, mask], dim=1),
            past_key_values=prefix.expand(len(rows)),
            use_cache=True,
        ).last_hidden_state
    last = torch.as_tensor([len(r) - 1 for r in rows], device=device)
    return h[torch.arange(len(rows), device=device), last]


def weights_version(model: Any) -> tuple[int, int]:
    """Changes whenever any parameter is modified in place (optimizer steps, loading weights): the prefix cache is
    keyed on it, so it is recomputed after training instead of serving stale keys and values."""
    return id(model), sum(p._version for p in model.parameters())
