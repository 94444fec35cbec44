"""classlm export --seq-cls: a standard *ForSequenceClassification model that gives classlm's calibrated
probabilities in plain transformers (the model, and the text-classification pipeline), and refuses what a bias-free
score layer cannot carry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classlm import LMClassifier
from classlm.errors import ConfigError
from classlm.export import PROMPT_FILE, export_seq_cls
from test_training import make, toy_data


def _probabilities(folder, prompts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return np.array([torch.softmax(model(**tok(p, return_tensors="pt")).logits[0], -1).numpy() for p in prompts])


def test_seq_cls_export_gives_the_calibrated_probabilities_in_plain_transformers(tiny_model_dir, tmp_path):
    from transformers import pipeline

    X, y = toy_data(3)
    clf = make(tiny_model_dir, max_steps=4).fit(X, y, calib_set=toy_data(1, seed=1))
    assert abs(clf.temperature_ - 1.0) > 1e-3  # a real temperature is folded into the rows
    out = export_seq_cls(clf, tmp_path / "seq")
    prompt = json.loads((out / PROMPT_FILE).read_text())
    prompts = [prompt["template"].replace("{text}", t.strip()) for t in X]
    np.testing.assert_allclose(_probabilities(out, prompts), clf.predict_proba(X), atol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(clf.classes_)}
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    card = (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file() and "text-classification" in card
    assert f"# {tiny_model_dir.name} as a classifier" in card and str(tiny_model_dir) not in card  # no local paths
    # The pipeline, fed the rendered prompts, gives them too (top_k=None: every class, by label).
    answers = pipeline("text-classification", model=str(out), top_k=None)(prompts)
    got = np.array([[next(a["score"] for a in row if a["label"] == c) for c in clf.classes_] for row in answers])
    np.testing.assert_allclose(got, clf.predict_proba(X), atol=1e-4)
    # The export's tokenizer renders the prompt as its chat template: a server applying it to one user message
    # feeds the model what classlm does.
    from transformers import AutoTokenizer

    assert prompt["chat_template"] is True
    tok = AutoTokenizer.from_pretrained(out)
    chats = [tok.apply_chat_template([{"role": "user", "content": f" {t} "}], tokenize=False) for t in X]
    assert chats == prompts
    with pytest.raises(ConfigError, match="not empty"):
        export_seq_cls(clf, out)


def test_name_rows_heads_export_their_mean_rows(tiny_model_dir, tmp_path):
    labels = ["bill_balance", "bill_due", "card_lost"]  # shared first tokens: name_rows reads every name token
    clf = LMClassifier(model=str(tiny_model_dir), labels=labels, scoring="name_rows").fit([])
    out = export_seq_cls(clf, tmp_path / "rows")
    texts = ["what is my balance", "when is it due", "I lost my card"]
    prompt = json.loads((out / PROMPT_FILE).read_text())
    prompts = [prompt["template"].replace("{text}", t) for t in texts]
    np.testing.assert_allclose(_probabilities(out, prompts), clf.predict_proba(texts), atol=1e-4)


@pytest.mark.parametrize(
    "options, fit, match",
    [
        ({"calibration": "bias"}, "labelled", "per-class offset"),
        ({"method": "tfidf"}, "labelled", "method 'tfidf' has none"),
        ({"scoring": "exact"}, "none", "several answer tokens"),
        ({}, "lists", "multi-label"),
    ],
)
def test_what_a_score_layer_cannot_carry_is_refused(tiny_model_dir, tmp_path, options, fit, match):
    X, y = toy_data(4)
    clf = LMClassifier(model=str(tiny_model_dir), labels=sorted(set(y)), **options)
    if fit == "labelled":
        clf.fit(X, y)
    elif fit == "lists":
        clf.fit(X, [[v] for v in y])
    else:
        clf.fit([])
    with pytest.raises(ConfigError, match=match):
        export_seq_cls(clf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_seq_cls(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from test_cli import run_cli

    X, y = toy_data(3)
    make(tiny_model_dir, max_steps=2).fit(X, y).save(tmp_path / "run")
    code, out, err = run_cli(monkeypatch, capsys, "export", tmp_path / "run", "--seq-cls", tmp_path / "seq")
    assert code == 0 and "sequence-classification model" in out, err
    assert (tmp_path / "seq" / PROMPT_FILE).is_file()
    code, _, err = run_cli(monkeypatch, capsys, "export", tmp_path / "run")
    assert code != 0 and "give one of --merge OUT" in err
