"""A classifier served by vLLM: the ``classlm export --seq-cls`` folder behind ``vllm serve FOLDER --runner pooling``,
asked through vLLM's ``/classify`` endpoint.

The export's softmax already is the calibrated probability (the temperature is folded into its score rows), so the
client's work is the prompt: each text goes in as token ids, the export's ``head_ids + text ids + tail_ids``
(``classlm_prompt.json``), tokenised here with the export's own tokenizer, exactly as classlm builds it, never
re-rendered by the server. The classes and their order come from the export's ``id2label``.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from classlm.calibrators import TemperatureScaler
from classlm.errors import ConfigError, RemoteError
from classlm.estimator import CalibratedClassifier, NotFittedError
from classlm.scores import Scores

PROMPT_FILE = "classlm_prompt.json"  # as classlm.export writes it (not imported: that module needs torch)


class VLLMClassifier(CalibratedClassifier):
    """``export_dir``: the ``--seq-cls`` export that vLLM serves at ``base_url`` (read here for the prompt, the
    tokenizer and the classes). ``batch_size`` texts go in one ``/classify`` request, ``concurrency`` requests at
    once; ``model``: the name the server knows it by (default: whatever it serves)."""

    def __init__(
        self,
        base_url: str,
        export_dir: str | Path,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        concurrency: int = 4,
        batch_size: int = 32,
    ) -> None:
        self.base_url = base_url
        self.export_dir = export_dir
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.concurrency = concurrency
        self.batch_size = batch_size

    def fit(self, X: Any = None, y: Any = None) -> VLLMClassifier:
        """Read the export (prompt, tokenizer, classes) and open the client; nothing is learned. Returns ``self``."""
        from transformers import AutoTokenizer

        from classlm.backends.client import OpenAIClient

        folder = Path(self.export_dir)
        try:
            prompt = json.loads((folder / PROMPT_FILE).read_text())
            config = json.loads((folder / "config.json").read_text())
            self.head_ids_, self.tail_ids_ = list(prompt["head_ids"]), list(prompt["tail_ids"])
            id2label = config["id2label"]
            names = [id2label[str(i)] for i in range(len(id2label))]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"{folder} is not a `classlm export --seq-cls` folder ({type(exc).__name__}: {exc}); the vllm backend "
                "reads the prompt, tokenizer and classes from the export that the server serves"
            ) from exc
        if len(prompt.get("fields") or ["text"]) != 1:
            raise ConfigError(
                f"{folder} was exported from a classifier of several text fields {prompt['fields']}; the vllm backend "
                "sends one text per prompt: serve the run folder with `classlm serve` instead"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self.text_tokens_ = prompt.get("text_tokens")  # exports before it was recorded: not cut here
        self.tokenizer_ = AutoTokenizer.from_pretrained(str(folder))
        self.classes_ = np.array(names, dtype=object)
        self.calibrator_ = TemperatureScaler()  # T = 1: the export's logits already are the calibrated ones
        # vLLM serves /classify beside /v1, not under it.
        self.client_ = OpenAIClient(
            self.base_url, api_key=self.api_key, timeout=self.timeout, concurrency=self.concurrency, prefix=""
        )
        return self

    def check_fitted(self) -> None:
        if not hasattr(self, "client_"):
            raise NotFittedError("VLLMClassifier reads its export in fit(): call fit() first")

    def encode(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Each text's prompt as token ids, as classlm builds it, and whether the text was cut to fit."""
        ids = self.tokenizer_([t.strip() for t in texts], add_special_tokens=False).input_ids
        limit = self.text_tokens_ if isinstance(self.text_tokens_, int) else None
        cut = np.array([limit is not None and len(t) > limit for t in ids], dtype=bool)
        return [[*self.head_ids_, *t[:limit], *self.tail_ids_] for t in ids], cut

    def predict_scores(self, X: Any, *, class_mass: bool = False) -> Scores:
        self.check_fitted()
        texts = self.read_inputs(X)
        prompts, cut = self.encode(texts)
        batches = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            probs = [p for part in pool.map(self._classify, batches) for p in part]
        k = len(self.classes_)
        proba = np.array(probs, dtype=np.float64).reshape(len(texts), k)
        # log p: the identity calibrator's softmax gives p back (rows already sum to 1).
        return Scores(logits=np.log(np.maximum(proba, 1e-300)), truncated=cut)

    def _classify(self, prompts: list[list[int]]) -> list[list[float]]:
        payload: dict[str, Any] = {"input": prompts, "add_special_tokens": False}
        if self.model is not None:
            payload["model"] = self.model
        answer = self.client_.post("/classify", payload)
        k = len(self.classes_)
        try:
            rows = sorted(answer["data"], key=lambda d: d["index"])
            probs = [[float(p) for p in row["probs"]] for row in rows]
        except (TypeError, KeyError, ValueError) as exc:
            raise RemoteError(f"/classify answered without data[].probs ({str(answer)[:200]})") from exc
        bad = len(probs) != len(prompts) or any(
            len(p) != k or not all(math.isfinite(v) and v >= 0 for v in p) or abs(sum(p) - 1) > 1e-3 for p in probs
        )
        if bad:
            raise RemoteError(
                f"/classify answered {len(probs)} rows for {len(prompts)} prompts, not each {k} probabilities summing "
                f"to 1 (first: {probs[:1]}); is the server serving this export ({self.export_dir})?"
            )
        return probs
