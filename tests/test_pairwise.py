"""method="pairwise": one yes/no question per (text, class) run as a tree after the text, equal to asking the k
questions one by one; LoRA learns through it (single- and multi-label); save/load; text pairs."""

from __future__ import annotations

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.errors import ConfigError

LABELS = {"sport": "games and teams", "money": "banks and stocks", "tech": "phones and robots"}
WORDS = {"sport": ["match", "goal", "coach"], "money": ["stocks", "bank", "profit"], "tech": ["phone", "robot", "code"]}
FAST = {"lr": 2e-2, "batch_size": 8, "eval_every": 0, "warmup_ratio": 0.0, "calib_fraction": 0.25}


def toy(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    y = [str(rng.choice(list(LABELS))) for _ in range(n)]
    return [f"a story about the {rng.choice(WORDS[c])}" for c in y], y


@pytest.mark.parametrize("chat", [True, False])
def test_the_question_tree_equals_asking_each_class_in_full(tiny_model_dir, chat):
    X, y = toy(6, seed=0)
    clf = LMClassifier(model=str(tiny_model_dir), method="pairwise", labels=LABELS, prompt={"chat": chat}).fit(X, y)
    m = clf.method_
    tree = clf.predict_scores(X).logits
    assert m.lm.cached_prefix is not None
    m.reuse_prefix = False
    plain = clf.predict_scores(X).logits  # k full prompts per text
    np.testing.assert_allclose(tree, plain, atol=1e-4)
    assert tree.shape == (6, 3) and np.ptp(tree, axis=1).max() > 0  # the classes' questions differ
    # The questions' shared start ("\n\nClass:") runs once per text as the tail; the tree holds only the rest.
    per_question = [len(q) - len(m.encoder.tail_ids) for q in m.question_ids]
    assert 0 < m.trie.size <= sum(per_question) and len(m.encoder.tail_ids) >= 1
    assert [q.split(" — ")[0].strip() for q in m.describe()["questions"]] == list(LABELS)


def test_lora_learns_through_the_tree_and_round_trips(tiny_model_dir, tmp_path):
    X, y = toy(48, seed=1)
    untrained = LMClassifier(model=str(tiny_model_dir), method="pairwise", labels=LABELS).fit(X, y)
    clf = LMClassifier(model=str(tiny_model_dir), method="pairwise", labels=LABELS,
                       lora={"r": 8, "alpha": 16, "dropout": 0.0}, train={**FAST, "max_steps": 60})  # fmt: skip
    clf.fit(X, y)
    X_test, y_test = toy(30, seed=2)
    acc = np.mean(clf.predict(X_test) == np.array(y_test))
    assert acc >= 0.9 > np.mean(untrained.predict(X_test) == np.array(y_test)) + 0.2
    clf.save(tmp_path / "pw")
    loaded = LMClassifier.load(tmp_path / "pw")
    np.testing.assert_allclose(loaded.predict_proba(X_test), clf.predict_proba(X_test), atol=1e-5)
    assert loaded.method == "pairwise" and not loaded.class_mass_available


def test_multi_label_and_text_pairs(tiny_model_dir):
    X, y = toy(24, seed=3)
    lists = [[c] if i % 3 else [c, "tech"] for i, c in enumerate(y)]
    clf = LMClassifier(model=str(tiny_model_dir), method="pairwise", labels=LABELS).fit(X, lists)
    assert clf.multi_label_ and clf.predict_proba(X).shape == (24, 3)
    pairs = [{"text": t, "text_pair": "a second text"} for t in X]
    clf2 = LMClassifier(model=str(tiny_model_dir), method="pairwise", labels=LABELS).fit(pairs, y)
    m = clf2.method_
    tree = clf2.predict_scores(pairs).logits
    m.reuse_prefix = False
    np.testing.assert_allclose(tree, clf2.predict_scores(pairs).logits, atol=1e-4)


def test_vocab_ce_is_refused_with_the_reason(tiny_model_dir):
    X, y = toy(16, seed=4)
    clf = LMClassifier(model=str(tiny_model_dir), method="pairwise", labels=LABELS, lora={"r": 4},
                       train={**FAST, "max_steps": 1, "loss": "vocab_ce"})  # fmt: skip
    with pytest.raises(ConfigError, match="vocab_ce' needs class tokens; method 'pairwise'"):
        clf.fit(X, y)
