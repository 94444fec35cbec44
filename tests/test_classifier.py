"""LMClassifier's scikit-learn contract on the tiny model."""

import json

import numpy as np
import pytest
from sklearn.base import clone

from classlm import LMClassifier
from classlm.errors import ArtifactError, ConfigError, DataError, NotFittedError

TEXTS = [
    "Stocks fell sharply on Monday.",
    "The team won the match.",
    "A new phone was released today.",
    "Great movie!",
    "Terrible service, would not recommend.",
    "I love this so much.",
]
Y = ["Business", "Sports", "Sci/Tech", "World", "World", "Sports"]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture()
def clf(tiny_model_dir):
    return LMClassifier(model=str(tiny_model_dir), labels=LABELS, batch_size=4).fit(TEXTS)


def test_predict_proba_rows_sum_to_one_and_columns_follow_classes(clf):
    p = clf.predict_proba(TEXTS)
    assert p.shape == (len(TEXTS), 4) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert list(clf.classes_) == LABELS
    assert list(clf.predict(TEXTS)) == [LABELS[i] for i in p.argmax(1)]


def test_batch_size_does_not_change_probabilities(clf):
    p4 = clf.predict_proba(TEXTS)
    clf.batch_size = 1
    np.testing.assert_allclose(clf.predict_proba(TEXTS), p4, atol=1e-4)


def test_columns_follow_the_labels_argument(tiny_model_dir):
    # Without the class list the prompt is the same for both orders, so the columns must be an exact permutation.
    prompt = {"show_classes": False}
    a = LMClassifier(model=str(tiny_model_dir), labels=LABELS, prompt=prompt).fit([])
    b = LMClassifier(model=str(tiny_model_dir), labels=LABELS[::-1], prompt=prompt).fit([])
    assert list(b.classes_) == LABELS[::-1]
    np.testing.assert_allclose(b.decision_function(TEXTS), a.decision_function(TEXTS)[:, ::-1], atol=1e-6)


def test_labels_default_to_sorted_y_and_fit_fits_temperature(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir)).fit(TEXTS, Y)
    assert list(clf.classes_) == sorted(set(Y))
    assert clf.calibration_info_["fitted"] and clf.calibration_info_["n"] == len(TEXTS)
    assert clf.temperature_ != 1.0
    # The argmax never moves with temperature.
    z = clf.predict_scores(TEXTS).logits
    assert (clf.predict_proba(TEXTS).argmax(1) == z.argmax(1)).all()


def test_calibration_none_keeps_unit_temperature(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir), calibration="none").fit(TEXTS, Y)
    assert clf.temperature_ == 1.0


def test_score_is_accuracy(clf):
    pred = clf.predict(TEXTS)
    assert clf.score(TEXTS, Y) == pytest.approx(np.mean(pred == np.array(Y, dtype=object)))


def test_unknown_label_in_y(tiny_model_dir):
    with pytest.raises(DataError, match="Cooking"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(TEXTS[:2], ["World", "Cooking"])


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"method": "magic"}, ConfigError, "available methods"),
        ({"scoring": "best"}, ConfigError, "scoring must be"),
        ({"calibration": "platt"}, ConfigError, "calibration must be"),
        ({"batch_size": 0}, ConfigError, "batch_size"),
    ],
)
def test_bad_options_fail_in_fit(tiny_model_dir, kwargs, err, match):
    with pytest.raises(err, match=match):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, **kwargs).fit([])


def test_input_validation(clf):
    with pytest.raises(DataError, match="wrap it in a list"):
        clf.predict_proba("just one string")
    with pytest.raises(DataError, match="text #1"):
        clf.predict_proba(["ok", 3])
    assert clf.predict_proba([]).shape == (0, 4)


def test_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted"):
        LMClassifier(labels=LABELS).predict_proba(["x"])


def test_no_labels_no_y():
    with pytest.raises(ConfigError, match="pass labels"):
        LMClassifier().fit(["x"])


def test_clone_gives_an_unfitted_equal_estimator(clf):
    c = clone(clf)
    assert c.get_params() == clf.get_params()
    assert not hasattr(c, "method_")
    np.testing.assert_allclose(c.fit(TEXTS).predict_proba(TEXTS), clf.predict_proba(TEXTS), atol=1e-6)


def test_calibrated_classifier_cv_on_frozen_estimator(tiny_model_dir):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    base = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="none").fit([])
    texts = TEXTS * 5  # 5 rows of the rarest class: one per cross-validation fold
    y = Y * 5
    cal = CalibratedClassifierCV(FrozenEstimator(base), method="sigmoid").fit(texts, y)
    p = cal.predict_proba(texts)
    assert p.shape == (len(texts), len(set(y)))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert set(cal.classes_) == set(y)


def test_save_load_round_trip(clf, tmp_path):
    clf.fit(TEXTS, Y)
    path = clf.save(tmp_path / "run", metrics={"accuracy": 0.5})
    doc = json.loads((path / "classlm.json").read_text())
    assert doc["schema_version"] == 2
    assert doc["labels"]["names"] == LABELS
    assert doc["class_tokens"]["sequences"] == [list(s) for s in clf.method_.tokens.sequences]
    assert doc["calibration"]["temperature"] == pytest.approx(clf.temperature_)
    assert doc["metrics"] == {"accuracy": 0.5}
    loaded = LMClassifier.load(path, batch_size=2)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), clf.predict_proba(TEXTS), atol=1e-6)
    assert loaded.batch_size == 2 and list(loaded.classes_) == LABELS
    # No pickle anywhere in the folder: the manifest, and the out-of-scope distance's arrays (fit saw labels).
    assert doc["out_of_scope"]["score"] == "mahalanobis" and doc["out_of_scope"]["n_fit"] == len(TEXTS)
    assert sorted(p.name for p in path.iterdir()) == ["classlm.json", doc["out_of_scope"]["file"]]


def test_save_overwrites_a_run_but_not_other_folders(clf, tmp_path):
    run = clf.save(tmp_path / "run")
    clf.save(run)  # replacing a run folder is fine
    assert (run / "classlm.json").is_file()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a classlm run folder"):
        clf.save(other)
    assert (other / "cat.jpg").exists()


def test_load_rejects_token_mismatch_and_corruption(clf, tmp_path):
    run = clf.save(tmp_path / "run")
    doc = json.loads((run / "classlm.json").read_text())
    doc["class_tokens"]["sequences"][0] = [1, 2, 3]
    (run / "classlm.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="different class token ids"):
        LMClassifier.load(run)
    (run / "classlm.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        LMClassifier.load(run)
    with pytest.raises(ArtifactError, match="not a classlm run folder"):
        LMClassifier.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="only run options"):
        LMClassifier.load(clf.save(tmp_path / "run2"), labels=["x", "y"])


def test_calibrate_refits_the_temperature_and_records_before_and_after(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    assert clf.temperature_ == 1.0
    assert clf.calibrate(TEXTS, Y, source="held-out rows") is clf
    info = clf.calibration_info_
    assert clf.temperature_ != 1.0 and info["source"] == "held-out rows" and info["n"] == len(TEXTS)
    assert info["after"]["nll"] <= info["before"]["nll"] + 1e-9
    with pytest.raises(DataError, match="'Cooking'"):
        clf.calibrate(TEXTS, ["Cooking"] * len(TEXTS))
    with pytest.raises(ConfigError, match="set calibration='temperature'"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="none").fit([]).calibrate(TEXTS, Y)
