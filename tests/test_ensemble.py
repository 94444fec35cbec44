"""Ensemble: fitted weights, hand-checked combination, column alignment, validation, temperature, save/load.

Most tests use fake members: fixed probability tables indexed by the text ("0", "1", … are row numbers), so the
expected ensemble output can be computed by hand and no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone

from classlm.ensemble import ENSEMBLE_MANIFEST, Ensemble
from classlm.errors import ArtifactError, ConfigError, DataError, NotFittedError
from classlm.metrics import nll

CLASSES = ["a", "b", "c"]


class Table:
    """A fitted member: ``predict_proba`` looks each text's row up in a fixed table."""

    def __init__(self, proba: np.ndarray, classes: list[str] = CLASSES) -> None:
        self.classes_ = np.array(classes, dtype=object)
        self.proba = np.asarray(proba, dtype=np.float64)
        self.calls = 0

    def predict_proba(self, X: Any) -> np.ndarray:
        self.calls += 1
        return self.proba[[int(t) for t in X]]


class Unfitted:
    def predict_proba(self, X: Any) -> np.ndarray:
        raise AssertionError("an unfitted member must not be scored")


class SavingTable(Table):
    """A member that can save itself (a marker file), or fails to when ``fail`` is set."""

    def __init__(self, proba: np.ndarray, fail: bool = False) -> None:
        super().__init__(proba)
        self.fail = fail

    def save(self, path: str | Path) -> Path:
        if self.fail:
            raise OSError("disk full")
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "member.txt").write_text("saved")
        return Path(path)


def _data(n: int = 400, k: int = 3, seed: int = 0) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Texts, labels, an informative member's table (right 85% of the time, p=0.75) and a pure-noise table."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    right = rng.random(n) < 0.85
    guess = np.where(right, y, (y + rng.integers(1, k, n)) % k)
    good = np.full((n, k), 0.25 / (k - 1))
    good[np.arange(n), guess] = 0.75
    noise = rng.dirichlet(np.ones(k), n)
    texts = [str(i) for i in range(n)]
    return texts, [CLASSES[i] for i in y], good, noise


def _y_idx(labels: list[str]) -> np.ndarray:
    return np.array([CLASSES.index(v) for v in labels])


@pytest.fixture(scope="module")
def data() -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    return _data()


# -- weights -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("good_first", [True, False])
def test_fitted_weights_prefer_the_informative_member(data, good_first):
    texts, y, good, noise = data
    members = [Table(good), Table(noise)] if good_first else [Table(noise), Table(good)]
    ens = Ensemble(members).fit(texts, y)
    w_good = ens.weights_[0 if good_first else 1]
    assert w_good > 0.8
    assert ens.fit_info_["weights"] == "fitted"
    # The fitted weights beat equal weights on the data they were fitted on.
    assert ens.fit_info_["nll_before"] < ens.fit_info_["optimizer"]["nll_equal_weights"]


def test_fitted_weights_are_on_the_simplex(data):
    texts, y, good, noise = data
    rng = np.random.default_rng(1)
    members = [
        Table(good),
        Table(noise),
        Table(rng.dirichlet(np.ones(3), len(texts))),
        Table(good**2 / (good**2).sum(1, keepdims=True)),
    ]
    ens = Ensemble(members).fit(texts, y)
    assert ens.weights_.shape == (4,) and ens.weights_.dtype == np.float64
    assert np.all(ens.weights_ >= 0)
    assert ens.weights_.sum() == pytest.approx(1.0, abs=1e-12)


def test_fitted_weights_minimise_the_nll(data):
    """No nearby point of the simplex does better than the fitted weights (calibration off, so z is the objective)."""
    texts, y, good, noise = data
    sharp = good**3 / (good**3).sum(1, keepdims=True)
    members = [Table(good), Table(noise), Table(sharp)]
    ens = Ensemble(members, calibration="none").fit(texts, y)
    y_idx = _y_idx(y)
    best = nll(y_idx, ens.predict_proba(texts))
    rng = np.random.default_rng(2)
    for _ in range(20):
        w = np.clip(ens.weights_ + rng.normal(0, 0.02, 3), 0, None)
        w /= w.sum()
        p = Ensemble(members, weights=list(w), calibration="none").fit(texts, y).predict_proba(texts)
        assert nll(y_idx, p) >= best - 1e-9


