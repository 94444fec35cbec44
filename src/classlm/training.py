"""LoRA fine-tuning of the label-token head: the loop, evaluation during training, early stopping, checkpoints, resume.

The model keeps its architecture: LoRA adapters on the attention and MLP projections learn, the embeddings and the
LM head stay frozen, and the class logits are read as in zero-shot scoring. ``class_ce`` is the cross-entropy over
those k logits; ``vocab_ce`` is plain SFT on the class token (over the whole vocabulary; class mass goes to 1).

Everything a run needs to continue is in its checkpoint (adapter, best adapter so far and optimizer tensors as
safetensors, counters and RNG states as JSON/safetensors, no pickle), written to a temp folder and renamed into place,
so a run killed at any point resumes from the last checkpoint and, on CPU, ends with the weights of the uninterrupted
run (CUDA kernels are not all deterministic). The data order of a step is a pure function of (seed, step), so resuming
needs no sampler state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classlm.allocator import active as active_allocator
from classlm.checkpoints import (
    METRICS_FILE,
    load_trainable_state,
    read_checkpoint,
    rng_states,
    start_run,
    trainable_state,
    write_checkpoint,
)
from classlm.checkpoints import read_metrics as read_metrics  # re-exported: callers have imported it from here
from classlm.config import STOP_METRICS, TrainConfig, auto_epochs, train_token_budget
from classlm.distributed import current as current_world
from classlm.errors import ConfigError
from classlm.kernels import fused_backward_status, lean_training
from classlm.machine import peak_rss_mib
from classlm.methods.base import Method
from classlm.metrics import classification_metrics, softmax
from classlm.multilabel import multilabel_eval
from classlm.objectives import ClassBias, class_weight_vector, distill_loss, lr_factor, start_offsets
from classlm.progress import progress_bar
from classlm.scoring import length_sorted_batches
from classlm.thresholds import sigmoid

log = logging.getLogger(__name__)

# callback(event, info): events "backward" (after each micro-batch's backward) and "step" (after each optimiser step).
Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainState:
    """Counters that a checkpoint carries besides tensors."""

    step: int = 0
    examples_seen: int = 0
    seconds: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0
    loss_count: int = 0
    # The dtype the backbone trained in and the micro-batch token budget it ran with: a resumed run continues with
    # both (None: a checkpoint from before they were recorded).
    dtype: str | None = None
    micro_batch_tokens: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains the parameters of ``model`` that require grad (LoRA adapters; for ``hidden_head`` also its head and
    unfrozen top blocks) through the method's ``train_logits``, on index labels ``y`` (columns of the method); with
    ``fit(..., soft=P)``, distilling a teacher's probabilities ``P`` (``y`` -1 where a row has no hard label)."""

    def __init__(
        self,
        method: Method,
        model: Any,
        config: TrainConfig,
        *,
        run_dir: str | Path | None = None,
        progress: bool = True,
        callback: Callback | None = None,
        eval_batch_size: int = 64,
        eval_batch_tokens: int | None = None,
    ) -> None:
        self.method = method
        self.model = model
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.callback = callback
        self.eval_batch_size = eval_batch_size
        self.eval_batch_tokens = eval_batch_tokens
        self.names = list(method.labels.names)
        self.device = next(model.parameters()).device
        # The frozen weights' dtype is the one the forward runs in (LoRA parameters stay float32 whatever it is).
        frozen = [p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
        self.dtype = str(frozen[0] if frozen else next(model.parameters()).dtype).removeprefix("torch.")
        self.micro_tokens = train_token_budget(config.micro_batch_tokens, self.device.type, self.dtype)
        self._best: dict[str, torch.Tensor] | None = None
        self.soft: torch.Tensor | None = None  # fit's teacher probabilities, when distilling
        # One rank of one, or a rank among the processes `accelerate launch` / `torchrun` started (joined here).
        self.world = current_world()

    # -- the loss ---------------------------------------------------------------------------------------------------
    def loss_sum(
        self, rows: list[list[int]], y: torch.Tensor, weights: torch.Tensor | None, soft: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sum over the rows of the (class-weighted) loss; divided by the whole batch's total weight, micro-batches
        add up to the batch's weighted mean exactly. ``soft``: a teacher's probabilities per row (distillation;
        ``y`` is then -1 where a row has no hard label)."""
        vocab = self.config.loss == "vocab_ce"
        # On CUDA the forward runs under bf16 autocast over fp32 weights; the logits come back in float32.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            z, full = self.method.train_logits(rows, full_vocab=vocab, reuse_prefix=self.config.reuse_prefix)
        if soft is not None:
            return distill_loss(z.float(), y, soft, self.config.distill_alpha, self.config.distill_temperature).sum()
        if y.ndim == 2:  # multi-label: a yes/no per class, with the per-class offset learned alongside LoRA
            per_row = torch.nn.functional.binary_cross_entropy_with_logits(
                z + self.model.class_bias,
                y.float(),
                pos_weight=None if weights is None else weights.to(self.device),
                reduction="none",
            ).mean(dim=1)
            return per_row.sum()
        if vocab:
            assert full is not None
            targets = torch.as_tensor(self.method.class_token_ids(), device=self.device)[y]
            per_row = torch.nn.functional.cross_entropy(full, targets, reduction="none")
        else:
            per_row = torch.nn.functional.cross_entropy(z, y, reduction="none")
        if weights is None:
            return per_row.sum()
        return (per_row * weights.to(self.device)[y]).sum()

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(
        self,
        texts: Sequence[str],
        y: np.ndarray,
        eval_texts: Sequence[str] | None = None,
        eval_y: np.ndarray | None = None,
        *,
        resume: bool = False,
        soft: np.ndarray | None = None,
    ) -> TrainState:
        cfg = self.config
        self.soft = None if soft is None else torch.as_tensor(np.asarray(soft, dtype=np.float32))
        if len(texts) == 0:
            raise ConfigError("no training examples")
        rows = self.method.training_rows(texts)
        n = len(rows)
        per_epoch = math.ceil(n / cfg.batch_size)
        epochs = cfg.epochs if cfg.epochs is not None else auto_epochs(n, len(self.names))
        total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(epochs * per_epoch))
        warmup = int(cfg.warmup_ratio * total)
        if eval_texts is not None and cfg.eval_every > total:
            log.warning(
                "eval_every=%d is more than the %d training step(s): the eval set is scored only before and after "
                "training%s; lower eval_every to see the curve",
                cfg.eval_every,
                total,
                "" if cfg.checkpoint_every else ", and no checkpoint is written",
            )
        weights = class_weight_vector(cfg, y, self.names)
        evaluation = self._eval_rows(eval_texts, eval_y)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                "nothing to train: no parameter requires grad (no LoRA adapters, head or unfrozen blocks)"
            )
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if resume:  # the checkpoint also restores the RNG state that LoRA dropout draws from
            state = self._resume(optimizer)
        else:
            state = TrainState(dtype=self.dtype, micro_batch_tokens=self.micro_tokens)
            if self.run_dir is not None:
                self._start_fresh()
            torch.manual_seed(cfg.seed + self.world.rank)  # LoRA dropout: each rank its own masks
        self.world.broadcast_(params)  # every rank starts from rank 0's (a warm-started head may differ by a bit)
        self.method.prepare_training()  # e.g. the one-time prefix-reuse check: the same fresh or resumed
        self.model.train()
        if evaluation is not None and not resume and cfg.eval_every:
            # Step 0: the untrained model (LoRA's B matrices start at zero), where the curves and class mass start.
            self._evaluate(state, *evaluation, 0.0)
        bar = progress_bar(
            total=total,
            initial=state.step,
            desc="training",
            unit="step",
            disable=not (self.progress and self.world.main),
        )
        with lean_training(self.model, total):  # the whole run's steps: a resumed run fuses as it did at first
            self._loop(state, rows, y, weights, params, optimizer, total, warmup, per_epoch, evaluation, bar)
        bar.close()
        self.model.eval()
        if self._best is not None:
            load_trainable_state(self.model, self._best)
        return state

    def _loop(
        self,
        state: TrainState,
        rows: list[list[int]],
        y: np.ndarray,
        weights: torch.Tensor | None,
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        total: int,
        warmup: int,
        per_epoch: int,
        evaluation: tuple[Sequence[str], np.ndarray] | None,
        bar: Any,
    ) -> None:
        cfg = self.config
        n = len(rows)
        checkpoint_every = cfg.checkpoint_every or cfg.eval_every or 50
        while state.step < total and not state.stopped_early:
            t0 = time.perf_counter()
            idx = self._batch_indices(state.step, n, per_epoch)
            step_loss = self._backward(rows, y, idx, weights, state.step)
            # Several processes: each has the gradient of its rows; their sum is the whole batch's.
            (step_loss,) = self.world.sum_gradients(params, step_loss)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = cfg.lr * lr_factor(state.step, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.examples_seen += len(idx)
            state.loss_sum += step_loss
            state.loss_count += 1
            state.seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if self.callback:
                self.callback("step", {"step": state.step, "loss": step_loss})
            last = state.step == total
            if evaluation is not None and (last or (cfg.eval_every and state.step % cfg.eval_every == 0)):
                row = self._evaluate(state, *evaluation, lr)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['eval']['accuracy']:.3f}")
            if self.run_dir is not None and not last and state.step % checkpoint_every == 0:
                self._checkpoint(state, optimizer)

    def _eval_rows(self, texts: Sequence[str] | None, y: np.ndarray | None) -> tuple[Sequence[str], np.ndarray] | None:
        """The eval set, a seeded sample of ``eval_limit`` rows when it is larger."""
        if texts is None or y is None:
            return None
        limit = self.config.eval_limit
        if limit is not None and len(texts) > limit:
            keep = np.sort(np.random.default_rng(self.config.seed).permutation(len(texts))[:limit])
            return [texts[i] for i in keep], y[keep]
        return texts, y

    def _backward(
        self, rows: list[list[int]], y: np.ndarray, idx: np.ndarray, weights: torch.Tensor | None, step: int
    ) -> float:
        """Gradients of one step's (class-weighted) mean loss over the rows ``idx``, micro-batch by micro-batch;
        returns that loss. Among several processes, of this rank's share of the rows (still divided by the whole
        batch's weight, so the ranks' sums add up to the one-process gradient)."""
        # Multi-label weights are per class inside each row's loss (BCE's pos_weight): every row weighs 1.
        total_w = float(len(idx)) if weights is None or y.ndim == 2 else float(weights[y[idx]].sum())
        step_loss = 0.0
        for k, chunk in enumerate(self._micro_batches(rows, self.world.shard(idx))):
            targets = None if self.soft is None else self.soft[chunk].to(self.device)
            loss = self.loss_sum(
                [rows[i] for i in chunk], torch.as_tensor(y[chunk], device=self.device), weights, targets
            )
            (loss / total_w).backward()
            step_loss += float(loss.detach()) / total_w
            if self.callback:
                self.callback("backward", {"step": step, "micro_batch": k})
        return step_loss

    def _micro_batches(self, rows: list[list[int]], idx: np.ndarray) -> list[np.ndarray]:
        """``idx`` sorted longest first (similar lengths in a micro-batch waste less compute on padding) and cut into
        runs of at most ``batch_size / grad_accum`` rows and the token budget's padded tokens: what a backward pass
        keeps grows with them (~0.65 MB a token in bf16, ~1.3 MB in float32 for SmolLM2-135M), so long texts get
        fewer rows per pass. The step's gradient is the same either way."""
        lengths = [self.method.training_tokens(rows[i], self.config.reuse_prefix) for i in idx]
        most = self.config.batch_size // self.config.grad_accum
        return [idx[b] for b in length_sorted_batches(lengths, most, self.micro_tokens)]

    def _batch_indices(self, step: int, n: int, per_epoch: int) -> np.ndarray:
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(n)
        return order[within * self.config.batch_size : (within + 1) * self.config.batch_size]

    def _evaluate(self, state: TrainState, texts: Sequence[str], y: np.ndarray, lr: float) -> dict[str, Any]:
        self.model.eval()
        logits, class_mass = self._score_shared(texts)
        self.model.train()
        if y.ndim == 2:
            bias = self.model.class_bias.detach().float().cpu().numpy()
            ev = multilabel_eval(y, sigmoid(logits + bias), self.names)
        else:
            m = classification_metrics(y, softmax(logits), self.names)
            keys = ("accuracy", "macro_f1", "nll", "ece", "calibration_ratio_min", "calibration_ratio_max")
            ev = {k: m[k] for k in keys}
            ev["calibration_ratio"] = {c: v["calibration_ratio"] for c, v in m["per_class"].items()}
        ev["class_mass"] = float(np.mean(class_mass)) if class_mass is not None else None
        row = {
            "step": state.step,
            "examples_seen": state.examples_seen,
            "train_loss": state.loss_sum / max(1, state.loss_count),
            "lr": lr,
            "seconds": round(state.seconds, 3),
            "eval": ev,
        }
        state.loss_sum, state.loss_count = 0.0, 0
        state.history.append(row)
        if self.run_dir is not None and self.world.main:
            with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, allow_nan=False) + "\n")
        value = float(ev[self.config.early_stopping])
        larger = STOP_METRICS[self.config.early_stopping]
        if state.best_value is None or (value > state.best_value if larger else value < state.best_value):
            state.best_value, state.best_step, state.bad_evals = value, state.step, 0
            self._best = trainable_state(self.model)  # checkpoints carry it, so a resumed run keeps it
        else:
            state.bad_evals += 1
            if self.config.patience is not None and state.bad_evals >= self.config.patience:
                state.stopped_early = True
        return row

    def _score_shared(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """The eval texts' class logits and class mass; among several processes each scores its span and all get
        the whole, so every rank computes the same metrics and early-stopping decision."""
        part = list(texts)[self.world.span(len(texts))]
        kw: dict[str, Any] = {"batch_size": self.eval_batch_size, "batch_tokens": self.eval_batch_tokens}
        scores = self.method.score(part, class_mass=True, **kw) if part else None
        shares = [f for f in self.world.gather(None if scores is None else (scores.logits, scores.class_mass)) if f]
        mass = [f[1] for f in shares if f[1] is not None]
        return np.concatenate([f[0] for f in shares]), np.concatenate(mass) if len(mass) == len(shares) else None

    # -- checkpoints: classlm.checkpoints does the I/O; these stay methods, the kill-and-resume tests wrap them ----
    def _start_fresh(self) -> None:
        run_dir = self.run_dir
        assert run_dir is not None
        self.world.main_first(lambda: start_run(run_dir))

    def _checkpoint(self, state: TrainState, optimizer: torch.optim.Optimizer) -> None:
        assert self.run_dir is not None
        counters = {k: v for k, v in vars(state).items() if k != "history"}
        rng = self.world.gather(rng_states())  # every rank's dropout generator, for an exact resume on each
        if self.world.main:
            write_checkpoint(self.run_dir, counters, self.model, self._best, optimizer, rng=rng)

    def _resume(self, optimizer: torch.optim.Optimizer) -> TrainState:
        if self.run_dir is None:
            raise ConfigError("resume needs the run folder of the interrupted run")
        counters, history, self._best = read_checkpoint(
            self.run_dir, self.model, optimizer, rank=self.world.rank, tidy=self.world.main
        )
        state = TrainState(**counters, history=history)
        # Runs checkpointed before the dtype was recorded trained on CPU in float32 (auto was float32 for training).
        trained = state.dtype or ("float32" if self.device.type == "cpu" else self.dtype)
        if trained != self.dtype:
            raise ConfigError(
                f"{self.run_dir} trained in {trained} and would resume in {self.dtype}: a run continues exactly "
                f"only in the dtype it started in; resume with dtype={trained!r} (--dtype {trained}), or start a "
                "new run"
            )
        state.dtype = trained
        # The budget the run started with (a default may change between versions; the micro-batches must not).
        if self.config.micro_batch_tokens is None and state.micro_batch_tokens is not None:
            self.micro_tokens = state.micro_batch_tokens
        state.micro_batch_tokens = self.micro_tokens
        return state


def train_method(
    method: Method,
    config: TrainConfig,
    train: tuple[Sequence[str], np.ndarray] | tuple[Sequence[str], np.ndarray, np.ndarray],
    evaluation: tuple[Sequence[str], np.ndarray] | None,
    *,
    resume: bool = False,
    **trainer: Any,
) -> dict[str, Any]:
    """Train ``method``'s trainable module on ``train`` (texts, column indices), evaluating on ``evaluation``;
    ``trainer``: the Trainer's options. Returns the training summary the artifact records."""
    # On resume too: a checkpoint restores a head's weights; this deterministic call, its feature scaling (buffers).
    y_warm = train[1] if len(train) < 3 else np.where(train[1] >= 0, train[1], train[2].argmax(1))
    method.warm_start(train[0], y_warm, config.seed)  # a row only the teacher labels: its most probable class
    module = method.trainable_module()
    if train[1].ndim == 2:
        module = ClassBias(module, start_offsets(method, train[0], train[1], trainer.get("eval_batch_size", 64)))
    state = Trainer(method, module, config, **trainer).fit(
        train[0],
        train[1],
        *(evaluation or (None, None)),
        resume=resume,
        soft=train[2] if len(train) > 2 else None,  # (texts, y, teacher probabilities)
    )
    return {
        "n_train": len(train[0]),
        "steps": state.step,
        "examples_seen": state.examples_seen,
        "epochs": round(state.examples_seen / len(train[0]), 2),  # passes made (epochs=None: by rows per class)
        "seconds": round(state.seconds, 2),
        "examples_per_second": state.examples_seen / state.seconds if state.seconds else None,
        "best_step": state.best_step,
        "best_" + config.early_stopping: state.best_value,
        "stopped_early": state.stopped_early,
        "trainable_parameters": int(sum(p.numel() for p in module.parameters() if p.requires_grad)),
        "dtype": state.dtype,
        # The process's peak so far: loading, training and its evaluations (and whatever ran before in it).
        "peak_rss_mib": peak_rss_mib(),
        "allocator": active_allocator(),  # glibc's malloc trains slower and fatter on CPU: see classlm.allocator
        "kernels": fused_backward_status(),  # the lean backward math compiled, or eager and why (classlm.kernels)
        "history": state.history,
        **({"class_bias": module.class_bias.detach().float().cpu().tolist()} if train[1].ndim == 2 else {}),
    }
