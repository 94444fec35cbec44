"""Temperature scaling: recovers a known temperature, keeps the argmax, survives edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from classlm.calibration import T_MAX, T_MIN, TemperatureScaler
from classlm.errors import ArtifactError, ConfigError
from classlm.metrics import nll, softmax


def _sample(seed: int = 0, n: int = 20000, k: int = 5, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """True logits z ~ N(0, scale) and labels drawn from softmax(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, k))
    cdf = softmax(z).cumsum(axis=1)
    y = (cdf > rng.random((n, 1))).argmax(axis=1)
    return z, y


@pytest.fixture(scope="module")
def overconfident():
    z, y = _sample()
    return z * 2.5, y  # logits 2.5x too sharp: the right temperature is 2.5


def test_recovers_known_temperature(overconfident):
    logits, y = overconfident
    scaler = TemperatureScaler().fit(logits, y)
    assert scaler.temperature == pytest.approx(2.5, rel=0.03)
    assert scaler.n_fit_ == len(y)


def test_fit_is_a_minimum(overconfident):
    logits, y = overconfident
    t = TemperatureScaler().fit(logits, y).temperature
    best = nll(y, softmax(logits / t))
    for factor in (0.999, 1.001, 0.9, 1.1):
        assert nll(y, softmax(logits / (t * factor))) > best


def test_nll_decreases_and_is_recorded(overconfident):
    logits, y = overconfident
    scaler = TemperatureScaler().fit(logits, y)
    assert scaler.nll_before_ == pytest.approx(nll(y, softmax(logits)))
    assert scaler.nll_after_ == pytest.approx(nll(y, scaler.predict_proba(logits)))
    assert scaler.nll_after_ <= scaler.nll_before_
    assert scaler.nll_before_ - scaler.nll_after_ > 0.1  # 2.5x over-confidence costs a lot of NLL


def test_underconfident_logits_get_temperature_below_one():
    z, y = _sample(seed=1, n=5000)
    scaler = TemperatureScaler().fit(z / 2.0, y)
    assert scaler.temperature == pytest.approx(0.5, rel=0.06)


def test_argmax_unchanged(overconfident):
    logits, y = overconfident
    scaler = TemperatureScaler().fit(logits, y)
    assert scaler.temperature != 1.0  # otherwise the check below would be vacuous
    np.testing.assert_array_equal(scaler.predict_proba(logits).argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_array_equal(scaler.transform(logits).argmax(axis=1), logits.argmax(axis=1))


def test_transform_and_predict_proba():
    scaler = TemperatureScaler(2.0)
    z = np.array([[2.0, 0.0, -2.0]], dtype=np.float32)
    out = scaler.transform(z)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[1.0, 0.0, -1.0]])
    np.testing.assert_allclose(scaler.predict_proba(z), softmax([[1.0, 0.0, -1.0]]))
    assert scaler.transform(np.zeros((0, 3))).shape == (0, 3)  # empty batches pass through


def test_json_round_trip(overconfident):
    logits, y = overconfident
    scaler = TemperatureScaler().fit(logits[:500], y[:500])
    d = json.loads(json.dumps(scaler.to_dict(), allow_nan=False))
    assert d["method"] == "temperature" and d["n_fit"] == 500
    back = TemperatureScaler.from_dict(d)
    assert back.temperature == scaler.temperature
    assert (back.n_fit_, back.nll_before_, back.nll_after_) == (500, scaler.nll_before_, scaler.nll_after_)
    # Saved manifests merge extra context into the same object; it must be ignored.
    assert TemperatureScaler.from_dict({**d, "fitted": True, "source": "x"}).temperature == scaler.temperature


def test_unfitted_to_dict():
    assert TemperatureScaler(1.5).to_dict() == {
        "method": "temperature",
        "temperature": 1.5,
        "n_fit": None,
        "nll_before": None,
        "nll_after": None,
    }


def test_separable_data_end_at_lower_bound():
    # Every argmax is right: the NLL keeps falling as T -> 0, so the fit must stop at the bound, finite.
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [5.0, 1.0], [-1.0, 4.0]])
    scaler = TemperatureScaler().fit(logits, np.array([0, 1, 0, 1]))
    assert scaler.temperature == T_MIN
    assert math.isfinite(scaler.nll_after_) and scaler.nll_after_ < 1e-6


def test_always_wrong_data_end_at_upper_bound():
    # Every argmax is wrong: the flatter the better, so T runs to the upper bound.
    logits = np.array([[3.0, 0.0], [0.0, 2.0]])
    scaler = TemperatureScaler().fit(logits, np.array([1, 0]))
    assert scaler.temperature == T_MAX
    assert scaler.nll_after_ < scaler.nll_before_


def test_constant_logits_keep_unit_temperature():
    scaler = TemperatureScaler().fit(np.full((4, 3), 7.0), np.array([0, 1, 2, 0]))
    assert scaler.temperature == 1.0
    assert scaler.nll_after_ == pytest.approx(math.log(3))


def test_huge_logits_do_not_overflow():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1000, (200, 4))
    y = rng.integers(0, 4, 200)
    scaler = TemperatureScaler().fit(logits, y)
    assert math.isfinite(scaler.temperature) and math.isfinite(scaler.nll_after_)
    assert scaler.nll_after_ <= scaler.nll_before_


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_temperature_raises(t):
    with pytest.raises(ConfigError, match="expected a positive finite number"):
        TemperatureScaler(t)


@pytest.mark.parametrize(
    ("logits", "y", "match"),
    [
        (np.zeros(3), [0, 1, 0], r"expected a 2-D array of shape \(n, k\)"),
        (np.zeros((0, 3)), [], "expected at least one row"),
        (np.zeros((2, 3)), [0, 1, 2], r"expected shape \(2,\)"),
        (np.zeros((2, 3)), [0, 3], r"expected class indices in 0\.\.2"),
        (np.zeros((2, 3)), [0.0, 1.0], "expected integer class indices"),
        (np.array([[0.0, np.nan]]), [0], "expected numbers, got nan"),
        (np.array([[0.0, np.inf]]), [0], "expected finite numbers"),
    ],
)
def test_bad_fit_input_raises(logits, y, match):
    with pytest.raises(ConfigError, match=match):
        TemperatureScaler().fit(logits, np.asarray(y))


def test_transform_rejects_wrong_shape():
    with pytest.raises(ConfigError, match=r"expected a 2-D array"):
        TemperatureScaler().transform([1.0, 2.0])


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ([1.0], "expected a JSON object"),
        ({"method": "platt", "temperature": 1.0}, "expected method 'temperature'"),
        ({"method": "temperature"}, "expected a 'temperature' field"),
        ({"method": "temperature", "temperature": -2.0}, "expected a positive finite number"),
        ({"method": "temperature", "temperature": "1.0"}, "expected a positive finite number"),
        ({"method": "temperature", "temperature": 1.0, "n_fit": -1}, "'n_fit' to be a non-negative integer"),
        ({"method": "temperature", "temperature": 1.0, "nll_after": "x"}, "'nll_after' to be a finite number"),
    ],
)
def test_bad_dict_raises_artifact_error(d, match):
    with pytest.raises(ArtifactError, match=match):
        TemperatureScaler.from_dict(d)
