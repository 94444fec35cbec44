"""A causal LM read at the last real token of a rendered prompt: what the prompted methods hold (composition).

``label_tokens`` / ``letters`` / ``few_shot`` put the class tokens' LM-head rows on the hidden state, ``hidden_head``
a trained head (``generate`` generates, so it uses a prompt encoder and ``prompt_info`` only). :class:`PromptedLM`
owns the prompt encoding (the text cut inside its slot) and prompt-prefix reuse: the prompt head's keys and values
are computed once per model and weights and every batch runs only its texts' own tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from classlm.labels import ClassTokens
from classlm.progress import progress_bar
from classlm.prompts import RenderedPrompt
from classlm.scores import ClassTokenInfo, PromptInfo
from classlm.scoring import (
    PrefixUnsupported,
    PromptEncoder,
    SharedPrefix,
    last_token_hidden,
    length_sorted_batches,
    weights_version,
)

log = logging.getLogger(__name__)


class PromptedLM:
    """A backbone, a rendered prompt around the text, its encoder and the cached shared prefix."""

    def __init__(
        self, backbone: Any, rendered: RenderedPrompt, encoder: PromptEncoder, *, reuse_prefix: bool = True
    ) -> None:
        self.backbone = backbone
        self.rendered = rendered
        self.encoder = encoder
        # Shared-prefix reuse: set to False to run every row in full; it turns itself off (with a warning) for
        # models whose cache the prefix path cannot reuse.
        self.reuse_prefix = reuse_prefix
        self._cache: tuple[Any, SharedPrefix] | None = None
        self._checked = False

    @property
    def cached_prefix(self) -> SharedPrefix | None:
        """The prefix computed for the weights last seen, if any (None before first use or with reuse off)."""
        return None if self._cache is None else self._cache[1]

    def usable(self) -> bool:
        """Reuse is on and there is a head to reuse; an empty tail could leave a row (an empty text) with no token
        after the prefix, so it needs one too."""
        return self.reuse_prefix and bool(self.encoder.head_ids) and bool(self.encoder.tail_ids)

    def shared_prefix(self) -> SharedPrefix | None:
        """The prompt head's keys/values for the current weights, or None where reuse is off or unsupported."""
        if not self.usable():
            return None
        bb = self.backbone
        key = (weights_version(bb.model), tuple(self.encoder.head_ids))
        if self._cache is None or self._cache[0] != key:
            try:
                # Scoring only: no autograd graph kept alive by the cache (the weights may require grad after fit).
                with torch.inference_mode():
                    prefix = SharedPrefix(bb.model, self.encoder.head_ids, bb.device)
                if not self._checked:
                    self._check(prefix)
                    self._checked = True
                self._cache = (key, prefix)
            except PrefixUnsupported as exc:
                # Warning, not debug: scoring stays exact but runs the whole prompt per row (about half the speed).
                log.warning("prompt-prefix reuse is off for %s: %s", type(bb.model).__name__, exc)
                self.reuse_prefix, self._cache = False, None
                return None
        return self._cache[1]

    def _check(self, prefix: SharedPrefix) -> None:
        """Once: the prompt with an empty text must give the same last hidden state both ways.

        Catches architectures whose attention the prefix kernel does not reproduce (a model that skips the
        attention interface, or bends scores in ways it does not know of) before they return wrong probabilities.
        """
        prompt = [[*self.encoder.head_ids, *self.encoder.tail_ids]]
        with torch.inference_mode():
            plain = self.hidden(prompt, None).float()
            try:
                reused = self.hidden(prompt, prefix).float()
            except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
                # Only here, on the one-time check: an attention path the prefix kernel cannot take.
                raise PrefixUnsupported(f"the prefix path does not run on this model ({exc})") from exc
        # fp32 agrees to ~1e-5 of the activations' scale; bf16 rounds at ~1e-2. A model whose attention ignored the
        # prefix is off by the scale itself.
        tol = (1e-3 if prefix.layers[0][0].dtype == torch.float32 else 5e-2) * float(plain.abs().max())
        err = float((plain - reused).abs().max())
        if not err <= tol:
            raise PrefixUnsupported(f"prefix reuse changes the hidden state by {err:.3g} (tolerance {tol:.3g})")

    def hidden(self, rows: list[list[int]], prefix: SharedPrefix | None) -> torch.Tensor:
        """Hidden state at each full prompt row's last real token; with ``prefix``, only the tokens after it run."""
        bb = self.backbone
        if prefix is not None:
            rows = [r[prefix.length :] for r in rows]
        return last_token_hidden(bb.model, rows, bb.tokenizer.pad_token_id, bb.device, prefix)

    def train_hidden(self, rows: list[list[int]], reuse_prefix: bool) -> torch.Tensor:
        """``hidden`` with gradients: a fresh prefix per batch, built with gradients (LoRA changes its keys and
        values; the cached one of scoring is for the weights it saw). The loss and gradients are the plain path's.
        (With LoRA dropout > 0 the head's rows then share one dropout mask per batch instead of one per row: the
        same in expectation, not draw for draw.)"""
        bb = self.backbone
        usable = reuse_prefix and self.usable()
        return self.hidden(rows, SharedPrefix(bb.model, self.encoder.head_ids, bb.device) if usable else None)

    def check_before_training(self) -> None:
        """The one-time prefix check (and its fallback, e.g. for sliding-window attention) before the first step, so
        a fresh and a resumed run take the same path; in eval mode (no dropout: two deterministic forwards, no RNG)."""
        model = self.backbone.model
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            self.shared_prefix()
        model.train(was_training)

    def run_batches(
        self,
        rows: list[list[int]],
        step: Callable[[np.ndarray, list[list[int]]], None],
        *,
        batch_size: int,
        batch_tokens: int | None,
        prefix: SharedPrefix | None,
        progress: bool | str = False,
        desc: str = "scoring",
        extra_tokens: int = 0,
    ) -> None:
        """``step(indices, rows)`` over length-sorted batches, without autograd. The token budget counts the tokens
        that run: without the shared prefix when it is reused, plus ``extra_tokens`` per row (an answer trie)."""
        skip = (prefix.length if prefix is not None else 0) - extra_tokens
        desc = progress if isinstance(progress, str) else desc  # a caller's label names what is being scored
        bar = progress_bar(total=len(rows), desc=desc, unit="text", disable=not progress, leave=False)
        with torch.inference_mode():
            for idx in length_sorted_batches([len(r) - skip for r in rows], batch_size, batch_tokens):
                step(idx, [rows[i] for i in idx])
                bar.update(len(idx))
        bar.close()

    def prompt_info(self) -> PromptInfo:
        return prompt_info(self.encoder, self.rendered)


