"""LoRA fine-tuning on the tiny model: it learns, prefix reuse is exact, resume after SIGKILL, artifacts, export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classlm import LMClassifier
from classlm.config import LoraConfig, TrainConfig
from classlm.errors import ConfigError

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
WORDS = {
    "World": ["president", "election", "war", "minister"],
    "Sports": ["match", "goal", "team", "coach"],
    "Business": ["stocks", "market", "profit", "bank"],
    "Sci/Tech": ["phone", "software", "space", "robot"],
}


def toy_data(n_per_class: int = 6, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, words in WORDS.items():
        for _ in range(n_per_class):
            picked = rng.choice(words, size=3)
            texts.append(f"news about the {picked[0]} and the {picked[1]} and {picked[2]}")
            labels.append(label)
    return texts, labels


FAST = {"lr": 2e-2, "batch_size": 8, "eval_every": 0, "warmup_ratio": 0.0, "calib_fraction": 0.25}


def make(tiny_model_dir, **train):
    return LMClassifier(
        model=str(tiny_model_dir),
        labels=LABELS,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        train={**FAST, **train},
    )


def adapter_dir(run: Path) -> Path:
    return run / json.loads((run / "classlm.json").read_text())["adapter"]


def trainable(clf) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in clf.backbone_.model.named_parameters() if p.requires_grad}


def test_lora_training_fits_a_toy_set(tiny_model_dir):
    X, y = toy_data()
    clf = make(tiny_model_dir, max_steps=40)
    before = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    assert (before.predict(X) == np.array(y)).mean() < 0.6
    clf.fit(X, y, calib_set=toy_data(2, seed=1))
    assert (clf.predict(X) == np.array(y)).mean() == 1.0
    assert clf.training_["steps"] == 40 and clf.training_["trainable_parameters"] > 0
    if "CLASSLM_FUSED_BACKWARD" not in os.environ:  # 40 steps: compiling would cost more than it saves
        assert clf.training_["kernels"] == "eager (a run of fewer than 100 steps)"
    info = clf.calibration_info_
    assert info["fitted"] and info["source"] == "calib_set" and info["before"]["nll"] >= info["after"]["nll"] - 1e-9
    # Only the adapters changed: embeddings (tied with the LM head) are the base model's.
    base = before.backbone_.model.get_input_embeddings().weight
    assert torch.equal(clf.backbone_.model.get_input_embeddings().weight, base)


def test_prefix_reuse_in_training_gives_the_plain_weights(tiny_model_dir):
    X, y = toy_data(3)
    a = make(tiny_model_dir, max_steps=3, reuse_prefix=True).fit(X, y, calib_set=toy_data(1, seed=1))
    b = make(tiny_model_dir, max_steps=3, reuse_prefix=False).fit(X, y, calib_set=toy_data(1, seed=1))
    wa, wb = trainable(a), trainable(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4, msg=name)
    # LoRA's B matrices start at zero: the steps really changed the adapters.
    assert all(wa[n].abs().sum() > 0 for n in wa if "lora_B" in n)


def test_calibration_split_is_held_out_and_recorded(tiny_model_dir):
    X, y = toy_data(8)
    clf = make(tiny_model_dir, max_steps=2).fit(X, y)
    assert clf.training_["n_train"] + clf.calibration_info_["n"] == len(X)
    assert clf.calibration_info_["n"] == 8  # 25% of each class's 8 examples
    assert "disjoint" in clf.calibration_info_["source"]


def test_eval_during_training_writes_metrics_and_keeps_the_best(tiny_model_dir, tmp_path):
    X, y = toy_data()
    clf = make(tiny_model_dir, max_steps=12, eval_every=4, loss="vocab_ce")
    clf.fit(X, y, eval_set=toy_data(2, seed=3), calib_set=toy_data(2, seed=1), run_dir=tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4, 8, 12]  # step 0: the untrained start
    for r in rows:
        assert set(r["eval"]) >= {"accuracy", "macro_f1", "nll", "ece", "class_mass", "calibration_ratio"}
        assert set(r["eval"]["calibration_ratio"]) == set(LABELS)
    # vocab_ce is SFT on the class token: the full-vocabulary mass moves onto the class tokens.
    assert rows[-1]["eval"]["class_mass"] > rows[0]["eval"]["class_mass"]
    best = min(rows, key=lambda r: r["eval"]["nll"])  # the default early_stopping metric
    assert clf.training_["best_step"] == best["step"]


def test_save_load_round_trip_and_plain_peft_loads_the_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    X, y = toy_data(3)
    clf = make(tiny_model_dir, max_steps=4).fit(X, y, calib_set=toy_data(1, seed=1))
    clf.save(tmp_path / "run")
    first = adapter_dir(tmp_path / "run")
    assert (first / "adapter_config.json").is_file()
    loaded = LMClassifier.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-5)
    assert loaded.temperature_ == pytest.approx(clf.temperature_)
    assert json.loads((tmp_path / "run" / "classlm.json").read_text())["training"]["steps"] == 4
    # Plain peft + transformers, no classlm: the same hidden states.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = PeftModel.from_pretrained(base, str(first)).eval()
    ids = torch.as_tensor([clf.method_.encoder.encode(X[:1]).ids[0]])
    with torch.no_grad():
        ours = clf.backbone_.model(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # Saving again writes a new adapter folder, then the manifest naming it, then drops the old one.
    clf.save(tmp_path / "run")
    second = adapter_dir(tmp_path / "run")
    assert second != first and not first.exists()
    features = json.loads((tmp_path / "run" / "classlm.json").read_text())["out_of_scope"]["file"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(["classlm.json", second.name, features])


def test_a_manifest_cannot_point_the_loader_outside_the_run(tiny_model_dir, tmp_path):
    from classlm.errors import ArtifactError

    X, y = toy_data(2)
    make(tiny_model_dir, max_steps=1).fit(X, y, calib_set=toy_data(1, seed=1)).save(tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "classlm.json").read_text())
    for bad in ("../elsewhere", "/tmp", "adapter-x/../../y"):
        (tmp_path / "run" / "classlm.json").write_text(json.dumps({**doc, "adapter": bad}))
        with pytest.raises(ArtifactError, match="not a peft adapter folder"):
            LMClassifier.load(tmp_path / "run")


def test_export_merge_gives_the_same_probabilities_in_plain_transformers(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from classlm.export import export_merged
    from classlm.metrics import softmax

    X, y = toy_data(3)
    clf = make(tiny_model_dir, max_steps=4).fit(X, y, calib_set=toy_data(1, seed=1))
    out = export_merged(clf, tmp_path / "merged")
    info = json.loads((out / "classlm_export.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    probs = []
    with torch.no_grad():
        for text in X:
            text_ids = tok(text.strip(), add_special_tokens=False).input_ids
            ids = info["prompt_head_ids"] + text_ids + info["prompt_tail_ids"]
            z = model(input_ids=torch.as_tensor([ids])).logits[0, -1, info["class_token_ids"]]
            probs.append(torch.softmax(z / info["temperature"], -1).numpy())
    np.testing.assert_allclose(np.array(probs), clf.predict_proba(X), atol=1e-4)
    with pytest.raises(ConfigError, match="not empty"):
        export_merged(clf, out)
    np.testing.assert_allclose(softmax(clf.decision_function(X)), clf.predict_proba(X))  # clf still works


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_training import make, toy_data
kill_at = int(sys.argv[2])

def callback(event, info):
    # SIGKILL in the middle of a step: after a backward pass, before the optimiser step.
    if event == "backward" and info["step"] == kill_at and info["micro_batch"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)

X, y = toy_data()
clf = make({model!r}, max_steps=9, eval_every=3, checkpoint_every=2, grad_accum=2)
clf.lora = {{"r": 8, "alpha": 16, "dropout": 0.1}}  # dropout draws random numbers: the RNG state must resume too
clf.dtype = sys.argv[4]  # bf16: frozen weights in bf16, adapters and optimizer in float32
clf.fit(X, y, eval_set=toy_data(1, seed=2), calib_set=toy_data(1, seed=1), run_dir=sys.argv[1],
        resume=sys.argv[3] == "resume", callback=callback if kill_at >= 0 else None)
clf.save(sys.argv[1])
"""


