"""Metrics against hand-computed values and against scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from classlm.errors import ConfigError
from classlm.metrics import (
    accuracy,
    brier,
    calibration_ratio,
    classification_metrics,
    classwise_ece,
    confusion_matrix,
    ece,
    ece_floor,
    log_softmax,
    nll,
    precision_recall_f1,
    reliability_bins,
    softmax,
)

# A 3-class example used by several hand computations.
Y = np.array([0, 1, 2, 1])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # pred 0, correct, conf 0.7
        [0.1, 0.8, 0.1],  # pred 1, correct, conf 0.8
        [0.3, 0.3, 0.4],  # pred 2, correct, conf 0.4
        [0.5, 0.4, 0.1],  # pred 0, wrong (true 1), conf 0.5
    ]
)
PRED = P.argmax(axis=1)  # [0, 1, 2, 0]


# -- softmax --------------------------------------------------------------------------------------------------------
def test_softmax_is_stable_on_huge_logits():
    p = softmax(np.array([[1000.0, 1000.0, 0.0], [-1000.0, -1001.0, -1002.0]]))
    assert p.dtype == np.float64 and np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-300)
    # Shift-invariance: exactly softmax([0, -1, -2]).
    e = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose(p[1], e / e.sum(), rtol=1e-12)


def test_log_softmax_matches_log_of_softmax_and_is_finite_at_1000():
    z = np.array([[1000.0, 0.0, -5.0], [1.0, 2.0, 3.0]])
    ls = log_softmax(z)
    assert np.all(np.isfinite(ls))
    assert ls[0, 1] == pytest.approx(-1000.0)  # log(e^0 / (e^1000 + ...)) = -1000 to double precision
    np.testing.assert_allclose(ls[1], np.log(softmax(z[1])), rtol=1e-12)


def test_softmax_axis_and_float32_input():
    z = np.arange(6, dtype=np.float32).reshape(2, 3)
    p0 = softmax(z, axis=0)
    assert p0.dtype == np.float64
    np.testing.assert_allclose(p0.sum(axis=0), 1.0)
    # Column [0, 3]: e^0/(e^0+e^3).
    assert p0[0, 0] == pytest.approx(1 / (1 + math.e**3))


# -- label metrics, by hand -------------------------------------------------------------------------------------------
def test_accuracy_by_hand():
    # 3 of 4 predictions [0, 1, 2, 0] match [0, 1, 2, 1].
    assert accuracy(Y, PRED) == 0.75


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y, PRED, 3)
    # true 0 -> pred 0; true 1 -> pred 1 and pred 0; true 2 -> pred 2.
    assert cm.dtype == np.int64
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_precision_recall_f1_by_hand():
    r = precision_recall_f1(Y, PRED, 3)
    # class 0: TP 1, predicted 2, support 1 -> P 1/2, R 1, F1 2*.5*1/1.5 = 2/3
    # class 1: TP 1, predicted 1, support 2 -> P 1, R 1/2, F1 2/3
    # class 2: TP 1, predicted 1, support 1 -> P 1, R 1, F1 1
    np.testing.assert_allclose(r["precision"], [0.5, 1, 1])
    np.testing.assert_allclose(r["recall"], [1, 0.5, 1])
    np.testing.assert_allclose(r["f1"], [2 / 3, 2 / 3, 1])
    assert r["support"].tolist() == [1, 2, 1]
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # weighted by support 1, 2, 1 of 4: (2/3 + 2*2/3 + 1) / 4 = 0.75
    assert r["weighted_f1"] == pytest.approx(0.75)
    assert r["weighted_precision"] == pytest.approx((0.5 + 2 + 1) / 4)
    assert r["macro_recall"] == pytest.approx(2.5 / 3)


def test_zero_division_gives_zero_and_macro_skips_classes_absent_from_labels_and_predictions():
    # 4 classes; class 3 never occurs and is never predicted, class 2 occurs but is never predicted.
    y = np.array([0, 1, 2])
    pred = np.array([0, 1, 0])
    r = precision_recall_f1(y, pred, 4)
    assert r["precision"].tolist() == [0.5, 1.0, 0.0, 0.0]
    assert r["recall"].tolist() == [1.0, 1.0, 0.0, 0.0]
    # class 0 F1 = 2*.5*1/1.5 = 2/3; class 1 F1 = 1; class 2 F1 = 0 (it occurs); class 3 has neither rows nor
    # predictions, so the macro mean is over 3 classes, as scikit-learn's default (labels=None) is.
    assert r["macro_over"] == 3
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1) / 3)
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert r["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    # A class predicted but absent from the labels stays in the mean with F1 0, as in scikit-learn.
    r = precision_recall_f1(np.array([0, 1]), np.array([0, 3]), 4)
    assert r["macro_over"] == 3 and r["macro_f1"] == pytest.approx(1 / 3)


# -- label metrics against sklearn ----------------------------------------------------------------------------------
@pytest.fixture
def random_case():
    rng = np.random.default_rng(7)
    k, n = 5, 300
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1.5, (n, k)) + 2.0 * np.eye(k)[y]
    logits[:, 4] -= 20.0  # class 4 is never the argmax ...
    proba = softmax(logits)
    pred = proba.argmax(axis=1)
    assert 4 not in pred and 4 in y  # ... yet it occurs, so its precision is a zero division
    return y, proba, pred, k


def test_label_metrics_match_sklearn(random_case):
    y, proba, pred, k = random_case
    labels = list(range(k))
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    np.testing.assert_array_equal(confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=labels))
    r = precision_recall_f1(y, pred, k)
    p, rc, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(r["precision"], p)
    np.testing.assert_allclose(r["recall"], rc)
    np.testing.assert_allclose(r["f1"], f)
    np.testing.assert_array_equal(r["support"], s)
    for avg in ("macro", "weighted"):
        assert r[f"{avg}_f1"] == pytest.approx(skm.f1_score(y, pred, labels=labels, average=avg, zero_division=0))
        assert r[f"{avg}_precision"] == pytest.approx(
            skm.precision_score(y, pred, labels=labels, average=avg, zero_division=0)
        )
        assert r[f"{avg}_recall"] == pytest.approx(
            skm.recall_score(y, pred, labels=labels, average=avg, zero_division=0)
        )


def test_probability_metrics_match_sklearn(random_case):
    y, proba, _, k = random_case
    assert nll(y, proba) == pytest.approx(skm.log_loss(y, proba, labels=list(range(k))), rel=1e-9)
    try:  # multiclass Brier arrived in scikit-learn 1.7
        expected = skm.brier_score_loss(y, proba, labels=list(range(k)))
    except ValueError:
        expected = float(np.mean(np.sum((proba - np.eye(k)[y]) ** 2, axis=1)))
    assert brier(y, proba) == pytest.approx(expected, rel=1e-9)


# -- probability metrics, by hand -----------------------------------------------------------------------------------
def test_nll_by_hand_and_clipping():
    # -mean(log .7, log .8, log .4, log .4)
    assert nll(Y, P) == pytest.approx(-(math.log(0.7) + math.log(0.8) + 2 * math.log(0.4)) / 4)
    # A zero probability on the true class is clipped at eps: -log(1e-12) / 1.
    assert nll([1], [[1.0, 0.0]]) == pytest.approx(-math.log(1e-12))


def test_brier_by_hand():
    # row 0: .3^2 + .2^2 + .1^2 = .14; row 1: .01 + .04 + .01 = .06; row 2: .09 + .09 + .36 = .54;
    # row 3: .25 + .36 + .01 = .62; mean = 1.36 / 4 = .34
    assert brier(Y, P) == pytest.approx(0.34)


def test_ece_by_hand_on_six_rows():
    y = np.array([0, 0, 1, 1, 1, 1])
    p1 = np.array([0.05, 0.1, 0.65, 0.7, 0.35, 0.95])  # probability of class 1
    proba = np.column_stack([1 - p1, p1])
    # Predictions [0, 0, 1, 1, 0, 1], top-label confidences [.95, .9, .65, .7, .65, .95]; only row 4 is wrong.
    # 5 bins of width .2: (.6, .8] holds rows 2, 3, 4: acc 2/3, conf (.65+.7+.65)/3 = 2/3 -> gap 0
    #                     (.8, 1]  holds rows 0, 1, 5: acc 1,   conf (.95+.9+.95)/3 = 2.8/3 -> gap .2/3
    # ECE = 3/6 * 0 + 3/6 * .2/3 = 1/30
    assert ece(y, proba, n_bins=5) == pytest.approx(1 / 30)
    # Class 1, bins on p1, |hits - mass| per bin: (0,.2] rows 0,1: |0 - .15|; (.2,.4] row 4: |1 - .35|;
    # (.6,.8] rows 2,3: |2 - 1.35|; (.8,1] row 5: |1 - .95|  ->  (.15 + .65 + .65 + .05) / 6 = .25.
    # With two classes p0 = 1 - p1 and the indicator flips, so class 0 gives the same .25; the mean is .25.
    assert classwise_ece(y, proba, n_bins=5) == pytest.approx(0.25)


def test_ece_bins_are_right_closed_and_include_zero():
    # Confidence exactly .6 belongs to bin (.4, .6], not (.6, .8]: with 5 bins that bin's row is wrong, so
    # ECE = |0 - .6| = .6 either way, but reliability_bins shows where it went.
    bins = reliability_bins([1], [[0.6, 0.4]], n_bins=5)
    assert [b["count"] for b in bins] == [0, 0, 1, 0, 0]
    assert bins[2]["lo"] == pytest.approx(0.4) and bins[2]["hi"] == pytest.approx(0.6)
    # A class probability of exactly 0 lands in the first bin (classwise ECE bins p_c, which can be 0).
    y = np.array([0, 0])
    proba = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert classwise_ece(y, proba, n_bins=5) == 0.0
    assert ece(y, proba) == 0.0


def test_reliability_bins_by_hand():
    bins = reliability_bins(Y, P, n_bins=5)
    # Confidences [.7, .8, .4, .5]: (.2,.4] holds .4 (correct), (.4,.6] holds .5 (wrong), (.6,.8] holds .7, .8.
    assert [b["count"] for b in bins] == [0, 1, 1, 2, 0]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[2] == pytest.approx({"lo": 0.4, "hi": 0.6, "count": 1, "confidence": 0.5, "accuracy": 0.0})
    assert bins[3]["confidence"] == pytest.approx(0.75) and bins[3]["accuracy"] == 1.0
    # The bins reproduce the ECE: sum |b|/n |acc - conf| = (1*.6 + 1*.5 + 2*.25) / 4 = .4
    assert ece(Y, P, n_bins=5) == pytest.approx(0.4)


def test_calibration_ratio_by_hand_with_nan():
    y = np.array([0, 0, 1])
    proba = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1]])
    r = calibration_ratio(y, proba)
    # class 0: (.6+.5+.2)/2 = .65; class 1: (.3+.3+.7)/1 = 1.3; class 2: no true rows -> NaN
    assert r[0] == pytest.approx(0.65) and r[1] == pytest.approx(1.3)
    assert math.isnan(r[2])


# -- the combined dict ----------------------------------------------------------------------------------------------
def test_classification_metrics_is_strict_json_and_consistent():
    y = np.array([0, 0, 1])
    proba = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1]])
    m = classification_metrics(y, proba, ["a", "b", "c"], n_bins=10)
    text = json.dumps(m, allow_nan=False)  # raises on NaN or numpy types
    assert json.loads(text) == m
    assert m["n"] == 3 and m["accuracy"] == 1.0
    assert m["per_class"]["c"]["calibration_ratio"] is None  # NaN became None
    assert m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["b"]["mean_proba"] == pytest.approx(1.3 / 3)
    # min/max ignore the class without support: ratios .65 and 1.3.
    assert (m["calibration_ratio_min"], m["calibration_ratio_max"]) == pytest.approx((0.65, 1.3))
    assert m["confusion"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert len(m["reliability"]) == 10
    for key in ("macro_f1", "weighted_f1", "macro_precision", "macro_recall", "nll", "brier", "ece", "classwise_ece"):
        assert isinstance(m[key], float)


# -- validation -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: nll([0, 1], [[0.5, 0.5]]), "same number"),
        (lambda: nll([0, 2], [[0.5, 0.5], [0.5, 0.5]]), r"expected class indices in 0\.\.1"),
        (lambda: nll([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]]), "expected integer class indices"),
        (lambda: nll([0], [0.5, 0.5]), r"expected a 2-D array of shape \(n, k\)"),
        (lambda: nll([0], [[2.0, -1.0]]), r"expected values in \[0, 1\]"),
        (lambda: nll([0], [[0.5, 0.4]]), "expected rows summing to 1"),
        (lambda: nll([0], [[np.nan, 1.0]]), "expected finite"),
        (lambda: accuracy([], []), "at least one sample"),
        (lambda: confusion_matrix([0], [0], 0), "n_classes: expected a positive integer"),
        (lambda: ece([0], [[1.0, 0.0]], n_bins=0), "n_bins: expected a positive integer"),
        (lambda: classification_metrics([0], [[1.0, 0.0]], ["a"]), "expected 2 names"),
        (lambda: classification_metrics([0], [[1.0, 0.0]], ["a", "a"]), "unique"),
    ],
)
def test_bad_inputs_raise_config_error(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_ece_floor_is_the_chance_ece_of_a_perfectly_calibrated_classifier():
    # Certain answers are right every time: no gap to find, whatever the row count.
    assert ece_floor(np.eye(3)[[0, 1, 2, 0]]) == {"median": 0.0, "p90": 0.0}
    # At 0.75 confidence the hits of n rows are Binomial(n, 0.75); with all rows in one bin the ECE is
    # |hits/n - 0.75|, whose median is about 0.6745 * sqrt(0.75 * 0.25 / n).
    for n in (100, 10_000):
        floor = ece_floor(np.tile([0.75, 0.25], (n, 1)), draws=400)
        assert floor["median"] == pytest.approx(0.6745 * math.sqrt(0.1875 / n), rel=0.25)
        assert floor["p90"] > floor["median"]
    rows = np.random.default_rng(1).dirichlet([1.0, 1.0], size=860)
    # The top class's confidence, whichever column holds it: rows at 0.9 on either side fall in one bin (reading
    # column 0 would split them over two bins and add their noise).
    mixed = ece_floor(np.array([[0.9, 0.1], [0.1, 0.9]] * 500), draws=400)
    assert mixed["median"] == pytest.approx(0.6745 * math.sqrt(0.09 / 1000), rel=0.25)
    assert ece_floor(rows) == ece_floor(rows)  # seeded
    assert 0.01 < ece_floor(rows)["median"] < 0.05  # the two-class, 860-row scale of tweet_eval_offensive's test
    with pytest.raises(ConfigError, match="at least one row"):
        ece_floor(np.zeros((0, 2)))
