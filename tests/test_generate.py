"""generate: the answer parser, one-hot logits, left-padded batched generation in input order, unparsed counts."""

import numpy as np
import pytest

from classlm.config import ModelConfig
from classlm.errors import ConfigError
from classlm.labels import LabelSet
from classlm.methods import get_method
from classlm.methods.generate import OFF_LOGIT, GenerateMethod, GenerateOptions, parse_generation
from classlm.models import load_backbone
from classlm.prompts import PromptTemplate

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TEXTS = [
    "Great movie!",
    "The goalkeeper saved a penalty in the last minute of a long and tense game.",
    "Oil prices and stocks.",
    "Parliament passed the new law after a long debate that lasted through the night and into the morning.",
    "Fry the onions in butter.",
]


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_backbone(ModelConfig(name=str(tiny_model_dir), device="cpu"), shared=False)


def make(backbone, labels=LABELS, chat=None, **options):
    m = get_method("generate")(
        LabelSet.from_spec(labels),
        PromptTemplate(chat=chat),
        scoring="first_token",
        max_length=256,
        options=options,
    )
    m.prepare(backbone)
    return m


@pytest.mark.parametrize(
    "output,expected",
    [
        ("World", 0),  # exact
        ("  sports\n", 1),  # case, whitespace
        ("BUSINESS", 2),
        ("**Sci/Tech**", 3),  # markdown emphasis around the answer
        ('"World"', 0),
        ("Sports. The team won.", 1),  # starts with one answer
        ("Sci/Tech news about phones", 3),
        ("Worldwide markets", None),  # "World" is not a whole word there
        ("I think it is about business.", 2),  # one name as a whole word
        ("The topic: sci/tech", 3),
        ("Either world or sports", None),  # two names: ambiguous
        ("Cooking", None),
        ("", None),
        ("  \n ", None),
        ("**", None),
    ],
)
def test_parser(output, expected):
    assert parse_generation(output, LABELS, LABELS) == expected


def test_parser_longest_answer_wins_and_contained_names_do_not_count():
    answers = ["Sci", "Sci/Tech", "Tech"]
    assert parse_generation("Sci", answers, answers) == 0
    assert parse_generation("sci/tech", answers, answers) == 1
    assert parse_generation("Sci/Tech, clearly", answers, answers) == 1  # both match the start: the longest wins
    assert parse_generation("Sci, clearly", answers, answers) == 0
    assert parse_generation("surely sci/tech", answers, answers) == 1  # "Sci" and "Tech" only inside "Sci/Tech"
    assert parse_generation("surely sci or tech", answers, answers) is None


def test_parser_letters_and_verbalizers():
    names = ["positive", "negative"]
    assert parse_generation("B", ["A", "B"], names) == 1
    assert parse_generation("a. positive", ["A", "B"], names) == 0
    assert parse_generation("Answer: B", ["A", "B"], names) is None  # "Answer" does not start with the letter A
    assert parse_generation("it is negative", ["A", "B"], names) == 1  # the class name, as a whole word
    # Verbalizers: the answer and the name both parse.
    assert parse_generation("good", ["good", "bad"], names) == 0
    assert parse_generation("negative", ["good", "bad"], names) == 1
    # An answer of one class that is the name of another: the answer wins.
    assert parse_generation("bad", ["good", "bad"], ["bad", "fine"]) == 1


def test_registered_with_its_options():
    cls = get_method("generate")
    assert cls is GenerateMethod and not cls.learns_from_data and cls.options_class is GenerateOptions


