"""The multi-label pure layer: label formats, metrics against scikit-learn's, per-class calibration and thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classlm.errors import ArtifactError, ConfigError, DataError
from classlm.multilabel import bce, indicator_matrix, is_label_lists, label_lists, multilabel_metrics, per_class_ece
from classlm.thresholds import PerClassScaler, best_thresholds, global_threshold, sigmoid

CLASSES = ["anger", "joy", "fear", "surprise"]


def test_label_lists_and_indicator_matrices_are_one_format():
    y = [["joy"], [], ["anger", "fear"], ("surprise", "joy")]
    assert is_label_lists(y) and not is_label_lists(["joy", "anger"]) and not is_label_lists(np.eye(2))
    m = indicator_matrix(y, CLASSES)
    np.testing.assert_array_equal(m, [[0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert label_lists(m, CLASSES) == [["joy"], [], ["anger", "fear"], ["joy", "surprise"]]
    np.testing.assert_array_equal(indicator_matrix(m, CLASSES), m)  # a matrix passes through, checked
    with pytest.raises(DataError, match="label 'calm' is not one of the 4 classes"):
        indicator_matrix([["calm"]], CLASSES)
    with pytest.raises(DataError, match=r"row 1: expected a list of labels"):
        indicator_matrix([["joy"], "joy"], CLASSES)
    with pytest.raises(DataError, match=r"\(n, 4\) 0/1 indicator matrix, got shape \(2, 3\)"):
        indicator_matrix(np.zeros((2, 3)), CLASSES)
    with pytest.raises(DataError, match="0s and 1s"):
        indicator_matrix(np.full((2, 4), 2), CLASSES)


def test_metrics_agree_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = (rng.random((300, 5)) < [0.5, 0.2, 0.05, 0.3, 0.01]).astype(int)
    p = np.clip(0.6 * y + rng.random((300, 5)) * 0.5, 0, 1)
    cut = np.array([0.5, 0.4, 0.6, 0.5, 0.3])
    got = multilabel_metrics(y, p, [f"c{i}" for i in range(5)], thresholds=cut)
    pred = (p >= cut).astype(int)
    assert got["micro_f1"] == pytest.approx(sk.f1_score(y, pred, average="micro", zero_division=0))
    assert got["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0))
    assert got["samples_f1"] == pytest.approx(sk.f1_score(y, pred, average="samples", zero_division=1))
    assert got["hamming_loss"] == pytest.approx(sk.hamming_loss(y, pred))
    assert got["subset_accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert got["bce"] == pytest.approx(np.mean([sk.log_loss(y[:, c], p[:, c], labels=[0, 1]) for c in range(5)]))
    f1 = sk.f1_score(y, pred, average=None, zero_division=0)
    assert [got["per_class"][f"c{i}"]["f1"] for i in range(5)] == pytest.approx(f1)
    assert got["per_class"]["c1"]["threshold"] == 0.4
    assert got["cardinality_true"] == pytest.approx(y.sum(1).mean())
    assert got["cardinality_predicted"] == pytest.approx(pred.sum(1).mean())
    json.dumps(got)  # JSON-able as it is


def test_per_class_ece_is_zero_for_calibrated_classes_and_names_the_broken_one():
    rng = np.random.default_rng(1)
    p = rng.random((20000, 3))
    y = (rng.random((20000, 3)) < p).astype(int)
    y[:, 2] = (rng.random(20000) < p[:, 2] ** 3).astype(int)  # class 2 over-confident
    e = per_class_ece(y, p)
    assert e[0] < 0.015 and e[1] < 0.015 and e[2] > 0.1
    with pytest.raises(ConfigError, match="got logits"):
        bce(y, p * 3)


def test_per_class_platt_recovers_each_class_own_scale_and_offset():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (40000, 3))
    a_true, b_true = np.array([2.0, 0.5, 1.0]), np.array([-1.0, 0.5, -3.0])
    y = (rng.random(z.shape) < sigmoid(z * a_true + b_true)).astype(int)
    s = PerClassScaler("platt").fit(z, y)
    np.testing.assert_allclose(s.scale_, a_true, atol=0.06)
    np.testing.assert_allclose(s.offset_, b_true, atol=0.06)
    t = PerClassScaler("temperature").fit(z, y)
    assert np.all(t.offset_ == 0)
    # Saved and read back: the same probabilities; a wrong class count is refused.
    back = PerClassScaler.from_dict(json.loads(json.dumps(s.to_dict())), 3)
    np.testing.assert_allclose(back.predict_proba(z[:5]), s.predict_proba(z[:5]))
    with pytest.raises(ArtifactError, match="expected 4 finite scales"):
        PerClassScaler.from_dict(s.to_dict(), 4)
    # A class its rows separate perfectly still gets finite values (the ridge).
    sep = PerClassScaler().fit(np.array([[-3.0], [-1.0], [1.0], [3.0]]), np.array([[0], [0], [1], [1]]))
    assert np.isfinite(sep.scale_).all() and sep.scale_[0] > 1


def test_thresholds_maximise_each_class_f1_on_the_held_out_rows():
    y = np.array([[1, 0], [1, 0], [0, 0], [1, 1], [0, 0], [0, 0]])
    p = np.array([[0.9, 0.2], [0.35, 0.1], [0.3, 0.3], [0.4, 0.05], [0.1, 0.01], [0.05, 0.02]])
    cuts = best_thresholds(y, p)
    # Class 0: answering the top two (0.9, 0.4) gives F1 0.8; down to 0.35 all three positives, F1 6/7: cut between
    # 0.35 and 0.3. Class 1: its one positive is at 0.05, below two negatives; F1 is best answering down to it.
    assert cuts[0] == pytest.approx(0.325)
    assert cuts[1] == pytest.approx((0.05 + 0.02) / 2)
    # A class no held-out row has keeps the default; one shared cut maximises micro-F1.
    assert best_thresholds(np.zeros((3, 1)), np.full((3, 1), 0.9), default=0.5)[0] == 0.5
    assert 0 < global_threshold(y, p) < 1


def test_the_held_out_rows_see_every_class_with_two_or_more_rows_and_so_does_training():
    from classlm.multilabel import multilabel_split

    rng = np.random.default_rng(5)
    y = (rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.02, 0.01, 0.0]).astype(int)
    y[[3, 77], 5] = 1  # a class with exactly two rows
    keep, held = multilabel_split(y, 0.1, seed=0)
    assert len(set(keep) | set(held)) == 200 and not set(keep) & set(held)
    assert 18 <= len(held) <= 26  # about 10%, plus the rows moved for rare classes
    for c in range(6):
        if y[:, c].sum() >= 2:
            assert y[held, c].any() and y[keep, c].any(), c
    k2, h2 = multilabel_split(y, 0.1, seed=0)
    np.testing.assert_array_equal(held, h2)  # deterministic


def test_the_multi_label_calibrator_fits_scales_then_cuts_and_round_trips():
    from classlm.thresholds import MIN_POSITIVES_FOR_OWN_CUT, MultiLabelCalibrator

    rng = np.random.default_rng(6)
    z = rng.normal(0, 2, (3000, 3))
    y = (rng.random(z.shape) < sigmoid(z * [1.5, 0.7, 1.0] - 2.0)).astype(int)
    y[:, 2] = 0
    y[: MIN_POSITIVES_FOR_OWN_CUT - 1, 2] = 1  # too few positives for a cut of its own
    cal = MultiLabelCalibrator(3, offset=[1.0, -1.0, 0.0]).fit(z, y)
    np.testing.assert_allclose(cal.transform(z), cal.scaler.transform(z + [1.0, -1.0, 0.0]))
    assert cal.threshold_source_ == ["own", "own", "shared"]
    assert cal.thresholds_[2] == pytest.approx(global_threshold(y, sigmoid(cal.transform(z))))
    back = MultiLabelCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(back.transform(z[:9]), cal.transform(z[:9]))
    np.testing.assert_array_equal(back.thresholds_, cal.thresholds_)
    with pytest.raises(ArtifactError, match="3 finite offsets"):
        MultiLabelCalibrator.from_dict({**cal.to_dict(), "offset": [0.0]})
