"""``evaluate(clf, X, y)``: score a fitted classifier on labelled texts and build an :class:`EvalReport`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from classlm.classifier import LMClassifier
from classlm.data import as_texts, validate_labels
from classlm.errors import ConfigError, DataError
from classlm.metrics import softmax
from classlm.out_of_scope import out_of_scope_report
from classlm.reports import EvalReport, build_report


def evaluate(
    clf: LMClassifier,
    X: Any,
    y: Sequence[Any],
    *,
    info: Mapping[str, Any] | None = None,
    oos_label: Any = None,
) -> EvalReport:
    """Metrics of ``clf`` on ``(X, y)``: accuracy, F1, NLL, Brier, ECE, calibration ratio, class mass, throughput.

    ``oos_label``: the label of out-of-scope rows. The report then also says how well each out-of-scope score finds
    them (AUROC) and the accuracy left when the classifier abstains on the rows each score ranks most out of scope
    (``metrics["out_of_scope"]``). Where it is not one of the classifier's classes, the other metrics are over the
    in-scope rows."""
    clf.check_fitted()
    if getattr(clf, "multi_label_", False):
        if oos_label is not None:
            raise ConfigError("oos_label is for single-label classifiers: a multi-label one may answer no class")
        return _evaluate_multi_label(clf, as_texts(X), y, info)
    texts = as_texts(X)
    # Matched by name, str(class): labels read from a file are strings, a classifier fit on integers has int classes.
    labels = [str(v) for v in y]
    names = [str(c) for c in clf.classes_]
    oos = np.array([oos_label is not None and v == str(oos_label) for v in labels], dtype=bool)
    if oos_label is not None and not oos.any():
        raise DataError(f"oos_label={str(oos_label)!r}: no row has that label; the labels are {sorted(set(labels))}")
    oos_is_class = oos_label is not None and str(oos_label) in names
    inside = ~oos if oos_label is not None and not oos_is_class else np.ones(len(labels), dtype=bool)
    validate_labels([v for v, keep in zip(labels, inside) if keep], names)
    start = time.perf_counter()
    wanted = clf.scoring_for_out_of_scope() if oos_label is not None else {"class_mass": clf.class_mass_available}
    scores = clf.predict_scores(texts, **wanted)
    seconds = time.perf_counter() - start
    calibrated = clf.calibrated_logits(scores.logits)
    proba = softmax(calibrated)
    index = {name: i for i, name in enumerate(names)}
    y_all = np.array([index.get(v, -1) for v in labels], dtype=np.int64)  # -1: out of scope, not a class
    y_idx = y_all[inside]
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
    report = build_report(y_idx, proba[inside], names, info=details)
    if oos_label is not None:
        oos_scores = clf.out_of_scope_of(scores, calibrated)
        found = out_of_scope_report(y_all, proba, oos_scores, oos, index.get(str(oos_label)))
        report.metrics["out_of_scope"] = {"label": str(oos_label), "is_a_class": oos_is_class, **found}
    return report


def _evaluate_multi_label(clf: Any, texts: list[str], y: Any, info: Mapping[str, Any] | None) -> EvalReport:
    """:func:`evaluate` for a multi-label classifier: ``y`` label lists or an indicator matrix; answers at the
    classifier's cuts (``thresholds_``)."""
    from classlm.multilabel import indicator_matrix, multilabel_metrics

    names = [str(c) for c in clf.classes_]
    truth = indicator_matrix(y, names)
    if len(truth) != len(texts):
        raise DataError(f"X has {len(texts)} texts but y has {len(truth)} rows of labels; they must match")
    start = time.perf_counter()
    proba = clf.predict_proba(texts)
    seconds = time.perf_counter() - start
    details = {
        "model": clf.model,
        "method": clf.method,
        "multi_label": True,
        "seconds": round(seconds, 3),
        "texts_per_second": round(len(texts) / seconds, 3) if seconds > 0 else None,
        **dict(info or {}),
    }
    metrics = multilabel_metrics(truth, proba, names, clf.thresholds_)
    return EvalReport(tuple(names), metrics, details)
