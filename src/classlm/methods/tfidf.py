"""``tfidf``: word and character n-gram TF-IDF + logistic regression (scikit-learn), the classic baseline; or, with
``model="boosting"``, gradient-boosted trees on its most class-dependent columns (:mod:`classlm.boosting`).

Saved as data, not as a pickled scikit-learn object: the vocabularies go into the manifest's JSON, the idf vectors
and the regression's coefficients into ``method-<id>.safetensors``. Scoring recomputes TF-IDF from the saved vocabulary
and idf exactly as ``TfidfVectorizer(sublinear_tf=True)`` does (counts → 1 + log → × idf → L2 norm), so a loaded
classifier gives the fitted one's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classlm.config import check_ngram_range, check_positive
from classlm.errors import ConfigError, DataError
from classlm.methods.base import Method, ScoringRun, register
from classlm.scores import MethodInfo, Scores


@dataclass(frozen=True)
class TfidfOptions:
    """``tfidf``: word and character n-gram TF-IDF (sublinear tf, L2-normalised) + logistic regression (inverse L2
    strength ``C``). Either n-gram range may be ``None`` to leave that part out; ``min_df`` applies to both.
    ``model="boosting"``: scikit-learn's HistGradientBoosting (``boost_iter`` rounds) on the ``n_features`` columns
    chi-squared ranks highest, instead of the regression (single-label only)."""

    word_ngrams: tuple[int, int] | None = (1, 2)
    char_ngrams: tuple[int, int] | None = (2, 5)
    min_df: int = 2
    C: float = 10.0
    max_iter: int = 2000
    model: str = "lr"
    n_features: int = 2000
    boost_iter: int = 200

    def __post_init__(self) -> None:
        if self.model not in ("lr", "boosting"):
            raise ConfigError(f"tfidf model must be 'lr' (logistic regression) or 'boosting', got {self.model!r}")
        check_positive(self, "n_features", "boost_iter", integer=True)
        check_ngram_range(self, "word_ngrams")
        check_ngram_range(self, "char_ngrams")
        if self.word_ngrams is None and self.char_ngrams is None:
            raise ConfigError("tfidf needs word_ngrams or char_ngrams (or both); both are None")
        check_positive(self, "min_df", "max_iter", integer=True)
        check_positive(self, "C")


# The two feature blocks: (name, analyzer, which option holds its n-gram range).
BLOCKS = (("word", "word", "word_ngrams"), ("char", "char_wb", "char_ngrams"))


@register("tfidf", options=TfidfOptions)
class TfidfMethod(Method):
    needs_lm = False
    learns_from_data = True

    def prepare(self, backbone: Any) -> None:
        self.vocabularies: dict[str, dict[str, int]] = {}
        self.idf: dict[str, np.ndarray] = {}
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None
        self.boosting: dict[str, np.ndarray] | None = None

    def _blocks(self) -> list[tuple[str, str, tuple[int, int]]]:
        return [(n, a, getattr(self.options, o)) for n, a, o in BLOCKS if getattr(self.options, o) is not None]

    def fit_data(
        self, texts: Sequence[str], y: np.ndarray, *, progress: bool = False, soft: np.ndarray | None = None
    ) -> dict[str, Any]:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        blocks = []
        for name, analyzer, ngrams in self._blocks():
            vec = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=self.options.min_df)
            try:
                blocks.append(vec.fit_transform(list(texts)))
            except ValueError:  # min_df left no term (tiny training sets): keep every term instead
                vec = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=1)
                blocks.append(vec.fit_transform(list(texts)))
            self.vocabularies[name] = {str(t): int(i) for t, i in vec.vocabulary_.items()}
            self.idf[name] = np.asarray(vec.idf_, dtype=np.float64)
        k = len(self.labels)
        if y.ndim == 2 and self.options.model == "boosting":
            raise ConfigError("tfidf model='boosting' is single-label; use model='lr' for multi-label")
        if y.ndim == 2:  # multi-label: a yes/no logistic regression per class on the same features
            return self._fit_per_class(hstack(blocks).tocsr(), y)
        present = np.unique(y)
        if len(present) < 2:
            raise DataError(f"tfidf needs examples of at least two classes to learn from; got only {present.size}")
        if self.options.model == "boosting":
            return self._fit_boosting(hstack(blocks).tocsr(), y, soft)
        lr = LogisticRegression(C=self.options.C, max_iter=self.options.max_iter)
        # Distillation (soft): scikit-learn's logistic regression fits class labels, not distributions; each row
        # takes its most probable class (y), weighted by that probability, so unsure rows count less.
        lr.fit(hstack(blocks).tocsr(), y, sample_weight=None if soft is None else soft.max(axis=1))
        # Classes absent from the training data get no column from scikit-learn: give them -inf-like logits.
        coef = np.zeros((k, lr.coef_.shape[1]))
        intercept = np.full(k, -30.0)
        if len(present) == 2:  # binary LogisticRegression keeps one row: logit(class 1) - logit(class 0)
            coef[present[1]], intercept[present[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
            coef[present[0]], intercept[present[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
        else:
            coef[present], intercept[present] = lr.coef_, lr.intercept_
        self.coef, self.intercept = coef, intercept
        self.fitted = True
        return {
            "features": int(coef.shape[1]),
            "iterations": int(np.max(lr.n_iter_)),
            "trainable_parameters": int(lr.coef_.size + lr.intercept_.size),
        }

    def _fit_boosting(self, x: Any, y: np.ndarray, soft: np.ndarray | None) -> dict[str, Any]:
        from classlm.boosting import fit_boosting

        o = self.options
        weight = None if soft is None else soft.max(axis=1)  # distillation: as for the regression
        self.boosting = fit_boosting(x, y, len(self.labels), n_features=o.n_features, max_iter=o.boost_iter, seed=0,
                                     sample_weight=weight)  # fmt: skip
        self.coef = self.intercept = None
        self.fitted = True
        return {"features": int(len(self.boosting["columns"])), "trees": int(self.boosting["roots"].size),
                "trainable_parameters": int(self.boosting["value"].size)}  # fmt: skip

    def _fit_per_class(self, x: Any, y: np.ndarray) -> dict[str, Any]:
        """One logistic regression per class (one-vs-rest): each class's logit is its own log-odds. A class that is
        on in no training row (or in every one) gets a constant logit of -30 (or +30)."""
        from sklearn.linear_model import LogisticRegression

        coef = np.zeros((y.shape[1], x.shape[1]))
        intercept = np.zeros(y.shape[1])
        iterations = 0
        for c in range(y.shape[1]):
            positives = int(y[:, c].sum())
            if positives in (0, len(y)):
                intercept[c] = -30.0 if positives == 0 else 30.0
                continue
            lr = LogisticRegression(C=self.options.C, max_iter=self.options.max_iter).fit(x, y[:, c])
            coef[c], intercept[c] = lr.coef_[0], lr.intercept_[0]
            iterations = max(iterations, int(np.max(lr.n_iter_)))
        self.coef, self.intercept = coef, intercept
        self.fitted = True
        parameters = int(coef.size + intercept.size)
        return {"features": int(coef.shape[1]), "iterations": iterations, "trainable_parameters": parameters}

    def _features(self, texts: Sequence[str]) -> Any:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        blocks = []
        for name, analyzer, ngrams in self._blocks():
            counts = CountVectorizer(
                analyzer=analyzer, ngram_range=ngrams, vocabulary=self.vocabularies[name]
            ).transform(list(texts))
            counts = counts.astype(np.float64)
            counts.data = 1.0 + np.log(counts.data)  # sublinear tf
            blocks.append(normalize(counts.multiply(self.idf[name]).tocsr()))
        return hstack(blocks).tocsr()

    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        if self.boosting is not None:
            from classlm.boosting import boosting_logits

            z = boosting_logits(self.boosting, self._features(texts))
        else:
            assert self.coef is not None and self.intercept is not None  # score() checked fitted
            z = self._features(texts) @ self.coef.T + self.intercept
        # Every word of every text is counted: nothing is ever cut.
        return Scores(np.asarray(z, dtype=np.float32), truncated=np.zeros(len(texts), dtype=bool))

    def info(self) -> MethodInfo:
        features = {n: len(v) for n, v in self.vocabularies.items()}
        return MethodInfo(self.name, extra={"features": features, "options": self.options_dict()})

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.boosting is not None:
            tensors = {f"boosting.{n}": v for n, v in self.boosting.items()}
        elif self.coef is None or self.intercept is None:
            return {}, {}
        else:
            tensors = {"coef": self.coef, "intercept": self.intercept}
        tensors.update({f"idf.{n}": v for n, v in self.idf.items()})
        return tensors, {"vocabularies": self.vocabularies}

    def load_state(self, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        self.vocabularies = {n: dict(v) for n, v in info["vocabularies"].items()}
        self.idf = {n: np.asarray(tensors[f"idf.{n}"], dtype=np.float64) for n in self.vocabularies}
        if "coef" in tensors:
            self.coef = np.asarray(tensors["coef"], dtype=np.float64)
            self.intercept = np.asarray(tensors["intercept"], dtype=np.float64)
        else:
            self.boosting = {
                n.removeprefix("boosting."): np.asarray(v) for n, v in tensors.items() if n.startswith("boosting.")
            }
        self.fitted = True
