"""What a training step minimises, beyond the loss itself: class weights (single- and multi-label), the learning-rate
schedule, the per-class offset a multi-label head learns alongside LoRA, and the distillation loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from classlm.config import TrainConfig
from classlm.errors import ConfigError
from classlm.methods.base import Method

# Multi-label "balanced" weights: a class's positive rows weigh n_negative / n_positive, at most this (a label on 1
# row in 1,000 would otherwise weigh 999 and its few rows would dominate every step they are in).
MAX_POS_WEIGHT = 30.0


def class_weight_vector(config: TrainConfig, y: np.ndarray, names: Sequence[str]) -> torch.Tensor | None:
    """Per class: the weight of its rows (single-label), or of its positive rows in BCE (multi-label, ``y`` an
    indicator matrix)."""
    cw = config.class_weights
    if cw is None:
        return None
    if cw == "balanced" and y.ndim == 2:
        positives = y.sum(axis=0).astype(np.float64)
        w = np.clip((len(y) - positives) / np.maximum(positives, 1), 1.0, MAX_POS_WEIGHT)
    elif cw == "balanced":
        counts = np.bincount(y, minlength=len(names)).astype(np.float64)
        w = np.where(counts > 0, len(y) / (len(names) * np.maximum(counts, 1)), 0.0)
    else:
        assert isinstance(cw, dict)
        unknown = sorted(set(cw) - set(names))
        if unknown:
            raise ConfigError(f"class_weights names {unknown} are not classes; the classes are {list(names)}")
        w = np.array([float(cw.get(n, 1.0)) for n in names])
    return torch.as_tensor(w, dtype=torch.float32)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class ClassBias(torch.nn.Module):
    """The trained module plus a per-class offset added to the class logits (multi-label: each class's logit is a
    yes/no on its own, and the LM-head rows carry no notion of how often a class is on). Trained with LoRA and
    saved with the calibration, not in the adapter."""

    def __init__(self, model: Any, start: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.class_bias = torch.nn.Parameter(torch.as_tensor(start, dtype=torch.float32, device=_device(model)))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def start_offsets(method: Method, texts: Sequence[str], y: np.ndarray, batch_size: int) -> np.ndarray:
    """Offsets that start each class at its share of the training rows: ``logit(share) - mean logit`` over the
    first rows (the untrained class logits are vocabulary logits, far from a yes/no scale). A resumed run replaces
    them with its checkpoint's."""
    rows = list(texts[: min(len(texts), 64)])
    z = method.score(rows, batch_size=batch_size).logits.astype(np.float64)
    share = np.clip(y.mean(axis=0), 1e-3, 1 - 1e-3)
    return np.log(share / (1 - share)) - z.mean(axis=0)


def distill_loss(z: torch.Tensor, y: torch.Tensor, soft: torch.Tensor, alpha: float, t: float) -> torch.Tensor:
    """Per row: ``alpha * CE(z, y) + (1 - alpha) * t^2 * KL(p_t || q_t)`` where ``y >= 0`` (a hard label), the KL term
    alone where ``y < 0``; ``p_t`` is the teacher's ``soft`` softened by ``t`` and ``q_t = softmax(z / t)``. For a
    one-hot ``soft`` at ``t = 1`` every term is the cross-entropy (the KL of a one-hot is its CE)."""
    teacher = torch.softmax(torch.log(soft.clamp_min(1e-12)) / t, dim=-1) if t != 1 else soft
    kl = torch.nn.functional.kl_div(torch.log_softmax(z / t, dim=-1), teacher, reduction="none").sum(-1) * (t * t)
    ce = torch.nn.functional.cross_entropy(z, y.clamp_min(0), reduction="none")
    return torch.where(y >= 0, alpha * ce + (1 - alpha) * kl, kl)
