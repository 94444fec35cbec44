"""Inputs of several text fields: how they are read (dicts, tuples, DataFrames, data files), laid out in the prompt's
slots, truncated fairly, and scored the same with and without prefix reuse; the classifier, CLI and server on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from classlm import LMClassifier
from classlm.data import load_dataset
from classlm.errors import ConfigError, DataError
from classlm.fields import PAIR, Record, as_texts, layout_pieces, share_budget
from classlm.labels import LabelSet
from classlm.methods import get_method
from classlm.models import Backbone, ModelSource
from classlm.prompts import PromptTemplate

PAIRS = [
    ("A man is playing a guitar on stage.", "A person plays music."),
    ("The stock market fell sharply on Monday after the report.", "Shares went up."),
    ("Two dogs run in the park.", "Animals are outside."),
    ("The team won the match in the last minute.", "The team lost."),
]
LABELS = ["entailment", "not_entailment"]
Y = ["entailment", "not_entailment", "entailment", "not_entailment"]


def test_every_input_shape_gives_the_same_records():
    dicts = [{"text": a, "text_pair": b} for a, b in PAIRS]
    from_dicts, from_tuples = as_texts(dicts), as_texts(PAIRS)
    from_array = as_texts(np.array(PAIRS, dtype=object))
    assert [r.values for r in from_dicts] == [r.values for r in from_tuples] == [r.values for r in from_array]
    assert all(isinstance(r, Record) and r.fields == PAIR for r in from_dicts)
    assert from_dicts[0] == "Text:\nA man is playing a guitar on stage.\n\nText pair:\nA person plays music."
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(dicts)
    assert [r.values for r in as_texts(frame)] == [r.values for r in from_dicts]
    # A fitted classifier names its fields: dicts give them by key (other keys left alone), in its order.
    swapped = as_texts([{"hypothesis": b, "premise": a, "id": 7} for a, b in PAIRS], fields=("premise", "hypothesis"))
    assert swapped[0].values == PAIRS[0] and swapped[0].fields == ("premise", "hypothesis")
    assert as_texts(["one text"]) == ["one text"] and not isinstance(as_texts(["x"])[0], Record)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([{"text": "a", "text_pair": "b"}, {"text": "c"}], r"input #1 .*\(missing: \['text_pair'\]\)"),
        ([("a", "b"), ("c",)], "input #1 has 1 text"),
        ([("a", 3)], "field 'text_pair' of input #0 is a int"),
        ([("a", "b"), "plain"], "text #1 is a single string"),
    ],
)
def test_inconsistent_inputs_are_refused_naming_the_row(bad, match):
    with pytest.raises(DataError, match=match):
        as_texts(bad)


def test_share_budget_gives_short_fields_all_and_splits_the_rest():
    assert share_budget([5, 100], 40) == [5, 35]  # the short field keeps everything
    assert share_budget([100, 100], 41) == [20, 21]
    assert share_budget([10, 20], 100) == [10, 20]  # nothing to cut
    assert sum(share_budget([7, 300, 90], 64)) == 64


def test_input_format_slots_and_their_errors():
    assert layout_pieces("Premise:\n{a}\n\nHypothesis:\n{b}\n", ("a", "b")) == ["Premise:\n", "\n\nHypothesis:\n", "\n"]
    assert layout_pieces("{{literal}} {a}", ("a",)) == ["{literal} ", ""]
    with pytest.raises(ConfigError, match="twice"):
        PromptTemplate(input_format="{a} {a}")
    with pytest.raises(ConfigError, match="no {field} slot"):
        PromptTemplate(input_format="no slots")
    with pytest.raises(ConfigError, match="plain field name"):
        PromptTemplate(input_format="{a:>10}")
    assert PromptTemplate(input_format="Q: {question}\nContext: {context}").fields == ("question", "context")


@pytest.fixture()
def backbone(tiny_model, tiny_tokenizer):
    return Backbone(tiny_model, tiny_tokenizer, ModelSource("tiny", "folder", "-"), torch.device("cpu"), torch.float32)


def _method(backbone, name="label_tokens", max_length=256, **prompt):
    cls = get_method(name)
    m = cls(LabelSet.from_spec(LABELS, letters=cls.letters), PromptTemplate(fields=PAIR, **prompt),
            scoring="first_token", max_length=max_length)  # fmt: skip
    m.prepare(backbone)
    return m


@pytest.mark.parametrize("chat", [True, False])
def test_pair_prompt_puts_each_field_in_its_slot(backbone, tiny_tokenizer, chat):
    m = _method(backbone, chat=chat, input_format="Premise:\n{text}\n\nHypothesis:\n{text_pair}")
    records = as_texts(PAIRS)
    enc = m.encoder.encode(records)
    for record, ids in zip(records, enc.ids):
        rendered = m.rendered.format(record)
        assert "Premise:\n" + record.values[0] + "\n\nHypothesis:\n" + record.values[1] in rendered
        assert rendered.startswith(m.rendered.head) and m.rendered.head.endswith("Premise:\n")
        # Each field tokenised in its own slot reads as the whole prompt tokenised at once.
        assert ids == tiny_tokenizer(rendered, add_special_tokens=False).input_ids
    assert not enc.truncated.any() and enc.cut_fields == ((),) * len(PAIRS)


@pytest.mark.parametrize("name, chat", [("label_tokens", True), ("label_tokens", False), ("letters", True)])
def test_pair_prefix_reuse_equals_the_plain_path(backbone, name, chat):
    m = _method(backbone, name, chat=chat)
    records = as_texts(PAIRS)
    reused = m.score(records, batch_size=3)
    assert m.lm.cached_prefix is not None and m.lm.cached_prefix.length == len(m.encoder.head_ids)
    m.reuse_prefix = False
    plain = m.score(records, batch_size=3)
    np.testing.assert_allclose(reused.logits, plain.logits, atol=1e-4)


def test_truncation_shares_the_budget_and_names_the_field_cut(backbone):
    m = _method(backbone, max_length=40)
    long = " ".join(["the quick brown fox"] * 50)
    records = as_texts([(long, "a short hypothesis"), ("short premise", "short hypothesis")])
    enc = m.encoder.encode(records)
    assert enc.truncated.tolist() == [True, False] and enc.cut_fields == (("text",), ())
    sep = m.encoder.separator_ids[0]
    fixed = len(m.encoder.head_ids) + len(sep) + len(m.encoder.tail_ids)
    assert len(enc.ids[0]) == fixed + 40  # max_length: the fields' own tokens together
    body = enc.ids[0][len(m.encoder.head_ids) : -len(m.encoder.tail_ids)]
    hypothesis = m.backbone.tokenizer("a short hypothesis", add_special_tokens=False).input_ids
    assert body[-len(hypothesis) :] == hypothesis  # the short field kept whole, the long one cut to what is left
    scores = m.score(records, batch_size=2)
    assert scores.cut_fields == (("text",), ())


def test_classifier_on_pairs_round_trips_and_refuses_plain_strings(tiny_model_dir, tmp_path):
    dicts = [{"text": a, "text_pair": b} for a, b in PAIRS]
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(dicts, Y)
    assert clf.method_.prompt.fields == PAIR
    np.testing.assert_allclose(clf.predict_proba(PAIRS), clf.predict_proba(dicts))
    # Two fields swapped are another input: the probabilities move.
    assert not np.allclose(clf.predict_proba([(b, a) for a, b in PAIRS]), clf.predict_proba(PAIRS))
    clf.save(tmp_path / "pairs")
    loaded = LMClassifier.load(tmp_path / "pairs")
    assert loaded.method_.prompt.fields == PAIR
    np.testing.assert_allclose(loaded.predict_proba(dicts), clf.predict_proba(dicts), atol=1e-6)
    with pytest.raises(DataError, match="single string but the inputs have the fields"):
        loaded.predict_proba(["just one text"])
    # The TF-IDF method reads the laid-out pair as one string.
    tfidf = LMClassifier(model=str(tiny_model_dir), method="tfidf", labels=LABELS).fit(dicts * 3, Y * 3)
    assert tfidf.predict_proba(PAIRS).shape == (4, 2)


def test_data_files_read_a_text_pair_column_and_named_columns(tmp_path):
    rows = [{"premise": a, "hypothesis": b, "text": a, "text_pair": b, "label": y} for (a, b), y in zip(PAIRS, Y)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    default = load_dataset(tmp_path / "train.jsonl")
    assert default.texts[0].fields == PAIR and default.texts[0].values == PAIRS[0]
    named = load_dataset(tmp_path / "train.jsonl", text_col="hypothesis,premise")
    assert named.texts[0].fields == ("hypothesis", "premise") and named.texts[0].values == PAIRS[0][::-1]
    single = load_dataset(tmp_path / "train.jsonl", text_col="premise")
    assert single.texts[0] == PAIRS[0][0] and not isinstance(single.texts[0], Record)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "a", "text_pair": "", "label": "x"}) + "\n")
    with pytest.raises(DataError, match="empty or whitespace-only text.*'text_pair'"):
        load_dataset(tmp_path / "bad.jsonl")


def test_server_answers_inputs_and_refuses_plain_texts(tiny_model_dir):
    from classlm.serving import ServeSettings, create_app

    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([{"text": a, "text_pair": b} for a, b in PAIRS], Y)
    with TestClient(create_app(clf, ServeSettings(max_wait_ms=1))) as client:
        inputs = [{"text": a, "text_pair": b} for a, b in PAIRS]
        r = client.post("/v1/classify", json={"inputs": inputs})
        assert r.status_code == 200
        got = np.array([[row["probabilities"][c] for c in LABELS] for row in r.json()["results"]])
        np.testing.assert_allclose(got, clf.predict_proba(PAIRS), atol=1e-5)
        assert client.get("/v1/model").json()["fields"] == list(PAIR)
        r = client.post("/v1/classify", json={"texts": ["one text"]})
        assert r.status_code == 422 and "send them as 'inputs'" in r.json()["error"]["message"]
        r = client.post("/v1/classify", json={"inputs": [{"text": "a", "text_pair": " "}]})
        assert r.status_code == 422 and "input 0 field 'text_pair' is empty" in r.json()["error"]["message"]
        r = client.post("/v1/classify", json={"inputs": [{"text": "a"}]})
        assert r.status_code == 422 and "missing: ['text_pair']" in r.json()["error"]["message"]
        r = client.post("/v1/classify", json={"inputs": [{"text": "a", "text_pair": "b", "note": "c"}]})
        assert r.status_code == 422 and "['note'] this classifier does not read" in r.json()["error"]["message"]


def test_cli_classify_reads_named_text_columns_and_reports_the_field_cut(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from test_cli import run_cli

    long = " ".join(["the quick brown fox"] * 40)
    rows = [{"premise": a, "hypothesis": b} for a, b in [*PAIRS, (long, "short")]]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["classify", "-m", tiny_model_dir, "-l", ",".join(LABELS), "--format", "jsonl", "--max-length", "24"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--file", tmp_path / "pairs.jsonl",
                             "--text-col", "premise,hypothesis")  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r["premise"], r["hypothesis"]) for r in lines[:4]] == PAIRS
    assert lines[-1]["fields_cut"] == ["premise"] and "fields cut: premise in" in " ".join(err.split())
    code, out, err = run_cli(monkeypatch, capsys, *args, "--file", tmp_path / "pairs.jsonl", "--text-col", "premise,x")
    assert code != 0 and "text column 'x' not found" in err


@pytest.mark.parametrize("method", ["few_shot", "generate", "hidden_head"])
def test_every_prompt_method_reads_pairs_into_their_slots(tiny_model_dir, method):
    dicts = [{"text": a, "text_pair": b} for a, b in PAIRS] * 2
    options = {"k": 2} if method == "few_shot" else None
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, method=method, method_options=options,
                       prompt={"chat": False}).fit(dicts, Y * 2)  # fmt: skip
    scores = clf.predict_scores(dicts)
    assert scores.logits.shape == (8, 2) and scores.cut_fields == ((),) * 8
    rendered = clf.method_.rendered.format(clf.read_inputs(dicts[:1])[0])
    assert f"Text:\n{PAIRS[0][0]}\n\nText pair:\n{PAIRS[0][1]}" in rendered  # hidden_head reads no answer cue
    if method == "few_shot":  # the examples are laid out as the inputs are: each field under its header
        assert clf.method_.rendered.head.count("\n\nText pair:\n") == 2


def test_inputs_keep_their_fields_by_name_everywhere(tiny_model_dir):
    dicts = [{"text": a, "text_pair": b} for a, b in PAIRS]
    swapped = [{"text_pair": b, "id": i, "text": a} for i, (a, b) in enumerate(PAIRS)]  # other order, an extra key
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(dicts, Y)
    # eval_set / calib_set rows are read by name, laid out as the classifier lays out its inputs.
    assert clf.labelled_rows((swapped, Y), "eval_set")[0] == clf.read_inputs(dicts)
    plain = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([a for a, _ in PAIRS], Y)
    with pytest.raises(DataError, match=r"this classifier reads \['text'\]"):  # text_pair would be dropped unseen
        plain.predict_proba(as_texts(PAIRS))
    # One named field: fit and predict read it alike.
    one = [{"premise": a} for a, _ in PAIRS]
    single = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(one, Y)
    assert single.method_.prompt.fields == ("premise",) and single.method_.rendered.head.endswith("Premise:\n")
    np.testing.assert_allclose(single.predict_proba(one), single.predict_proba([a for a, _ in PAIRS]))


def test_column_names_that_are_not_identifiers_or_are_numbers():
    pd = pytest.importorskip("pandas")
    records = as_texts(pd.DataFrame([list(p) for p in PAIRS]))  # columns 0 and 1
    assert records[0].fields == ("0", "1") and records[0].values == PAIRS[0]
    spaced = as_texts([{"sentence 1": a, "sentence 2": b} for a, b in PAIRS])
    assert spaced[0] == f"Sentence 1:\n{PAIRS[0][0]}\n\nSentence 2:\n{PAIRS[0][1]}"
    with pytest.raises(DataError, match="cannot name a prompt slot"):
        as_texts([{"a:b": "x", "c": "y"}])
    import copy
    import pickle

    custom = as_texts(PAIRS, fields=PAIR, layout="P: {text}\nH: {text_pair}")[0]
    assert (
        copy.deepcopy(custom) == custom == pickle.loads(pickle.dumps(custom)) == f"P: {PAIRS[0][0]}\nH: {PAIRS[0][1]}"
    )


def test_few_shot_examples_keep_every_field():
    from classlm.methods.few_shot import cut_input

    long = " ".join(["word"] * 200)
    cut = cut_input(as_texts([(long, "the hypothesis")])[0], 120)
    assert cut.values[1] == "the hypothesis" and len(cut.values[0]) <= 120 - len("the hypothesis")


def test_nearest_few_shot_lays_out_pairs_once(tiny_model_dir):
    pytest.importorskip("sentence_transformers")
    dicts = [{"text": a, "text_pair": b} for a, b in PAIRS] * 2
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, method="few_shot", prompt={"chat": False},
                       method_options={"k": 2, "selection": "nearest"}).fit(dicts, Y * 2)  # fmt: skip
    row = clf.method_.encoder.encode(clf.read_inputs(dicts[:1])).ids[0]
    text = clf.backbone_.tokenizer.decode(row)
    assert "Text:\nText:" not in text and text.count("Text pair:\n") == 3  # two examples and the text itself
    assert text.endswith(f"Text:\n{PAIRS[0][0]}\n\nText pair:\n{PAIRS[0][1]}\nAnswer:")


def test_pairwise_leaves_room_for_its_longest_question(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir), method="pairwise", max_prompt_length=200,
                       labels={"entailment": "the second text follows from the first one, word for word",
                               "not_entailment": "no"}).fit([])  # fmt: skip
    m = clf.method_
    long = " ".join(["the quick brown fox"] * 40)
    row = m.encoder.encode([long]).ids[0]
    shared = len(m.encoder.tail_ids)
    assert max(len(row) + len(q) - shared for q in m.question_ids) <= 200  # every full question fits the limit


def test_inspect_shows_every_slot(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from test_cli import run_cli

    dicts = [{"text": a, "text_pair": b} for a, b in PAIRS]
    LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(dicts, Y).save(tmp_path / "run")
    code, out, err = run_cli(monkeypatch, capsys, "inspect", "--run", tmp_path / "run")
    assert code == 0, err
    assert "Text:\n<text>\n\nText pair:\n<text_pair>" in out
