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
and 5xx answers, timeouts and dropped connections; at most ``concurrency`` run at once.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np

from classlm.calibration import TemperatureScaler
from classlm.config import CalibrationConfig
from classlm.data import as_texts, validate_labels
from classlm.errors import ConfigError, DataError, NotFittedError, RemoteError
from classlm.labels import LabelSet, resolve_class_tokens
from classlm.metrics import softmax
from classlm.prompts import PromptTemplate, RenderedPrompt

ENDPOINTS = ("completions", "chat")
METHODS = ("label_tokens", "letters")
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0
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
                return [(str(e["token"]), float(e["logprob"])) for e in top if "token" in e and "logprob" in e]
        legacy = logprobs.get("top_logprobs")
        if isinstance(legacy, list) and legacy and isinstance(legacy[0], Mapping) and legacy[0]:
            return [(str(t), float(v)) for t, v in legacy[0].items()]
    raise RemoteError(
        "the server answered without logprobs for the next token, which classification needs. Use a server that "
        "returns them (vLLM, llama.cpp's llama-server, OpenAI-compatible APIs with logprobs enabled), or try "
        "--endpoint chat / completions, whichever the server supports with logprobs"
    )


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


class OpenAIClient:
    """A small, thread-safe client for ``/v1/completions`` and ``/v1/chat/completions`` with retries."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        concurrency: int = 4,
    ) -> None:
        import httpx

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self._count_lock = threading.Lock()
        self.concurrency = concurrency
        self.retries = 0  # retried attempts so far, for reporting

    def close(self) -> None:
        self._http.close()

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            # Seconds or an HTTP date, honoured up to a minute: a server that asks for longer is better reported
            # (after the retries) than waited on.
            seconds: float | None
            try:
                seconds = float(retry_after)
            except ValueError:
                try:
                    seconds = (parsedate_to_datetime(retry_after) - datetime.now(timezone.utc)).total_seconds()
                except (TypeError, ValueError):
                    seconds = None
            if seconds is not None:
                return min(MAX_RETRY_AFTER, max(0.0, seconds))
        # Full jitter: concurrent clients that failed together do not retry together.
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        import httpx

        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            with self._slots:
                try:
                    response = self._http.post(url, json=payload)
                except httpx.TimeoutException:
                    last = f"timed out after {self._http.timeout.read}s"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        try:
                            return response.json()
                        except ValueError:
                            raise RemoteError(f"{url} answered 200 with a body that is not JSON") from None
                    detail = response.text[:300].strip()
                    if response.status_code not in RETRY_STATUS:
                        raise RemoteError(f"{url} answered {response.status_code}: {detail}")
                    last = f"{response.status_code}: {detail}"
                    retry_after = response.headers.get("retry-after")
            if attempt < self.max_retries:
                with self._count_lock:
                    self.retries += 1
                time.sleep(self._wait(attempt, retry_after))
        raise RemoteError(f"{url}: gave up after {self.max_retries + 1} attempts; last error: {last}")


class RemoteClassifier:
    """Zero-shot ``label_tokens`` / ``letters`` classification with a model behind an OpenAI-compatible API.

    The scikit-learn estimator contract: ``__init__`` stores, ``fit`` resolves the labels (and, given labelled
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
    timeout, max_retries, concurrency:
        Per-request timeout (s), retries on 429/5xx/timeouts, requests in flight at once.
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
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.calibration = calibration
        self.progress = progress

    def fit(self, X: Any = None, y: Any = None) -> RemoteClassifier:
        """Resolve labels and prompt; with labelled ``(X, y)`` fit the temperature on them. Returns ``self``."""
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS} for a remote model, got {self.method!r}")
        if self.endpoint not in ENDPOINTS:
            raise ConfigError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")
        if not isinstance(self.top_logprobs, int) or not 1 <= self.top_logprobs <= 100:
            raise ConfigError(f"top_logprobs must be an integer in 1..100, got {self.top_logprobs!r}")
        for name in ("max_retries",):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
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
