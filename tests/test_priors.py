"""Calibration beyond one temperature: bias scaling with labels, contextual and batch corrections without labels, and
prior shift (EM, BBSE) — each on synthetic logits whose bias or class balance is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classlm.calibration import BiasScaler
from classlm.errors import ArtifactError, ConfigError
from classlm.metrics import confusion_matrix, log_softmax, softmax
from classlm.priors import PriorCorrection, bbse_priors, em_priors, shift_priors, soft_confusion

K = 4
BIAS = np.array([1.5, -0.5, 0.25, -1.25])  # mean 0: softmax cannot tell a common level apart


def _exact_rows(seed: int = 0, rows: int = 40, per_row: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """True class probabilities that are exact fractions ``counts / per_row``, each row repeated ``per_row`` times
    with its labels in exactly those counts: the labels follow the true probabilities with no sampling noise, so the
    maximum-likelihood fit of a model that contains the truth is the truth."""
    rng = np.random.default_rng(seed)
    z, y = [], []
    for _ in range(rows):
        counts = rng.multinomial(per_row - K, rng.dirichlet(np.ones(K) * 0.7)) + 1  # every class at least once
        z.extend([np.log(counts / per_row)] * per_row)
        y.extend(np.repeat(np.arange(K), counts))
    return np.array(z), np.array(y)


def test_bias_scaler_recovers_a_known_bias_and_temperature():
    z_true, y = _exact_rows()
    observed = 2.0 * (z_true - BIAS)  # too sharp by 2, and biased against what the labels say
    scaler = BiasScaler(l2=1e-9).fit(observed, y)
    assert scaler.temperature == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_allclose(scaler.bias_, BIAS, atol=1e-3)
    assert scaler.nll_after_ < scaler.nll_before_
    # A temperature alone cannot fix a bias: the bias scaler ends lower on the same rows.
    from classlm.calibration import TemperatureScaler

    assert scaler.nll_after_ < TemperatureScaler().fit(observed, y).nll_after_ - 0.05


def test_bias_scaler_ridge_tames_a_class_seen_once():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(41, K))
    y = np.r_[np.zeros(20, int), np.ones(20, int), 3]  # class 2 never seen, class 3 once
    b = BiasScaler(l2=1e-2).fit(z, y).bias_
    assert b is not None and np.all(np.isfinite(b)) and np.max(np.abs(b)) < 10
    assert b[2] < b[0]  # the unseen class is pushed down, not to -inf


def test_bias_scaler_round_trips_and_refuses_bad_input():
    z_true, y = _exact_rows(seed=2, rows=10)
    scaler = BiasScaler().fit(z_true + BIAS, y)
    back = BiasScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(back.transform(z_true), scaler.transform(z_true))
    assert back.n_fit_ == scaler.n_fit_ == len(y)
    with pytest.raises(ConfigError, match="not fitted"):
        BiasScaler().transform(z_true)
    with pytest.raises(ConfigError, match=r"expected shape \(n, 4\)"):
        scaler.transform(z_true[:, :3])
    with pytest.raises(ConfigError, match="class indices in 0..3"):
        BiasScaler().fit(z_true, y + 1)
    with pytest.raises(ArtifactError, match="'bias'"):
        BiasScaler.from_dict({**scaler.to_dict(), "bias": ["x"]})
    with pytest.raises(ArtifactError, match="method 'bias'"):
        BiasScaler.from_dict({"method": "temperature", "temperature": 1.0})


def test_contextual_correction_removes_the_bias_a_content_free_input_shows():
    rng = np.random.default_rng(3)
    z_true = rng.normal(0, 2, (50, K))
    content_free = np.tile(BIAS, (3, 1))  # "N/A", "", "[MASK]": no content, so only the bias speaks
    corr = PriorCorrection("contextual").fit(content_free)
    np.testing.assert_allclose(corr.prior_, softmax(BIAS), atol=1e-12)
    fixed = corr.transform(z_true + BIAS)
    # Logits are known up to a per-row constant: the corrected ones are the true ones shifted per row.
    np.testing.assert_allclose(log_softmax(fixed), log_softmax(z_true), atol=1e-12)


def test_batch_correction_turns_a_biased_argmax_around():
    # Balanced, clearly separated inputs (each row points at its class by 1.0), then a bias larger than that signal:
    # raw, class 0 wins almost everywhere; batch-corrected, every row gets its own class back.
    y = np.repeat(np.arange(K), 25)
    z = np.eye(K)[y] * 1.0 + BIAS * 2
    assert np.mean(z.argmax(axis=1) == y) < 0.5
    corr = PriorCorrection("batch").fit(z)  # no labels
    assert np.mean(corr.transform(z).argmax(axis=1) == y) == 1.0
    # With no signal at all, the batch mean is the bias itself.
    flat = PriorCorrection("batch").fit(np.tile(BIAS, (7, 1)))
    np.testing.assert_allclose(flat.prior_, softmax(BIAS), atol=1e-12)


def test_batch_correction_is_the_same_at_any_temperature():
    # Zero-shot logits come over-confident by an unknown factor. The batch step centres each class's log-probability
    # on its mean over the texts, so scaling the logits by 1/T scales the corrected ones by 1/T too: a temperature
    # fitted after it does not fight it. A mean of the probabilities themselves would follow the surest texts.
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (40, K)) + BIAS * 4
    at_1 = PriorCorrection("batch").fit(z).transform(z)
    for t in (0.25, 4.0):
        at_t = PriorCorrection("batch").fit(z / t).transform(z / t)
        np.testing.assert_allclose(log_softmax(at_t), log_softmax(at_1 / t), atol=1e-10)
    arithmetic = z - np.log(softmax(z).mean(axis=0))
    arithmetic_t = z / 4 - np.log(softmax(z / 4).mean(axis=0))
    assert np.max(np.abs(log_softmax(arithmetic_t) - log_softmax(arithmetic / 4))) > 0.1


def test_prior_correction_round_trips_and_says_what_is_wrong():
    corr = PriorCorrection("batch").fit(np.tile(BIAS, (2, 1)))
    back = PriorCorrection.from_dict(json.loads(json.dumps(corr.to_dict())))
    assert back.kind == "batch" and back.n_fit_ == 2
    np.testing.assert_array_equal(back.transform(np.zeros((1, K))), corr.transform(np.zeros((1, K))))
    with pytest.raises(ConfigError, match="one of contextual, batch"):
        PriorCorrection("priors")
    with pytest.raises(ConfigError, match="not fitted"):
        PriorCorrection().transform(np.zeros((1, K)))
    with pytest.raises(ConfigError, match="finite"):
        PriorCorrection().fit([[0.0, np.nan]])
    with pytest.raises(ArtifactError, match="log_prior"):
        PriorCorrection.from_dict({"method": "batch", "log_prior": []})


def _gaussian_task(prior: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes with 1-D Gaussian inputs N(2c, 1); returns labels, inputs and the exact posteriors under a uniform
    prior (a perfectly calibrated classifier trained where the classes were balanced)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=n, p=prior)
    x = rng.normal(2.0 * y, 1.0)
    log_lik = -0.5 * (x[:, None] - 2.0 * np.arange(K)) ** 2
    return y, x, softmax(log_lik, axis=1)


SHIFTED = np.array([0.55, 0.25, 0.15, 0.05])


def test_shift_priors_is_bayes_rule():
    uniform = np.full(K, 1 / K)
    y, _, p = _gaussian_task(uniform, 200, seed=4)
    moved = shift_priors(p, uniform, SHIFTED)
    expected = p * SHIFTED
    np.testing.assert_allclose(moved, expected / expected.sum(axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(shift_priors(p, uniform, uniform), p, atol=1e-12)
    with pytest.raises(ConfigError, match="probabilities"):
        shift_priors(np.log(p), uniform, SHIFTED)
    with pytest.raises(ConfigError, match="target: expected 4"):
        shift_priors(p, uniform, [1.0, 0.0])


def test_em_and_bbse_estimate_a_shifted_class_balance():
    uniform = np.full(K, 1 / K)
    y_t, _, p_t = _gaussian_task(SHIFTED, 20000, seed=5)
    est = em_priors(p_t, uniform)
    assert est.converged
    np.testing.assert_allclose(est.priors, SHIFTED, atol=0.02)
    # The adapted probabilities fit the shifted rows better than the unadapted ones.
    rows = np.arange(len(y_t))
    assert -np.log(est.proba[rows, y_t]).mean() < -np.log(p_t[rows, y_t]).mean() - 0.02
    y_h, _, p_h = _gaussian_task(uniform, 20000, seed=6)
    confusion = confusion_matrix(y_h, p_h.argmax(axis=1), K)
    np.testing.assert_allclose(bbse_priors(confusion, p_t), SHIFTED, atol=0.03)
    # No shift, no change: EM stays at the training balance.
    _, _, p_same = _gaussian_task(uniform, 20000, seed=7)
    np.testing.assert_allclose(em_priors(p_same, uniform).priors, uniform, atol=0.02)


def test_soft_bbse_recovers_a_shifted_balance_and_is_steadier_than_counts_on_few_calibration_rows():
    uniform = np.full(K, 1 / K)
    y_t, _, p_t = _gaussian_task(SHIFTED, 20000, seed=5)
    y_h, _, p_h = _gaussian_task(uniform, 20000, seed=6)
    soft = soft_confusion(y_h, p_h)
    np.testing.assert_allclose(soft.sum(axis=1), np.bincount(y_h, minlength=K))  # each row: its class's count
    np.testing.assert_allclose(bbse_priors(soft, p_t, soft=True), SHIFTED, atol=0.02)
    with pytest.raises(ConfigError, match=r"class indices in 0\.\.3"):
        soft_confusion(np.array([0, 4]), p_h[:2])
    # With 100 calibration rows (a 1,000-row training set's hold-out) the counts are noisy; every row's whole answer
    # is not. Over 100 draws of those rows the soft estimate is off by less, on average.
    errors: dict[bool, list[float]] = {True: [], False: []}
    for seed in range(100):
        y_c, _, p_c = _gaussian_task(uniform, 100, seed=100 + seed)
        for is_soft, c in ((True, soft_confusion(y_c, p_c)), (False, confusion_matrix(y_c, p_c.argmax(axis=1), K))):
            errors[is_soft].append(float(np.max(np.abs(bbse_priors(c, p_t, soft=is_soft) - SHIFTED))))
    assert np.mean(errors[True]) < 0.9 * np.mean(errors[False])  # measured: 0.87x


def test_auto_picks_bbse_only_with_enough_calibration_rows_of_every_class():
    from classlm.priors import BBSE_MIN_ROWS_PER_CLASS, prior_method

    enough = np.diag([BBSE_MIN_ROWS_PER_CLASS] * K) + 1.0  # true class by row: 54 rows of each
    exact = np.full((K, K), BBSE_MIN_ROWS_PER_CLASS / K) - 1e-7  # 50 rows each, summed probabilities rounded down
    assert prior_method("auto", exact) == "bbse"
    assert prior_method("auto", enough) == "bbse"
    short = enough.copy()
    short[2] = [0, 0, BBSE_MIN_ROWS_PER_CLASS - 1, 0]  # one class 1 row short
    assert prior_method("auto", short) == "em"
    assert prior_method("auto", None) == "em"  # no labelled calibration rows
    assert prior_method("bbse", short) == "bbse" and prior_method("em", enough) == "em"  # asked for: as asked
    with pytest.raises(ConfigError, match="one of 'auto', 'em', 'bbse', got 'mle'"):
        prior_method("mle", enough)


def test_a_label_free_step_before_a_temperature_applies_only_as_much_as_the_labels_support():
    from classlm.calibration import TemperatureScaler
    from classlm.calibrators import CalibratorChain

    # An unbiased classifier on a task whose classes are far from balanced: the batch mean is mostly the real class
    # balance, not a bias, and removing all of it hurts. Fitted with a temperature, only part of it goes, and the
    # chain never ends worse than the temperature alone (strength 0 is on the grid).
    rng = np.random.default_rng(8)
    y = rng.choice(3, size=3000, p=[0.7, 0.2, 0.1])
    z = rng.normal(0, 1, (3000, 3)) + 2.0 * np.eye(3)[y] + np.log([0.7, 0.2, 0.1])
    alone = TemperatureScaler().fit(z, y).nll_after_
    all_of_it = z - log_softmax(z).mean(axis=0)  # the batch step at full strength
    assert TemperatureScaler().fit(all_of_it, y).nll_after_ > alone + 0.01  # it would hurt
    chain = CalibratorChain(("batch", "temperature")).fit_label_free(z).fit(z, y)
    assert chain.strength < 0.6 and chain.labelled.nll_after_ <= alone + 1e-9
    # On a biased classifier of a balanced task the same fit keeps the whole correction.
    yb = rng.choice(3, size=3000)
    zb = rng.normal(0, 1, (3000, 3)) + 2.0 * np.eye(3)[yb] + np.array([1.5, 0.0, -1.5])
    assert CalibratorChain(("batch", "temperature")).fit_label_free(zb).fit(zb, yb).strength >= 0.8
