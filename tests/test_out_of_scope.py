"""Out-of-scope scores, AUROC, abstaining: on hand-made numbers and on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.errors import DataError
from classlm.out_of_scope import auroc, out_of_scope_report, out_of_scope_scores, selective_accuracy

LABELS = ["World", "Sports", "Business"]
TEXTS = ["Stocks fell sharply on Monday.", "The team won the match.", "Parliament voted.", "Bake for an hour."]


def test_auroc_is_the_mann_whitney_statistic_with_ties_counted_half():
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auroc([1, 0], [0.5, 0.5]) == 0.5
    # 3 positives x 2 negatives = 6 pairs: 3 won, 1 tied, 2 lost -> 3.5 / 6
    assert auroc([1, 1, 1, 0, 0], [0.9, 0.4, 0.3, 0.4, 0.35]) == pytest.approx(3.5 / 6)
    assert auroc([1, 1], [0.2, 0.3]) is None


def test_scores_rise_as_a_text_leaves_the_classes():
    z = np.array([[8.0, 0.0, 0.0], [1.0, 0.9, 0.8], [-5.0, -5.1, -5.2]])
    s = out_of_scope_scores(z, class_mass=[0.95, 0.9, 0.05])
    assert list(s) == ["class_mass", "energy", "max_proba", "answer_mass"]
    np.testing.assert_allclose(s["class_mass"], [0.05, 0.1, 0.95])
    np.testing.assert_allclose(s["answer_mass"], 1 - np.array([0.95, 0.9, 0.05]) * (1 - s["max_proba"]))
    assert s["max_proba"][0] < s["max_proba"][1]  # one clear winner vs three close ones
    assert s["energy"][1] < s["energy"][2]  # same spread, far lower logits: more out of scope
    assert "class_mass" not in out_of_scope_scores(z)


def test_selective_accuracy_answers_the_most_in_scope_rows_first():
    score = np.array([0.1, 0.2, 0.3, 0.9])
    correct = np.array([True, True, False, False])
    curve = selective_accuracy(score, correct, coverages=(1.0, 0.75, 0.5))
    assert [r["accuracy"] for r in curve] == [0.5, pytest.approx(2 / 3), 1.0]
    assert curve[2]["threshold"] == 0.2


def test_report_counts_answered_out_of_scope_rows_as_wrong():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])
    oos = np.array([False, False, True, True])
    y = np.array([0, 1, -1, -1])
    scores = {"max_proba": 1 - proba.max(axis=1)}
    report = out_of_scope_report(y, proba, scores, oos)
    assert report["n_out_of_scope"] == 2
    assert report["scores"]["max_proba"]["auroc"] == 1.0
    at = {r["coverage"]: r["accuracy"] for r in report["scores"]["max_proba"]["coverage_curve"]}
    assert at[1.0] == 0.5 and at[0.5] == 1.0


def test_predict_abstains_below_a_threshold_with_a_label_of_the_classes_type(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    top = clf.predict_proba(TEXTS).max(axis=1)
    cut = float(np.median(top))
    pred = clf.predict(TEXTS, abstain_below=cut)
    assert list(pred == "abstain") == list(top < cut)
    assert list(clf.predict(TEXTS, abstain_below=cut, abstain_label="unsure") == "unsure") == list(top < cut)
    with pytest.raises(DataError, match="'World' is a class"):
        clf.predict(TEXTS, abstain_below=0.5, abstain_label="World")
    with pytest.raises(DataError, match=r"a probability in \(0, 1\]"):
        clf.predict(TEXTS, abstain_below=1.5)
    numbers = LMClassifier(model=str(tiny_model_dir), labels=[0, 1, 2]).fit([])
    with pytest.raises(DataError, match="must be one too"):
        numbers.predict(TEXTS, abstain_below=0.9)
    out = numbers.predict(TEXTS, abstain_below=1.0, abstain_label=-1)
    assert out.dtype.kind == "i" and set(out) == {-1}
    scores = clf.out_of_scope_scores(TEXTS)
    assert set(scores) == {"class_mass", "energy", "max_proba", "answer_mass"}
    assert all(len(v) == len(TEXTS) for v in scores.values())
    np.testing.assert_allclose(scores["max_proba"], 1 - top, atol=1e-6)  # the class-mass pass: same logits to ~1e-8


def test_evaluate_reports_out_of_scope_rows_apart(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import json

    from classlm.evaluation import evaluate
    from test_cli import run_cli

    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    texts = [*TEXTS, "What is the weather?", "Set an alarm."]
    labels = ["Business", "Sports", "World", "oos", "oos", "oos"]
    report = evaluate(clf, texts, labels, oos_label="oos")
    assert report.metrics["n"] == 3  # oos is not a class: the usual metrics are over the in-scope rows
    oos = report.metrics["out_of_scope"]
    assert oos["n"] == 6 and oos["n_out_of_scope"] == 3 and oos["is_a_class"] is False
    assert set(oos["scores"]) == {"class_mass", "energy", "max_proba", "answer_mass"}
    assert all(0.0 <= s["auroc"] <= 1.0 for s in oos["scores"].values())
    # Every out-of-scope row answered is wrong: at full coverage at most the 3 in-scope rows of 6 can be right.
    assert all(s["coverage_curve"][0]["accuracy"] <= 0.5 for s in oos["scores"].values())
    assert "### Out of scope (3 of 6 rows labelled 'oos', not a class" in report.to_markdown()
    from classlm.html_report import render_html

    page = render_html("t", [("evaluation", report)])
    assert "Out of scope (3 of 6 rows labelled oos)" in page and "share answered" in page
    assert page.count("<polyline") >= 3  # one accuracy-by-coverage line per score
    with pytest.raises(DataError, match="oos_label='none': no row has that label"):
        evaluate(clf, texts, labels, oos_label="none")

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)) + "\n")
    base = ["evaluate", data, "--model", tiny_model_dir, "--labels", ",".join(LABELS), "--out", tmp_path / "r.json"]
    code, out, err = run_cli(monkeypatch, capsys, *base, "--oos-label", "oos")
    assert code == 0, err
    assert "### Out of scope" in out
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["out_of_scope"]["n_out_of_scope"] == 3
    code, out, err = run_cli(monkeypatch, capsys, *base)  # without the flag, 'oos' is an unknown label
    assert code != 0 and "oos" in err and "Traceback" not in err


def test_the_feature_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    from classlm.errors import ArtifactError
    from classlm.feature_distance import FeatureGaussian

    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    y = rng.integers(0, 3, 300)
    f = means[y] + rng.normal(0, [1.0, 2.0, 0.5], (300, 3))
    g = FeatureGaussian(shrinkage=0.2).fit(f, y)
    # By hand: class means, the shared covariance shrunk toward its mean variance, the nearest mean's distance.
    mu = np.stack([f[y == c].mean(0) for c in range(3)])
    r = f - mu[y]
    s = r.T @ r / len(f)
    s = 0.8 * s + 0.2 * np.trace(s) / 3 * np.eye(3)
    x = np.array([[0.5, 0.2, 0.1], [6.1, 0.3, 0.0], [3.0, 3.0, 5.0]])
    by_hand = [min((v - m) @ np.linalg.inv(s) @ (v - m) for m in mu) for v in x]
    np.testing.assert_allclose(g.distance(x), by_hand, rtol=1e-9)
    assert g.distance(x)[2] > 10 * g.distance(x)[:2].max()  # far from every class: far out of scope
    back = FeatureGaussian.from_saved(g.arrays(), g.info())
    np.testing.assert_allclose(back.distance(x), g.distance(x), rtol=1e-12)
    with pytest.raises(ArtifactError, match="do not fit together"):
        FeatureGaussian.from_saved({"whiten": np.eye(3), "means": np.zeros((2, 4)), "center": np.zeros(3)}, g.info())


def test_fit_on_labelled_rows_adds_the_feature_distance_and_keeps_it_through_save(tiny_model_dir, tmp_path):
    from classlm.feature_distance import FeatureGaussian

    y = ["Business", "Sports", "World", "Business"]
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(TEXTS, y)
    assert clf.feature_model_ is not None and clf.feature_model_.n_fit_ == 4
    scores = clf.out_of_scope_scores(TEXTS)
    assert set(scores) == {"class_mass", "energy", "max_proba", "answer_mass", "mahalanobis"}
    features = clf.predict_scores(TEXTS, features=True).features
    assert features.shape == (4, clf.backbone_.model.config.hidden_size)
    expected = FeatureGaussian().fit(features, clf.class_indices(y)).distance(features)
    # A class of one row sits at its own mean: distance 0 up to round-off (1e-14, which varies with the thread
    # count's summation order), so an absolute tolerance as well as the relative one.
    np.testing.assert_allclose(scores["mahalanobis"], expected, rtol=1e-6, atol=1e-9)
    clf.save(tmp_path / "run")
    back = LMClassifier.load(tmp_path / "run")
    np.testing.assert_allclose(
        back.out_of_scope_scores(TEXTS)["mahalanobis"], scores["mahalanobis"], rtol=1e-6, atol=1e-9
    )
    # No labels, nothing to fit it on; a scoring that reads no single hidden state has none either.
    assert LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([]).feature_model_ is None
    exact = LMClassifier(model=str(tiny_model_dir), labels=LABELS, scoring="exact").fit(TEXTS, y)
    assert exact.feature_model_ is None and "mahalanobis" not in exact.out_of_scope_scores(TEXTS)
    no_features = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    no_features.save(tmp_path / "zero")
    assert LMClassifier.load(tmp_path / "zero").feature_model_ is None
