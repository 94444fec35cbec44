"""scikit-learn conventions that its own tools rely on, for LMClassifier and Ensemble on the tiny model: a one-column
binary decision_function, classes_ typed like y (through save/load, the CLI and the server), scikit-learn's
NotFittedError, and targets that are not classes refused in its words."""

import json
import sys

import numpy as np
import pytest
import sklearn.exceptions
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import cross_val_score

from classlm import Ensemble, LMClassifier
from classlm.cli import main
from classlm.errors import DataError, NotFittedError
from classlm.metrics import softmax

TEXTS = [
    "Stocks fell sharply on Monday.",
    "The team won the match.",
    "A new phone was released today.",
    "Great movie!",
    "Terrible service, would not recommend.",
    "I love this so much.",
]
Y_INT = [10, 2, 10, 2, 2, 10]  # np.unique order [2, 10]; sorting the strings would give ['10', '2']


def _model(tiny_model_dir, **kw):
    return LMClassifier(model=str(tiny_model_dir), batch_size=4, **kw)


@pytest.fixture(scope="module")
def int_clf(tiny_model_dir):
    return _model(tiny_model_dir).fit(TEXTS, Y_INT)


# -- binary decision_function -----------------------------------------------------------------------------------------
def test_binary_decision_function_is_one_column_whose_sigmoid_is_predict_proba(tiny_model_dir):
    clf = _model(tiny_model_dir, labels=["positive", "negative"]).fit(TEXTS, ["positive", "negative"] * 3)
    d = clf.decision_function(TEXTS)
    z = clf.predict_scores(TEXTS).logits.astype(np.float64) / clf.temperature_
    assert d.shape == (len(TEXTS),)
    np.testing.assert_allclose(d, z[:, 1] - z[:, 0], atol=1e-6)
    p = clf.predict_proba(TEXTS)
    assert p.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-d)), atol=1e-9)
    np.testing.assert_allclose(p, softmax(z), atol=1e-9)  # predict_proba itself did not change
    assert list(clf.predict(TEXTS)) == [clf.classes_[int(v > 0)] for v in d]


def test_calibrated_classifier_cv_on_a_frozen_binary_classifier(tiny_model_dir):
    # Sorted classes, as scikit-learn's own classifiers have: its calibrator reads the binary column as classes_[1]
    # of the sorted classes.
    base = _model(tiny_model_dir, labels=["ham", "spam"], calibration="none").fit([])
    y = ["ham", "spam"] * 3
    cal = CalibratedClassifierCV(FrozenEstimator(base), method="sigmoid").fit(TEXTS * 2, y * 2)
    p = cal.predict_proba(TEXTS)
    assert p.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)


def test_multiclass_decision_function_keeps_one_column_per_class(tiny_model_dir):
    clf = _model(tiny_model_dir, labels=["World", "Sports", "Business"]).fit([])
    assert clf.decision_function(TEXTS).shape == (len(TEXTS), 3)


# -- typed classes ----------------------------------------------------------------------------------------------------
def test_integer_labels_give_integer_classes_and_predictions(int_clf):
    assert int_clf.classes_.tolist() == [2, 10] and int_clf.classes_.dtype.kind == "i"
    pred = int_clf.predict(TEXTS)
    assert pred.dtype.kind == "i" and set(pred.tolist()) <= {2, 10}
    assert int_clf.score(TEXTS, Y_INT) == pytest.approx(np.mean(pred == np.array(Y_INT)))
    assert list(int_clf.label_set_.names) == ["2", "10"]  # what the prompt shows


def test_cross_val_score_with_integer_labels_is_a_number(tiny_model_dir):
    scores = cross_val_score(_model(tiny_model_dir), TEXTS * 2, Y_INT * 2, cv=2, error_score="raise")
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all((0 <= scores) & (scores <= 1))


def test_labels_given_as_numbers_type_the_classes(tiny_model_dir):
    clf = _model(tiny_model_dir, labels={10: "good", 2: "bad"}).fit(TEXTS, Y_INT)
    assert clf.classes_.tolist() == [10, 2] and clf.predict(TEXTS).dtype.kind == "i"
    assert clf.label_set_.descriptions == ("good", "bad")
    assert _model(tiny_model_dir, labels=[2, 10]).fit([]).classes_.tolist() == [2, 10]


def test_string_classes_with_integer_labels_are_refused(tiny_model_dir):
    with pytest.raises(DataError, match=r"y holds numbers .* but the classes are strings"):
        _model(tiny_model_dir, labels=["2", "10"]).fit(TEXTS, Y_INT)


