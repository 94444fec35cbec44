"""The lean layer forms of classlm.kernels give the plain layers' values and gradients, and switch back cleanly."""

import copy
import shutil
import warnings

import pytest
import torch

from classlm import kernels
from classlm.config import LoraConfig
from classlm.kernels import lean_training, softmax_to, use_fast_lora
from classlm.lora import add_lora


def with_lora(model, seed: int = 0):
    """``model`` with LoRA on every projection and non-zero B matrices (fresh ones are zero: the update would be
    invisible)."""
    peft_model = add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return peft_model


def plain_peft(model):
    """The same model with peft's own LoRA forward (the class use_fast_lora replaced)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m).__name__.startswith("FastLinear"):
            m.__class__ = type(m).__mro__[1]
    return model


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids).logits[:, -1].float()
    loss = torch.logsumexp(out, -1).sum() + out[:, :5].sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29], [1, 6, 10, 14, 18, 22, 26, 30]])


def test_fast_lora_is_peft_lora_in_float32_values_and_gradients(tiny_model):
    fast = with_lora(tiny_model).train()
    assert all(type(m).__name__ == "FastLinear" for m in fast.modules() if hasattr(m, "lora_A"))
    plain = plain_peft(fast)
    assert not any(type(m).__name__ == "FastLinear" for m in plain.modules())
    out_fast, g_fast = loss_and_grads(fast, IDS)
    out_plain, g_plain = loss_and_grads(plain, IDS)
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=1e-5)
    assert g_fast.keys() == g_plain.keys() and any("lora_A" in n for n in g_fast)
    for name in g_fast:
        torch.testing.assert_close(g_fast[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_fast_lora_in_bf16_keeps_float32_adapters_and_tracks_the_float32_model(tiny_model):
    bf16 = with_lora(copy.deepcopy(tiny_model).to(torch.bfloat16))  # a copy first: peft edits the model in place
    fp32 = with_lora(tiny_model)
    # peft keeps the adapters (the trained and optimised tensors) in float32 over bf16 weights.
    assert {p.dtype for p in bf16.parameters() if p.requires_grad} == {torch.float32}
    out32, g32 = loss_and_grads(fp32.train(), IDS)
    out16, g16 = loss_and_grads(bf16.train(), IDS)
    scale = float(out32.abs().max())
    assert float((out16 - out32).abs().max()) < 0.05 * scale
    for name in g32:
        assert g16[name].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(g16[name].flatten(), g32[name].flatten(), dim=0)
        assert cos > 0.98, name


def test_fast_lora_saves_and_merges_like_peft(tiny_model):
    with torch.no_grad():
        base = tiny_model(input_ids=IDS).logits
    fast = with_lora(tiny_model)
    plain = plain_peft(fast)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        tuned = fast(input_ids=IDS).logits
        assert not torch.allclose(base, tuned, atol=1e-3)
        merged = copy.deepcopy(fast).merge_and_unload()
        torch.testing.assert_close(merged(input_ids=IDS).logits, tuned, atol=1e-4, rtol=1e-4)
        with fast.disable_adapter():  # falls back to peft's forward: the base model's logits
            torch.testing.assert_close(fast(input_ids=IDS).logits, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_training_gives_the_plain_values_and_gradients_then_switches_back(tiny_model, dtype):
    model = with_lora(tiny_model.to(dtype)).train()
    out_plain, g_plain = loss_and_grads(model, IDS)
    with lean_training(model) as switched:
        assert switched == 2 * 3 + 1  # per layer two norms and the MLP, plus the final norm
        out_lean, g_lean = loss_and_grads(model, IDS)
    assert not any("forward" in vars(m) for m in model.modules())  # the classes' own forwards again
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)  # the same forward values, bit for bit
    assert g_lean.keys() == g_plain.keys()
    for name in g_plain:
        if dtype == torch.float32:
            torch.testing.assert_close(g_lean[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)
        else:  # autograd rounds to bf16 after every op, the lean backward once: they differ by bf16's rounding
            error = float((g_lean[name] - g_plain[name]).norm() / g_plain[name].norm())
            assert error < 0.03, (name, error)


def test_lean_training_switches_back_after_an_error(tiny_model):
    with pytest.raises(RuntimeError, match="boom"), lean_training(tiny_model):
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in tiny_model.modules())


def test_lean_training_leaves_a_forward_someone_swapped_within_the_block(tiny_model):
    norm = tiny_model.model.norm
    with lean_training(tiny_model):
        del norm.forward  # what a kernelized transformers model's train()/eval() does (it re-kernelizes)
        theirs = norm.forward = torch.nn.Identity().forward
    assert vars(norm)["forward"] is theirs
    assert sum("forward" in vars(m) for m in tiny_model.modules()) == 1  # the others got their own back


def test_loaded_models_keep_the_lean_forms_through_train_and_eval(tiny_model_dir):
    """transformers >= 5.25 kernelizes a loaded model by default and again on every train()/eval() switch, which
    replaced the lean forms after the first evaluation of a training run; classlm loads without hub kernels."""
    from classlm.config import ModelConfig
    from classlm.models import load_backbone

    model = load_backbone(ModelConfig(name=str(tiny_model_dir)), shared=False, training=True).model
    with lean_training(model) as switched:
        model.eval()
        model.train()
        assert sum("forward" in vars(m) for m in model.modules()) == switched == 7


def test_lean_norm_trains_its_weight_like_the_plain_norm(tiny_model):
    """hidden_head's top_k trains the final norm: its weight gradient must match too."""
    norm = tiny_model.model.norm
    norm.weight.requires_grad_(True)
    x = torch.randn(3, 5, 32, requires_grad=True)
    plain = torch.autograd.grad(norm(x).square().sum(), [x, norm.weight])
    with lean_training(tiny_model):
        lean = torch.autograd.grad(norm(x).square().sum(), [x, norm.weight])
    for a, b in zip(lean, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_softmax_to_keeps_the_gradient_of_softmax_then_cast():
    scores = torch.randn(2, 3, 7, 11, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(2, 3, 7, 11, dtype=torch.bfloat16)
    plain = torch.autograd.grad(
        (torch.softmax(scores, -1, dtype=torch.float32).to(torch.bfloat16) * grad).sum(), scores
    )
    lean = torch.autograd.grad((softmax_to(scores, torch.bfloat16) * grad).sum(), scores)
    torch.testing.assert_close(lean[0], plain[0], atol=1e-2, rtol=2e-2)
    with torch.no_grad():  # without gradients: the plain ops, the same values
        torch.testing.assert_close(softmax_to(scores, torch.float32), torch.softmax(scores, -1, dtype=torch.float32))


def test_use_fast_lora_leaves_other_lora_layer_classes_alone(tiny_model):
    """Only peft's own lora.Linear switches: a subclass (bnb's quantised layers are) keeps its forward."""
    from peft.tuners.lora.layer import Linear

    class Quantised(Linear):
        pass

    model = plain_peft(with_lora(tiny_model))
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    q_proj.__class__ = Quantised
    use_fast_lora(model)
    assert type(q_proj) is Quantised
    k_proj = model.get_base_model().model.layers[0].self_attn.k_proj
    assert type(k_proj).__name__ == "FastLinear" and isinstance(k_proj, Linear)


def test_fast_lora_falls_back_to_peft_for_a_lora_bias(tiny_model):
    model = with_lora(tiny_model)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    layer.lora_B["default"].bias = torch.nn.Parameter(torch.full((layer.out_features,), 0.5))
    x = torch.randn(2, 3, layer.in_features)
    with torch.no_grad():
        fast = layer(x)
        torch.testing.assert_close(fast, type(layer).__mro__[1].forward(layer, x))
        layer.lora_B["default"].bias = None  # the fast path again: the bias's share is gone
        scaling = layer.scaling["default"]
        torch.testing.assert_close(fast - layer(x), torch.full_like(fast, 0.5 * scaling))


def test_fast_lora_in_bf16_is_as_close_to_float32_as_peft_in_bf16(tiny_model):
    """The fast path rounds the update to bf16 before adding it (peft adds in float32 and rounds once): the error
    against the float32 model must stay of the size of peft's own bf16 error."""
    fp32 = with_lora(copy.deepcopy(tiny_model))  # the same adapters (seeded) on a float32 copy
    bf16 = with_lora(tiny_model.to(torch.bfloat16))
    with torch.no_grad():
        ref = fp32(input_ids=IDS).logits
        fast = bf16(input_ids=IDS).logits.float()
        plain = plain_peft(bf16)(input_ids=IDS).logits.float()
    err_fast, err_peft = float((fast - ref).abs().mean()), float((plain - ref).abs().mean())
    assert err_fast < 1.5 * err_peft + 1e-3, (err_fast, err_peft)
    assert float((fast - plain).abs().max()) < 0.05 * float(ref.abs().max())


@pytest.fixture(autouse=True)
def fresh_fused_state(monkeypatch):
    """Each test starts as a fresh process: nothing compiled or failed yet, outside any training block."""
    monkeypatch.setattr(kernels, "_fused_state", {"error": None, "on": False, "last": "eager (no training run yet)"})
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.delenv(kernels.FUSED_ENV, raising=False)


def _cases(dtype):
    """Inputs of the three fused formulas, with a batch of one (inductor specialises sizes 0 and 1) and odd widths."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x = r(1, 7, 33)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    probs = torch.softmax(r(2, 3, 5, 9).float(), -1).to(dtype)
    return {
        "_rms_norm_grad": (r(1, 7, 33), x, r(33), rstd),
        "_silu_gate_grads": (r(3, 5, 40), r(3, 5, 40), r(3, 5, 40)),
        "_softmax_grad": (probs, r(2, 3, 5, 9), dtype),
    }


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


COMPILER = shutil.which("g++") or shutil.which("c++")
needs_compiler = pytest.mark.skipif(not COMPILER, reason="no C++ compiler: inductor cannot build")


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_backward_math_is_compiled_and_equals_the_eager_formulas(dtype, tiny_model):
    cases = _cases(dtype)
    eager = {name: _as_tuple(getattr(kernels, name)(*args)) for name, args in cases.items()}  # outside a block
    assert kernels._compiled == {}
    with lean_training(tiny_model, steps=kernels.FUSED_MIN_STEPS):
        for name, args in cases.items():
            for a, b in zip(_as_tuple(getattr(kernels, name)(*args)), eager[name], strict=True):
                assert a.dtype == b.dtype == dtype and a.shape == b.shape
                # the same float32 arithmetic; summation order may move a bf16 result by one rounding step
                tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
                torch.testing.assert_close(a, b, **tol, msg=name)
    assert sorted(kernels._compiled) == ["_rms_norm_grad", "_silu_gate_grads", "_softmax_grad"]
    assert kernels._fused_state["error"] is None and kernels.fused_backward_status() == "compiled"
    assert kernels._fused_state["on"] is False  # put back at the block's end


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_lean_training_gives_the_plain_values_and_gradients(tiny_model, dtype):
    model = with_lora(tiny_model.to(dtype)).train()
    norm = model.base_model.model.model.norm
    norm.weight.requires_grad_(True)  # the weight-gradient path too (hidden_head trains the final norm)
    out_plain, g_plain = loss_and_grads(model, IDS)
    with lean_training(model, steps=kernels.FUSED_MIN_STEPS):
        out_lean, g_lean = loss_and_grads(model, IDS)
    assert kernels.fused_backward_status() == "compiled"
    torch.testing.assert_close(out_lean, out_plain, atol=0, rtol=0)  # forward values: bit for bit
    assert g_lean.keys() == g_plain.keys() and any("norm" in n for n in g_plain)
    for name in g_plain:
        error = float((g_lean[name] - g_plain[name]).norm() / g_plain[name].norm())
        assert error < (1e-4 if dtype == torch.float32 else 0.03), (name, error)


@pytest.mark.parametrize(
    ("env", "steps", "fused", "status"),
    [
        (None, 99, False, "eager (a run of fewer than 100 steps)"),
        (None, None, False, "eager (no step count given)"),
        (None, 100, True, "eager (nothing ran compiled: no lean form on CPU)"),
        ("0", 500, False, "eager ($CLASSLM_FUSED_BACKWARD=0)"),
        ("off", 500, False, "eager ($CLASSLM_FUSED_BACKWARD=off)"),
        ("1", 3, True, "eager (nothing ran compiled: no lean form on CPU)"),
        ("maybe", 3, False, "eager (a run of fewer than 100 steps)"),
    ],
)
def test_the_backward_math_is_compiled_for_long_runs_or_as_the_environment_says(env, steps, fused, status, monkeypatch):
    if env is not None:
        monkeypatch.setenv(kernels.FUSED_ENV, env)
    assert kernels.fused_backward_mode(steps) == (fused, status)


def test_a_failed_compile_falls_back_to_the_eager_formulas_once_and_says_so(tiny_model, monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(fn.__name__)
            raise RuntimeError("CppCompileError: no compiler\ndetails")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    args = _cases(torch.float32)["_silu_gate_grads"]
    expected = kernels._silu_gate_grads(*args)  # eager: outside a block
    with caplog.at_level("WARNING", logger="classlm.kernels"), lean_training(tiny_model, steps=1000):
        got = kernels._silu_gate_grads(*args)
        again = kernels._rms_norm_grad(*_cases(torch.float32)["_rms_norm_grad"])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert again.shape == (1, 7, 33)
    assert calls == ["_silu_gate_grads"]  # tried once; the rest of the process stays eager
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "g++" in caplog.records[0].getMessage()
    failed = "eager (compiling failed: RuntimeError: CppCompileError: no compiler)"
    assert kernels.fused_backward_status() == failed
    assert kernels.fused_backward_mode(1000) == (False, failed)  # later runs too


def test_an_error_that_is_not_the_compiling_is_raised_and_leaves_compiling_on(tiny_model, monkeypatch):
    def failing_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("compiled kernel ran out of memory")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    grad, gate, up = _cases(torch.float32)["_silu_gate_grads"]
    with pytest.raises(RuntimeError, match="size of tensor|shape|must match"), lean_training(tiny_model, steps=1000):
        kernels._silu_gate_grads(grad, gate, up[..., :3])  # the eager retry fails too: the real error
    assert kernels._fused_state["error"] is None and kernels.fused_backward_mode(1000)[0]
    assert kernels._fused_state["on"] is False  # put back after the error


def test_outside_a_fusing_block_the_formulas_run_eagerly(tiny_model, monkeypatch):
    monkeypatch.setenv(kernels.FUSED_ENV, "1")
    kernels._softmax_grad(*_cases(torch.bfloat16)["_softmax_grad"])  # no block
    monkeypatch.setenv(kernels.FUSED_ENV, "0")
    with lean_training(tiny_model, steps=1000):
        kernels._softmax_grad(*_cases(torch.bfloat16)["_softmax_grad"])
    assert kernels._compiled == {}
    assert kernels.fused_backward_status() == "eager ($CLASSLM_FUSED_BACKWARD=0)"


def test_peft_deprecation_stays_off_the_console_after_the_filter_was_lost(tiny_model):
    """The filter set at import is gone after a caller's catch_warnings block that first imported classlm; wrapping
    a model with peft puts it back."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # as if the import-time filter had been dropped
        warnings.simplefilter("always")
        with_lora(tiny_model)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