def test_chosen_generations_give_one_hot_logits(backbone, monkeypatch):
    m = make(backbone)
    replies = {t: r for t, r in zip(TEXTS, ["World", "sports.", "nonsense", "", "It is Sci/Tech."])}

    def fake(rows):  # the reply chosen for the text each row holds
        decoded = [backbone.tokenizer.decode(r) for r in rows]
        return [next(v for t, v in replies.items() if t in d) for d in decoded]

    monkeypatch.setattr(m, "_generate_texts", fake)
    s = m.score(TEXTS, batch_size=2, class_mass=True)
    off = OFF_LOGIT
    expected = np.array(
        [[0, off, off, off], [off, 0, off, off], [0, 0, 0, 0], [0, 0, 0, 0], [off, off, off, 0]], dtype=np.float32
    )
    np.testing.assert_array_equal(s.logits, expected)
    assert s.class_mass is None and s.logits.dtype == np.float32
    assert m.last_unparsed == 2 and m.last_outputs[0] == "World"
    m.score(TEXTS[:2], batch_size=2)
    assert (m.last_unparsed, m.unparsed_total, m.scored_total) == (0, 2, 7)
    desc = m.describe()
    assert desc["unparsed_share"] == pytest.approx(2 / 7) and desc["options"] == {"max_new_tokens": None}
    # Softmax of a parsed row puts ~all the mass on the parsed class; an unparsed row is uniform.
    p = np.exp(s.logits) / np.exp(s.logits).sum(1, keepdims=True)
    assert p[0, 0] > 0.999999 and np.allclose(p[2], 0.25)


@pytest.mark.parametrize("chat", [True, False])
def test_tiny_model_rows_are_one_hot_or_uniform_and_in_input_order(backbone, chat):
    m = make(backbone, chat=chat)
    s = m.score(TEXTS, batch_size=2)
    z = s.logits
    assert z.shape == (len(TEXTS), 4)
    for row in z:
        one_hot = (row == 0).sum() == 1 and (row == OFF_LOGIT).sum() == 3
        assert one_hot or (row == 0).all()
    assert m.last_unparsed == int((z == 0).all(1).sum()) == m.unparsed_total
    assert m.scored_total == len(TEXTS)
    assert all(m.parse(o) is None for o, row in zip(m.last_outputs, z) if (row == 0).all())
    outputs = list(m.last_outputs)
    assert any(outputs)  # the model did write something
    rev = m.score(TEXTS[::-1], batch_size=2)
    np.testing.assert_array_equal(rev.logits[::-1], z)
    assert m.last_outputs[::-1] == outputs
    # Left padding: a text generated alone continues exactly as inside a padded batch.
    for i, t in enumerate(TEXTS):
        m.score([t], batch_size=1)
        assert m.last_outputs == [outputs[i]]
    assert m.scored_total == 2 * len(TEXTS) + len(TEXTS)


def test_max_new_tokens_default_and_option(backbone, monkeypatch):
    m = make(backbone)
    # "Sci/Tech" is the longest answer: 3 tokens in the tiny tokenizer.
    assert m.max_new_tokens == max(len(s) for s in m.tokens.sequences) + 2 == 5
    assert make(backbone, max_new_tokens=3).max_new_tokens == 3
    seen = {}
    generate = backbone.model.generate

    def spy(**kw):
        seen.update(kw)
        return generate(**kw)

    monkeypatch.setattr(backbone.model, "generate", spy)
    m = make(backbone, max_new_tokens=2)
    m.score(TEXTS[:2], batch_size=2)
    assert seen["max_new_tokens"] == 2 and seen["do_sample"] is False
    assert all(len(backbone.tokenizer(o, add_special_tokens=False).input_ids) <= 2 for o in m.last_outputs)
    # Left padded: the shorter prompt's padding is at the start.
    assert seen["attention_mask"][:, -1].all() and not seen["attention_mask"][:, 0].all()


def test_classes_sharing_a_first_token_are_fine(backbone):
    labels = ["World", "World news"]
    with pytest.raises(ConfigError, match="share their first token"):
        get_method("label_tokens")(
            LabelSet.from_spec(labels), PromptTemplate(), scoring="first_token", max_length=256
        ).prepare(backbone)
    m = make(backbone, labels=labels)
    assert m.score(TEXTS[:2], batch_size=2).logits.shape == (2, 2)
    assert parse_generation("World news today", m.labels.answers, m.labels.names) == 1


def test_empty_input(backbone):
    m = make(backbone)
    s = m.score([], batch_size=2)
    assert s.logits.shape == (0, 4) and m.last_unparsed == 0
