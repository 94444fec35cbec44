"""dtype="auto" follows the CPU that runs (bf16 with AMX-BF16 or AVX512-BF16, else float32), is recorded wherever a
run is described, and bf16 scoring stays within its stated tolerance of float32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classlm import LMClassifier, machine
from classlm.errors import ConfigError
from test_cli import run_cli

AMX = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor	: 1
model name	: Some Other CPU
flags		: fpu sse2
"""
ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC
flags		: fpu sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni
"""
NO_AMX = """processor	: 0
model name	: Intel(R) Xeon(R) CPU E5-2690 v4
flags		: fpu sse2 avx avx2 fma
"""
TEXTS = ["Stocks fell sharply on Monday.", "The team won the match.", "A new phone was released today.", "Great!"]
# bf16 keeps 8 bits of mantissa: each bf16 path (prefix reuse and plain) is held to this of float32's class
# probabilities, at most per class and on average. Measured on SmolLM2-135M, 48 ag_news texts: max 0.034 (reuse) and
# 0.036 (plain), mean 0.005 and 0.006; a trained LoRA classifier on 1,000 rows: max 0.055. A wrong prompt or token
# moves probabilities by far more (a missing leading space took the class mass from 0.75 to 0.000).
BF16_PROB_TOL = 0.1
BF16_MEAN_TOL = 0.02


@pytest.fixture()
def auto_env(monkeypatch):
    """dtype='auto' as a user gets it: no $CLASSLM_DTYPE (conftest pins float32 for the exactness tests)."""
    monkeypatch.delenv(machine.DTYPE_ENV, raising=False)

    def on(cpuinfo: str) -> machine.CPU:
        cpu = machine.parse_cpuinfo(cpuinfo)
        monkeypatch.setattr(machine, "_CPU", cpu)
        return cpu

    return on


def test_cpuinfo_parsing_reads_the_first_processor():
    cpu = machine.parse_cpuinfo(AMX)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.flags == ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")
    assert cpu.bf16_matmul
    old = machine.parse_cpuinfo(NO_AMX)
    assert old.flags == ("avx2",) and not old.bf16_matmul and old.bf16_path is None
    zen4 = machine.parse_cpuinfo(ZEN4)
    assert zen4.bf16_matmul and zen4.bf16_path == "avx512_bf16"


def test_auto_picks_bf16_only_on_a_cpu_with_a_bf16_matmul_path(auto_env):
    auto_env(AMX)
    choice = machine.choose_dtype("auto", "cpu")
    assert (choice.dtype, choice.source) == ("bfloat16", "auto")
    assert "amx_bf16" in choice.reason and "amx_bf16" in choice.cpu_flags
    # Training follows the heap allocator too: bf16 on tcmalloc or jemalloc, float32 on glibc's malloc.
    assert machine.choose_dtype("auto", "cpu", training=True, heap="tcmalloc").dtype == "bfloat16"
    assert machine.choose_dtype("auto", "cpu", training=True, heap="jemalloc").dtype == "bfloat16"
    glibc = machine.choose_dtype("auto", "cpu", training=True, heap="system")
    assert glibc.dtype == "float32" and "glibc's malloc" in glibc.reason and "libtcmalloc-minimal4" in glibc.reason
    auto_env(NO_AMX)
    choice = machine.choose_dtype("auto", "cpu")
    assert (choice.dtype, choice.cpu) == ("float32", "Intel(R) Xeon(R) CPU E5-2690 v4")
    assert "neither amx_bf16 nor avx512_bf16" in choice.reason
    assert machine.choose_dtype("auto", "cpu", training=True, heap="tcmalloc").dtype == "float32"
    assert machine.choose_dtype("auto", "cuda").dtype == "bfloat16"
    # AVX512-BF16 without AMX (AMD Zen 4): bf16 matmuls measured 2.5x float32, so bf16 too, saying which path.
    auto_env(ZEN4)
    choice = machine.choose_dtype("auto", "cpu")
    assert choice.dtype == "bfloat16" and "avx512_bf16" in choice.reason and "AMX" not in choice.reason
    trained = machine.choose_dtype("auto", "cpu", training=True, heap="tcmalloc")
    assert trained.dtype == "bfloat16" and "avx512_bf16" in trained.reason
    assert machine.choose_dtype("auto", "cpu", training=True, heap="system").dtype == "float32"


def test_explicit_dtype_then_the_environment_override_auto(auto_env, monkeypatch):
    auto_env(AMX)
    assert machine.choose_dtype("float32", "cpu").source == "argument"
    monkeypatch.setenv(machine.DTYPE_ENV, "float32")
    choice = machine.choose_dtype("auto", "cpu")
    assert (choice.dtype, choice.source) == ("float32", "CLASSLM_DTYPE")
    assert machine.choose_dtype("bfloat16", "cpu").dtype == "bfloat16"  # an explicit dtype still wins
    # Training on CPU ignores the environment (a resumed run must not switch dtype with it): only the CPU and heap.
    monkeypatch.setenv(machine.DTYPE_ENV, "bfloat16")
    assert machine.choose_dtype("auto", "cpu").dtype == "bfloat16"
    assert machine.choose_dtype("auto", "cpu", training=True, heap="system").dtype == "float32"
    assert machine.choose_dtype("auto", "cpu", training=True, heap="tcmalloc").dtype == "bfloat16"
    monkeypatch.setenv(machine.DTYPE_ENV, "fp8")
    with pytest.raises(ConfigError, match=r"\$CLASSLM_DTYPE must be one of .*got 'fp8'"):
        machine.choose_dtype("auto", "cpu")


def test_the_choice_is_what_the_classifier_runs_in_and_is_recorded(auto_env, tiny_model_dir, tmp_path):
    auto_env(AMX)
    clf = LMClassifier(model=str(tiny_model_dir), labels=["World", "Sports"]).fit([])
    assert clf.backbone_.dtype == torch.bfloat16
    run = clf.model_info()["run"]
    assert run["dtype"]["dtype"] == "bfloat16" and run["dtype"]["source"] == "auto"
    assert run["cpu"]["model"] == "Intel(R) Xeon(R) Platinum 8480+" and "amx_bf16" in run["cpu"]["flags"]
    assert run["versions"]["torch"] == torch.__version__ and run["threads"] == torch.get_num_threads()
    clf.save(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "classlm.json").read_text())
    assert saved["run"]["dtype"]["dtype"] == "bfloat16" and saved["options"]["dtype"] == "auto"
    # Loaded on a machine without AMX, the same "auto" resolves there: the record is of the run, not an option.
    auto_env(NO_AMX)
    again = LMClassifier.load(tmp_path / "run")
    assert again.backbone_.dtype == torch.float32 and again.run_info()["dtype"]["dtype"] == "float32"


def test_bf16_scores_stay_within_the_stated_tolerance(tiny_model_dir):
    fp32 = LMClassifier(model=str(tiny_model_dir), labels=["World", "Sports", "Business"], dtype="float32").fit([])
    bf16 = LMClassifier(model=str(tiny_model_dir), labels=["World", "Sports", "Business"], dtype="bfloat16").fit([])
    assert bf16.backbone_.dtype == torch.bfloat16
    p32, reused = fp32.predict_proba(TEXTS), bf16.predict_proba(TEXTS)
    assert reused.dtype == np.float64 and np.allclose(reused.sum(1), 1.0)  # softmax and calibration stay in float
    assert bf16.method_.lm.cached_prefix is not None  # the reuse path ran in bf16 (it passed its own check)
    bf16.method_.reuse_prefix = False
    for p16 in (reused, bf16.predict_proba(TEXTS)):
        assert np.abs(p32 - p16).max() <= BF16_PROB_TOL and np.abs(p32 - p16).mean() <= BF16_MEAN_TOL
    assert not np.array_equal(p32, reused)  # bf16 really ran: its rounding shows


VERBS = ["classify", "evaluate", "train", "calibrate", "serve", "bench", "inspect", "export"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_takes_dtype(verb, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, verb, "--help")
    assert code == 0 and "--dtype" in out


def test_cli_dtype_flag_reaches_the_model_and_inspect_shows_why(auto_env, tiny_model_dir, monkeypatch, capsys):
    auto_env(AMX)
    monkeypatch.setenv("COLUMNS", "250")
    labels = ["inspect", "-m", tiny_model_dir, "-l", "World,Sports"]
    code, out, err = run_cli(monkeypatch, capsys, *labels)
    assert code == 0, err
    assert "dtype: bfloat16 (auto: the CPU reports amx_bf16" in out
    code, out, err = run_cli(monkeypatch, capsys, *labels, "--dtype", "float32", "--json")
    choice = json.loads(out)["run"]["dtype"]
    assert code == 0 and (choice["dtype"], choice["source"]) == ("float32", "argument")
    code, out, err = run_cli(monkeypatch, capsys, *labels, "--dtype", "fp8")
    assert code != 0 and "--dtype must be one of" in err and "Traceback" not in err


def test_auto_token_budget_follows_the_dtype(tiny_model_dir):
    from classlm.cli.options import token_budget_arg
    from classlm.config import token_budget

    fp32 = LMClassifier(model=str(tiny_model_dir), labels=["World", "Sports"], dtype="float32").fit([])
    bf16 = LMClassifier(model=str(tiny_model_dir), labels=["World", "Sports"], dtype="bfloat16").fit([])
    assert fp32.batch_tokens == "auto"
    assert token_budget("auto", fp32.backbone_) == 512 and token_budget("auto", bf16.backbone_) == 1536
    assert token_budget("auto", None) == 512 and token_budget(300, bf16.backbone_) == 300
    assert token_budget(None, bf16.backbone_) is None
    cuda = type("Backbone", (), {"device": torch.device("cuda"), "dtype": torch.bfloat16})()
    assert token_budget("auto", cuda) == 512  # the GPU path as it was
    assert [token_budget_arg(x) for x in (None, 0, 700)] == ["auto", None, 700]  # --batch-tokens unset / 0 / N


def test_a_saved_runs_dtype_is_kept_unless_the_cli_says_otherwise(
    auto_env, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    auto_env(AMX)
    LMClassifier(model=str(tiny_model_dir), labels=["World", "Sports"], dtype="float32").fit([]).save(tmp_path / "r")
    code, out, err = run_cli(monkeypatch, capsys, "inspect", "--run", tmp_path / "r", "--json")
    assert code == 0, err
    assert json.loads(out)["run"]["dtype"]["dtype"] == "float32"  # the run's own explicit float32, not auto's bf16
    code, out, err = run_cli(monkeypatch, capsys, "inspect", "--run", tmp_path / "r", "--json", "--dtype", "auto")
    assert json.loads(out)["run"]["dtype"]["dtype"] == "bfloat16"
    code, out, err = run_cli(monkeypatch, capsys, "classify", "--run", tmp_path / "r", "--dtype", "bfloat16",
                             "--format", "jsonl", "Stocks fell.")  # fmt: skip
    assert code == 0, err
    assert set(json.loads(out.splitlines()[0])["probabilities"]) == {"World", "Sports"}


def test_top_k_training_needs_float32_but_its_classifier_scores_in_bf16(auto_env, tiny_model_dir, tmp_path):
    auto_env(AMX)
    texts, y = ["The team won.", "Stocks fell.", "A great match.", "Shares rose."] * 2, ["S", "B", "S", "B"] * 2
    common = dict(model=str(tiny_model_dir), method="hidden_head", labels=["S", "B"], train={"max_steps": 1})
    with pytest.raises(ConfigError, match="top_k trains the top blocks' weights in place, which needs float32"):
        LMClassifier(**common, method_options={"top_k": 1}, dtype="bfloat16").fit(texts, y)
    trained = LMClassifier(**common, method_options={"top_k": 1}).fit(texts, y)  # auto: float32 to train on CPU
    assert trained.backbone_.dtype == torch.float32
    trained.save(tmp_path / "top")
    loaded = LMClassifier.load(tmp_path / "top")  # auto again: bf16 on this (faked) AMX CPU, to score
    assert loaded.backbone_.dtype == torch.bfloat16
    assert np.abs(loaded.predict_proba(texts) - trained.predict_proba(texts)).max() <= BF16_PROB_TOL
