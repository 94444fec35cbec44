"""`classlm bench`: one table from one command, rows reproducible from the command printed at its top."""

import json
import shlex

import numpy as np
import pytest

from classlm.bench import make_splits
from classlm.errors import ConfigError
from test_cli import run_cli

SPORT = ["The striker scored twice", "A tennis final in five sets", "The team won the league", "A late goal"]
MONEY = ["Shares fell on the market", "The bank raised its rates", "Profits rose at the firm", "Oil prices climbed"]


@pytest.fixture()
def news(tmp_path):
    folder = tmp_path / "news"
    folder.mkdir()
    rows = [
        {"text": f"{t} ({i})", "label": lab}
        for i in range(5)
        for lab, ts in (("sport", SPORT), ("money", MONEY))
        for t in ts
    ]
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "labels.json").write_text(json.dumps(["sport", "money"]))
    return folder


def test_splits_are_disjoint_seeded_and_sized():
    texts = [f"t{i}" for i in range(100)]
    labels = ["a", "b"] * 50
    s = make_splits(texts, labels, texts[:30], labels[:30], budget=40, n_calib=20, n_eval=10, n_test=25, seed=1)
    train, calib, ev = set(s.train[0]), set(s.calib[0]), set(s.eval[0])
    assert (len(train), len(calib), len(ev), len(s.test[0])) == (40, 20, 10, 25)
    assert not (train & calib or train & ev or calib & ev)
    assert s.calib[1].count("a") == 10  # stratified
    again = make_splits(texts, labels, texts[:30], labels[:30], budget=40, n_calib=20, n_eval=10, n_test=25, seed=1)
    assert again.train == s.train and again.test == s.test
    with pytest.raises(ConfigError, match="need more"):
        make_splits(texts, labels, texts, labels, budget=1, n_calib=90, n_eval=20, n_test=5, seed=0)


def test_bench_writes_one_row_per_method_and_reproduces(monkeypatch, capsys, tmp_path, news, tiny_model_dir):
    out = tmp_path / "results"
    args = [
        "bench",
        news,
        "--model",
        tiny_model_dir,
        "--methods",
        "tfidf,label_tokens,hidden_head",
        "--ensemble",
        "tfidf,hidden_head",
        "--budget",
        "16",
        "--n-test",
        "12",
        "--n-calib",
        "8",
        "--n-eval",
        "8",
        "--out",
        out,
    ]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    doc = json.loads((out / "bench_news.json").read_text())
    assert list(doc["rows"]) == ["tfidf", "label_tokens", "hidden_head", "ensemble(tfidf+hidden_head)"]
    assert doc["splits"] == {"train": 16, "calib": 8, "eval": 8, "test": 12}
    for row in doc["rows"].values():
        for key in ("accuracy", "macro_f1", "weighted_f1", "nll", "ece", "train_seconds", "texts_per_second"):
            assert np.isfinite(row[key]), (key, row)
    assert doc["rows"]["label_tokens"]["train_examples"] == 0
    assert doc["rows"]["tfidf"]["train_examples"] == 16 and doc["rows"]["tfidf"]["trainable_parameters"] > 0
    md = (out / "bench_news.md").read_text()
    command = md.split("Reproduce: `")[1].split("`")[0]
    assert command == doc["command"] and command.startswith("classlm bench ")
    # The printed command gives the same numbers again.
    code, _, stderr = run_cli(monkeypatch, capsys, *shlex.split(command)[1:])
    assert code == 0, stderr
    again = json.loads((out / "bench_news.json").read_text())
    for name, row in doc["rows"].items():
        for key in ("accuracy", "macro_f1", "nll", "ece"):
            assert again["rows"][name][key] == pytest.approx(row[key], abs=1e-6), (name, key)


def test_bench_rejects_unknown_methods(monkeypatch, capsys, news, tmp_path):
    code, _, stderr = run_cli(monkeypatch, capsys, "bench", news, "--methods", "tfidf,magic", "--out", tmp_path)
    assert code == 2 and "magic" in stderr and "traceback" not in stderr.lower()


def test_train_cli_fits_other_methods_and_classify_refuses_them_untrained(
    monkeypatch, capsys, tmp_path, news, tiny_model_dir
):
    run = tmp_path / "run"
    code, _, stderr = run_cli(
        monkeypatch,
        capsys,
        "train",
        news,
        "--model",
        tiny_model_dir,
        "--method",
        "tfidf",
        "--options",
        '{"min_df": 1}',
        "--out",
        run,
    )
    assert code == 0, stderr
    code, stdout, stderr = run_cli(monkeypatch, capsys, "classify", "--run", run, "--format", "jsonl", SPORT[0])
    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[0])["label"] == "sport"
    code, _, stderr = run_cli(
        monkeypatch, capsys, "classify", "--model", tiny_model_dir, "--method", "tfidf", "--labels", "sport,money", "x"
    )
    assert code == 2 and "classlm train" in stderr