def test_identical_members_keep_equal_weights(data):
    texts, y, good, _ = data
    ens = Ensemble([Table(good), Table(good)]).fit(texts, y)
    np.testing.assert_allclose(ens.weights_, [0.5, 0.5], atol=1e-12)


def test_given_weights_are_normalised_and_used(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)], weights=[2.0, 6.0], calibration="none").fit(texts, y)
    np.testing.assert_allclose(ens.weights_, [0.25, 0.75])
    assert ens.fit_info_["weights"] == "given" and ens.fit_info_["optimizer"] is None
    assert ens.weights == [2.0, 6.0]  # the parameter itself is left as passed


def test_probabilities_match_a_hand_computation(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)], weights=[1, 3], calibration="none").fit(texts, y)
    assert ens.temperature_ == 1.0
    geometric = good**0.25 * noise**0.75
    expected = geometric / geometric.sum(axis=1, keepdims=True)
    p = ens.predict_proba(texts)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(ens.decision_function(texts), 0.25 * np.log(good) + 0.75 * np.log(noise), rtol=1e-12)
    assert list(ens.predict(texts)) == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert isinstance(ens.classes_, np.ndarray) and ens.classes_.dtype == object and list(ens.classes_) == CLASSES


def test_zero_probabilities_are_clipped_not_infinite():
    texts, y = ["0", "1"], ["a", "b"]
    hard = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    soft = np.full((2, 3), 1 / 3)
    ens = Ensemble([Table(hard), Table(soft)], weights=[1, 1], calibration="none").fit(texts, y)
    z = ens.decision_function(texts)
    assert np.all(np.isfinite(z))
    assert z[0, 1] == pytest.approx(0.5 * np.log(1e-12) + 0.5 * np.log(1 / 3))


# -- column alignment --------------------------------------------------------------------------------------------------
def test_members_with_classes_in_another_order_are_aligned(data):
    texts, y, good, noise = data
    perm = [2, 0, 1]
    shuffled = Table(noise[:, perm], classes=[CLASSES[i] for i in perm])
    a = Ensemble([Table(good), Table(noise)]).fit(texts, y)
    b = Ensemble([Table(good), shuffled]).fit(texts, y)
    np.testing.assert_allclose(b.weights_, a.weights_, atol=1e-9)
    np.testing.assert_allclose(b.predict_proba(texts), a.predict_proba(texts), atol=1e-9)
    assert b.fit_info_["member_nll"] == pytest.approx(a.fit_info_["member_nll"])


def test_classes_follow_the_first_member(data):
    texts, y, good, noise = data
    perm = [1, 2, 0]
    first = Table(good[:, perm], classes=[CLASSES[i] for i in perm])
    ens = Ensemble([first, Table(noise)], weights=[1, 1], calibration="none").fit(texts, y)
    assert list(ens.classes_) == ["b", "c", "a"]
    ref = Ensemble([Table(good), Table(noise)], weights=[1, 1], calibration="none").fit(texts, y)
    np.testing.assert_allclose(ens.predict_proba(texts), ref.predict_proba(texts)[:, perm], atol=1e-12)
    assert list(ens.predict(texts)) == list(ref.predict(texts))


# -- temperature -------------------------------------------------------------------------------------------------------
def test_temperature_never_worsens_the_heldout_nll(data):
    texts, y, good, noise = data
    # Two sharpened copies: the product of experts is overconfident, so T > 1 must help.
    sharp = good**4 / (good**4).sum(1, keepdims=True)
    members = [Table(sharp), Table(sharp), Table(noise)]
    y_idx = _y_idx(y)
    calibrated = Ensemble(members, weights=[1, 1, 0]).fit(texts, y)
    raw = Ensemble(members, weights=[1, 1, 0], calibration="none").fit(texts, y)
    nll_t = nll(y_idx, calibrated.predict_proba(texts))
    nll_1 = nll(y_idx, raw.predict_proba(texts))
    assert calibrated.temperature_ > 1.5
    assert nll_t < nll_1 - 0.05
    assert calibrated.fit_info_["nll_after"] == pytest.approx(nll_t)
    assert calibrated.fit_info_["nll_before"] == pytest.approx(nll_1)
    assert list(calibrated.predict(texts)) == list(raw.predict(texts))  # a temperature never moves the argmax


def test_temperature_with_fitted_weights_is_no_worse(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)]).fit(texts, y)
    assert ens.fit_info_["nll_after"] <= ens.fit_info_["nll_before"] + 1e-12
    assert ens.calibrator_.n_fit_ == len(texts)


