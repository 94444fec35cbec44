"""``pairwise``: a cross-encoder from the causal LM — one yes/no question per (text, class) pair.

The prompt asks whether one class fits the text ("… Class: Sports — sport\\nAnswer:"), and the class's logit is the
log-odds of " yes" against " no" at the answer position: the reranker / NLI reading of a classifier, which reads each
class's name and description *after* the text instead of one shared class list before it. Asked naively that is k
prompts per text. Here the text runs once (after the shared prompt head, whose keys and values are cached) and the
k class questions run as ONE batched pass over a prefix tree of their tokens attending to that text's cached keys and
values (:mod:`classlm.trie`): tokens the questions share ("\\n\\nClass:") run once, and each class costs only the
tokens of its own line. So a text costs its own tokens plus the tree's nodes — for 4 short class lines about as
many again as a one-pass head, growing with k and the length of the descriptions (``benchmarks/results/
multilabel.md`` and ``classlm bench`` measure it).

The logits are independent per class, so the same head serves multi-label (a sigmoid per class) and single-label
(a softmax over the k log-odds). LoRA trains it through the same tree (teacher forcing), as ``scoring="exact"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from classlm.errors import ConfigError
from classlm.fields import layout_pieces
from classlm.labels import needs_leading_space
from classlm.methods.base import ScoringRun, register
from classlm.methods.label_tokens import LabelTokensMethod
from classlm.prompts import PromptTemplate, RenderedPrompt
from classlm.scores import MethodInfo, Scores
from classlm.scoring import SharedPrefix, last_token_hidden, output_head
from classlm.trie import AnswerTrie, trie_states

QUESTION = "Does the class below fit the text? Answer yes or no."
ANSWERS = ("yes", "no")


@register("pairwise")
class PairwiseMethod(LabelTokensMethod):
    """One yes/no answer per (text, class): class logits are log p(yes) − log p(no) after each class's question."""

    has_class_tokens = False  # the answer tokens are yes/no, not one token per class: no class mass
    has_features = False  # no single hidden state per text reads every class

    def check(self, tokenizer: Any) -> None:
        if self.scoring != "auto":
            raise ConfigError(
                f"method 'pairwise' reads a yes/no answer per class, so scoring={self.scoring!r} does not apply; leave "
                "scoring='auto'"
            )
        rendered, suffixes, _, _ = self._questions(tokenizer)
        self._longest(tokenizer, rendered, suffixes)  # raises when the text has no room

    def _longest(self, tokenizer: Any, rendered: RenderedPrompt, suffixes: list[list[int]], model: Any = None) -> Any:
        """An encoder of the prompt with the longest class question as its tail: the room it leaves the text is
        what every question leaves it (the tree runs each question's tokens after the text, at their positions)."""
        longest = dataclasses.replace(rendered, tail=tokenizer.decode(max(suffixes, key=len)))
        return self.prompt_encoder(tokenizer, longest, model)

    def prepare(self, backbone: Any) -> None:
        self.check(backbone.tokenizer)
        self.backbone = backbone
        rendered, suffixes, answer_ids, n_shared = self._questions(backbone.tokenizer)
        self.bind_prompt(rendered)
        # The encoder's tail: the tokens every question starts with, as tokenised within the question; its text
        # budget: what the longest question leaves (max_length, the context and max_prompt_length hold for it).
        shared = self.encoder.tail_ids = suffixes[0][:n_shared]
        self.encoder.text_budget = self._longest(backbone.tokenizer, rendered, suffixes, backbone.model).text_budget
        # Every question token is a tree node, the answer position being each class's last node: the trie reads
        # one "answer" token past it (yes), so each class's own tokens all run.
        self.trie = AnswerTrie.build([[*s[len(shared) :], answer_ids[0]] for s in suffixes])
        last = {int(c): int(at) for c, at in zip(self.trie.owner, self.trie.read_at)}  # the last read per class
        self.answer_at = np.array([last[c] for c in range(len(self.labels))], dtype=np.int64)
        self.answer_ids = answer_ids
        self.question_ids = [list(s) for s in suffixes]

    def _questions(self, tokenizer: Any) -> tuple[RenderedPrompt, list[list[int]], tuple[int, int], int]:
        """The prompt up to the class questions (head, slots, and what every question starts with as its tail),
        each class's question tokens after the text, the yes/no token ids, and how many first tokens the questions
        share."""
        base = dataclasses.replace(
            self.prompt,
            instruction=(self.prompt.instruction.rstrip() + " " if self.prompt.instruction else "") + QUESTION,
            show_classes="none",
            answer_hint=False,
            examples=(),
        )
        pieces = base.slot_pieces()
        rendered = [self._rendered(base, pieces, i, tokenizer) for i in range(len(self.labels))]
        heads = {(r.head, r.separators) for r in rendered}
        if len(heads) != 1:
            raise ConfigError("pairwise: the class questions change the prompt before the text; use chat=False")
        suffixes = [list(tokenizer(r.tail, add_special_tokens=False).input_ids) for r in rendered]
        shared = 0
        while all(len(s) > shared + 1 and s[shared] == suffixes[0][shared] for s in suffixes):
            shared += 1
        if shared == 0:
            raise ConfigError("pairwise: the class questions share no first token after the text; check the prompt")
        space = " " if needs_leading_space(rendered[0].tail) else ""
        # Each answer's first token is read (one token for " yes" / " no" in every real vocabulary).
        ids = [int((tokenizer(space + word, add_special_tokens=False).input_ids or [-1])[0]) for word in ANSWERS]
        if ids[0] == ids[1] or min(ids) < 0:
            raise ConfigError(
                f"pairwise needs {ANSWERS} to start with two different tokens; this tokenizer gives {ids}"
            )
        common = dataclasses.replace(rendered[0], tail=tokenizer.decode(suffixes[0][:shared]))
        return common, suffixes, (ids[0], ids[1]), shared

    def _rendered(self, base: PromptTemplate, pieces: list[str], c: int, tokenizer: Any) -> RenderedPrompt:
        """The prompt asking about class ``c``: its line goes after the text's last slot."""
        desc = self.labels.descriptions[c]
        line = f"\n\nClass: {self.labels.verbalizers[c]}" + (f" — {desc}" if desc else "")
        slots = [f"{{{f}}}" for f in base.fields]
        escaped = [p.replace("{", "{{").replace("}", "}}") for p in [*pieces[:-1], pieces[-1] + line]]
        layout = escaped[0] + "".join(s + after for s, after in zip(slots, escaped[1:]))
        layout_pieces(layout, base.fields)  # the class text cannot add a slot: braces are escaped
        return dataclasses.replace(base, input_format=layout).render(self.labels, tokenizer)

    # -- scoring --------------------------------------------------------------------------------------------------
    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        encoded = self.encoder.encode(texts)
        prefix = self.lm.shared_prefix()
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)

        def step(idx: np.ndarray, rows: list[list[int]]) -> None:
            z = self._tree(rows, prefix) if prefix is not None else self._plain(rows, run.batch_size)
            logits[idx] = z.float().cpu().numpy()

        self.lm.run_batches(encoded.ids, step, batch_size=run.batch_size, batch_tokens=run.batch_tokens,
                            prefix=prefix, progress=run.progress, extra_tokens=self.trie.size)  # fmt: skip
        return Scores(logits, None, encoded.truncated, cut_fields=encoded.cut_fields)

    def _log_odds(self, states: torch.Tensor) -> torch.Tensor:
        """log p(yes) − log p(no) from final-norm hidden states ``(..., d)``."""
        weight, bias = output_head(self.backbone.model)
        yes, no = self.answer_ids
        z = states.float() @ (weight[yes] - weight[no]).float()
        return z if bias is None else z + (bias[yes] - bias[no]).float()

    def _tree(self, rows: list[list[int]], prefix: SharedPrefix) -> torch.Tensor:
        bb = self.backbone
        states = trie_states(bb.model, prefix, rows, bb.tokenizer.pad_token_id, self.trie)
        return self._log_odds(states[:, torch.as_tensor(self.answer_at, device=states.device)])

    def _plain(self, rows: list[list[int]], batch_size: int) -> torch.Tensor:
        """The k questions as k full rows per text (no prefix reuse): the reference the tree reproduces."""
        bb = self.backbone
        shared = len(self.encoder.tail_ids)
        full = [[*r, *q[shared:]] for r in rows for q in self.question_ids]
        states = torch.cat(
            [
                last_token_hidden(bb.model, full[i : i + batch_size], bb.tokenizer.pad_token_id, bb.device, None)
                for i in range(0, len(full), batch_size)
            ]
        )
        return self._log_odds(states).view(len(rows), len(self.labels))

    # -- training -------------------------------------------------------------------------------------------------
    def class_token_ids(self) -> list[int]:
        raise ConfigError("method 'pairwise' answers yes/no per class, so it trains with loss='class_ce' only")

    def train_logits(
        self, rows: list[list[int]], *, full_vocab: bool = False, reuse_prefix: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if full_vocab:
            self.class_token_ids()
        return self._tree(rows, self.tree_prefix(reuse_prefix, "pairwise runs the class questions as a tree")), None

    def training_tokens(self, row: Sequence[int], reuse_prefix: bool) -> int:
        return super().training_tokens(row, reuse_prefix) + self.trie.size

    def info(self) -> MethodInfo:
        tok = self.backbone.tokenizer
        shared = len(self.encoder.tail_ids)
        return MethodInfo(
            self.name,
            prompt=self.lm.prompt_info(),
            extra={
                "questions": [tok.decode(q[shared:]) for q in self.question_ids],
                "answer_tokens": tok.convert_ids_to_tokens(list(self.answer_ids)),
                "question_tokens_per_text": self.trie.size,
            },
        )
