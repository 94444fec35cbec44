"""``generate``: the naive baseline. Greedy free generation after the ``label_tokens`` prompt, parsed back to a class.

The model writes up to ``max_new_tokens`` tokens (default: the longest class answer in tokens + 2) and
:func:`parse_generation` maps the text to a class. The baseline has no scores, so its "probabilities" are one-hot:
the parsed class gets logit 0 and every other class -20 (p ≈ 1 before calibration); an unparseable answer gets all
zeros (uniform). A fitted temperature cannot rank anything; it only softens the one-hot rows until the parsed class's
probability matches the parser's accuracy on the calibration data. There is no class mass (``Scores.class_mass`` is
None); how many answers could not be parsed is kept in ``last_unparsed`` (the last call) and
``unparsed_total``/``scored_total`` (every call), and ``describe()`` reports the share.

Generation runs batched, length-sorted, with LEFT padding (every prompt must end where generation starts); results
come back in input order. ``scoring`` (first_token/exact) plays no part here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classlm.config import check_positive
from classlm.labels import ClassTokens, resolve_class_tokens
from classlm.methods.base import Method, ScoringRun, register
from classlm.methods.prompted import class_token_info, prompt_info
from classlm.progress import progress_bar
from classlm.prompts import RenderedPrompt
from classlm.scores import MethodInfo, Scores
from classlm.scoring import length_sorted_batches


@dataclass(frozen=True)
class GenerateOptions:
    """``generate``: greedy generation of at most ``max_new_tokens`` tokens (``None``: the longest class answer
    plus 2), parsed back to a class."""

    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None:
            check_positive(self, "max_new_tokens", integer=True)


# Logit of every class but the parsed one (the parsed class gets 0).
OFF_LOGIT = -20.0
# Decoration a model may wrap an answer in ("**World**", '"World"'), stripped before matching.
_DECORATION = " \t\r\n\"'`*_"


def _unique(matches: set[int]) -> int | None:
    return next(iter(matches)) if len(matches) == 1 else None


def parse_generation(output: str, answers: Sequence[str], names: Sequence[str]) -> int | None:
    """The class index a generated ``output`` names, or None when it cannot be told. Case-insensitive, in order:

    1. the output (stripped, also without quotes/markdown emphasis around it) IS a class answer or class name
       (answers win over names if an answer of one class is the name of another);
    2. the output starts with exactly one class answer followed by a non-word character or the end; when one
       answer is a prefix of another ("Sci" and "Sci/Tech") the longest match wins;
    3. exactly one class name appears in it as a whole word (a name found only inside a longer matching name does
       not count: "Sci/Tech" does not also find "Sci").
    """
    raw = output.strip().casefold()
    core = raw.strip(_DECORATION)
    if not core:
        return None
    ans = [a.strip().casefold() for a in answers]
    nam = [n.strip().casefold() for n in names]
    # 1. exact
    for pool in (ans, nam):
        hit = _unique({i for i, a in enumerate(pool) if a and a in (raw, core)})
        if hit is not None:
            return hit
        if any(a and a in (raw, core) for a in pool):
            return None  # two classes with this exact answer/name (they differ only by case)
    # 2. starts with one answer
    starts = [
        i
        for i, a in enumerate(ans)
        if a and core.startswith(a) and (len(core) == len(a) or not _is_word_char(core[len(a)]))
    ]
    if starts:
        longest = max(len(ans[i]) for i in starts)
        return _unique({i for i in starts if len(ans[i]) == longest})
    # 3. one name as a whole word
    spans: dict[int, list[tuple[int, int]]] = {}
    for i, n in enumerate(nam):
        if n:
            pattern = re.compile(r"(?<!\w)" + re.escape(n) + r"(?!\w)")
            found = [(m.start(), m.end()) for m in pattern.finditer(raw)]
            if found:
                spans[i] = found

    def inside_longer(i: int, s: int, e: int) -> bool:
        return any(j != i and a <= s and e <= b and b - a > e - s for j, other in spans.items() for a, b in other)

    return _unique({i for i, found in spans.items() if any(not inside_longer(i, s, e) for s, e in found)})


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


@register("generate", options=GenerateOptions)
class GenerateMethod(Method):
    """Greedy generation parsed back to a class; one-hot logits (see the module docstring)."""

    options: GenerateOptions

    def check(self, tokenizer: Any) -> None:
        rendered = self.prompt.render(self.labels, tokenizer)
        self.prompt_encoder(tokenizer, rendered)
        self._class_tokens(tokenizer, rendered)

    def _class_tokens(self, tokenizer: Any, rendered: RenderedPrompt) -> ClassTokens:
        # Generation reads whole answers, so classes may share a first token.
        return resolve_class_tokens(
            self.labels, tokenizer, leading_space=rendered.leading_space, require_distinct_first=False
        )

    def prepare(self, backbone: Any) -> None:
        self.backbone = backbone
        self.rendered = self.prompt.render(self.labels, backbone.tokenizer)
        self.encoder = self.prompt_encoder(backbone.tokenizer, self.rendered, backbone.model)
        self.tokens = self._class_tokens(backbone.tokenizer, self.rendered)
        self.last_unparsed = 0
        self.unparsed_total = 0
        self.scored_total = 0
        self.last_outputs: list[str] = []

    @property
    def max_new_tokens(self) -> int:
        """``options.max_new_tokens``, or the longest class answer in tokens + 2."""
        if self.options.max_new_tokens is not None:
            return int(self.options.max_new_tokens)
        return max(len(s) for s in self.tokens.sequences) + 2

    def parse(self, output: str) -> int | None:
        return parse_generation(output, self.labels.answers, self.labels.names)

    def _generate_texts(self, rows: list[list[int]]) -> list[str]:
        """Greedy continuations of the token ``rows`` (one batch, left-padded), decoded without special tokens."""
        bb = self.backbone
        tok = bb.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        with torch.inference_mode():
            out = bb.model.generate(
                input_ids=ids.to(bb.device),
                attention_mask=mask.to(bb.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        return [str(s) for s in tok.batch_decode(out[:, width:].tolist(), skip_special_tokens=True)]

    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        encoded = self.encoder.encode(texts)
        k = len(self.labels)
        logits = np.zeros((len(texts), k), dtype=np.float32)
        outputs = [""] * len(texts)
        unparsed = 0
        new = self.max_new_tokens
        desc = run.progress if isinstance(run.progress, str) else "generating"
        bar = progress_bar(total=len(texts), desc=desc, unit="text", disable=not run.progress, leave=False)
        # The token budget counts the generated tokens too: each row grows by up to max_new_tokens.
        for idx in length_sorted_batches([len(r) + new for r in encoded.ids], run.batch_size, run.batch_tokens):
            generated = self._generate_texts([encoded.ids[i] for i in idx])
            for i, text in zip(idx, generated):
                outputs[i] = text
                c = self.parse(text)
                if c is None:
                    unparsed += 1
                else:
                    logits[i] = OFF_LOGIT
                    logits[i, c] = 0.0
            bar.update(len(idx))
        bar.close()
        self.last_outputs = outputs
        self.last_unparsed = unparsed
        self.unparsed_total += unparsed
        self.scored_total += len(texts)
        return Scores(logits, None, encoded.truncated, cut_fields=encoded.cut_fields)

    def scoring_stats(self) -> dict[str, Any]:
        return {"unparsed": self.last_unparsed}

    def info(self) -> MethodInfo:
        share = self.unparsed_total / self.scored_total if self.scored_total else None
        return MethodInfo(
            self.name,
            scoring=self.scoring,
            class_tokens=class_token_info(self.tokens, self.backbone.tokenizer),
            prompt=prompt_info(self.encoder, self.rendered),
            extra={
                "options": self.options_dict(),
                "max_new_tokens": self.max_new_tokens,
                "scored": self.scored_total,
                "unparsed": self.unparsed_total,
                "unparsed_share": share,
            },
        )