def test_fit_info_reports_each_member_alone(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)]).fit(texts, y)
    y_idx = _y_idx(y)
    assert ens.fit_info_["n"] == len(texts)
    assert ens.fit_info_["member_nll"] == pytest.approx([nll(y_idx, good), nll(y_idx, noise)])
    assert ens.fit_info_["member_nll"][0] < ens.fit_info_["member_nll"][1]
    json.dumps(ens.fit_info_, allow_nan=False)  # saved as JSON


def test_members_are_scored_once_per_call(data):
    texts, y, good, noise = data
    members = [Table(good), Table(noise)]
    ens = Ensemble(members).fit(texts, y)
    assert [m.calls for m in members] == [1, 1]
    for n_calls, method in enumerate((ens.predict_proba, ens.predict, ens.decision_function, ens.score), start=2):
        args = (texts[:5], y[:5]) if method == ens.score else (texts[:5],)
        method(*args)
        assert [m.calls for m in members] == [n_calls, n_calls], method.__name__


# -- validation --------------------------------------------------------------------------------------------------------
def test_needs_at_least_two_members(data):
    texts, y, good, _ = data
    with pytest.raises(ConfigError, match="at least 2"):
        Ensemble([Table(good)]).fit(texts, y)
    with pytest.raises(ConfigError, match="at least 2"):
        Ensemble([]).fit(texts, y)
    with pytest.raises(ConfigError, match="list of fitted classifiers"):
        Ensemble(Table(good)).fit(texts, y)  # type: ignore[arg-type]


def test_unfitted_member_is_named(data):
    texts, y, good, _ = data
    with pytest.raises(NotFittedError, match="member 1"):
        Ensemble([Table(good), Unfitted()]).fit(texts, y)


def test_members_must_share_the_classes(data):
    texts, y, good, noise = data
    other = Table(noise, classes=["a", "b", "d"])
    with pytest.raises(ConfigError, match=r"member 1.*\['d'\].*\['c'\]"):
        Ensemble([Table(good), other]).fit(texts, y)
    with pytest.raises(ConfigError, match="duplicate"):
        Ensemble([Table(good), Table(noise, classes=["a", "b", "b"])]).fit(texts, y)


def test_unknown_labels_are_named(data):
    texts, y, good, noise = data
    with pytest.raises(DataError, match="zebra"):
        Ensemble([Table(good), Table(noise)]).fit(texts[:3], ["a", "zebra", "b"])


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0], "one weight per member"),
        ([1.0, 2.0, 3.0], "one weight per member"),
        ([-1.0, 2.0], "non-negative"),
        ([0.0, 0.0], "all zero"),
        ([1.0, float("nan")], "finite"),
        (["x", 1.0], "numbers"),
        ("ab", "list of 2 numbers"),
    ],
)
def test_bad_weights(data, weights, match):
    texts, y, good, noise = data
    with pytest.raises(ConfigError, match=match):
        Ensemble([Table(good), Table(noise)], weights=weights).fit(texts, y)


def test_bad_calibration(data):
    texts, y, good, noise = data
    with pytest.raises(ConfigError, match="calibration must be one of"):
        Ensemble([Table(good), Table(noise)], calibration="platt").fit(texts, y)


def test_bad_data(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)])
    with pytest.raises(DataError, match="must match"):
        ens.fit(texts[:3], y[:2])
    with pytest.raises(DataError, match="at least one"):
        ens.fit([], [])
    with pytest.raises(DataError, match="single string"):
        ens.fit("0", ["a"])


def test_member_returning_logits_is_refused(data):
    texts, y, good, _ = data
    with pytest.raises(ConfigError, match="member 1: predict_proba must return probabilities"):
        Ensemble([Table(good), Table(np.log(good))]).fit(texts, y)


def test_not_fitted(data):
    texts, _, good, noise = data
    ens = Ensemble([Table(good), Table(noise)])
    with pytest.raises(NotFittedError, match="not fitted"):
        ens.predict_proba(texts)
    assert not hasattr(ens, "temperature_")
    with pytest.raises(NotFittedError):
        ens.save("unused")


def test_failed_refit_keeps_the_previous_fit(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)]).fit(texts, y)
    p = ens.predict_proba(texts)
    ens.estimators = [Table(good), Table(noise), Table(np.log(good))]
    with pytest.raises(ConfigError):
        ens.fit(texts, y)
    np.testing.assert_allclose(ens.predict_proba(texts), p)