def test_integer_classes_survive_save_and_load_and_come_back_typed(int_clf, tmp_path, monkeypatch, capsys):
    run = int_clf.save(tmp_path / "run")
    assert json.loads((run / "classlm.json").read_text())["class_values"] == {"values": [2, 10], "dtype": "int64"}
    loaded = LMClassifier.load(run)
    assert loaded.classes_.tolist() == [2, 10] and loaded.classes_.dtype == int_clf.classes_.dtype
    np.testing.assert_array_equal(loaded.predict(TEXTS), int_clf.predict(TEXTS))
    # The CLI: the label is a JSON number; probabilities are keyed by name (JSON keys are strings).
    monkeypatch.setattr(sys, "argv", ["classlm", "classify", "--run", str(run), "--format", "jsonl", TEXTS[0]])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["label"] in (2, 10) and isinstance(row["label"], int)
    assert set(row["probabilities"]) == {"2", "10"}
    # String labels read from a file still find their classes (evaluate and calibrate match by name).
    from classlm import evaluate

    assert evaluate(loaded, TEXTS, [str(v) for v in Y_INT]).to_dict()["metrics"]["n"] == len(TEXTS)


def test_the_server_answers_integer_labels_as_numbers(int_clf):
    from fastapi.testclient import TestClient

    from classlm.serving import ServeSettings, create_app

    with TestClient(create_app(int_clf, ServeSettings())) as client:
        r = client.post("/v1/classify", json={"texts": TEXTS[:2]})
    assert r.status_code == 200, r.text
    labels = [row["label"] for row in r.json()["results"]]
    assert labels == int_clf.predict(TEXTS[:2]).tolist() and all(isinstance(v, int) for v in labels)


def test_a_datasets_classlabel_column_gives_its_names(tiny_model_dir):
    """A ``datasets`` column of ClassLabel ints carries its names (``.features.names``): the classes are those."""

    class ClassLabel:
        names = ["sad", "happy"]

    class Column(list):
        features = ClassLabel()

    clf = _model(tiny_model_dir).fit(TEXTS, Column([1, 0, 1, 0, 0, 1]))
    assert clf.classes_.tolist() == ["happy", "sad"]
    with pytest.raises(DataError, match="-1 for 'unlabelled'"):
        _model(tiny_model_dir).fit(TEXTS[:2], Column([1, -1]))


def test_a_real_datasets_classlabel_column(tiny_model_dir):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1, 1, 0]}, features=features)
    clf = _model(tiny_model_dir).fit(ds["text"], ds["label"])
    assert clf.classes_.tolist() == ["a", "b"]
    assert set(clf.predict(TEXTS).tolist()) <= {"a", "b"}


# -- targets that are not classes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "y, match",
    [
        ([0.5, 1.7, 2.2, 0.1, 3.3, 1.1], "Unknown label type: continuous"),
        (["World", None, "Sports", "World", "Sports", "World"], r"Unknown label type: row 1: None"),
        ([1.0, float("nan"), 2.0, 1.0, 2.0, 1.0], r"Unknown label type: row 1: nan"),
        (["World", 1, "Sports", "World", "Sports", "World"], r"Mix of label input types \(string and number\)"),
        ([{"a": 1}, {"b": 1}, {"a": 1}, {"b": 1}, {"a": 1}, {"b": 1}], "Unknown label type: row 0: \\{'a': 1\\}"),
    ],
)
def test_targets_that_are_not_classes_are_refused(tiny_model_dir, y, match):
    with pytest.raises(DataError, match=match):
        _model(tiny_model_dir).fit(TEXTS, y)


# -- NotFittedError ---------------------------------------------------------------------------------------------------
def test_not_fitted_is_also_scikit_learns_error(tiny_model_dir, int_clf):
    for unfitted in (LMClassifier(labels=["a", "b"]), Ensemble([int_clf, int_clf])):
        with pytest.raises(sklearn.exceptions.NotFittedError) as info:
            unfitted.predict_proba(TEXTS)
        assert isinstance(info.value, NotFittedError)  # still classlm's, and a ClasslmError for the CLI


# -- Ensemble ---------------------------------------------------------------------------------------------------------
def test_ensemble_of_integer_members_is_typed_binary_and_round_trips(tiny_model_dir, int_clf, tmp_path):
    other = _model(tiny_model_dir, prompt={"instruction": "Is this text good or bad?"}).fit(TEXTS, Y_INT)
    ens = Ensemble([int_clf, other]).fit(TEXTS, Y_INT)
    assert ens.classes_.tolist() == [2, 10] and ens.predict(TEXTS).dtype.kind == "i"
    d = ens.decision_function(TEXTS)
    assert d.shape == (len(TEXTS),)
    np.testing.assert_allclose(ens.predict_proba(TEXTS)[:, 1], 1 / (1 + np.exp(-d)), atol=1e-9)
    assert ens.score(TEXTS, Y_INT) == pytest.approx(np.mean(ens.predict(TEXTS) == np.array(Y_INT)))
    loaded = Ensemble.load(ens.save(tmp_path / "ens"))
    assert loaded.classes_.tolist() == [2, 10] and loaded.classes_.dtype.kind == "i"
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), ens.predict_proba(TEXTS), atol=1e-6)
    with pytest.raises(DataError, match="Unknown label type: continuous"):
        Ensemble([int_clf, other]).fit(TEXTS, [0.5, 1.5, 2.5, 0.5, 1.5, 2.5])
