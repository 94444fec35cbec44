"""What ``classlm train`` says about the classifier it made, beyond its metrics: whether it collapsed (predicts
almost only one class, or sits at chance) and whether it beats TF-IDF + LR trained on the same rows, the
seconds-cheap baseline an LM classifier has to earn its cost against.

Pure: works on :func:`classlm.metrics.classification_metrics` dicts (their ``confusion`` matrix and macro-F1) and on
:func:`classlm.multilabel.multilabel_metrics` ones (labels per text, predicted and true).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# A classifier "predicts almost only one class" when that class takes this share of the predictions...
COLLAPSE_SHARE = 0.9
# ...while truly being at least this much rarer (a set that is 95% one class may rightly be predicted 95% that class).
COLLAPSE_EXCESS = 0.1
# Macro-recall over the classes present below chance (1 / their count) plus this is "at chance": a classifier that
# always answers the same class scores exactly 1 / k, a coin-flip one about the same.
CHANCE_MARGIN = 0.05
# Fewer evaluation rows than this say nothing either way.
MIN_ROWS = 10
# Multi-label: answering fewer labels per text than this share of the true count is answering (almost) none...
EMPTY_SHARE = 0.1
# ...and answering more than this share of all the classes, where the texts truly carry at most half, is all of them.
FULL_SHARE = 0.9


@dataclass(frozen=True)
class Collapse:
    """A collapsed classifier: which class it favours, how often, and how that compares with the labels."""

    top_class: str
    predicted_share: float  # of the evaluation rows predicted as top_class
    true_share: float  # of the evaluation rows whose label is top_class
    macro_recall: float  # over the classes with evaluation rows
    chance: float  # 1 / the number of those classes
    n: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collapse(metrics: Mapping[str, Any], names: list[str]) -> Collapse | None:
    """The collapse found in one evaluation's metrics (``confusion``: rows true, columns predicted), or None."""
    conf = np.asarray(metrics["confusion"], dtype=np.float64)
    n = int(conf.sum())
    support, predicted = conf.sum(axis=1), conf.sum(axis=0)
    present = support > 0
    if n < MIN_ROWS or present.sum() < 2:
        return None
    recall = float(np.mean(np.diag(conf)[present] / support[present]))
    chance = 1.0 / int(present.sum())
    top = int(np.argmax(predicted))
    share, true_share = float(predicted[top] / n), float(support[top] / n)
    one_class = share >= COLLAPSE_SHARE and share - true_share >= COLLAPSE_EXCESS - 1e-9  # 1.0 - 0.9 < 0.1 in floats
    at_chance = recall < chance + CHANCE_MARGIN
    if not (one_class or at_chance):
        return None
    what = (
        f"it predicts {names[top]!r} for {share:.0%} of the {n} evaluation rows (truly {true_share:.0%} of them)"
        if one_class
        else f"it answers at or barely above chance on the {n} evaluation rows"
    )
    message = (
        f"the classifier has collapsed: {what}; macro-recall {recall:.3f}, where always answering one class "
        f"scores {chance:.3f}. It was saved, but do not use it as is"
    )
    return Collapse(names[top], share, true_share, recall, chance, n, message)


@dataclass(frozen=True)
class MultiLabelCollapse:
    """A collapsed multi-label classifier: it answers (almost) no label, or (almost) every label, for every text."""

    predicted_per_text: float
    true_per_text: float
    n_classes: int
    n: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collapse_multi_label(metrics: Mapping[str, Any]) -> MultiLabelCollapse | None:
    """The collapse found in one multi-label evaluation (labels per text, predicted against true), or None."""
    n, k = int(metrics["n"]), int(metrics["n_classes"])
    predicted, true = float(metrics["cardinality_predicted"]), float(metrics["cardinality_true"])
    if n < MIN_ROWS or true <= 0:
        return None
    if predicted < EMPTY_SHARE * true:
        what = "(almost) no label"
    elif predicted > FULL_SHARE * k and true <= k / 2:
        what = "(almost) every label"
    else:
        return None
    message = (
        f"the classifier has collapsed: it answers {what} — {predicted:.2f} labels per text on the {n} evaluation "
        f"rows, which truly carry {true:.2f} of the {k} classes. It was saved, but do not use it as is"
    )
    return MultiLabelCollapse(predicted, true, k, n, message)


@dataclass(frozen=True)
class BaselineComparison:
    """The classifier's macro-F1 against TF-IDF + LR trained on the same rows, on the same evaluation rows."""

    macro_f1: float
    baseline_macro_f1: float
    n: int
    earns_its_cost: bool
    message: str

    @property
    def margin(self) -> float:
        return self.macro_f1 - self.baseline_macro_f1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": self.margin}


def against_baseline(metrics: Mapping[str, Any], baseline: Mapping[str, Any]) -> BaselineComparison:
    """Compare one evaluation with TF-IDF + LR's on the same rows; ``earns_its_cost`` unless TF-IDF is better."""
    mine, theirs, n = float(metrics["macro_f1"]), float(baseline["macro_f1"]), int(metrics["n"])
    better = mine >= theirs
    head = f"macro-F1 {mine:.3f} against TF-IDF + LR's {theirs:.3f} (same training rows, same {n} evaluation rows)"
    if better:
        message = f"{head}: the LM classifier is ahead by {mine - theirs:.3f}"
    else:
        message = (
            f"{head}: the LM classifier is WORSE than the bag-of-words baseline by {theirs - mine:.3f} and does not "
            "earn its cost here. Options: more training rows (--limit), more passes (--epochs), or an ensemble "
            "of both (`classlm bench DATA --ensemble lora,tfidf` compares them)"
        )
    return BaselineComparison(mine, theirs, n, better, message)