def test_init_only_stores_parameters(data):
    _, _, good, noise = data
    members = [Table(good), Table(noise)]
    ens = Ensemble(members, weights=[-5], calibration="bogus")  # validated in fit, not here
    assert ens.get_params() == {"estimators": members, "weights": [-5], "calibration": "bogus"}
    assert ens.estimators is members
    assert clone(ens).get_params()["calibration"] == "bogus"


# -- saving (fake members) ---------------------------------------------------------------------------------------------
def test_save_refuses_members_without_save(data, tmp_path):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)]).fit(texts, y)
    with pytest.raises(ConfigError, match="member 0.*no save"):
        ens.save(tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_manifest_is_written_last_and_stale_members_removed(data, tmp_path):
    texts, y, good, noise = data
    folder = tmp_path / "ens"
    Ensemble([SavingTable(good), SavingTable(noise), SavingTable(good)]).fit(texts, y).save(folder)
    doc = json.loads((folder / ENSEMBLE_MANIFEST).read_text())
    assert doc["schema_version"] == 1 and doc["kind"] == "ensemble"
    assert doc["members"] == ["member-0", "member-1", "member-2"]
    assert doc["classes"] == CLASSES
    assert sum(doc["weights"]) == pytest.approx(1.0)
    assert doc["calibrator"]["method"] == "temperature"

    Ensemble([SavingTable(good), SavingTable(noise)]).fit(texts, y).save(folder)
    assert sorted(p.name for p in folder.iterdir()) == [ENSEMBLE_MANIFEST, "member-0", "member-1"]

    # A member that fails to save: the old manifest is gone, so the half-written folder refuses to load.
    with pytest.raises(OSError, match="disk full"):
        Ensemble([SavingTable(good), SavingTable(noise, fail=True)]).fit(texts, y).save(folder)
    assert not (folder / ENSEMBLE_MANIFEST).exists()
    with pytest.raises(ArtifactError, match="not an ensemble folder"):
        Ensemble.load(folder)


def test_save_refuses_a_foreign_folder(data, tmp_path):
    texts, y, good, noise = data
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not an ensemble folder"):
        Ensemble([SavingTable(good), SavingTable(noise)]).fit(texts, y).save(other)
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        Ensemble([SavingTable(good), SavingTable(noise)]).fit(texts, y).save(tmp_path / "file")


def test_priors_start_from_the_held_out_rows_and_adapt_to_a_shifted_set(data):
    texts, y, good, noise = data
    ens = Ensemble([Table(good), Table(noise)]).fit(texts, y)
    np.testing.assert_allclose(ens.training_priors_, np.bincount(_y_idx(y), minlength=3) / len(y))
    assert ens.priors()["training_source"] == "held-out rows"
    # The rows of class "a" only: EM moves most of the balance onto "a", and every prediction follows.
    only_a = [t for t, label in zip(texts, y) if label == "a"]
    estimate = ens.adapt_priors(only_a)
    assert estimate["a"] > 0.8 and ens.priors_ is not None
    assert np.mean(ens.predict(only_a) == "a") >= np.mean(ens.predict(only_a, priors="training") == "a")


@pytest.fixture()
def saved_fakes(data, tmp_path) -> Path:
    texts, y, good, noise = data
    return Ensemble([SavingTable(good), SavingTable(noise)]).fit(texts, y).save(tmp_path / "ens")


def _edit(folder: Path, **changes: Any) -> None:
    doc = json.loads((folder / ENSEMBLE_MANIFEST).read_text())
    doc.update(changes)
    (folder / ENSEMBLE_MANIFEST).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "members",
    [
        ["member-0", "../x"],
        ["member-0", "/tmp/x"],
        ["member-0", "member-1/../../x"],
        ["member-0", "x/member-1"],
        ["member-0", "member-\u0663"],  # an Arabic-Indic digit: \d would match it
        ["member-0", "member-1 "],
        ["member-0", 1],
        ["member-0", "member-7"],  # well-formed but absent
    ],
)
def test_load_refuses_member_folders_outside(saved_fakes, members):
    _edit(saved_fakes, members=members)
    with pytest.raises(ArtifactError, match="member folder"):
        Ensemble.load(saved_fakes)


