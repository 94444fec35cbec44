"""Many classes: names that share first tokens, class lists that outgrow the prompt, letters past 26."""

import json
import re

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.config import COLLISION_SCORING
from classlm.errors import ConfigError
from classlm.labels import (
    LabelSet,
    auto_verbalizers,
    first_token_groups,
    readable,
    single_token_codes,
    words,
)
from classlm.prompts import AUTO_LIST_CHARS, PromptTemplate


class WordTokenizer:
    """GPT-2-like word tokens (a word with its leading space is one token; so is each separator), ids by first
    appearance: enough to check collision handling against a tokenizer whose tokens are known."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(t, len(self.vocab)) for t in re.findall(r" ?[A-Za-z0-9]+| ?[^A-Za-z0-9 ]", text)]

    def convert_ids_to_tokens(self, ids):
        inverse = {v: k for k, v in self.vocab.items()}
        return [inverse[i] for i in ids]


INTENTS = [
    "payment_failed",
    "payment_pending",
    "refund_not_received_after_return",
    "refund_requested",
    "balance",
    "bill_balance",
    "bill_due",
    "credit_limit",
    "credit_limit_change",
    "credit_score",
]


def first_tokens(labels, tok, space=True):
    return [tok.encode((" " if space else "") + a)[0] for a in labels.answers]


def test_words_split_identifier_names():
    assert words("refund_not_received") == ["refund", "not", "received"]
    assert words("refundNotReceived") == ["refund", "Not", "Received"]
    assert words(" card-payment / fee ") == ["card", "payment", "fee"]
    assert readable("bill_balance") == "bill balance" and readable("World") == "World"


def test_auto_verbalizers_give_distinct_first_tokens_and_keep_clear_names():
    tok = WordTokenizer()
    labels = LabelSet(tuple(INTENTS))
    before = [tok.encode(" " + a) for a in labels.answers]
    assert first_token_groups(before)  # the names do clash: payment_*, refund_*, bill_*, credit_*
    out = auto_verbalizers(labels, tok, leading_space=True)
    firsts = first_tokens(out, tok)
    assert len(set(firsts)) == len(firsts)
    assert out.names == labels.names  # what predict returns does not change, only the answers
    answers = dict(zip(out.names, out.answers))
    assert answers["balance"] == "balance"  # no clash: untouched
    # The first of a group keeps its words in order; the others lead with a word the group does not share.
    assert answers["payment_failed"] == "payment failed" and answers["payment_pending"] == "pending payment"
    assert answers["credit_limit"] == "credit limit" and answers["credit_score"] == "score credit"
    # "limit" is free too, but "credit_limit" has it: the word that is its own alone leads.
    assert answers["credit_limit_change"] == "change credit limit"
    assert answers["bill_balance"] == "bill balance" and answers["bill_due"] == "due bill"
    # Deterministic, and a fixed point: rewriting again changes nothing.
    assert auto_verbalizers(labels, WordTokenizer(), leading_space=True) == out
    assert auto_verbalizers(out, tok, leading_space=True) == out


def test_auto_verbalizers_fall_back_to_a_code_when_every_word_is_taken():
    tok = WordTokenizer()
    # "x y" / "y x" / "x_y_z"... every word of the third one is already some class's first token.
    labels = LabelSet(("x", "y", "x_y", "y_x"))
    out = auto_verbalizers(labels, tok, leading_space=True)
    firsts = first_tokens(out, tok)
    assert len(set(firsts)) == 4
    assert out.answers[:2] == ("x", "y") and re.fullmatch(r"[A-Z]{1,2} .+", out.answers[3])


def test_single_token_codes_go_past_26_and_letters_mode_uses_them():
    tok = WordTokenizer()
    codes = single_token_codes(tok, 30, leading_space=True)
    assert codes[:26] == tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") and codes[26:] == ("AA", "AB", "AC", "AD")
    names = tuple(f"intent_{i}" for i in range(30))
    labels = LabelSet(names, letters=True)
    assert labels.needs_codes
    with pytest.raises(ConfigError, match="need two-letter codes"):
        _ = labels.answers
    coded = labels.with_codes(tok, leading_space=True)
    assert coded.answers == codes and LabelSet.from_dict(coded.to_dict()) == coded
    assert "- AD. intent_29" in PromptTemplate(show_classes="names").body(coded)

    class CharTokenizer(WordTokenizer):  # no letter pairs in its vocabulary
        def encode(self, text, add_special_tokens=False):
            return [self.vocab.setdefault(c, len(self.vocab)) for c in text]

    with pytest.raises(ConfigError, match="single-token codes for 26 classes only, 30 needed"):
        single_token_codes(CharTokenizer(), 30, leading_space=False)


def test_show_classes_names_descriptions_none_and_auto():
    labels = LabelSet(("World", "Sports"), ("politics", "sport"))
    body = {m: PromptTemplate(show_classes=m).body(labels) for m in ("descriptions", "names", "none")}
    assert "- World: politics" in body["descriptions"]
    assert "- World\n" in body["names"] + "\n" and "politics" not in body["names"]
    assert "Classes:" not in body["none"]
    assert PromptTemplate(show_classes=True).body(labels) == body["descriptions"]  # the old booleans still work
    assert PromptTemplate(show_classes=False).body(labels) == body["none"]
    assert PromptTemplate().class_list(labels) == "descriptions"  # auto, a short list: all of it
    assert PromptTemplate().class_list(LabelSet(("a", "b"))) == "names"  # nothing to describe: said as it is
    many = LabelSet(tuple(f"intent_{i:03d}" for i in range(151)), tuple(["a longer description"] * 151))
    assert PromptTemplate().class_list(many) == "names"
    huge = LabelSet(tuple(f"{'long_name_' * 4}{i}" for i in range(AUTO_LIST_CHARS["names"] // 40)))
    assert PromptTemplate().class_list(huge) == "none"
    assert PromptTemplate(show_classes="names").render(labels).class_list == "names"
    with pytest.raises(ConfigError, match="show_classes must be one of"):
        PromptTemplate(show_classes="all")


def test_max_length_counts_the_text_and_the_context_bounds_the_prompt(tiny_tokenizer):
    from classlm.scoring import PromptEncoder

    labels = LabelSet(tuple(f"class_{i}" for i in range(60)))
    rendered = PromptTemplate(show_classes="names").render(labels, tiny_tokenizer)
    enc = PromptEncoder(tiny_tokenizer, rendered, 16)
    assert len(enc.head_ids) > 200  # the class list alone is longer than max_length …
    assert enc.text_budget == 16  # … and the text keeps its 16 tokens
    long = " ".join(["the quick brown fox"] * 20)
    assert len(enc.encode([long]).ids[0]) == len(enc.head_ids) + 16 + len(enc.tail_ids)
    used = len(enc.head_ids) + len(enc.tail_ids)
    assert PromptEncoder(tiny_tokenizer, rendered, 512, context=used + 20).text_budget == 20
    with pytest.raises(ConfigError, match=r"of the model's context \(\d+ tokens\).*show_classes"):
        PromptEncoder(tiny_tokenizer, rendered, 512, context=used + 4)
    with pytest.raises(ConfigError, match="raise max_prompt_length"):
        PromptEncoder(tiny_tokenizer, rendered, 512, max_prompt_length=used)


def colliding_names(n):
    """``n`` intent names in groups of three that share their first word (as real intent sets do)."""
    heads = ["account", "card", "payment", "refund", "transfer", "balance", "bill", "credit", "loan", "order"]
    tails = ["status", "problem", "request", "change", "limit", "fee"]
    return [f"{heads[i // 6 % len(heads)]}_{tails[i % 6]}_{i // 60}" if i >= 60 else
            f"{heads[i // 6]}_{tails[i % 6]}" for i in range(n)]  # fmt: skip


def test_auto_scoring_resolves_by_collisions_and_is_saved(tiny_model_dir, tmp_path):
    names = colliding_names(12)
    texts = [f"my {n.replace('_', ' ')} please" for n in names]
    clf = LMClassifier(model=str(tiny_model_dir), labels=names).fit(texts, names)
    assert clf.method_.scoring == COLLISION_SCORING and clf.scoring == "auto"
    plain = LMClassifier(model=str(tiny_model_dir), labels=["Sports", "World"]).fit(["a", "b"], ["Sports", "World"])
    assert plain.method_.scoring == "first_token"
    clf.save(tmp_path / "clf")
    doc = json.loads((tmp_path / "clf" / "classlm.json").read_text())
    assert doc["options"]["scoring"] == COLLISION_SCORING and doc["schema_version"] == 2
    loaded = LMClassifier.load(tmp_path / "clf")
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)
    assert loaded.label_set_ == clf.label_set_


@pytest.mark.parametrize("scoring", ["auto_verbalizer", "name_rows"])
def test_collision_heads_score_any_number_of_colliding_classes(tiny_model_dir, scoring):
    names = colliding_names(30)
    clf = LMClassifier(model=str(tiny_model_dir), labels=names, scoring=scoring).fit([])
    proba = clf.predict_proba(["my card limit please", "refund status"])
    assert proba.shape == (2, 30) and np.allclose(proba.sum(1), 1)
    assert len({tuple(s) for s in clf.method_.tokens.sequences}) == 30
    if scoring == "auto_verbalizer":
        assert len(set(clf.method_.tokens.first_ids)) == 30
    desc = clf.method_.describe()
    assert desc["scoring"] == scoring and len(desc["answers"]) == 30


def test_name_rows_logits_are_the_mean_of_the_name_tokens_logits(tiny_model_dir):
    """z_c = h · mean_t W[t] = mean_t (h · W[t]): checked against a plain forward's full-vocabulary logits."""
    import torch

    names = ["Sports news", "Sports", "World news"]
    clf = LMClassifier(model=str(tiny_model_dir), labels=names, scoring="name_rows", dtype="float32").fit([])
    text = "The team won the match."
    z = clf.predict_scores([text]).logits[0]
    method = clf.method_
    ids = torch.as_tensor([method.encoder.encode([text]).ids[0]])
    with torch.no_grad():
        full = clf.backbone_.model(input_ids=ids).logits[0, -1].float()
    expected = [float(full[list(seq)].mean()) for seq in method.tokens.sequences]
    np.testing.assert_allclose(z, expected, atol=1e-4)


