"""``label_tokens`` and ``letters``: class logits read from the LM head rows of the class tokens.

One forward pass per batch through the transformer stack; the hidden state at the last real token is multiplied by
the k rows of the LM head that belong to the classes' first tokens (a "sliced head"): the full-vocabulary head, a
quarter of a forward pass on SmolLM2, is never computed at every position. ``scoring="exact"`` instead sums the
log-probabilities of every token of each class's answer (teacher forcing; k rows per text, so about k times slower).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from classlm.errors import ConfigError
from classlm.labels import ClassTokens, resolve_class_tokens
from classlm.methods import Method, register
from classlm.prompts import RenderedPrompt
from classlm.scores import Scores
from classlm.scoring import (
    PrefixUnsupported,
    PromptEncoder,
    SharedPrefix,
    hidden_states,
    last_token_hidden,
    length_sorted_batches,
    output_head,
    pad_right,
    weights_version,
)

log = logging.getLogger(__name__)


@register("label_tokens")
class LabelTokensMethod(Method):
    """Zero-shot (and, later, LoRA-tuned) classification by the logits of each class's answer token."""

    trains_backbone = True

    def check(self, tokenizer: Any) -> None:
        rendered = self.prompt.render(self.labels, tokenizer)
        PromptEncoder(tokenizer, rendered, self.max_length)  # raises when the prompt leaves the text no room
        self.class_tokens(tokenizer, rendered)

    def prepare(self, backbone: Any) -> None:
        self.bind_prompt(backbone, self.prompt.render(self.labels, backbone.tokenizer))
        self.tokens: ClassTokens = self.class_tokens(backbone.tokenizer, self.rendered)

    def class_tokens(self, tokenizer: Any, rendered: RenderedPrompt) -> ClassTokens:
        """The classes' answer tokens after ``rendered``; first-token scoring needs distinct first tokens."""
        return resolve_class_tokens(
            self.labels,
            tokenizer,
            leading_space=rendered.leading_space,
            require_distinct_first=self.scoring == "first_token",
        )

    def bind_prompt(self, backbone: Any, rendered: RenderedPrompt) -> None:
        """Use ``rendered`` around every text; resets the shared-prefix cache."""
        self.backbone = backbone
        self.rendered = rendered
        self.encoder = PromptEncoder(backbone.tokenizer, rendered, self.max_length)
        # Shared-prefix reuse: the prompt head's keys/values are computed once (see SharedPrefix). Set to False to
        # run every row in full; it turns itself off, with a debug log line, for models whose cache cannot be reused.
        # A re-bind (new few-shot examples) keeps that choice: the model is the same.
        self.reuse_prefix = getattr(self, "reuse_prefix", True)
        self._prefix: tuple[Any, SharedPrefix] | None = None
        self._prefix_checked = False

    def trainable_module(self) -> Any:
        """What the Trainer optimises: the parameters of this module that require grad (the LoRA adapters)."""
        return self.backbone.model

    def _prefix_usable(self) -> bool:
        """Reuse is on and there is a head to reuse; an empty tail could leave a row (an empty text) with no token
        after the prefix, so it needs one too."""
        return self.reuse_prefix and bool(self.encoder.head_ids) and bool(self.encoder.tail_ids)

    def _shared_prefix(self) -> SharedPrefix | None:
        """The prompt head's keys/values for the current weights, or None where reuse is off or unsupported."""
        if not self._prefix_usable():
            return None
        bb = self.backbone
        key = (weights_version(bb.model), tuple(self.encoder.head_ids))
        if self._prefix is None or self._prefix[0] != key:
            try:
                # Scoring only: no autograd graph kept alive by the cache (the weights may require grad after fit).
                with torch.inference_mode():
                    prefix = SharedPrefix(bb.model, self.encoder.head_ids, bb.device)
                if not self._prefix_checked:
                    self._check_prefix(prefix)
                    self._prefix_checked = True
                self._prefix = (key, prefix)
            except PrefixUnsupported as exc:
                # Warning, not debug: scoring stays exact but runs the whole prompt per row (about half the speed).
                log.warning("prompt-prefix reuse is off for %s: %s", type(bb.model).__name__, exc)
                self.reuse_prefix, self._prefix = False, None
                return None
        return self._prefix[1]

    def _check_prefix(self, prefix: SharedPrefix) -> None:
        """Once per method: the prompt with an empty text must give the same last hidden state both ways.

        Catches architectures whose attention the prefix kernel does not reproduce (a model that skips the
        attention interface, or bends scores in ways it does not know of) before they return wrong probabilities.
        """
        prompt = [[*self.encoder.head_ids, *self.encoder.tail_ids]]
        with torch.inference_mode():
            plain = self._hidden(prompt, None).float()
            try:
                reused = self._hidden(prompt, prefix).float()
            except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
                # Only here, on the one-time check: an attention path the prefix kernel cannot take.
                raise PrefixUnsupported(f"the prefix path does not run on this model ({exc})") from exc
        # fp32 agrees to ~1e-5 of the activations' scale; bf16 rounds at ~1e-2. A model whose attention ignored the
        # prefix is off by the scale itself.
        tol = (1e-3 if prefix.layers[0][0].dtype == torch.float32 else 5e-2) * float(plain.abs().max())
        err = float((plain - reused).abs().max())
        if not err <= tol:
            raise PrefixUnsupported(f"prefix reuse changes the hidden state by {err:.3g} (tolerance {tol:.3g})")

    def last_hidden(self, rows: list[list[int]]) -> torch.Tensor:
        """Hidden state at each row's last real token, reusing the shared prompt head when possible."""
        return self._hidden(rows, self._shared_prefix())

    def _hidden(self, rows: list[list[int]], prefix: SharedPrefix | None) -> torch.Tensor:
        """Full prompt rows in; with ``prefix``, only the tokens after it run."""
        bb = self.backbone
        if prefix is not None:
            rows = [r[prefix.length :] for r in rows]
        return last_token_hidden(bb.model, rows, bb.tokenizer.pad_token_id, bb.device, prefix)

    def score(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        batch_tokens: int | None = None,
        class_mass: bool = False,
        progress: bool = False,
    ) -> Scores:
        encoded = self.encoder.encode(texts)
        # The token budget counts the tokens that run: without the shared prefix when it is reused.
        prefix = self._shared_prefix() if self.scoring == "first_token" else None
        skip = prefix.length if prefix is not None else 0
        k = len(self.labels)
        logits = np.zeros((len(texts), k), dtype=np.float32)
        mass = np.zeros(len(texts), dtype=np.float32) if class_mass else None
        bar = tqdm(total=len(texts), desc="scoring", unit="text", disable=not progress, leave=False)
        with torch.inference_mode():
            for idx in length_sorted_batches([len(r) - skip for r in encoded.ids], batch_size, batch_tokens):
                rows = [encoded.ids[i] for i in idx]
                m: torch.Tensor | None
                if self.scoring == "exact":
                    z, m = self._exact(rows, batch_size)
                else:
                    z, m = self._first_token(rows, class_mass)
                logits[idx] = z.cpu().numpy()
                if mass is not None and m is not None:
                    mass[idx] = m.cpu().numpy()
                bar.update(len(idx))
        bar.close()
        return Scores(logits, mass, encoded.truncated)

    def _first_token(self, rows: list[list[int]], class_mass: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        z, full = self._head(self.last_hidden(rows), full_vocab=class_mass)
        if full is None:
            return z, None
        return z, torch.exp(torch.logsumexp(z, -1) - torch.logsumexp(full, -1))

    def _head(self, h: torch.Tensor, full_vocab: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits ``(b, k)`` from last-token hidden states, and with ``full_vocab`` the full row ``(b, V)``."""
        # Softmax inputs stay float32 even when the model runs in bf16 (DESIGN.md §5 rule 3); autocast (training on
        # CUDA) would turn these matmuls back into bf16, so it is switched off here.
        h = h.float()
        bb = self.backbone
        weight, bias = output_head(bb.model)
        ids = torch.as_tensor(self.tokens.first_ids, device=bb.device)
        with torch.autocast(device_type=h.device.type, enabled=False):
            if full_vocab:
                # Only the last position's full-vocabulary row: (b, V), still never (b, L, V).
                full = h @ weight.float().T
                if bias is not None:
                    full = full + bias.float()
                return full[:, ids], full
            z = h @ weight[ids].float().T
            if bias is not None:
                z = z + bias[ids].float()
            return z, None

    def train_logits(
        self, rows: list[list[int]], *, full_vocab: bool = False, reuse_prefix: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits with gradients, for training. With ``reuse_prefix`` the prompt head runs once for the batch
        (with gradients: LoRA changes its keys and values) instead of once per row; the loss and gradients are the
        same. (With LoRA dropout > 0 the head's rows then share one dropout mask per batch instead of one per row:
        the same in expectation, not draw for draw.)"""
        if self.scoring != "first_token":
            raise ConfigError(
                f"training reads the class tokens' first-token logits; scoring={self.scoring!r} is for zero-shot "
                "use. Train with scoring='first_token' (make the first tokens distinct with verbalizers or letters)"
            )
        bb = self.backbone
        # A fresh prefix per batch, built with gradients: the cached one of scoring is for the weights it saw.
        usable = reuse_prefix and self._prefix_usable()
        prefix = SharedPrefix(bb.model, self.encoder.head_ids, bb.device) if usable else None
        return self._head(self._hidden(rows, prefix), full_vocab)

    def _exact(self, rows: list[list[int]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log p(token_j | prompt, tokens_<j) over each class's answer tokens, teacher-forced."""
        bb = self.backbone
        weight, bias = output_head(bb.model)
        seqs = self.tokens.sequences
        pairs = [(r, c) for r in range(len(rows)) for c in range(len(seqs))]
        out = torch.zeros(len(rows) * len(seqs), device=bb.device)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            inputs = [rows[r] + list(seqs[c][:-1]) for r, c in chunk]
            ids, mask = pad_right(inputs, bb.tokenizer.pad_token_id, bb.device)
            h = hidden_states(bb.model, ids, mask)
            row_index, positions, targets, owner = [], [], [], []
            for j, (r, c) in enumerate(chunk):
                first = len(rows[r]) - 1  # the position that predicts the answer's first token
                for t, token in enumerate(seqs[c]):
                    row_index.append(j)
                    positions.append(first + t)
                    targets.append(token)
                    owner.append(start + j)
            hs = h[torch.as_tensor(row_index, device=bb.device), torch.as_tensor(positions, device=bb.device)]
            full = hs.float() @ weight.float().T
            if bias is not None:
                full = full + bias.float()
            logp = torch.log_softmax(full, -1)[
                torch.arange(len(targets), device=bb.device), torch.as_tensor(targets, device=bb.device)
            ]
            out.index_add_(0, torch.as_tensor(owner, device=bb.device), logp)
        z = out.view(len(rows), len(seqs))
        # Class mass here: the probability of generating any class's full answer.
        return z, torch.exp(torch.logsumexp(z, -1))

    def describe(self) -> dict[str, Any]:
        tok = self.backbone.tokenizer
        return {
            "method": self.name,
            "scoring": self.scoring,
            "answers": list(self.tokens.strings),
            "token_ids": [list(s) for s in self.tokens.sequences],
            "tokens": [tok.convert_ids_to_tokens(list(s)) for s in self.tokens.sequences],
            "prompt_head": self.rendered.head,
            "prompt_tail": self.rendered.tail,
            "prompt_head_ids": list(self.encoder.head_ids),
            "prompt_tail_ids": list(self.encoder.tail_ids),
            "chat_template": self.rendered.chat,
            "prompt_tokens": len(self.encoder.head_ids) + len(self.encoder.tail_ids),
            "text_budget": self.encoder.text_budget,
        }


@register("letters")
class LettersMethod(LabelTokensMethod):
    """The classes are listed as ``A. World``, ``B. Sports``, … and the letters are the class tokens."""

    letters = True
