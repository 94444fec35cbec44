"""Small classifier heads on fixed feature vectors (the LM's last hidden state, a sentence embedding).

Features are standardised with the training set's mean and standard deviation first: an LM's hidden state has a
few dimensions hundreds of times larger than the rest (massive activations), which would otherwise dominate both
the L2 penalty and the optimiser's steps. The mean and standard deviation are buffers of the head, so a head is one
``torch.nn.Module`` whose ``state_dict`` is the whole learned state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classlm.config import check_positive
from classlm.errors import ConfigError

HEAD_KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadOptions:
    """A small classifier on fixed features (standardised first).

    ``head="linear"``: multinomial logistic regression fitted by L-BFGS to convergence, with an L2 penalty ``l2``
    on the weights. ``head="mlp"``: one hidden layer of ``hidden`` units (GELU, dropout) trained by AdamW for
    ``epochs`` passes with learning rate ``lr``.
    """

    head: str = "linear"
    hidden: int = 256
    l2: float = 1e-3
    epochs: int = 100
    lr: float = 1e-3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"head must be one of {HEAD_KINDS}, got {self.head!r}")
        check_positive(self, "hidden", "epochs", integer=True)
        check_positive(self, "lr")
        if not isinstance(self.l2, (int, float)) or self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")


class Head(torch.nn.Module):
    """``(x - mean) / std`` → linear, or → linear → GELU → dropout → linear."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, k: int, kind: str = "linear", hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if kind == "linear":
            self.net: torch.nn.Module = torch.nn.Linear(dim, k)
        else:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, k)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)


def build_head(dim: int, k: int, options: HeadOptions) -> Head:
    return Head(dim, k, options.head, options.hidden, options.dropout)


def fit_head(
    features: np.ndarray | torch.Tensor,
    y: np.ndarray,
    k: int,
    options: HeadOptions,
    *,
    seed: int = 0,
    class_weights: np.ndarray | None = None,
    soft: bool = False,
) -> Head:
    """Train a head on ``features`` ``(n, d)`` with labels ``y`` (column indices ``0..k-1``, or a multi-label ``(n, k)``
    0/1 indicator matrix, or with ``soft`` a ``(n, k)`` matrix of target probabilities: distillation, the
    cross-entropy to a teacher's distribution); returns it in eval mode.

    Linear: multinomial logistic regression, mean cross-entropy + ``l2/2 · ||W||²``, L-BFGS to convergence
    (deterministic, no learning rate to tune). MLP: AdamW, mini-batches of 64, ``epochs`` passes, seeded.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32) if isinstance(features, np.ndarray) else features)
    x = x.detach().float().cpu()
    # Multi-label: an indicator matrix, one yes/no (BCE) per class; else class indices (cross-entropy).
    multi = np.ndim(y) == 2 and not soft
    # CrossEntropyLoss takes class probabilities as targets too: soft targets train like hard ones.
    target = torch.as_tensor(np.asarray(y), dtype=torch.float32 if multi or soft else torch.long)
    if x.ndim != 2 or len(x) != len(target):
        raise ValueError(f"features must be (n, d) with n = len(y) = {len(target)}, got {tuple(x.shape)}")
    # Seeded without touching the caller's global RNG (training draws LoRA dropout from it afterwards).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _fit(x, target, k, options, seed, class_weights, soft)


def _fit(
    x: torch.Tensor,
    target: torch.Tensor,
    k: int,
    options: HeadOptions,
    seed: int,
    class_weights: np.ndarray | None,
    soft: bool = False,
) -> Head:
    head = build_head(x.shape[1], k, options)
    head.mean.copy_(x.mean(0))
    # A constant feature would divide by zero; 1e-6 of the typical scale keeps it inert instead.
    std = x.std(0, unbiased=False)
    head.std.copy_(torch.clamp(std, min=1e-6 * float(std.mean()) + 1e-12))
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    # With an indicator matrix, the weights are BCE's pos_weight; the linear head is then a logistic regression per
    # class on the same standardised features (the joint loss is their sum).
    loss_fn: Any = (
        torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        if target.ndim == 2 and not soft
        else torch.nn.CrossEntropyLoss(weight=weight)
    )
    if options.head == "linear":
        linear = head.net
        assert isinstance(linear, torch.nn.Linear)
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        opt = torch.optim.LBFGS(
            linear.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(head(x), target) + 0.5 * options.l2 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    else:
        gen = torch.Generator().manual_seed(seed)
        opt2 = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=options.l2)
        head.train()
        for _ in range(options.epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), 64):
                idx = order[start : start + 64]
                opt2.zero_grad()
                loss_fn(head(x[idx]), target[idx]).backward()
                opt2.step()
    return head.eval()


def head_logits(head: Head, features: np.ndarray | torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        x = torch.as_tensor(features).float().to(head.mean.device)
        return head(x).float().cpu().numpy()


def head_state(head: Head, prefix: str = "head.") -> dict[str, torch.Tensor]:
    return {prefix + n: t.detach().cpu().contiguous() for n, t in head.state_dict().items()}


def load_head_state(head: Head, tensors: dict[str, Any], prefix: str = "head.") -> None:
    own = {n[len(prefix) :]: torch.as_tensor(t) for n, t in tensors.items() if n.startswith(prefix)}
    head.load_state_dict(own, strict=True)
