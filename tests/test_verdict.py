"""classlm.verdict: a collapsed classifier is named as such, and the comparison with TF-IDF + LR says plainly which
is ahead; ``classlm train`` reports both at the end of a run."""

from __future__ import annotations

import json

import numpy as np

from classlm.metrics import classification_metrics
from classlm.verdict import against_baseline, collapse
from test_cli import run_cli

NAMES = ["neg", "pos"]


def metrics(y, pred, k=2):
    proba = np.eye(k)[np.asarray(pred)] * 0.9 + 0.1 / k  # rows sum to 1, argmax = pred
    return classification_metrics(np.asarray(y), proba, [f"c{i}" for i in range(k)])


def test_collapse_to_the_majority_class_is_named_with_its_shares():
    y = [0] * 66 + [1] * 34  # a 66% majority, as the non-English set of the issue
    found = collapse(metrics(y, [0] * 100), NAMES)
    assert found is not None and found.top_class == "neg"
    assert (found.predicted_share, found.true_share, found.macro_recall, found.chance) == (1.0, 0.66, 0.5, 0.5)
    assert "predicts 'neg' for 100% of the 100 evaluation rows (truly 66% of them)" in found.message
    assert "do not use it as is" in found.message


def test_chance_level_macro_recall_is_a_collapse_and_a_real_classifier_is_not():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    guesses = rng.integers(0, 4, 400)  # spread over the classes, but knowing nothing
    found = collapse(metrics(y, guesses, k=4), [f"c{i}" for i in range(4)])
    assert found is not None and "at or barely above chance" in found.message and found.chance == 0.25
    good = np.where(rng.random(400) < 0.8, y, guesses)
    assert collapse(metrics(y, good, k=4), [f"c{i}" for i in range(4)]) is None


def test_a_rightly_dominant_class_and_tiny_evaluations_are_not_collapses():
    y = [0] * 95 + [1] * 5
    pred = [0] * 95 + [1] * 4 + [0]  # 96% predicted 'neg' because 95% are: a good classifier
    assert collapse(metrics(y, pred), NAMES) is None
    assert collapse(metrics([0, 1, 0, 1], [0, 0, 0, 0]), NAMES) is None  # 4 rows say nothing either way


def test_against_baseline_says_which_is_ahead_and_points_to_the_options_when_behind():
    y = [0, 1] * 10
    perfect, half = metrics(y, y), metrics(y, [0] * 20)
    ahead = against_baseline(perfect, half)
    assert ahead.earns_its_cost and ahead.margin > 0.6 and "ahead by" in ahead.message
    behind = against_baseline(half, perfect)
    assert not behind.earns_its_cost and behind.to_dict()["margin"] < -0.6
    assert "WORSE" in behind.message and "same 20 evaluation rows" in behind.message
    assert "--ensemble lora,tfidf" in behind.message and "--epochs" in behind.message


def test_cli_train_warns_of_a_collapse_and_records_it(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "skewed"
    folder.mkdir()
    words = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta", "iota kappa"]
    train = [{"text": f"{words[i % 5]} {i}", "label": "neg" if i % 20 else "pos"} for i in range(80)]
    val = [{"text": f"{words[i % 5]} v{i}", "label": NAMES[i % 2]} for i in range(20)]
    for split, rows in (("train", train), ("validation", val)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    # TF-IDF + LR on texts that carry no signal, 95% 'neg': it answers 'neg' throughout (deterministic, no model).
    code, out, err = run_cli(monkeypatch, capsys, "train", folder, "-o", run, "--method", "tfidf", "-l", "neg,pos")
    assert code == 0, err
    checks = json.loads((run / "classlm.json").read_text())["training"]["checks"]
    found = checks["collapse"]
    assert found is not None, checks
    assert (found["top_class"], found["predicted_share"], found["true_share"], found["n"]) == ("neg", 1.0, 0.5, 20)
    assert checks.get("baseline") is None  # TF-IDF is not compared with itself
    assert "warning:" in err and "has collapsed" in err and "## Checks" in out
    assert "try more training rows (--limit), or another --method" in err  # no LoRA to give more passes
    code, _, err = run_cli(monkeypatch, capsys, "train", folder, "-o", run, "--method", "tfidf", "-l", "neg,pos",
                           "--class-weights", "balanced", "--overwrite")  # fmt: skip
    assert code == 2 and "--class-weights weights the LoRA training loss" in err
    html = (run / "report.html").read_text()
    assert 'class="note warn"' in html and "has collapsed" in html


def test_multi_label_collapse_is_answering_no_label_or_every_label():
    from classlm.multilabel import multilabel_metrics
    from classlm.verdict import collapse_multi_label

    rng = np.random.default_rng(0)
    truth = (rng.random((40, 4)) < 0.3).astype(int)
    truth[0] = [1, 0, 0, 0]  # every row count is real
    names = ["a", "b", "c", "d"]
    good = np.clip(truth * 0.8 + rng.random((40, 4)) * 0.2, 0, 1)
    assert collapse_multi_label(multilabel_metrics(truth, good, names)) is None
    silent = collapse_multi_label(multilabel_metrics(truth, np.full((40, 4), 0.1), names))
    assert silent is not None and "no label" in silent.message and silent.predicted_per_text == 0.0
    loud = collapse_multi_label(multilabel_metrics(truth, np.full((40, 4), 0.9), names))
    assert loud is not None and "every label" in loud.message and loud.predicted_per_text == 4.0
    assert collapse_multi_label(multilabel_metrics(truth[:5], np.full((5, 4), 0.1), names)) is None  # too few rows
