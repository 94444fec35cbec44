"""``calibration=`` chains on LMClassifier (tiny model): what each step is fitted on, how the chain is applied, and
that it is saved, loaded and exported as one temperature plus a per-class offset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.calibration import TemperatureScaler
from classlm.calibrators import CONTENT_FREE, CalibratorChain, calibrator_from_dict, logit_affine, parse_calibration
from classlm.errors import ArtifactError, ConfigError, DataError
from classlm.metrics import log_softmax, softmax

TEXTS = [
    "Stocks fell sharply on Monday.",
    "The team won the match.",
    "A new phone was released today.",
    "Great movie!",
    "Terrible service, would not recommend.",
    "I love this so much.",
    "Parliament passed the new budget.",
    "The striker scored twice.",
]
Y = ["Business", "Sports", "Sci/Tech", "World", "World", "Sports", "World", "Sports"]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def test_parse_calibration_names_the_accepted_forms():
    assert parse_calibration("none") == ()
    assert parse_calibration("temperature") == ("temperature",)
    assert parse_calibration("contextual+bias") == ("contextual", "bias")
    for bad in ("temperature+batch", "batch+contextual", "temperature+bias", "platt", "", 3):
        with pytest.raises(ConfigError, match="label-free step and a labelled one"):
            parse_calibration(bad)
    with pytest.raises(ConfigError, match="calibration must be"):
        LMClassifier(labels=LABELS, calibration="batch+batch").fit([])


def test_batch_step_learns_from_unlabelled_texts_and_shifts_every_row_alike(tiny_model_dir):
    raw = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="none").fit([])
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="batch").fit(TEXTS)  # no y
    z = raw.predict_scores(TEXTS).logits.astype(np.float64)
    log_prior = log_softmax(z).mean(axis=0)  # a geometric mean of the probabilities (see PriorCorrection)
    np.testing.assert_allclose(log_softmax(clf.decision_function(TEXTS)), log_softmax(z - log_prior), atol=1e-6)
    info = clf.calibration_info_["label_free"]
    assert info["kind"] == "batch" and info["n"] == len(TEXTS)
    assert clf.temperature_ == 1.0
    # Refit on other texts: the correction follows them.
    other = ["Rain tomorrow.", "The market rallied.", "A goal in the last minute."]
    clf.calibrate_unlabelled(other)
    log_prior2 = log_softmax(raw.predict_scores(other).logits.astype(np.float64)).mean(axis=0)
    np.testing.assert_allclose(log_softmax(clf.decision_function(TEXTS)), log_softmax(z - log_prior2), atol=1e-6)
    with pytest.raises(DataError, match="unlabelled texts"):
        clf.calibrate_unlabelled()


def test_a_batch_step_not_fitted_says_how(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="batch+temperature").fit([])
    with pytest.raises(ConfigError, match=r"batch step is not fitted yet; call calibrate_unlabelled\(texts\)"):
        clf.predict_proba(TEXTS)


def test_contextual_then_temperature_fits_each_on_its_own_inputs(tiny_model_dir):
    raw = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="none").fit([])
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="contextual+temperature").fit(TEXTS, Y)
    cf = raw.predict_scores(list(CONTENT_FREE)).logits.astype(np.float64)
    z = raw.predict_scores(TEXTS).logits.astype(np.float64)
    y = clf.class_indices(Y)

    def fitted(strength):  # the contextual correction at that strength, then a temperature on it
        corrected = z - strength * np.log(softmax(cf).mean(axis=0))
        return corrected, TemperatureScaler().fit(corrected, y)

    strength = clf.calibrator_.strength  # fitted with the temperature: the grid point of least NLL
    corrected, scaler = fitted(strength)
    assert all(scaler.nll_after_ <= fitted(s)[1].nll_after_ + 1e-12 for s in (0.0, 0.5, 1.0))
    assert clf.temperature_ == pytest.approx(scaler.temperature, rel=1e-6) and scaler.temperature != 1.0
    np.testing.assert_allclose(clf.predict_proba(TEXTS), softmax(corrected / scaler.temperature), atol=1e-6)
    info = clf.calibration_info_
    assert info["label_free"] == {"kind": "contextual", "n": 3, "inputs": list(CONTENT_FREE)}
    assert info["n"] == len(TEXTS) and info["after"]["nll"] <= info["before"]["nll"] + 1e-9


def test_bias_step_moves_the_argmax_a_temperature_cannot(tiny_model_dir):
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="bias").fit(TEXTS * 3, Y * 3)
    z = clf.predict_scores(TEXTS).logits.astype(np.float64)
    step = clf.calibrator_.labelled
    assert step is not None and step.bias_ is not None
    np.testing.assert_allclose(clf.decision_function(TEXTS), z / step.temperature + step.bias_, atol=1e-9)
    # The tiny random model knows nothing of these texts: the offsets follow how often each class is the answer
    # (World and Sports 3 rows in 8, Business and Sci/Tech 1).
    b = dict(zip(LABELS, step.bias_, strict=True))
    assert min(b["World"], b["Sports"]) > max(b["Business"], b["Sci/Tech"]) + 0.5
    assert clf.calibration_info_["after"]["nll"] < clf.calibration_info_["before"]["nll"]


def test_chains_save_load_and_export_as_one_affine_map(tiny_model_dir, tmp_path):
    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="batch+bias").fit(TEXTS * 2, Y * 2)
    before = clf.predict_proba(TEXTS)
    loaded = LMClassifier.load(clf.save(tmp_path / "run"))
    assert isinstance(loaded.calibrator_, CalibratorChain) and loaded.calibrator_.fitted == [True, True]
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), before, atol=1e-9)
    assert loaded.calibration_info_["label_free"]["kind"] == "batch"
    t, offset = logit_affine(loaded.calibrator_)
    z = loaded.predict_scores(TEXTS).logits.astype(np.float64)
    assert offset is not None
    np.testing.assert_allclose(log_softmax(z / t + offset), np.log(before), atol=1e-9)
    # A manifest from before chains (a lone temperature) still loads as one.
    legacy = {"method": "temperature", "temperature": 1.7, "n_fit": 5, "nll_before": 1.0, "nll_after": 0.9}
    assert isinstance(calibrator_from_dict(legacy), TemperatureScaler)
    assert logit_affine(calibrator_from_dict(legacy)) == (1.7, None)
    doc = json.loads((tmp_path / "run" / "classlm.json").read_text())
    doc["calibration"]["steps"][0]["method"] = "contextual"
    with pytest.raises(ArtifactError, match="step 1 should be 'batch'"):
        calibrator_from_dict(doc["calibration"])


def test_calibration_none_refuses_to_calibrate_and_the_label_free_call_needs_a_step(tiny_model_dir):
    with pytest.raises(ConfigError, match="calibration='none' fits nothing"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="none").fit([]).calibrate(TEXTS, Y)
    with pytest.raises(ConfigError, match="has none; use e.g."):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([]).calibrate_unlabelled(TEXTS)


def test_priors_shift_every_prediction_by_bayes_rule_and_adapt_priors_is_saved(tiny_model_dir, tmp_path):
    from classlm.priors import shift_priors

    clf = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit(TEXTS, Y)
    train = clf.training_priors_  # zero-shot: the calibration rows' balance
    np.testing.assert_allclose(train, [3 / 8, 3 / 8, 1 / 8, 1 / 8])
    assert clf.calibration_info_["priors"]["training_source"] == "calibration rows"
    base = clf.predict_proba(TEXTS)
    wanted = {"World": 0.1, "Sports": 0.1, "Business": 0.7, "Sci/Tech": 0.1}
    shifted = clf.predict_proba(TEXTS, priors=wanted)
    np.testing.assert_allclose(shifted, shift_priors(base, train, list(wanted.values())), atol=1e-9)
    assert shifted[:, 2].mean() > base[:, 2].mean()
    np.testing.assert_allclose(clf.predict_proba(TEXTS, priors=[1, 1, 7, 1]), shifted, atol=1e-12)
    with pytest.raises(ConfigError, match=r"missing \['Sci/Tech'\], unknown \['Tech'\]"):
        clf.predict_proba(TEXTS, priors={"World": 1, "Sports": 1, "Business": 1, "Tech": 1})

    # "auto" (the default) on unlabelled texts: EM, since 8 calibration rows hold fewer than 50 of each class.
    estimate = clf.adapt_priors(TEXTS + ["Shares rose.", "Profits doubled."])
    assert list(estimate) == LABELS and sum(estimate.values()) == pytest.approx(1.0)
    adapted = clf.predict_proba(TEXTS)  # from now on
    np.testing.assert_allclose(adapted, shift_priors(base, train, list(estimate.values())), atol=1e-9)
    np.testing.assert_allclose(clf.predict_proba(TEXTS, priors="training"), base, atol=1e-12)
    loaded = LMClassifier.load(clf.save(tmp_path / "run"))
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), adapted, atol=1e-9)
    assert loaded.priors()["deployment_source"] == {"method": "em", "n": len(TEXTS) + 2, "requested": "auto"}
    bbse = loaded.adapt_priors(TEXTS, method="bbse")  # the calibration rows' answers were saved
    assert sum(bbse.values()) == pytest.approx(1.0)
    from classlm.metrics import softmax
    from classlm.priors import bbse_priors

    saved = loaded.calibration_info_["priors"]
    p = softmax(loaded.calibrated_logits(loaded.predict_scores(TEXTS).logits, "training"))
    np.testing.assert_allclose(np.sum(saved["soft_confusion"], axis=1), np.sum(saved["confusion"], axis=1))
    np.testing.assert_allclose(list(bbse.values()), bbse_priors(saved["soft_confusion"], p, soft=True), atol=1e-9)
    # An artifact from before the summed probabilities were kept estimates from its confusion counts.
    loaded.calibration_info_["priors"] = {k: v for k, v in saved.items() if k != "soft_confusion"}
    hard = loaded.adapt_priors(TEXTS, method="bbse")
    np.testing.assert_allclose(list(hard.values()), bbse_priors(saved["confusion"], p), atol=1e-9)
    loaded.set_priors(None)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), base, atol=1e-9)

    doc = json.loads((tmp_path / "run" / "classlm.json").read_text())
    doc["calibration"]["priors"]["training"] = [1.0, -1.0, 0.5, 0.5]
    (tmp_path / "run" / "classlm.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="'training' to be 4 non-negative numbers"):
        LMClassifier.load(tmp_path / "run")


def test_bbse_needs_labelled_calibration_rows_and_a_trained_classifier_starts_from_its_training_rows(tiny_model_dir):
    zero = LMClassifier(model=str(tiny_model_dir), labels=LABELS).fit([])
    np.testing.assert_allclose(zero.training_priors_, np.full(4, 0.25))  # no labels seen: uniform
    with pytest.raises(ConfigError, match="calibrate\\(X, y\\) on held-out labelled rows first"):
        zero.adapt_priors(TEXTS, method="bbse")
    with pytest.raises(ConfigError, match="one of 'auto', 'em', 'bbse'"):
        zero.adapt_priors(TEXTS, method="saerens")
    # Calibrated on 50 rows of each class or more, "auto" (the default) is BBSE.
    zero.calibrate(TEXTS * 50, Y * 50)  # the rarest classes: 1 row in 8
    auto = zero.adapt_priors(TEXTS)
    assert zero.priors()["deployment_source"] == {"method": "bbse", "n": len(TEXTS), "requested": "auto"}
    assert auto == pytest.approx(zero.adapt_priors(TEXTS, method="bbse"), abs=1e-12)
    assert zero.priors()["deployment_source"] == {"method": "bbse", "n": len(TEXTS)}
    # Saved before the summed probabilities were kept: "auto" stays with EM rather than BBSE from counts.
    zero.calibration_info_["priors"] = {
        k: v for k, v in zero.calibration_info_["priors"].items() if k != "soft_confusion"
    }
    assert zero.prior_method("auto") == "em" and zero.prior_method("bbse") == "bbse"
    head = LMClassifier(model=str(tiny_model_dir), labels=LABELS, method="tfidf").fit(TEXTS * 4, Y * 4)
    assert head.calibration_info_["priors"]["training_source"] == "training rows"
    np.testing.assert_allclose(head.training_priors_, [3 / 8, 3 / 8, 1 / 8, 1 / 8], atol=0.03)


def test_bias_on_too_few_rows_per_class_says_so(tiny_model_dir, caplog):
    with caplog.at_level("WARNING", logger="classlm"):
        LMClassifier(model=str(tiny_model_dir), labels=LABELS, calibration="bias").fit(TEXTS, Y)
    assert "fits an offset per class on 8 rows of 4 classes (2.0 per class): below 5" in caplog.text
    from classlm.cli import cli_terms

    assert "use --calibration temperature, or more" in cli_terms(caplog.records[-1].getMessage())
