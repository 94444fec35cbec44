"""QLoRA (``lora={"quantize": "nf4"}``): the frozen base in 4-bit NF4 by bitsandbytes, LoRA trained on top; on the
tiny model on CPU (bitsandbytes' CPU backend runs it), on a GPU when one is there."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.errors import ConfigError, ModelLoadError
from test_training import FAST, LABELS, toy_data

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """The tiny Llama at hidden size 64: bitsandbytes' CPU kernels pack 4-bit weights in blocks of 64 inputs (the
    conftest model's 32 would be one half block; real models' sizes are multiples of 64)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=2,
                         bos_token_id=1, eos_token_id=2, initializer_range=0.4)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def qlora(model_dir, **lora) -> LMClassifier:
    return LMClassifier(model=str(model_dir), labels=LABELS, lora={"r": 8, "alpha": 16, "quantize": "nf4", **lora},
                        train={**FAST, "max_steps": 40})  # fmt: skip


def test_qlora_trains_adapters_on_a_4bit_base_and_reloads(model_dir, tmp_path):
    X, y = toy_data()
    clf = qlora(model_dir).fit(X, y, calib_set=toy_data(2, seed=1))
    model = clf.backbone_.model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every projection of both blocks is 4-bit
    assert model.get_output_embeddings().weight.is_floating_point()  # the LM head (the sliced head) is not
    assert all(p.dtype.is_floating_point for p in model.parameters() if p.requires_grad)
    untrained = LMClassifier(model=str(model_dir), labels=LABELS).fit([])
    assert (untrained.predict(X) == np.array(y)).mean() < 0.7
    assert (clf.predict(X) == np.array(y)).mean() >= 0.9  # the 4-bit base learned the toy set through its adapters
    clf.save(tmp_path / "run")
    loaded = LMClassifier.load(tmp_path / "run")
    assert loaded.lora_config().quantize == "nf4"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.backbone_.model.modules())
    # Not to 1e-5: on a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for inference on its first no-grad
    # forward, with its block scales rounded to bf16; the trained model and the reloaded one can be in either
    # layout. The adapter is what this checks: without it the probabilities are the untrained ones.
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=0.03)
    assert np.abs(untrained.predict_proba(X) - clf.predict_proba(X)).max() > 0.1
    from classlm.export import export_merged, export_seq_cls

    for export in (export_merged, export_seq_cls):
        with pytest.raises(ConfigError, match="4-bit weights rounds them again"):
            export(clf, tmp_path / "out")


def test_qlora_without_bitsandbytes_says_what_to_install(model_dir, monkeypatch):
    real = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    X, y = toy_data(2)
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        qlora(model_dir).fit(X, y)


def test_an_unknown_quantization_is_refused():
    with pytest.raises(ConfigError, match="quantize must be one of \\['nf4'\\]"):
        LMClassifier(labels=LABELS, lora={"quantize": "int3"}).lora_config()


def test_cli_train_takes_lora_quantize(model_dir, tmp_path, monkeypatch, capsys):
    import json

    from test_cli import run_cli

    X, y = toy_data(4)
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": c}) + "\n" for t, c in zip(X, y, strict=True)))
    args = ["train", data, "-m", model_dir, "--max-steps", "2", "--no-baseline", "--out"]
    code, _, err = run_cli(monkeypatch, capsys, *args, tmp_path / "bad", "--lora-quantize", "int3")
    assert code == 2 and "quantize must be one of ['nf4']" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, *args, tmp_path / "run", "--lora-quantize", "nf4")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "classlm.json").read_text())["lora"]["quantize"] == "nf4"
