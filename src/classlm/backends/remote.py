"""``RemoteClassifier``: zero-shot classification with a model behind an OpenAI-compatible API, as a scikit-learn
estimator. How the top-k logprobs become class probabilities, and the HTTP client, are in
:mod:`classlm.backends.openai` and :mod:`classlm.backends.client`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from classlm.backends.client import OpenAIClient
from classlm.backends.openai import ENDPOINTS, METHODS, RemoteScores, class_probabilities, top_entries
from classlm.calibrators import make_calibrator
from classlm.config import CalibrationConfig
from classlm.data import as_texts, validate_labels
from classlm.errors import ConfigError, DataError
from classlm.estimator import CalibratedClassifier, NotFittedError, resolve_classes
from classlm.labels import LabelSet, resolve_class_tokens
from classlm.prompts import PromptTemplate, RenderedPrompt


class RemoteClassifier(CalibratedClassifier):
    """Zero-shot ``label_tokens`` / ``letters`` classification with a model behind an OpenAI-compatible API.

    A scikit-learn estimator: ``__init__`` only stores its arguments (so ``clone``, ``get_params`` and
    ``set_params`` work), ``fit`` validates them, resolves the labels, opens the HTTP client (and, given labelled
    ``(X, y)``, fits the temperature, or the chain ``calibration`` names, as LMClassifier does) and returns ``self``;
    ``classes_``, ``predict_proba``, ``predict``.

    Parameters
    ----------
    base_url:
        The server, e.g. ``http://127.0.0.1:8080`` (``/v1`` is added when missing).
    model:
        The model name the server knows.
    labels, instruction, prompt, method, calibration:
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
        spec, classes, y_list = resolve_classes(self.labels, y)
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
        self.classes_ = np.array(label_set.names, dtype=object) if classes is None else classes
        self.system_ = template.system
        self.rendered_ = rendered
        self.answers_ = answers
        self.calibrator_ = make_calibrator(self.calibration)
        self.calibration_info_: dict[str, Any] = {"fitted": False}
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
        y_idx = None
        if y_list is not None:
            if len(texts) != len(y_list):
                raise DataError(f"X has {len(texts)} texts but y has {len(y_list)} labels; they must match")
            validate_labels(y_list, list(label_set.names))
            index = {n: i for i, n in enumerate(label_set.names)}
            y_idx = np.array([index[v] for v in y_list])
        self.fit_calibration(texts, y_idx, "fit(X, y): zero-shot, all held out" if y_idx is not None else "fit(X)")
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

    def check_fitted(self) -> None:
        if not hasattr(self, "client_"):
            raise NotFittedError("this RemoteClassifier is not fitted yet; call fit() (labels=... is enough)")

    def predict_scores(self, X: Any, *, class_mass: bool = False) -> RemoteScores:
        """Class logits (log-probability estimates), class mass (always: the top-k gives it for free), and the
        estimate given to absent classes."""
        self.check_fitted()
        texts = as_texts(X)
        k = len(self.classes_)
        if not texts:
            empty = np.zeros(0)
            return RemoteScores(np.zeros((0, k)), empty, empty, np.zeros(0, dtype=np.int64))
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures: Any = [pool.submit(self._score_one, t) for t in texts]
            if self.progress:
                from classlm.progress import progress_bar

                futures = progress_bar(futures, desc="remote", unit="text")
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
