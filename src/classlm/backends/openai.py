"""Zero-shot classification against an OpenAI-compatible server that returns logprobs.

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
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from classlm.backends.client import OpenAIClient
from classlm.calibration import TemperatureScaler
from classlm.config import CalibrationConfig
from classlm.data import as_texts, validate_labels
from classlm.errors import ConfigError, DataError, NotFittedError, RemoteError
from classlm.labels import LabelSet, resolve_class_tokens
from classlm.metrics import softmax
from classlm.prompts import PromptTemplate, RenderedPrompt

__all__ = ["OpenAIClient", "RemoteClassifier", "RemoteScores", "class_probabilities", "top_entries"]

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


class RemoteClassifier(ClassifierMixin, BaseEstimator):
    """Zero-shot ``label_tokens`` / ``letters`` classification with a model behind an OpenAI-compatible API.

    A scikit-learn estimator: ``__init__`` only stores its arguments (so ``clone``, ``get_params`` and
    ``set_params`` work), ``fit`` validates them, resolves the labels, opens the HTTP client (and, given labelled
    ``(X, y)``, fits the temperature) and returns ``self``; ``classes_``, ``predict_proba``, ``predict``.

    Parameters
    ----------
    base_url:
        The server, e.g. ``http://127.0.0.1:8080`` (``/v1`` is added when missing).
    model:
        The model name the server knows.
    labels, instruction, prompt, method:
        As for :class:`~classlm.LMClassifier`; ``method`` is ``"label_tokens"`` or ``"letters"``.
    endpoint:
        ``"completions"``: the prompt is rendered here and sent as text; with ``tokenizer`` set, through that
        model's chat template (so it matches what the local model reads), else as plain text ending in
        ``"Answer:"``. ``"chat"``: messages are sent and the server applies its own template.
    tokenizer:
        A model (alias, folder, hub id) whose tokenizer's chat template renders the prompt for ``completions``.
    top_logprobs:
        How many next tokens to ask for (OpenAI allows up to 20; legacy completions 5).
    api_key:
        Sent as a Bearer token; default ``$OPENAI_API_KEY``.
    timeout, deadline, max_retry_time:
        Seconds: for any one read, connect or write; for one whole request (however the server paces its bytes);
        for all attempts of one text and the waits between them (a ``Retry-After`` past it fails at once).
    max_retries, concurrency:
        Retries on 429/5xx/timeouts, requests in flight at once.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        labels: Any = None,
        *,
        method: str = "label_tokens",
        instruction: str | None = None,
        prompt: PromptTemplate | Mapping[str, Any] | None = None,
        endpoint: str = "completions",
        tokenizer: str | None = None,
        top_logprobs: int = 20,
        api_key: str | None = None,
        timeout: float = 30.0,
        deadline: float = 60.0,
        max_retry_time: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 4,
        calibration: str = "temperature",
        progress: bool = False,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.labels = labels
        self.method = method
        self.instruction = instruction
        self.prompt = prompt
        self.endpoint = endpoint
        self.tokenizer = tokenizer
        self.top_logprobs = top_logprobs
        self.api_key = api_key
        self.timeout = timeout
        self.deadline = deadline
        self.max_retry_time = max_retry_time
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.calibration = calibration
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "client_")

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        # scikit-learn's repr prints every parameter set away from its default: the API key must not reach logs.
        if self.api_key is None:
            return super().__repr__(N_CHAR_MAX)
        key, self.api_key = self.api_key, "***"
        try:
            return super().__repr__(N_CHAR_MAX)
        finally:
            self.api_key = key

    def _get_params_html(self, deep: bool = True, doc_link: str = "") -> Any:
        # The notebook (HTML) display's parameter table, likewise.
        params = super()._get_params_html(deep, doc_link)
        if params.get("api_key") is not None:
            params["api_key"] = "***"
        return params

    def fit(self, X: Any = None, y: Any = None) -> RemoteClassifier:
        """Resolve labels and prompt; with labelled ``(X, y)`` fit the temperature on them. Returns ``self``."""
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS} for a remote model, got {self.method!r}")
        if self.endpoint not in ENDPOINTS:
            raise ConfigError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")
        if not isinstance(self.top_logprobs, int) or not 1 <= self.top_logprobs <= 100:
            raise ConfigError(f"top_logprobs must be an integer in 1..100, got {self.top_logprobs!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        for name in ("timeout", "deadline", "max_retry_time"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        CalibrationConfig(method=self.calibration)
        texts = as_texts(X) if X is not None else []
        y_list = None if y is None else [str(v) for v in y]
        spec = self.labels if self.labels is not None else (sorted(set(y_list)) if y_list else None)
        if spec is None:
            raise ConfigError("no classes: pass labels=[...], or labelled data as fit(X, y)")
        label_set = LabelSet.from_spec(spec, letters=self.method == "letters")
        template = PromptTemplate.resolve(self.prompt, self.instruction)
        tokenizer: Any = None
        if self.endpoint == "chat":
            if self.tokenizer is not None:
                raise ConfigError(
                    "tokenizer= renders the prompt for endpoint='completions'; the chat endpoint "
                    "applies the server's own template"
                )
            # Only the body is sent; the server's template wraps it and ends at the assistant tag: no leading space.
            rendered = RenderedPrompt(head=template.body(label_set), tail="", chat=True)
            leading_space = False
        else:
            if self.tokenizer is not None:
                from classlm.models import load_tokenizer

                tokenizer = load_tokenizer(self.tokenizer)
            rendered = template.render(label_set, tokenizer)
            leading_space = rendered.leading_space
        answers = tuple((" " if leading_space else "") + a for a in label_set.answers)
        self.exact_ = tokenizer is not None
        if tokenizer is not None:
            # The model's own first token of each answer, as text: what the server's top-k entries will say.
            tokens = resolve_class_tokens(label_set, tokenizer, leading_space=leading_space)
            answers = tuple(tokenizer.decode([i]) for i in tokens.first_ids)
        self.label_set_ = label_set
        self.classes_ = np.array(label_set.names, dtype=object)
        self.system_ = template.system
        self.rendered_ = rendered
        self.answers_ = answers
        self.calibrator_ = TemperatureScaler()
        self.close()
        self.client_ = OpenAIClient(
            self.base_url,
            api_key=self.api_key if self.api_key is not None else os.environ.get("OPENAI_API_KEY"),
            timeout=self.timeout,
            deadline=self.deadline,
            max_retry_time=self.max_retry_time,
            max_retries=self.max_retries,
            concurrency=self.concurrency,
        )
        if y_list is not None and texts and self.calibration == "temperature":
            if len(texts) != len(y_list):
                raise DataError(f"X has {len(texts)} texts but y has {len(y_list)} labels; they must match")
            validate_labels(y_list, list(label_set.names))
            index = {n: i for i, n in enumerate(label_set.names)}
            self.calibrator_.fit(self.predict_scores(texts).logits, np.array([index[v] for v in y_list]))
        return self

    def _payload(self, text: str) -> tuple[str, dict[str, Any]]:
        if self.endpoint == "chat":
            messages = []
            if self.system_ is not None:
                messages.append({"role": "system", "content": self.system_})
            messages.append({"role": "user", "content": self.rendered_.head + text})
            return "/chat/completions", {
                "model": self.model,
                "messages": messages,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
        return "/completions", {
            "model": self.model,
            "prompt": self.rendered_.format(text),
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": self.top_logprobs,
        }

    def _score_one(self, text: str) -> tuple[np.ndarray, float, int]:
        path, payload = self._payload(text)
        return class_probabilities(top_entries(self.client_.post(path, payload)), self.answers_, exact=self.exact_)

    def close(self) -> None:
        """Close the HTTP connections (``fit`` opens them)."""
        client = getattr(self, "client_", None)
        if client is not None:
            client.close()

    def predict_scores(self, X: Any) -> RemoteScores:
        """Class logits (log-probability estimates), class mass, and the estimate given to absent classes."""
        if not hasattr(self, "client_"):
            raise NotFittedError("this RemoteClassifier is not fitted yet; call fit() (labels=... is enough)")
        texts = as_texts(X)
        k = len(self.classes_)
        if not texts:
            empty = np.zeros(0)
            return RemoteScores(np.zeros((0, k)), empty, empty, np.zeros(0, dtype=np.int64))
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures: Any = [pool.submit(self._score_one, t) for t in texts]
            if self.progress:
                from tqdm.auto import tqdm

                futures = tqdm(futures, desc="remote", unit="text")
            results = [f.result() for f in futures]
        finally:
            # On the first error (or Ctrl-C) the texts not yet sent are dropped instead of each being sent and
            # retried before the error reaches the caller.
            pool.shutdown(wait=True, cancel_futures=True)
        probs = np.stack([r[0] for r in results])
        missing = np.array([r[1] for r in results])
        return RemoteScores(
            logits=np.log(probs),
            class_mass=np.minimum(1.0, probs.sum(axis=1) - missing),
            missing_mass=missing,
            n_absent=np.array([r[2] for r in results], dtype=np.int64),
        )

    def decision_function(self, X: Any) -> np.ndarray:
        return self.calibrator_.transform(self.predict_scores(X).logits)

    def predict_proba(self, X: Any) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