def test_load_refuses_a_member_symlink_leading_outside(saved_fakes, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (saved_fakes / "member-5").symlink_to(outside, target_is_directory=True)
    _edit(saved_fakes, members=["member-0", "member-5"])
    with pytest.raises(ArtifactError, match="member-5"):
        Ensemble.load(saved_fakes)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"schema_version": 2}, "schema_version 2 is not supported"),
        ({"schema_version": True}, "schema_version True is not supported"),
        ({"schema_version": "1"}, "schema_version '1' is not supported"),
        ({"kind": "classifier"}, "expected kind 'ensemble'"),
        ({"members": ["member-0"]}, "at least 2"),
        ({"members": ["member-0", "member-0"]}, "listed twice"),
        ({"weights": [0.5]}, "'weights'"),
        ({"weights": [1.5, -0.5]}, "'weights'"),
        ({"weights": [0.2, 0.2]}, "'weights'"),
        ({"classes": []}, "'classes'"),
        ({"calibrator": {"method": "platt"}}, "calibration"),
        ({"calibrator": {"method": "temperature", "temperature": -1}}, "temperature"),
        ({"params": {"calibration": "platt", "weights": None}}, "params"),
        ({"priors": {"training": [0.5, 0.5]}}, "'training' to be 3 non-negative numbers"),
    ],
)
def test_load_refuses_a_bad_manifest(saved_fakes, changes, match):
    _edit(saved_fakes, **changes)
    with pytest.raises(ArtifactError, match=match):
        Ensemble.load(saved_fakes)


def test_load_refuses_missing_or_corrupt_manifest(saved_fakes, tmp_path):
    with pytest.raises(ArtifactError, match="not an ensemble folder"):
        Ensemble.load(tmp_path / "nothing")
    (saved_fakes / ENSEMBLE_MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Ensemble.load(saved_fakes)
    (saved_fakes / ENSEMBLE_MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        Ensemble.load(saved_fakes)


# -- save/load with real zero-shot members on the tiny model -----------------------------------------------------------
TEXTS = [
    "Stocks fell sharply on Monday.",
    "The team won the match.",
    "A new phone was released today.",
    "Great movie!",
    "Terrible service, would not recommend.",
    "I love this so much.",
    "The World Sports pages.",
    "Business desk news.",
]
Y = ["Business", "Sports", "Sci/Tech", "World", "World", "Sports", "Sports", "Business"]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def test_save_load_round_trip_with_lm_members(tiny_model_dir, tmp_path):
    from classlm import LMClassifier

    instruction = "Classify the news text."
    a = LMClassifier(model=str(tiny_model_dir), labels=LABELS, instruction=instruction, method="label_tokens")
    # Classes in another order: the ensemble aligns the columns, and must still do so after loading.
    b = LMClassifier(model=str(tiny_model_dir), labels=LABELS[::-1], instruction=instruction, method="letters")
    a.fit(TEXTS[:4], Y[:4])
    b.fit(TEXTS[:4], Y[:4])
    ens = Ensemble([a, b]).fit(TEXTS[4:], Y[4:])
    assert list(ens.classes_) == LABELS
    p = ens.predict_proba(TEXTS)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)

    folder = ens.save(tmp_path / "ens")
    assert sorted(x.name for x in folder.iterdir()) == [ENSEMBLE_MANIFEST, "member-0", "member-1"]
    assert (folder / "member-0" / "classlm.json").is_file() and (folder / "member-1" / "classlm.json").is_file()
    assert not [x for x in folder.rglob("*") if x.suffix in (".pkl", ".pickle", ".joblib", ".pt", ".bin")]

    loaded = Ensemble.load(folder, batch_size=2)
    assert [m.batch_size for m in loaded.estimators] == [2, 2]
    assert [m.method for m in loaded.estimators] == ["label_tokens", "letters"]
    assert list(loaded.classes_) == LABELS
    np.testing.assert_allclose(loaded.weights_, ens.weights_, rtol=0, atol=1e-15)
    assert loaded.temperature_ == ens.temperature_
    assert loaded.fit_info_ == ens.fit_info_
    assert loaded.calibration == ens.calibration and loaded.weights is None
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), p, rtol=0, atol=1e-6)
    assert list(loaded.predict(TEXTS)) == list(ens.predict(TEXTS))

    # A tampered manifest must not send the loader to a folder outside the ensemble.
    doc = json.loads((folder / ENSEMBLE_MANIFEST).read_text())
    doc["members"][1] = "../x"
    (folder / ENSEMBLE_MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"member folder '\.\./x' is not allowed"):
        Ensemble.load(folder)
