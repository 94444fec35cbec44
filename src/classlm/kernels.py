"""Faster and leaner forms of the backbone's layers for LoRA: the adapter in the activation dtype, and (training only)
RMSNorm, the SiLU gate and the attention softmax with backward passes that keep only low-precision tensors.

Measured on the 2-core AMX CPU (SmolLM2-135M, LoRA r 16 on every projection, 16 ag_news rows of ~82 tokens after
the shared prefix, ``benchmarks/throughput.py --sections training`` has the end-to-end figures):

- peft's LoRA forward casts the layer input to the adapter's dtype (float32) and adds the update in float32, then
  rounds the output back: in bf16 that is three extra passes over every projection's input and output, and made a
  no-grad forward of a LoRA model 2.5x slower than the bare model. :func:`use_fast_lora` runs the adapter in the
  activation dtype (the float32 parameters are cast, they are tiny) and adds ``x A^T (s B)^T`` with one ``addmm``.
  In float32 that is peft's result up to summation order; in bf16 the update is rounded to bf16 before it is added
  (peft rounds once, after), a difference of bf16's own rounding (tested against peft in both).
- The autograd graph of the plain layers saved float32 copies that bf16 training does not need: RMSNorm's upcast
  input, the float32 attention probabilities beside their bf16 copy, and SiLU's output beside its input. One step
  saved 1.49 GB of tensors in bf16; these forms save 1.06 GB (and 2.10 GB instead of 2.35 in float32).
- Their backward math (elementwise, in float32) runs compiled by inductor into one loop per formula on CPU: in one
  process, alternating on the same 16 rows, a bf16 forward + backward took 1.73 s instead of 1.91 (1.10x; float32
  1.02x) on a 2-core EPYC; 1.05x over a whole bf16 run. Runs shorter than FUSED_MIN_STEPS and machines without a
  C++ compiler stay eager (:func:`fused_backward_status` says which and why).

The norm, gate and softmax forms compute the same forward values as the layers they replace, bit for bit, and their
gradients to within rounding (the tests compare both, eager and compiled). The LoRA form falls back to peft's own
forward for DoRA and other variants, LoRA biases, merged or disabled adapters and mixed-adapter batches.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def quiet_peft_deprecation() -> None:
    """peft's PeftModel reads ``model.is_gradient_checkpointing``, which transformers 5.2x deprecates with a
    FutureWarning on every get_peft_model / from_pretrained: peft's business, not the user's, so it stays off their
    console. Called at import and again where peft wraps a model: a filter added inside a caller's
    ``warnings.catch_warnings()`` block (this module first imported there) is gone when the block ends."""
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


quiet_peft_deprecation()
log = logging.getLogger(__name__)
# Norms and MLPs whose code is Llama's (transformers marks them "Copied from"): y = w * rmsnorm(x) computed in
# float32, and down(silu(gate(x)) * up(x)). Gemma's norm (1 + w) and fused gate_up MLPs (Phi-3) are not.
# Olmo2's norm multiplies by the weight before rounding: not on the list.
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "SmolLM3RMSNorm"})
GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "SmolLM3MLP"})


# -- LoRA ------------------------------------------------------------------------------------------------------------
@functools.cache  # built on first use: importing peft here would slow every import of the scoring path
def _fast_linear() -> type:
    from peft.tuners.lora.layer import Linear as base

    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or self.disable_adapters or self.merged or self.lora_variant or _has_lora_bias(self):
            # DoRA and other variants, LoRA biases, mixed batches, merged weights: peft's own forward
            return base.forward(self, x, *args, **kwargs)
        result = self.base_layer(x)
        shape = result.shape
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a = self.lora_A[name].weight.to(x.dtype)
            # The scaling goes on B (r x out), not on the (tokens x out) update: one pass fewer over the output.
            b = (self.lora_B[name].weight * self.scaling[name]).to(x.dtype)
            h = F.linear(self.lora_dropout[name](x), a)
            result = torch.addmm(result.reshape(-1, shape[-1]), h.reshape(-1, h.shape[-1]), b.t()).view(shape)
        return result

    cls = type("FastLinear", (base,), {"forward": forward, "__module__": __name__})
    globals()[cls.__name__] = cls  # importable by its name, so torch.save / multiprocessing can pickle a model
    return cls


def _has_lora_bias(layer: Any) -> bool:
    return any(getattr(b, "bias", None) is not None for b in layer.lora_B.values())


def use_fast_lora(model: Any) -> Any:
    """Switch ``model``'s peft LoRA linear layers in place to a subclass whose forward runs the adapter in the
    activation dtype (same state dict, same save and merge); returns ``model``."""
    fast = _fast_linear()
    for module in model.modules():
        if type(module) is fast.__base__:  # exactly peft's: quantised subclasses (bnb, …) keep their own forward
            module.__class__ = fast
    return model


# -- the backward passes' elementwise math, fused -------------------------------------------------------------------
# Eager torch runs each of these formulas as 6-10 passes over (tokens x width) tensors, each pass converting bf16 to
# float32 and back: the SiLU gate's backward took 11 ms per layer for 1,440 bf16 tokens on a 2-core EPYC, longer than
# the layer's matmuls. Compiled by inductor, each is one vectorised loop (0.8 ms) of the same float32 arithmetic (its
# sums may run in another order: a bf16 result can differ by a rounding step). Only this elementwise math is
# compiled: the matmuls stay on oneDNN (inductor's float32 GEMMs were slower there).
FUSED_ENV = "CLASSLM_FUSED_BACKWARD"  # "0": never compile; "1": always (on CPU); unset: runs of FUSED_MIN_STEPS or more
# Compiling costs ~15 s the first time on a machine (inductor's on-disk cache makes it ~3 s in later processes) and
# saves ~5% of a bf16 step: a short run (a demo, a quick try) would lose more than it gains.
FUSED_MIN_STEPS = 100
# error: why compiling failed, once it has (the process stays eager); on: inside a lean_training block that fuses;
# last: how the latest block ran, for the training summary ("compiled" once a compiled call has returned). One
# training run at a time per process: the state is the process's.
_fused_state: dict[str, Any] = {"error": None, "on": False, "last": "eager (no training run yet)"}
_compiled: dict[str, Any] = {}  # the compiled forms, by function name, made on first use


def _fused(fn: Any) -> Any:
    """``fn`` run as one compiled CPU kernel (dynamic shapes) within a :func:`lean_training` block that fuses, else
    eagerly (and on other devices); once compiling has failed (no C++ compiler, an unsupported platform), eagerly for
    the rest of the process, which is logged once. Sizes are symbolic but for 0 and 1: a micro-batch of one row
    compiles once more (flattening to 2-D does not avoid it: dynamo guards the view's base)."""

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        if not _fused_state["on"] or _fused_state["error"] is not None or args[0].device.type != "cpu":
            return fn(*args)
        compiled = _compiled.get(fn.__name__)
        if compiled is None:
            compiled = _compiled[fn.__name__] = torch.compile(fn, dynamic=True)
        try:
            out = compiled(*args)
        except Exception as err:  # noqa: BLE001 - only a compiling failure gets past the eager retry below
            out = fn(*args)  # a real error (out of memory, bad shapes) raises here again, as it would have eagerly
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            _fused_state["error"] = f"{type(err).__name__}: {first}"[:300]
            _fused_state["last"] = _failed()
            log.warning(
                "compiling the training kernels failed (%s); training goes on with the eager forms, which are "
                "slower. A C++ compiler (g++) makes them fast; %s=0 skips the attempt.",
                _fused_state["error"],
                FUSED_ENV,
            )
            return out
        _fused_state["last"] = "compiled"
        return out

    return call


def _failed() -> str:
    return f"eager (compiling failed: {_fused_state['error']})"


def fused_backward_mode(steps: int | None) -> tuple[bool, str]:
    """(compile the backward math?, how the run is described until a compiled call returns) for a run of ``steps``
    steps (None: not counted, as for a direct :func:`lean_training` block), by ``$CLASSLM_FUSED_BACKWARD``."""
    env = os.environ.get(FUSED_ENV, "").strip().lower()
    if _fused_state["error"] is not None:
        return False, _failed()
    if env in ("0", "false", "no", "off"):
        return False, f"eager (${FUSED_ENV}={env})"
    if env in ("1", "true", "yes", "on") or (steps is not None and steps >= FUSED_MIN_STEPS):
        return True, "eager (nothing ran compiled: no lean form on CPU)"
    if env:
        log.warning("$%s=%r: expected 0 or 1; going by the run's length", FUSED_ENV, env)
    if steps is None:
        return False, "eager (no step count given)"
    return False, f"eager (a run of fewer than {FUSED_MIN_STEPS} steps)"


def fused_backward_status() -> str:
    """How the lean forms' backward math ran in the latest :func:`lean_training` block: ``compiled`` or ``eager
    (why)``."""
    return str(_fused_state["last"])


@_fused
def _rms_norm_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    xhat = x.float() * rstd
    g = (grad * weight).float()
    return (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)


@_fused
def _silu_gate_grads(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g, gf = grad.float(), gate.float()
    s = torch.sigmoid(gf)
    return (g * up.float() * s * (1 + gf * (1 - s))).to(gate.dtype), (g * gf * s).to(up.dtype)


@_fused
def _softmax_grad(probs: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    p, g = probs.float(), grad.float()
    return (p * (g - (g * p).sum(-1, keepdim=True))).to(dtype)


# -- training-only forms ---------------------------------------------------------------------------------------------
class _RMSNorm(torch.autograd.Function):
    """Llama's RMSNorm (normalised in float32, rounded, times the weight); saves the input and 1/rms only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        dx = _rms_norm_grad(grad, x, weight, rstd)
        dw = None
        if ctx.needs_input_grad[1]:  # hidden_head's unfrozen top blocks train their norms
            xhat = x.float() * rstd
            dw = (grad * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return dx, dw, None


class _SiluGate(torch.autograd.Function):
    """``silu(gate) * up``, saving gate and up only (silu is recomputed in backward)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        return _silu_gate_grads(grad, gate, up)


class _SoftmaxTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        ctx.save_for_backward(probs)
        ctx.scores_dtype = scores.dtype
        return probs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (probs,) = ctx.saved_tensors
        return _softmax_grad(probs, grad, ctx.scores_dtype), None


def softmax_to(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``softmax(scores)`` computed in float32 and returned in ``dtype``; with gradients it saves only the ``dtype``
    probabilities (autograd's own pair of ops keeps the float32 ones too)."""
    if torch.is_grad_enabled() and scores.requires_grad:
        return _SoftmaxTo.apply(scores, dtype)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def _norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_SiluGate.apply(self.gate_proj(x), self.up_proj(x)))


def _lean_form(module: Any) -> Any:
    name = type(module).__name__
    if name in RMS_NORMS and hasattr(module, "variance_epsilon"):
        return _norm_forward
    act = getattr(module, "act_fn", None)
    # transformers' own SiLU module (hub-kernel capable) or torch's: both are F.silu.
    if name in GATED_MLPS and (isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return _mlp_forward
    return None


@contextlib.contextmanager
def lean_training(model: Any, steps: int | None = None) -> Iterator[int]:
    """Within the block, ``model``'s Llama-style norms and gated MLPs run in their lean-backward forms (the same
    forward values), their backward math compiled for a run of ``steps`` steps as :func:`fused_backward_mode`
    decides; yields how many modules were switched. Restored on exit, also on errors."""
    switched: list[tuple[Any, Any, Any]] = []  # (module, its instance forward before: a hook's or None, ours)
    was_on = _fused_state["on"]
    _fused_state["on"], _fused_state["last"] = fused_backward_mode(steps)
    try:
        for module in model.modules():
            form = _lean_form(module)
            if form is not None:
                lean = form.__get__(module)
                switched.append((module, vars(module).get("forward"), lean))
                module.forward = lean
        yield len(switched)
    finally:
        _fused_state["on"] = was_on
        for module, own, lean in switched:
            # Someone else may have swapped the forward within the block (a kernelized transformers model does on
            # every train()/eval()): theirs stays; restoring ours over it, or deleting it, would break their state.
            if vars(module).get("forward") is not lean:
                continue
            if own is None:
                del module.forward  # back to the class's forward
            else:
                module.forward = own
