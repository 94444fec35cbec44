"""``label_tokens`` and ``letters``: class logits read from the LM head rows of the class tokens.

One forward pass per batch through the transformer stack; the hidden state at the last real token is multiplied by
the k rows of the LM head that belong to the classes (a "sliced head"): the full-vocabulary head, a quarter of a
forward pass on SmolLM2, is never computed at every position. ``scoring`` picks the rows:

- ``first_token``: each class's first answer token (the first tokens must differ);
- ``auto_verbalizer``: the same, after :func:`classlm.labels.auto_verbalizers` rewrote the answers of classes that
  share a first token (``payment_failed`` / ``payment_pending`` → ``"payment failed"`` / ``"pending payment"``);
- ``name_rows``: the mean of the LM-head rows of all the tokens of each class's name (``"bill balance"``: the rows
  of " bill" and " balance"): any number of classes, shared first tokens or not, one row per class;
- ``exact``: the sum of the log-probabilities of every token of each class's answer, through the answers' token
  prefix tree after the text (:mod:`classlm.trie`; the slowest head: every tree node costs a token and a
  full-vocabulary log-softmax). LoRA trains it by teacher forcing through the same tree;
- ``auto`` (default): ``first_token`` when the first tokens differ, else :data:`classlm.config.COLLISION_SCORING`
  (``name_rows`` where a vocabulary is too small for ``auto_verbalizer``'s distinct first tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from classlm.config import COLLISION_SCORING, ONE_TOKEN
from classlm.errors import ConfigError
from classlm.labels import ClassTokens, LabelSet, auto_verbalizers, first_token_groups, readable, resolve_class_tokens
from classlm.methods.base import Method, ScoringRun, register
from classlm.methods.prompted import PromptedLM, UsesPromptedLM, class_token_info
from classlm.prompts import RenderedPrompt
from classlm.scores import MethodInfo, Scores
from classlm.scoring import SharedPrefix, hidden_states, output_head, pad_right
from classlm.trie import AnswerTrie, answer_logprobs


@register("label_tokens")
class LabelTokensMethod(UsesPromptedLM, Method):
    """Zero-shot (and LoRA-tuned) classification by the logits of each class's answer token."""

    trains_backbone = True
    has_class_tokens = True
    has_features = True  # the answer position's hidden state, except with scoring="exact" (the trie reads its own)

    def check(self, tokenizer: Any) -> None:
        _, labels, _ = self.resolve_head(tokenizer)
        self.prompt_encoder(tokenizer, self.prompt.render(labels, tokenizer))  # raises when the text has no room

    def prepare(self, backbone: Any) -> None:
        self.backbone = backbone
        self.scoring, self.labels, self.tokens = self.resolve_head(backbone.tokenizer)
        self.trie = AnswerTrie.build(self.tokens.sequences)
        self.bind_prompt(self.prompt.render(self.labels, backbone.tokenizer))

    def resolve_head(self, tokenizer: Any) -> tuple[str, LabelSet, ClassTokens]:
        """``(scoring, labels, class tokens)`` for this tokenizer: ``auto`` resolved, codes past 26 letters
        assigned, answers rewritten for ``auto_verbalizer``. Deterministic, so a saved classifier resolves alike."""
        # Where the answer goes (and so its leading space) depends on the template's tail, not on the class list.
        bare = dataclasses.replace(self.prompt, show_classes="none", examples=()).render(self.labels, tokenizer)
        space = bare.leading_space
        labels = self.labels.with_codes(tokenizer, leading_space=space)
        scoring = self.scoring
        if scoring == "auto":
            prefix = " " if space else ""
            seqs = [tokenizer.encode(prefix + a, add_special_tokens=False) or [-1] for a in labels.answers]
            scoring = COLLISION_SCORING if first_token_groups(seqs) else "first_token"
        if scoring == "auto_verbalizer":
            try:
                labels = auto_verbalizers(labels, tokenizer, leading_space=space)
            except ConfigError:
                if self.scoring != "auto":
                    raise
                scoring = "name_rows"  # a vocabulary too small for distinct first tokens: one that needs none
        if scoring == "name_rows" and not labels.letters:
            # Every word of the name counts, so identifier separators ("bill_balance") become spaces, in the
            # class list too.
            labels = LabelSet(labels.names, labels.descriptions, tuple(map(readable, labels.verbalizers)))
        first = scoring in ONE_TOKEN
        return (
            scoring,
            labels,
            resolve_class_tokens(labels, tokenizer, leading_space=space, require_distinct_first=first),
        )

    def bind_prompt(self, rendered: RenderedPrompt) -> None:
        """Use ``rendered`` around every text (new prefix cache). A re-bind (new few-shot examples) keeps the reuse
        setting: the model is the same."""
        previous = getattr(self, "lm", None)
        reuse = previous.reuse_prefix if previous is not None else True
        encoder = self.prompt_encoder(self.backbone.tokenizer, rendered, self.backbone.model)
        self.lm = PromptedLM(self.backbone, rendered, encoder, reuse_prefix=reuse)

    # -- training (trains_backbone) -------------------------------------------------------------------------------
    def trainable_module(self) -> Any:
        """What the Trainer optimises: the parameters of this module that require grad (the LoRA adapters)."""
        return self.backbone.model

    def class_token_ids(self) -> list[int]:
        if self.scoring not in ONE_TOKEN:
            raise ConfigError(
                f"loss='vocab_ce' needs one answer token per class; scoring={self.scoring!r} has none: train with "
                "loss='class_ce', or scoring='auto_verbalizer' (one distinct first token per class)"
            )
        return list(self.tokens.first_ids)

    # -- scoring ----------------------------------------------------------------------------------------------------
    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        encoded = self.encoder.encode(texts)
        prefix = self.lm.shared_prefix()
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        mass = np.zeros(len(texts), dtype=np.float32) if run.class_mass else None
        # The trie runs after the shared prefix; with no reusable prefix, exact takes the k-row path (same values).
        trie = prefix if self.scoring == "exact" else None
        features: np.ndarray | None = None
        if run.features and self.scoring != "exact":
            features = np.zeros((len(texts), int(self.backbone.model.config.hidden_size)), dtype=np.float32)

        def step(idx: np.ndarray, rows: list[list[int]]) -> None:
            m: torch.Tensor | None
            if trie is not None:
                z = self._trie(rows, trie)
                m = torch.exp(torch.logsumexp(z, -1))  # the probability of generating any class's full answer
            elif self.scoring == "exact":
                z, m = self._exact(rows, run.batch_size)
            else:
                h = self.lm.hidden(rows, prefix)
                z, m = self._first_token(h, run.class_mass and self.scoring in ONE_TOKEN)
                if features is not None:
                    features[idx] = h.float().cpu().numpy()
            logits[idx] = z.cpu().numpy()
            if mass is not None and m is not None:
                mass[idx] = m.cpu().numpy()

        # The trie's nodes run after every text: its share of a batch's token budget.
        extra = self.trie.size if trie is not None else 0
        self.lm.run_batches(encoded.ids, step, batch_size=run.batch_size, batch_tokens=run.batch_tokens,
                            prefix=prefix, progress=run.progress, extra_tokens=extra)  # fmt: skip
        return Scores(logits, mass, encoded.truncated, features, encoded.cut_fields)

    def _first_token(self, h: torch.Tensor, class_mass: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits from last-token hidden states ``h``; with ``class_mass``, the class-token mass too."""
        z, full = self._head(h, full_vocab=class_mass)
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
            if self.scoring == "name_rows":
                return self._name_rows(h, weight, bias), None
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

    def class_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each class's LM-head row ``(k, d)`` and bias ``(k,)`` (None without one) as the one-row heads read them:
        the first answer token's, or with name_rows the mean over the name's tokens (what an export's score layer
        holds). ``exact`` sums several tokens' log-probabilities: it has no such row."""
        weight, bias = output_head(self.backbone.model)
        if self.scoring == "name_rows":
            seqs = [list(s) for s in self.tokens.sequences]
            rows = torch.stack([weight[s].detach().float().mean(0) for s in seqs])
            return rows, None if bias is None else torch.stack([bias[s].detach().float().mean() for s in seqs])
        if self.scoring not in ONE_TOKEN:
            raise ConfigError(f"scoring {self.scoring!r} has no single LM-head row per class")
        ids = list(self.tokens.first_ids)
        return weight[ids].detach().float(), None if bias is None else bias[ids].detach().float()

    def _name_rows(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``h`` times each class's mean LM-head row over its name's tokens (frozen rows: no gradient to them)."""
        seqs = self.tokens.sequences
        flat = torch.as_tensor([t for s in seqs for t in s], device=h.device)
        offsets = torch.as_tensor(np.cumsum([0, *map(len, seqs[:-1])]), device=h.device)
        rows = torch.nn.functional.embedding_bag(flat, weight.detach().float(), offsets, mode="mean")
        z = h @ rows.T
        if bias is not None:
            z = z + torch.nn.functional.embedding_bag(flat, bias.detach().float()[:, None], offsets, mode="mean")[:, 0]
        return z

    def train_logits(
        self, rows: list[list[int]], *, full_vocab: bool = False, reuse_prefix: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits with gradients, for training. With ``reuse_prefix`` the prompt head runs once for the batch
        instead of once per row (see PromptedLM.train_hidden)."""
        if full_vocab:
            self.class_token_ids()  # refuses scorings without one token per class
        if self.scoring == "exact":
            return self._trie(rows, self.tree_prefix(reuse_prefix, "with scoring='exact' runs the answer trie")), None
        return self._head(self.lm.train_hidden(rows, reuse_prefix), full_vocab)

    def tree_prefix(self, reuse_prefix: bool, what: str) -> SharedPrefix:
        """A fresh prompt prefix with gradients, for training through a tree of tokens run after it (the exact
        trie, pairwise's questions): the tree attends to the prefix's keys, so it needs prefix reuse."""
        if not (reuse_prefix and self.lm.usable()):
            raise ConfigError(
                f"training {what} after the shared prompt prefix; it needs prefix reuse (train={{'reuse_prefix': "
                "True}) and a prompt with a head and a tail"
            )
        bb = self.backbone
        return SharedPrefix(bb.model, self.encoder.head_ids, bb.device)

    def _trie(self, rows: list[list[int]], prefix: SharedPrefix) -> torch.Tensor:
        """Exact answer log-probabilities ``(b, k)`` through the answer trie (:mod:`classlm.trie`)."""
        bb = self.backbone
        weight, bias = output_head(bb.model)
        return answer_logprobs(bb.model, prefix, rows, bb.tokenizer.pad_token_id, self.trie, weight, bias)

    def training_tokens(self, row: Sequence[int], reuse_prefix: bool) -> int:
        # The trie's nodes run after every row too.
        extra = self.trie.size if self.scoring == "exact" else 0
        return super().training_tokens(row, reuse_prefix) + extra

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
