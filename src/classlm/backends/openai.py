"""Zero-shot classification against an OpenAI-compatible server that returns logprobs: reading the answer (this
module), the HTTP client (:mod:`classlm.backends.client`) and the estimator (``classlm.RemoteClassifier``, in
:mod:`classlm.backends.remote`: a scikit-learn estimator, so this module stays free of scikit-learn).

One request per text with ``max_tokens=1`` and ``top_logprobs``: the server's top-k next tokens and their
log-probabilities. Each class is matched **by text** to a top-k token, as the local ``first_token`` scoring reads the
logit of its answer's first token:

- with ``tokenizer=`` (the model's own tokenizer), the entry whose text is exactly the answer's first token, decoded
  with the leading space the prompt calls for (rule 2 of DESIGN.md);
- without it, the longest entry that is a prefix of the answer and of no other class's answer. That is usually the
  first token, but it is a guess: a shorter piece (``" Sp"`` for ``" Sports"``) stands in when the real first token
  is absent from the top-k.

Classes whose token is not in the top-k are not known, only bounded: no such token is more likely than the least
likely top-k entry, and together they hold at most the mass the top-k leaves over. Each absent class gets an equal
share of that left-over mass, capped at the least likely entry's probability, so their total never exceeds the
bound on their true total; that total is reported per text (``missing_mass``), so callers can tell an answer read
from the server from one built on bounds.

Servers fail in ordinary ways, so requests are retried with exponential backoff (honouring ``Retry-After``) on 429
and 5xx answers, timeouts and dropped connections; at most ``concurrency`` run at once. Three clocks bound the time
per text: ``timeout`` for any one read (or connect, or write), ``deadline`` for one whole attempt (a server that
drips its answer a byte at a time renews a read timeout forever), and ``max_retry_time`` for all attempts and the
waits between them (a ``Retry-After`` that would pass it fails at once instead of being slept on). The error says
which one ran out. The answer is checked before it is used: a logprob must be a number <= 0, and together the top-k
cannot hold more than all of the probability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classlm.backends.client import OpenAIClient as OpenAIClient  # re-exported: its home before client.py
from classlm.errors import RemoteError

ENDPOINTS = ("completions", "chat")
METHODS = ("label_tokens", "letters")
# Servers compute logprobs in float32 and may round the most likely token's to a hair above 0 or the top-k's total
# to a hair above 1; past these tolerances the numbers are not log-probabilities.
_LOGPROB_SLACK = 1e-4
_MASS_SLACK = 1e-3
# A class absent from the top-k gets at least this probability, so its logit stays finite.
_FLOOR = 1e-12


@dataclass(frozen=True)
class RemoteScores:
    """Class logits (``log`` of each class's probability estimate) and what the top-k did not show."""

    logits: np.ndarray
    class_mass: np.ndarray
    missing_mass: np.ndarray
    n_absent: np.ndarray
    # The server truncates (or refuses) a long prompt on its own and does not say so: nothing is known here.
    truncated: None = None
    cut_fields: None = None

    @property
    def n_truncated(self) -> int:
        return 0


def top_entries(body: Any) -> list[tuple[str, float]]:
    """The ``(token text, logprob)`` pairs of the first generated position, from any of the response shapes in use:
    chat (``logprobs.content[0].top_logprobs``, which llama.cpp also uses for completions) or legacy completions
    (``logprobs.top_logprobs[0]`` as ``{token: logprob}``)."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise RemoteError(f"the server's answer has no choices: {str(body)[:200]}") from None
    logprobs = choice.get("logprobs") if isinstance(choice, Mapping) else None
    if isinstance(logprobs, Mapping):
        content = logprobs.get("content")
        if isinstance(content, list) and content and isinstance(content[0], Mapping):
            top = content[0].get("top_logprobs")
            if isinstance(top, list) and top:
                return _checked(
                    [(e.get("token"), e.get("logprob")) for e in top if isinstance(e, Mapping) and "token" in e]
                )
        legacy = logprobs.get("top_logprobs")
        if isinstance(legacy, list) and legacy and isinstance(legacy[0], Mapping) and legacy[0]:
            return _checked(list(legacy[0].items()))
    raise RemoteError(
        "the server answered without logprobs for the next token, which classification needs. Use a server that "
        "returns them (vLLM, llama.cpp's llama-server, OpenAI-compatible APIs with logprobs enabled), or try "
        "--endpoint chat / completions, whichever the server supports with logprobs"
    )


def _checked(entries: list[tuple[Any, Any]]) -> list[tuple[str, float]]:
    """The entries as ``(str, float)``, or a RemoteError that names the first one that is not a log-probability."""
    out = []
    for token, logprob in entries:
        if not isinstance(token, str):
            raise RemoteError(f"the server's top logprobs have a token that is not a string: {token!r}")
        # bool is an int in Python; a JSON true is not a log-probability.
        if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            raise RemoteError(
                f"the server's logprob for token {token!r} is {logprob!r} ({type(logprob).__name__}); expected a "
                "number <= 0. Is this an OpenAI-compatible server?"
            )
        if logprob > _LOGPROB_SLACK:
            raise RemoteError(
                f"the server's logprob for token {token!r} is {logprob:g}, above 0, so not a log-probability (it "
                "may send raw logits); use a server that returns log-probabilities"
            )
        out.append((token, min(0.0, float(logprob))))
    total = sum(math.exp(lp) for _, lp in out)
    if total > 1.0 + _MASS_SLACK:
        raise RemoteError(
            f"the server's top {len(out)} logprobs add up to a probability of {total:.4g}, more than 1, so they are "
            "not log-probabilities of one next-token distribution"
        )
    return out


def class_probabilities(
    entries: Sequence[tuple[str, float]], answers: Sequence[str], *, exact: bool = False
) -> tuple[np.ndarray, float, int]:
    """Each class's probability estimate from the top-k ``entries``; also the estimate given to absent classes
    (summed) and how many classes were absent. ``answers`` include the leading space the prompt calls for; with
    ``exact`` they are the classes' first tokens and an entry must equal one, else it may be a prefix of one."""
    probs = [math.exp(lp) for _, lp in entries]
    best: list[tuple[int, float] | None] = [None] * len(answers)  # (length of the matched text, probability)
    for (token, _), p in zip(entries, probs):
        if not token:
            continue
        owners = [i for i, a in enumerate(answers) if (a == token if exact else a.startswith(token))]
        if len(owners) != 1:  # a prefix of several answers (or of none) tells the classes nothing apart
            continue
        i = owners[0]
        current = best[i]
        if current is None or len(token) > current[0]:
            best[i] = (len(token), p)
    absent = [i for i, b in enumerate(best) if b is None]
    out = np.array([b[1] if b is not None else 0.0 for b in best], dtype=np.float64)
    missing = 0.0
    if absent:
        left_over = max(0.0, 1.0 - sum(probs))
        share = min(left_over / len(absent), min(probs) if probs else 1.0)
        out[absent] = share
        missing = share * len(absent)
    return np.maximum(out, _FLOOR), missing, len(absent)
