"""Gradient-boosted trees over TF-IDF (``method="tfidf"`` with ``model="boosting"``), the hybrid baseline of the
Kaggle LLM-classification write-ups, kept as data.

The n-gram matrix is too large to densify, so chi-squared keeps its ``n_features`` most class-dependent columns,
densified, and scikit-learn's ``HistGradientBoostingClassifier`` fits on them. The fitted trees are then read out as
flat arrays (feature, threshold, children, leaf values; safetensors, no pickle) and scored here by walking them in
numpy, all rows at once: a loaded classifier gives the fitted one's logits without scikit-learn's objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ARRAYS = ("columns", "feature", "threshold", "left", "right", "leaf", "missing_left", "value", "roots", "baseline")


def fit_boosting(
    x: Any, y: np.ndarray, k: int, *, n_features: int, max_iter: int, seed: int, sample_weight: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Fit on the sparse features ``x`` and class indices ``y`` (``0..k-1``); the model as flat arrays."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_selection import SelectKBest, chi2

    select = SelectKBest(chi2, k=min(n_features, x.shape[1])).fit(x, y)
    columns = np.sort(select.get_support(indices=True)).astype(np.int64)
    model = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=False, random_state=seed)
    model.fit(x[:, columns].toarray(), y, sample_weight=sample_weight)
    arrays = _flatten(model)
    arrays["columns"] = columns
    present = model.classes_.astype(np.int64)
    # Classes absent from y get no trees: their logit stays at -30, as for the logistic regression.
    arrays["classes"] = present
    arrays["k"] = np.array([k])
    return arrays


def _flatten(model: Any) -> dict[str, np.ndarray]:
    """Every tree's nodes in one set of arrays (children indices made global), a root per iteration and output."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in ("feature", "threshold", "left", "right", "leaf",
                                                          "missing_left", "value")}  # fmt: skip
    roots = []
    offset = 0
    for iteration in model._predictors:  # noqa: SLF001  # the fitted trees; read once, at fit time
        row = []
        for tree in iteration:
            nodes = tree.nodes
            parts["feature"].append(nodes["feature_idx"].astype(np.int64))
            parts["threshold"].append(nodes["num_threshold"].astype(np.float64))
            parts["left"].append(nodes["left"].astype(np.int64) + offset)
            parts["right"].append(nodes["right"].astype(np.int64) + offset)
            parts["leaf"].append(nodes["is_leaf"].astype(np.int64))
            parts["missing_left"].append(nodes["missing_go_to_left"].astype(np.int64))
            parts["value"].append(nodes["value"].astype(np.float64))
            row.append(offset)
            offset += len(nodes)
        roots.append(row)
    out = {n: np.concatenate(v) for n, v in parts.items()}
    out["roots"] = np.asarray(roots, dtype=np.int64).reshape(len(roots), -1)
    out["baseline"] = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)  # noqa: SLF001
    return out


def boosting_logits(arrays: dict[str, np.ndarray], x: Any) -> np.ndarray:
    """Class logits ``(n, k)`` of the sparse features ``x``: the trees' raw scores (for two classes the log-odds
    split as ``-z/2, z/2``), classes absent from training at -30."""
    dense = x[:, arrays["columns"]].toarray()
    n = dense.shape[0]
    rows = np.arange(n)
    raw = np.tile(arrays["baseline"], (n, 1))
    for iteration in arrays["roots"]:
        for out, root in enumerate(iteration):
            node = np.full(n, root)
            while True:
                leaf = arrays["leaf"][node].astype(bool)
                if leaf.all():
                    break
                value = dense[rows, arrays["feature"][node]]
                # As scikit-learn's predictor: value <= threshold goes left; a missing value where it was sent.
                left = np.where(np.isnan(value), arrays["missing_left"][node] == 1, value <= arrays["threshold"][node])
                node = np.where(leaf, node, np.where(left, arrays["left"][node], arrays["right"][node]))
            raw[:, out] += arrays["value"][node]
    k = int(arrays["k"][0])
    present = arrays["classes"]
    z = np.full((n, k), -30.0)
    if len(present) == 2:
        z[:, present[0]], z[:, present[1]] = -raw[:, 0] / 2, raw[:, 0] / 2
    else:
        z[:, present] = raw
    return z
