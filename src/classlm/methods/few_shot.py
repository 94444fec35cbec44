"""``few_shot``: ``label_tokens`` with k labelled examples from ``fit(X, y)`` in the prompt.

``selection="fixed"``: the same k examples for every text, picked class-balanced (round-robin over the classes in a
seeded random order, a seeded random example of each class per round). They become ``PromptTemplate.examples``, so
the whole prompt head, examples included, is one shared prefix computed once.

``selection="nearest"``: every text gets its k nearest training examples by sentence-encoder cosine, the most similar
last (next to the text). The head then differs per text, so each row is built as
``common_head_ids + example_block_ids(text) + text_ids + tail_ids``: ``common_head_ids`` is the head before the
examples block (system message, instruction, class list) and stays the shared prefix computed once. The block is the
rendered template's own text (``PromptTemplate.render`` with that text's examples), so a row holds what a fixed
prompt with the same examples holds. Scoring the training texts themselves finds each one as its own nearest
neighbour (with its true label in the prompt): no special case is made, so do not read scores of the training pool as
held-out scores.

Example texts are cut to ``max_example_chars`` on a word boundary (with "…"). The examples never squeeze the text
out: the text keeps up to ``max_length`` tokens of its own, and the examples may fill the prompt up to the model's
context (or ``max_prompt_length``) only while at least ``max(8, max_length // 4)`` tokens stay for the text (or what
the prompt without examples leaves, when that is less). Fixed selection drops the last-picked examples to get there
(the later round-robin rounds, so the class balance holds), nearest selection the least similar ones, per text.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classlm.config import DEFAULT_ENCODER, check_positive
from classlm.errors import ArtifactError, ConfigError, NotFittedError
from classlm.fields import Record, share_budget
from classlm.methods.base import register
from classlm.methods.label_tokens import LabelTokensMethod
from classlm.prompts import RenderedPrompt
from classlm.scores import MethodInfo
from classlm.scoring import MIN_TEXT_TOKENS, EncodedTexts, PromptEncoder, context_length

log = logging.getLogger(__name__)


FEW_SHOT_SELECTION = ("fixed", "nearest")


@dataclass(frozen=True)
class FewShotOptions:
    """``few_shot``: ``label_tokens`` with ``k`` labelled examples from ``fit(X, y)`` in the prompt.

    ``selection="fixed"``: the same k examples for every text, picked class-balanced at random (seeded), so the
    whole prompt head is still computed once. ``"nearest"``: each text gets its k nearest training examples by
    ``encoder`` embedding (cosine). Examples longer than ``max_example_chars`` are cut.
    """

    k: int = 8
    selection: str = "fixed"
    encoder: str = DEFAULT_ENCODER
    max_example_chars: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "k", "max_example_chars", integer=True)
        if self.selection not in FEW_SHOT_SELECTION:
            raise ConfigError(f"selection must be one of {FEW_SHOT_SELECTION}, got {self.selection!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")


ELLIPSIS = "…"
# Rendering the template with this one-character example marks where the examples block starts in the head.
_SENTINEL = "\ue001"
# Query-pool cosines are compared at this resolution, ties broken by pool order: an embedding computed alone or in a
# padded batch differs by ~1e-7, which must not reorder two near-equal neighbours.
_SIMILARITY_DECIMALS = 5
# Query rows x pool columns of cosines held at once.
_SIMILARITY_CELLS = 1 << 24


def cut_text(text: str, max_chars: int) -> str:
    """``text`` stripped and, when longer than ``max_chars``, cut on a word boundary with "…" (at most ``max_chars``
    characters in all; a single word longer than that is cut inside it)."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    keep = text[: max_chars - 1]
    if not text[max_chars - 1].isspace():
        space = max((i for i, ch in enumerate(keep) if ch.isspace()), default=-1)
        if space > 0:
            keep = keep[:space]
    return keep.rstrip() + ELLIPSIS


def cut_input(text: str, max_chars: int) -> str:
    """:func:`cut_text` for an example; an input of several fields shares ``max_chars`` between them
    (:func:`classlm.fields.share_budget`), so a long first field cannot cut the others out."""
    if not isinstance(text, Record):
        return cut_text(text, max_chars)
    keep = share_budget([len(v.strip()) for v in text.values], max_chars)
    return Record(tuple(cut_text(v, max(k, 1)) for v, k in zip(text.values, keep)), text.fields, text.layout)