def test_name_rows_trains_with_class_ce_and_refuses_vocab_ce(tiny_model_dir):
    names = colliding_names(6)
    texts = [f"{n.replace('_', ' ')} {i}" for i in range(4) for n in names]
    y = [n for _ in range(4) for n in names]
    train = {"max_steps": 3, "batch_size": 4, "lr": 1e-2}
    clf = LMClassifier(model=str(tiny_model_dir), labels=names, scoring="name_rows", lora={"r": 2}, train=train)
    before = LMClassifier(model=str(tiny_model_dir), labels=names, scoring="name_rows").fit([]).predict_scores(texts)
    clf.fit(texts, y)
    assert not np.allclose(clf.predict_scores(texts).logits, before.logits)  # the adapters moved the logits
    vocab = LMClassifier(model=str(tiny_model_dir), labels=names, scoring="name_rows", lora={"r": 2},
                         train={**train, "loss": "vocab_ce"})  # fmt: skip
    with pytest.raises(ConfigError, match="vocab_ce.*one answer token per class"):
        vocab.fit(texts, y)


def test_schema_1_manifests_load_with_their_whole_prompt_limit(tiny_model_dir, tmp_path):
    clf = LMClassifier(model=str(tiny_model_dir), labels=["Sports", "World"], max_length=64).fit([])
    clf.save(tmp_path / "clf")
    file = tmp_path / "clf" / "classlm.json"
    doc = json.loads(file.read_text())
    doc["schema_version"] = 1  # as classlm wrote it before max_length counted the text only
    doc["options"].pop("max_prompt_length")
    file.write_text(json.dumps(doc))
    old = LMClassifier.load(tmp_path / "clf")
    enc = old.method_.encoder
    assert old.max_prompt_length == 64
    assert enc.text_budget == 64 - len(enc.head_ids) - len(enc.tail_ids)  # the room the text had before
    assert clf.method_.encoder.text_budget == 64  # a new classifier: the text's own 64 tokens


