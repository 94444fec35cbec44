"""TF-IDF + gradient boosting (``method="tfidf"``, ``model="boosting"``): the trees kept as arrays give
scikit-learn's own decision values, and the classifier saves and loads them as data."""

from __future__ import annotations

import numpy as np
import pytest

from classlm import LMClassifier
from classlm.boosting import _flatten, boosting_logits
from classlm.errors import ConfigError
from test_training import LABELS, toy_data


@pytest.mark.parametrize("k", [2, 3])
def test_the_flat_trees_give_scikit_learns_decision_values(k):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.random((300, 12))
    x[x < 0.3] = 0  # sparse-ish, as TF-IDF is
    x[5, 3] = np.nan  # a missing value takes the side the fit sent missing values to
    y = (x[:, 0] * 3 + x[:, 1] > 1.5).astype(int) + (x[:, 2] > 0.7 if k == 3 else 0)
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    arrays = {**_flatten(model), "columns": np.arange(12), "classes": np.arange(k), "k": np.array([k])}
    z = boosting_logits(arrays, _Dense(x))
    want = model.decision_function(x)
    if k == 2:
        np.testing.assert_allclose(z[:, 1] - z[:, 0], want, atol=1e-9)
    else:
        np.testing.assert_allclose(z, want, atol=1e-9)


class _Dense:
    """A dense matrix behind the sparse interface boosting_logits reads (column selection, then toarray)."""

    def __init__(self, x):
        self.x = x

    def __getitem__(self, key):
        return _Dense(self.x[key])

    def toarray(self):
        return self.x


def test_tfidf_boosting_fits_saves_and_loads(tmp_path):
    X, y = toy_data(12)
    clf = LMClassifier(method="tfidf", labels=LABELS, method_options={"model": "boosting", "boost_iter": 30}).fit(X, y)
    assert clf.training_["trees"] == 30 * 4 and (clf.predict(X) == np.array(y)).mean() >= 0.8
    clf.save(tmp_path / "run")
    loaded = LMClassifier.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-12)
    with pytest.raises(ConfigError, match="'lr' .* or 'boosting'"):
        LMClassifier(method="tfidf", labels=LABELS, method_options={"model": "xgb"}).fit(X, y)
    with pytest.raises(ConfigError, match="single-label"):
        LMClassifier(method="tfidf", labels=LABELS, method_options={"model": "boosting"}).fit(X, [[c] for c in y])