def rounded(value, digits: int = 5):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def metrics_rows(run: Path) -> list[dict]:
    """The evaluation rows (not their wall-clock seconds), floats rounded to compare across processes."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [rounded({k: v for k, v in r.items() if k != "seconds"}) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at, checkpoint, dtype",
    [
        (5, "step-00000004", "float32"),  # mid-step 6, after the step-4 checkpoint
        (3, "step-00000002", "float32"),  # mid-step 4: the step-3 evaluation (and its best adapter) came after it
        (5, "step-00000004", "bfloat16"),  # bf16 training resumes exactly too (the same kernels, the same order)
    ],
)
def test_resume_after_sigkill_ends_with_the_uninterrupted_weights(tiny_model_dir, tmp_path, kill_at, checkpoint, dtype):
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model_dir)))
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def run(folder: Path, kill_at: int, mode: str) -> int:
        cmd = [sys.executable, str(script), str(folder), str(kill_at), mode, dtype]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode

    assert run(tmp_path / "full", -1, "fresh") == 0
    assert run(tmp_path / "killed", kill_at, "fresh") == -9
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == [checkpoint]  # the newest complete checkpoint only
    assert run(tmp_path / "killed", -1, "resume") == 0
    full = load_file(str(adapter_dir(tmp_path / "full") / "adapter_model.safetensors"))
    resumed = load_file(str(adapter_dir(tmp_path / "killed") / "adapter_model.safetensors"))
    assert full.keys() == resumed.keys()
    for name in full:
        assert full[name].dtype == torch.float32
        torch.testing.assert_close(resumed[name], full[name], atol=1e-6, rtol=1e-5, msg=name)
    # Every evaluation, before and after the kill, saw the same weights as in the uninterrupted run (the saved
    # adapter is the best one, which could predate the kill: these rows cover the steps after it too).
    assert [r["step"] for r in metrics_rows(tmp_path / "killed")] == [0, 3, 6, 9]
    assert metrics_rows(tmp_path / "killed") == metrics_rows(tmp_path / "full")


def test_a_resume_in_another_dtype_is_refused(tiny_model_dir, tmp_path):
    X, y = toy_data(2)
    clf = make(tiny_model_dir, max_steps=2, checkpoint_every=1)
    clf.dtype = "bfloat16"
    clf.fit(X, y, calib_set=toy_data(1, seed=1), run_dir=tmp_path)
    assert clf.training_["dtype"] == "bfloat16"
    again = make(tiny_model_dir, max_steps=3, checkpoint_every=1)  # float32 ($CLASSLM_DTYPE in the tests)
    with pytest.raises(ConfigError, match=r"trained in bfloat16 and would resume in float32.*--dtype bfloat16"):
        again.fit(X, y, calib_set=toy_data(1, seed=1), run_dir=tmp_path, resume=True)
    # A checkpoint from before the dtype was recorded trained in float32 on CPU: a bf16 resume is refused too.
    state_files = list((tmp_path / "checkpoints").glob("*/state.json"))
    assert state_files, sorted(p.name for p in (tmp_path / "checkpoints").rglob("*"))
    for f in state_files:  # as an older classlm wrote it: no dtype, no micro-batch budget among the counters
        meta = json.loads(f.read_text())
        meta["state"] = {k: v for k, v in meta["state"].items() if k not in ("dtype", "micro_batch_tokens")}
        f.write_text(json.dumps(meta))
    old = make(tiny_model_dir, max_steps=3, checkpoint_every=1)
    old.dtype = "bfloat16"
    with pytest.raises(ConfigError, match=r"trained in float32 and would resume in bfloat16"):
        old.fit(X, y, calib_set=toy_data(1, seed=1), run_dir=tmp_path, resume=True)


def test_long_texts_run_in_micro_batches_under_the_token_budget(tiny_model_dir, monkeypatch):
    """The memory a step keeps grows with its padded tokens: micro_batch_tokens caps them, the step is the same."""
    from classlm.training import Trainer

    short, y = toy_data(4)
    texts = [t if i % 2 else " ".join([t] * 3) for i, t in enumerate(short)]  # long and short rows mixed
    passes: list[tuple[int, int]] = []  # (rows, padded tokens after the shared prefix) of every forward pass
    plain_loss = Trainer.loss_sum

    def loss_sum(self, rows, y, weights, soft=None):
        prefix = len(self.method.encoder.head_ids)
        passes.append((len(rows), len(rows) * max(len(r) - prefix for r in rows)))
        return plain_loss(self, rows, y, weights, soft)

    monkeypatch.setattr(Trainer, "loss_sum", loss_sum)
    a = make(tiny_model_dir, max_steps=2, micro_batch_tokens=300).fit(texts, y)
    capped, passes[:] = list(passes), []
    b = make(tiny_model_dir, max_steps=2, micro_batch_tokens=100_000).fit(texts, y)
    assert [n for n, _ in passes] == [8, 4]  # uncapped: one pass per step (12 rows after the calibration split)
    assert len(capped) > 2 and sum(n for n, _ in capped) == 12  # the same rows, in more passes
    assert all(tokens <= 300 or n == 1 for n, tokens in capped), capped
    wa, wb = trainable(a), trainable(b)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_second_fresh_run_into_a_run_folder_is_refused(tiny_model_dir, tmp_path):
    X, y = toy_data(2)
    make(tiny_model_dir, max_steps=2, checkpoint_every=1).fit(X, y, calib_set=toy_data(1, seed=1), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="resume"):
        make(tiny_model_dir, max_steps=2, checkpoint_every=1).fit(X, y, calib_set=toy_data(1, seed=1), run_dir=tmp_path)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (TrainConfig, {"loss": "mse"}, "loss must be one of"),
        (TrainConfig, {"batch_size": 6, "grad_accum": 4}, "multiple of grad_accum"),
        (TrainConfig, {"early_stopping": "f1"}, "early_stopping must be one of"),
        (TrainConfig, {"class_weights": "inverse"}, "class_weights"),
        (LoraConfig, {"r": 0}, "positive int"),
        (LoraConfig, {"target_modules": "attention"}, "all-linear"),
    ],
)
def test_bad_training_options_are_clear_errors(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_training_needs_labels_and_zero_shot_refuses_training_options(tiny_model_dir):
    X, _ = toy_data(1)
    with pytest.raises(ConfigError, match="labelled examples"):
        make(tiny_model_dir).fit(X)
    with pytest.raises(ConfigError, match="lora="):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, run_dir="x")
    with pytest.raises(ConfigError, match="none of the LoRA target_modules"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, lora={"target_modules": ["c_attn"]}).fit(*toy_data(1))


def test_balanced_class_weights_give_every_class_the_same_total_weight():
    from classlm.objectives import class_weight_vector

    y = np.array([0] * 6 + [1] * 2 + [2] * 1)
    w = class_weight_vector(TrainConfig(class_weights="balanced"), y, ["a", "b", "c", "d"]).numpy()
    totals = [w[c] * (y == c).sum() for c in range(3)]
    np.testing.assert_allclose(totals, [len(y) / 4] * 3)
    assert w[3] == 0.0  # a class without examples gets no weight (and no division by zero)
    explicit = class_weight_vector(TrainConfig(class_weights={"b": 3.0}), y, ["a", "b", "c", "d"]).numpy()
    assert explicit.tolist() == [1.0, 3.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="not classes"):
        class_weight_vector(TrainConfig(class_weights={"z": 2.0}), y, ["a", "b", "c", "d"])


def test_learning_rate_warms_up_then_decays_to_zero():
    from classlm.objectives import lr_factor

    factors = [lr_factor(s, total=10, warmup=2) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert all(a >= b for a, b in zip(factors[1:], factors[2:])) and factors[-1] == pytest.approx(1 / 8)


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux)")
def test_memory_does_not_grow_step_after_step(tmp_path, tiny_tokenizer):
    """A step that kept anything of the last one (a graph in the loss history, prefix keys, eval activations)
    would grow RSS by its activations, ~10 MB a step at this scale; after the first steps, growth stays flat."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    X, y = toy_data(8)
    X = [" ".join([t] * 4) for t in X]  # ~50 tokens a row
    samples: list[float] = []

    def callback(event, info):
        if event == "step":
            samples.append(rss_mib())

    clf = make(tmp_path / "model", max_steps=24, eval_every=6)
    clf.fit(X, y, eval_set=toy_data(4, seed=3), calib_set=toy_data(1, seed=1), callback=callback)
    assert len(samples) == 24
    # RSS swings by ~50 MB from step to step as the allocator hands transient buffers back and takes them again (a
    # CI run read 1311 at step 6 and 1366 at step 24 with no growth): compare the highs of two 8-step windows, 12
    # steps apart, not two single readings. A leak of ~10 MB a step moves the high by ~120 MB.
    growth = (max(samples[16:]) - max(samples[4:12])) / 12
    assert growth < 3.0, f"RSS grew {growth:.2f} MiB a step from steps 5-12 to 17-24: {[round(s) for s in samples]}"