class UsesPromptedLM:
    """What a method holding a :class:`PromptedLM` as ``self.lm`` shows callers (mix in before ``Method``): the
    rendered prompt, its encoder, the prefix-reuse switch, and the training rows and one-time check the Trainer
    asks for."""

    lm: PromptedLM

    @property
    def rendered(self) -> RenderedPrompt:
        return self.lm.rendered

    @property
    def encoder(self) -> PromptEncoder:
        return self.lm.encoder

    @encoder.setter
    def encoder(self, encoder: PromptEncoder) -> None:
        self.lm.encoder = encoder

    @property
    def reuse_prefix(self) -> bool:
        """Prompt-prefix reuse; False runs every row in full."""
        return self.lm.reuse_prefix

    @reuse_prefix.setter
    def reuse_prefix(self, value: bool) -> None:
        self.lm.reuse_prefix = value

    def training_rows(self, texts: Sequence[str]) -> list[list[int]]:
        return self.lm.encoder.encode(list(texts)).ids

    def training_tokens(self, row: Sequence[int], reuse_prefix: bool) -> int:
        # With prefix reuse the prompt head runs once per micro-batch, not once per row.
        return len(row) - (len(self.lm.encoder.head_ids) if reuse_prefix and self.lm.usable() else 0)

    def prepare_training(self) -> None:
        self.lm.check_before_training()


def class_token_info(tokens: ClassTokens, tokenizer: Any) -> ClassTokenInfo:
    return ClassTokenInfo(
        tuple(tokens.strings),
        tuple(tuple(s) for s in tokens.sequences),
        tuple(tuple(tokenizer.convert_ids_to_tokens(list(s))) for s in tokens.sequences),
    )


def prompt_info(encoder: PromptEncoder, rendered: RenderedPrompt) -> PromptInfo:
    """The rendered prompt and its token ids around the text slot."""
    return PromptInfo(
        rendered.head, rendered.tail, tuple(encoder.head_ids), tuple(encoder.tail_ids), rendered.chat,
        encoder.text_budget, rendered.class_list,
    )  # fmt: skip
