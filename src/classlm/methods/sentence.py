"""Methods on sentence embeddings (all-MiniLM-L6-v2 by default; any sentence-transformers model).

``embedding``: a logistic-regression or MLP head on the text's embedding (SetFit-like, without the contrastive
fine-tuning of the encoder). ``similarity``: cosine between the text's embedding and each class's description
embedding, times a scale; zero-shot, with only the temperature fitted on held-out data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classlm.config import DEFAULT_ENCODER, check_model_name, check_positive
from classlm.heads import HeadOptions
from classlm.methods.base import Method, ScoringRun, register
from classlm.scores import MethodInfo, Scores


@dataclass(frozen=True)
class EmbeddingOptions(HeadOptions):
    """``embedding``: a sentence-transformers encoder (a built-in alias, a local folder or a hub id) + a head."""

    encoder: str = DEFAULT_ENCODER
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "batch_size", integer=True)
        check_model_name(self, "encoder")


@dataclass(frozen=True)
class SimilarityOptions:
    """``similarity``: cosine between the text's and each class description's embedding, times ``scale``
    (the temperature fitted on held-out data refines it; ``scale`` only sets the zero-shot starting point)."""

    encoder: str = DEFAULT_ENCODER
    scale: float = 20.0
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_positive(self, "scale")
        check_positive(self, "batch_size", integer=True)
        check_model_name(self, "encoder")


class _SentenceMethod(Method):
    needs_lm = False

    def prepare(self, backbone: Any) -> None:
        from classlm.encoders import load_encoder

        self.encoder = load_encoder(self.options.encoder, self.torch_device())

    def embed(self, texts: Sequence[str], progress: bool | str = False) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=self.options.batch_size, progress=bool(progress))

    def base_identity(self) -> dict[str, Any]:
        return self.encoder.identity()


@register("embedding", options=EmbeddingOptions)
class EmbeddingMethod(_SentenceMethod):
    learns_from_data = True

    def prepare(self, backbone: Any) -> None:
        super().prepare(backbone)
        from classlm.heads import build_head

        self.head = build_head(self.encoder.dim, len(self.labels), self.options).eval()
        self.fitted = False

    def fit_data(
        self, texts: Sequence[str], y: np.ndarray, *, progress: bool = False, soft: np.ndarray | None = None
    ) -> dict[str, Any]:
        from classlm.heads import fit_head

        target = y if soft is None else soft  # a teacher's probabilities: the cross-entropy to them
        self.head = fit_head(self.embed(texts, progress), target, len(self.labels), self.options, soft=soft is not None)
        self.fitted = True
        return {"trainable_parameters": int(sum(p.numel() for p in self.head.parameters()))}

    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        from classlm.heads import head_logits

        return Scores(head_logits(self.head, self.embed(texts, run.progress)), truncated=self.encoder.overlong(texts))

    def info(self) -> MethodInfo:
        return MethodInfo(self.name, extra={"encoder": self.encoder.identity(), "options": self.options_dict()})

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from classlm.heads import head_state

        return (head_state(self.head), {}) if self.fitted else ({}, {})

    def load_state(self, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        from classlm.heads import load_head_state

        load_head_state(self.head, tensors)
        self.fitted = True


@register("similarity", options=SimilarityOptions)
class SimilarityMethod(_SentenceMethod):
    def prepare(self, backbone: Any) -> None:
        super().prepare(backbone)
        # A class without a description is described by its name.
        self.class_texts = [d or n for n, d in zip(self.labels.names, self.labels.descriptions)]
        self.class_embeddings = self.embed(self.class_texts)

    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        cosine = self.embed(texts, run.progress) @ self.class_embeddings.T  # embeddings are L2-normalised
        return Scores((self.options.scale * cosine).astype(np.float32), truncated=self.encoder.overlong(texts))

    def info(self) -> MethodInfo:
        return MethodInfo(
            self.name,
            extra={
                "encoder": self.encoder.identity(),
                "class_texts": list(self.class_texts),
                "options": self.options_dict(),
            },
        )