def balanced_pick(y: Sequence[int], k: int, seed: int) -> list[int]:
    """Indices of ``k`` examples (all when fewer), class-balanced: round-robin over the classes in a seeded random
    order, each class's examples in a seeded random order. Earlier picks complete earlier rounds."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(y)
    classes = rng.permutation(np.unique(labels))
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    picked: list[int] = []
    for r in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if r < len(q) and len(picked) < k:
                picked.append(int(q[r]))
    return picked


class _NearestEncoder(PromptEncoder):
    """A PromptEncoder whose head is the common head only; ``encode`` puts each text's examples block after it."""

    def __init__(self, base: PromptEncoder, method: FewShotMethod) -> None:
        vars(self).update(vars(base))  # the common head's encoding and limits, computed once by the method
        self.method = method

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        return self.method.encode_nearest(texts)


@register("few_shot", options=FewShotOptions)
class FewShotMethod(LabelTokensMethod):
    """label_tokens with k training examples in the prompt: the same k for every text, or each text's nearest k."""

    learns_from_data = True
    # The Trainer would train on the prompt without the per-text examples; few_shot is a prompting method.
    trains_backbone = False
    # The out-of-scope distance would be fitted on the pool's own rows, whose prompts may hold the row itself (and
    # its label) as an example: their features are not those of a new text.
    has_features = False
    options: FewShotOptions

    def prepare(self, backbone: Any) -> None:
        super().prepare(backbone)
        # The template the examples go into (the selection replaces any examples the given template holds).
        self.base_prompt = dataclasses.replace(self.prompt, examples=())
        self.fitted = False
        self.examples: list[tuple[str, str]] = []  # fixed
        self.pool: list[tuple[str, str]] = []  # nearest: (cut text, label) per training example
        self.pool_embeddings = np.zeros((0, 0), dtype=np.float32)
        zero_shot = PromptEncoder(backbone.tokenizer, self.base_prompt.render(self.labels, backbone.tokenizer), 1 << 30)
        used = len(zero_shot.head_ids) + len(zero_shot.tail_ids)
        # The most tokens a whole prompt may take (examples included): the context, or max_prompt_length.
        limits = [context_length(backbone.tokenizer, backbone.model), self.max_prompt_length]
        self.prompt_limit = min([n for n in limits if n is not None], default=1 << 30)
        # Tokens the text keeps whatever the examples: a quarter of max_length, less when the bare prompt leaves less.
        self.min_text_tokens = min(max(MIN_TEXT_TOKENS, self.max_length // 4), self.prompt_limit - used)
        if self.options.selection == "nearest":
            from classlm.encoders import load_encoder

            self.sentence_encoder = load_encoder(self.options.encoder, self.torch_device())
            self._bind_common_head()

    # -- fixed ------------------------------------------------------------------------------------------------------
    def _apply_examples(self, examples: Sequence[tuple[str, str]]) -> None:
        """Render the template with ``examples`` and re-bind (new head ids, prefix cache reset)."""
        self.prompt = dataclasses.replace(self.base_prompt, examples=tuple((t, lab) for t, lab in examples))
        self.bind_prompt(self.prompt.render(self.labels, self.backbone.tokenizer))
        self.examples = list(self.prompt.examples)

    def _fitting_prefix(self, examples: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The longest leading part of ``examples`` that leaves the text ``min_text_tokens``."""
        tok = self.backbone.tokenizer
        for m in range(len(examples), -1, -1):
            rendered = dataclasses.replace(self.base_prompt, examples=tuple(examples[:m])).render(self.labels, tok)
            enc = PromptEncoder(tok, rendered, 1 << 30)
            if self.prompt_limit - len(enc.head_ids) - len(enc.tail_ids) >= self.min_text_tokens:
                return examples[:m]
        return []

    # -- nearest ----------------------------------------------------------------------------------------------------
    def _bind_common_head(self) -> None:
        """Bind the head before the examples block as the prompt head; ``encode`` adds each text's block."""
        tok = self.backbone.tokenizer
        bare = self.base_prompt.render(self.labels, tok)
        marked = dataclasses.replace(self.base_prompt, examples=((_SENTINEL, self.labels.names[0]),)).render(
            self.labels, tok
        )
        if marked.tail != bare.tail or _SENTINEL not in marked.head:
            raise ConfigError("the prompt template places its examples outside the head; few_shot cannot use it")
        same = os.path.commonprefix([bare.head, marked.head])
        # Cut before the whitespace that precedes the block: "…classes" | "\n\nExamples:…". For byte-level BPE
        # (GPT-2-style pre-tokenisation, as SmolLM2's) a word followed by a newline is a token boundary, so the two
        # parts tokenise as the joined head does (checked on the tiny tokenizer and SmolLM2's).
        last_space = max((i for i, ch in enumerate(same) if ch.isspace()), default=0)
        self.common_head = same[:last_space].rstrip()
        common = RenderedPrompt(head=self.common_head, tail=bare.tail, chat=bare.chat, separators=bare.separators)
        self.bind_prompt(common)
        self.encoder = _NearestEncoder(self.prompt_encoder(tok, common, self.backbone.model), self)

    def _embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return self.sentence_encoder.encode([t.strip() for t in texts], progress=progress)

    def neighbours(self, texts: Sequence[str]) -> list[list[int]]:
        """Pool indices of each text's k nearest examples, the most similar LAST (nearest selection)."""
        pool = self.pool_embeddings
        k = min(self.options.k, len(self.pool))
        if k == 0:
            return [[] for _ in texts]
        q = self._embed(texts)
        out: list[list[int]] = []
        step = max(1, _SIMILARITY_CELLS // len(pool))
        for start in range(0, len(q), step):
            sims = np.round(q[start : start + step] @ pool.T, _SIMILARITY_DECIMALS)
            for row in sims:
                kth = np.partition(row, len(row) - k)[len(row) - k]  # the k-th largest value
                above = np.flatnonzero(row > kth)
                ties = np.flatnonzero(row == kth)[: k - len(above)]  # ties in pool order
                cand = np.concatenate([above, ties])
                order = cand[np.lexsort((cand, -row[cand]))]  # most similar first, then pool order
                out.append([int(i) for i in order[::-1]])
        return out

    def examples_for(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
        """The ``(text, label)`` examples each text's prompt shows, in prompt order (before any dropped for length)."""
        if self.options.selection == "fixed":
            return [list(self.examples) for _ in texts]
        return [[self.pool[i] for i in idx] for idx in self.neighbours(texts)]

    def _block(self, examples: Sequence[tuple[str, str]]) -> str:
        """The head after the common part, for ``examples``: the examples block and the text header."""
        head = dataclasses.replace(self.base_prompt, examples=tuple(examples)).render(
            self.labels, self.backbone.tokenizer
        )
        if not head.head.startswith(self.common_head):
            raise ConfigError("the prompt template changes the head before its examples; few_shot cannot share it")
        return head.head[len(self.common_head) :]

    def encode_nearest(self, texts: Sequence[str]) -> EncodedTexts:
        """Token rows ``common head + examples block + text + tail``, the text truncated inside its slot."""
        if not texts:
            return EncodedTexts([], np.zeros(0, dtype=bool))
        if not self.fitted:
            raise NotFittedError("few_shot: no training examples (fit_data was not called)")
        tok = self.backbone.tokenizer
        enc = self.encoder
        fixed = len(enc.head_ids) + len(enc.tail_ids) + sum(map(len, enc.separator_ids))
        examples = self.examples_for(texts)
        blocks = [self._block(ex) for ex in examples]
        block_ids = tok(blocks, add_special_tokens=False).input_ids
        rows, cuts = [], []
        for ex, b, t in zip(examples, block_ids, enc.text_ids(texts)):
            # Too long a block: drop the least similar examples (the first ones) until the text has its room.
            while ex and self.prompt_limit - fixed - len(b) < self.min_text_tokens:
                ex = ex[1:]
                b = tok(self._block(ex), add_special_tokens=False).input_ids
            budget = min(self.max_length, self.prompt_limit - fixed - len(b))
            body, cut = enc.fit_text(t, budget)
            rows.append([*enc.head_ids, *b, *body, *enc.tail_ids])
            cuts.append(cut)
        return EncodedTexts(rows, *enc.cut_report(texts, cuts))

    # -- the Method interface ---------------------------------------------------------------------------------------
    def fit_data(
        self, texts: Sequence[str], y: np.ndarray, *, progress: bool = False, soft: np.ndarray | None = None
    ) -> dict[str, Any]:
        # soft (distillation): the examples shown carry labels, so each text takes its most probable class (y).
        if len(texts) != len(y):
            raise ConfigError(f"fit_data got {len(texts)} texts and {len(y)} labels")
        names = self.labels.names
        # Empty texts make no example (the template refuses them).
        keep = [i for i, t in enumerate(texts) if t.strip()]
        cut = {i: cut_input(texts[i], self.options.max_example_chars) for i in keep}
        if self.options.selection == "fixed":
            picked = balanced_pick([int(y[i]) for i in keep], self.options.k, self.options.seed)
            wanted = [(cut[keep[j]], names[int(y[keep[j]])]) for j in picked]
            examples = self._fitting_prefix(wanted)
            if len(examples) < len(wanted):
                log.warning(
                    "few_shot: %d of %d examples fit in the prompt's %d tokens with room for the text; lower "
                    "max_example_chars (or raise max_prompt_length) to keep them all",
                    len(examples),
                    len(wanted),
                    self.prompt_limit,
                )
            self._apply_examples(examples)
            self.fitted = True
            return {
                "selection": "fixed",
                "examples": len(examples),
                "dropped_for_length": len(wanted) - len(examples),
                "prompt_tokens": len(self.encoder.head_ids) + len(self.encoder.tail_ids),
            }
        self.pool = [(cut[i], names[int(y[i])]) for i in keep]
        self.pool_embeddings = self._embed([texts[i] for i in keep], progress)
        self.fitted = True
        return {"selection": "nearest", "pool": len(self.pool), "examples_per_text": min(self.options.k, len(keep))}

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.fitted:
            return {}, {}
        if self.options.selection == "fixed":
            return {}, {"examples": [[t, lab] for t, lab in self.examples]}
        return (
            {"pool_embeddings": np.ascontiguousarray(self.pool_embeddings, dtype=np.float32)},
            {"pool": [[t, lab] for t, lab in self.pool]},
        )

    def load_state(self, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        if self.options.selection == "fixed":
            if "examples" not in info:
                raise ArtifactError("few_shot (fixed): the saved state has no 'examples'")
            self._apply_examples([_pair(e) for e in info["examples"]])
            self.fitted = True
            return
        if "pool" not in info or "pool_embeddings" not in tensors:
            raise ArtifactError("few_shot (nearest): the saved state needs 'pool' and the 'pool_embeddings' tensor")
        pool = [_pair(e) for e in info["pool"]]
        emb = tensors["pool_embeddings"]
        emb = np.asarray(emb.detach().cpu().numpy() if hasattr(emb, "detach") else emb, dtype=np.float32)
        dim = self.sentence_encoder.dim
        if emb.ndim != 2 or emb.shape[0] != len(pool) or (len(pool) and emb.shape[1] != dim):
            raise ArtifactError(
                f"few_shot (nearest): pool_embeddings has shape {emb.shape}, expected ({len(pool)}, {dim}) "
                f"for {len(pool)} examples and encoder {self.options.encoder!r}"
            )
        unknown = sorted({lab for _, lab in pool} - set(self.labels.names))
        if unknown:
            raise ArtifactError(f"few_shot (nearest): the saved pool uses labels {unknown} that are not classes")
        self.pool, self.pool_embeddings = pool, emb
        self.fitted = True

    def info(self) -> MethodInfo:
        base = super().info()
        desc: dict[str, Any] = {}
        desc["options"] = self.options_dict()
        if self.options.selection == "fixed":
            desc["n_examples"] = len(self.examples)
        else:
            desc["n_examples"] = min(self.options.k, len(self.pool))
            desc["pool_size"] = len(self.pool)
            desc["encoder"] = self.sentence_encoder.identity()
            desc["examples_block"] = (
                "per text: its nearest training examples (most similar last) between prompt_head and the text"
            )
        desc["min_text_tokens"] = self.min_text_tokens
        return dataclasses.replace(base, extra=desc)


def _pair(item: Any) -> tuple[str, str]:
    if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, str) for v in item)):
        raise ArtifactError(f"few_shot: a saved example must be a [text, label] pair of strings, got {item!r}")
    return item[0], item[1]