def test_calibration_hold_out_keeps_a_row_of_every_class_and_says_so():
    from classlm.data import calibration_split

    y = [f"c{i}" for i in range(150) for _ in range(6)] + ["lonely"]
    keep, held, note = calibration_split(y, 0.1, seed=0)
    assert {y[i] for i in held} == {f"c{i}" for i in range(150)}  # 10% of 6 rows rounds to 1: one each
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == len(y)
    assert f"{len(held)} of {len(y)} rows, at least one of every class" in note and "1 class(es) with one row" in note


def test_train_cli_on_60_colliding_classes_needs_no_options(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from test_cli import run_cli

    names = colliding_names(60)
    assert len(first_token_groups([[n.split("_")[0]] for n in names])) == 10  # 60 classes, 10 shared first words
    folder = tmp_path / "intents"
    folder.mkdir()
    rows = [{"text": f"{n.replace('_', ' ')} number {i}", "label": n} for i in range(3) for n in names]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    code, _, err = run_cli(
        monkeypatch, capsys, "train", folder, "-m", tiny_model_dir, "--out", run, "--max-steps", 2, "--lora-r", 2
    )
    assert code == 0, err
    doc = json.loads((run / "classlm.json").read_text())
    # The tiny vocabulary has too few tokens for 60 distinct first tokens: auto then takes name_rows.
    assert doc["options"]["scoring"] in (COLLISION_SCORING, "name_rows") and len(doc["labels"]["names"]) == 60
    assert doc["calibration"]["n"] >= 60  # a calibration row of every class


def test_auto_epochs_follow_the_rows_and_the_rows_per_class(tiny_model_dir):
    from classlm.config import TrainConfig, auto_epochs

    assert TrainConfig().epochs is None  # the default: by the rows and the rows per class
    # Per class (48 examples of each): 151 classes in 900 rows → 8 passes, in 3,000 → 3; 50 in 900 → 3.
    assert (auto_epochs(900, 151), auto_epochs(3000, 151), auto_epochs(900, 50)) == (8, 3, 3)
    # In all (2,400 examples): a few classes in 810 or 900 rows → 3 passes, in 1,200 → 2; at least 2 up to 10,000 rows.
    assert [auto_epochs(n, 4) for n in (810, 900, 1200, 2400, 3000, 10_000, 20_000)] == [3, 3, 2, 2, 2, 2, 1]
    assert [auto_epochs(n, 4, min_examples=0) for n in (900, 3000)] == [1, 1]  # the rule before the recipe study
    assert auto_epochs(5, 2) == 8  # at most 8
    with pytest.raises(ConfigError, match="epochs must be a positive number or None"):
        TrainConfig(epochs=0)
    names = colliding_names(6)
    texts = [f"{n.replace('_', ' ')} {i}" for i in range(4) for n in names]
    y = [n for _ in range(4) for n in names]
    clf = LMClassifier(model=str(tiny_model_dir), labels=names, lora={"r": 2}, train={"batch_size": 6, "lr": 1e-3})
    clf.fit(texts, y)
    # 24 rows less one calibration row per class: 18, 3 per class → ceil(48 / 3) = 16, capped at 8 passes.
    assert clf.training_["n_train"] == 18 and clf.training_["epochs"] == 8 and clf.training_["steps"] == 8 * 3
    # The same training as epochs=8 set by hand, weight for weight (benchmarks/recipe.py relies on it).
    by_hand = LMClassifier(
        model=str(tiny_model_dir), labels=names, lora={"r": 2}, train={"batch_size": 6, "lr": 1e-3, "epochs": 8}
    ).fit(texts, y)
    np.testing.assert_array_equal(clf.predict_proba(texts), by_hand.predict_proba(texts))
