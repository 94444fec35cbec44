"""``label_tokens`` and ``letters``: class logits read from the LM head rows of the class tokens.

One forward pass per batch through the transformer stack; the hidden state at the last real token is multiplied by
the k rows of the LM head that belong to the classes' first tokens (a "sliced head"): the full-vocabulary head, a
quarter of a forward pass on SmolLM2, is never computed at every position. ``scoring="exact"`` instead sums the
log-probabilities of every token of each class's answer (teacher forcing; k rows per text, so about k times slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from classlm.errors import ConfigError
from classlm.labels import ClassTokens, resolve_class_tokens
from classlm.methods.base import Method, ScoringRun, register
from classlm.methods.prompted import PromptedLM, UsesPromptedLM, class_token_info
from classlm.prompts import RenderedPrompt
from classlm.scores import MethodInfo, Scores
from classlm.scoring import PromptEncoder, SharedPrefix, hidden_states, output_head, pad_right


@register("label_tokens")
class LabelTokensMethod(UsesPromptedLM, Method):
    """Zero-shot (and LoRA-tuned) classification by the logits of each class's answer token."""

    trains_backbone = True
    has_class_tokens = True

    def check(self, tokenizer: Any) -> None:
        rendered = self.prompt.render(self.labels, tokenizer)
        PromptEncoder(tokenizer, rendered, self.max_length)  # raises when the prompt leaves the text no room
        self.class_tokens(tokenizer, rendered)

    def prepare(self, backbone: Any) -> None:
        self.backbone = backbone
        self.bind_prompt(self.prompt.render(self.labels, backbone.tokenizer))
        self.tokens: ClassTokens = self.class_tokens(backbone.tokenizer, self.rendered)

    def class_tokens(self, tokenizer: Any, rendered: RenderedPrompt) -> ClassTokens:
        """The classes' answer tokens after ``rendered``; first-token scoring needs distinct first tokens."""
        return resolve_class_tokens(
            self.labels,
            tokenizer,
            leading_space=rendered.leading_space,
            require_distinct_first=self.scoring == "first_token",
        )

    def bind_prompt(self, rendered: RenderedPrompt) -> None:
        """Use ``rendered`` around every text (new prefix cache). A re-bind (new few-shot examples) keeps the reuse
        setting: the model is the same."""
        previous = getattr(self, "lm", None)
        reuse = previous.reuse_prefix if previous is not None else True
        self.lm = PromptedLM(self.backbone, rendered, self.max_length, reuse_prefix=reuse)

    # -- training (trains_backbone) -------------------------------------------------------------------------------
    def trainable_module(self) -> Any:
        """What the Trainer optimises: the parameters of this module that require grad (the LoRA adapters)."""
        return self.backbone.model

    def class_token_ids(self) -> list[int]:
        return list(self.tokens.first_ids)

    # -- scoring ----------------------------------------------------------------------------------------------------
    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        encoded = self.encoder.encode(texts)
        prefix = self.lm.shared_prefix() if self.scoring == "first_token" else None
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        mass = np.zeros(len(texts), dtype=np.float32) if run.class_mass else None

        def step(idx: np.ndarray, rows: list[list[int]]) -> None:
            m: torch.Tensor | None
            if self.scoring == "exact":
                z, m = self._exact(rows, run.batch_size)
            else:
                z, m = self._first_token(rows, prefix, run.class_mass)
            logits[idx] = z.cpu().numpy()
            if mass is not None and m is not None:
                mass[idx] = m.cpu().numpy()

        self.lm.run_batches(encoded.ids, step, batch_size=run.batch_size, batch_tokens=run.batch_tokens, prefix=prefix,
                            progress=run.progress)  # fmt: skip
        return Scores(logits, mass, encoded.truncated)

    def _first_token(
        self, rows: list[list[int]], prefix: SharedPrefix | None, class_mass: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z, full = self._head(self.lm.hidden(rows, prefix), full_vocab=class_mass)
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
        instead of once per row (see PromptedLM.train_hidden)."""
        if self.scoring != "first_token":
            raise ConfigError(
                f"training reads the class tokens' first-token logits; scoring={self.scoring!r} is for zero-shot "
                "use. Train with scoring='first_token' (make the first tokens distinct with verbalizers or letters)"
            )
        return self._head(self.lm.train_hidden(rows, reuse_prefix), full_vocab)

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

    def info(self) -> MethodInfo:
        return MethodInfo(
            self.name,
            scoring=self.scoring,
            class_tokens=class_token_info(self.tokens, self.backbone.tokenizer),
            prompt=self.lm.prompt_info(),
        )


@register("letters")
class LettersMethod(LabelTokensMethod):
    """The classes are listed as ``A. World``, ``B. Sports``, … and the letters are the class tokens."""

    letters = True
