"""``evaluate(clf, X, y)``: score a fitted classifier on labelled texts and build an :class:`EvalReport`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from classlm.classifier import LMClassifier
from classlm.data import as_texts, validate_labels
from classlm.reports import EvalReport, build_report


def evaluate(
    clf: LMClassifier,
    X: Any,
    y: Sequence[Any],
    *,
    info: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Metrics of ``clf`` on ``(X, y)``: accuracy, F1, NLL, Brier, ECE, calibration ratio, class mass, throughput."""
    clf.check_fitted()
    texts = as_texts(X)
    # Matched by name, str(class): labels read from a file are strings, a classifier fit on integers has int classes.
    labels = [str(v) for v in y]
    names = [str(c) for c in clf.classes_]
    validate_labels(labels, names)
    start = time.perf_counter()
    scores = clf.predict_scores(texts, class_mass=clf.class_mass_available)
    seconds = time.perf_counter() - start
    proba = clf.probabilities(scores.logits)
    index = {name: i for i, name in enumerate(names)}
    y_idx = np.array([index[v] for v in labels], dtype=np.int64)
    details = {
        "model": clf.model,
        "method": clf.method,
        "scoring": getattr(clf, "scoring_", getattr(clf, "scoring", None)),
        "temperature": clf.temperature_,
        "n_truncated": int(scores.n_truncated),
        "seconds": round(seconds, 3),
        "texts_per_second": round(len(texts) / seconds, 3) if seconds > 0 else None,
    }
    if scores.class_mass is not None and len(scores.class_mass):
        details["class_mass_mean"] = float(np.mean(scores.class_mass))
    details.update(info or {})
    return build_report(y_idx, proba, names, info=details)
