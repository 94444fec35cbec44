"""How :class:`~classlm.LMClassifier` fits besides loading: the calibration hold-out, backbone training, and the
multi-label path (a yes/no per class on the same sliced head).

A mixin, apart from the classifier so that each stays readable; it expects the classifier's ``_build``,
``_learning``, ``train_config``, ``predict_scores``, ``labelled_rows`` and ``class_indices``. Torch loads only inside
training (:mod:`classlm.training`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classlm.calibrators import parse_calibration
from classlm.config import token_budget
from classlm.data import calibration_split
from classlm.errors import ConfigError, DataError
from classlm.labels import LabelSet
from classlm.multilabel import indicator_matrix, is_label_lists, label_classes, multilabel_metrics, multilabel_split
from classlm.thresholds import MultiLabelCalibrator, sigmoid

# calibration= for multi-label: each class gets its own Platt scaling (a scale and an offset); "none" keeps LoRA's
# offset and the 0.5 cut.
MULTI_LABEL_CALIBRATION = {"temperature": "platt", "none": None}
# Methods whose logits can be read as one yes/no per class.
MULTI_LABEL_METHODS = ("label_tokens", "letters", "pairwise", "tfidf", "embedding")


def is_multi_label_target(y: Any) -> bool:
    """Whether ``fit``'s ``y`` is multi-label: a list of labels per row, or a 2-D indicator matrix of two or more
    columns (a single column is a misshapen single-label ``y``, refused as such)."""
    if y is None or isinstance(y, (str, bytes)):
        return False
    if is_label_lists(y):
        return True
    shape: tuple[int, ...] = tuple(np.shape(y)) if hasattr(y, "shape") else ()
    return len(shape) == 2 and shape[1] >= 2


class Fitting:
    """``LMClassifier.fit``'s steps after the labels are resolved."""

    if TYPE_CHECKING:  # the classifier's, which this mixin is part of
        labels: Any
        method: str
        calibration: str
        batch_size: int
        batch_tokens: Any
        progress: Any
        backbone_: Any
        method_: Any
        classes_: np.ndarray
        calibrator_: Any
        calibration_info_: dict[str, Any]
        training_: dict[str, Any]

        def train_config(self) -> Any: ...
        def labelled_rows(self, pair: Any, name: str) -> tuple[list[str], list[str]]: ...
        def read_inputs(self, X: Any) -> list[str]: ...
        def predict_scores(self, X: Any, *, class_mass: bool = False, features: bool = False) -> Any: ...
        def _build(
            self, label_set: Any, adapter: Any = None, classes: Any = None, *, training: bool = False
        ) -> None: ...
        def _learning(
            self, texts: list[str], y: Any, eval_set: Any, calib_set: Any, run_dir: Any, resume: bool
        ) -> tuple[bool, bool]: ...

    def _hold_out(
        self, texts: list[str], y: list[str], calib_set: Any
    ) -> tuple[list[str], list[str], tuple[list[str], list[str]] | None, str]:
        """(training texts, training labels, calibration rows, where they come from): ``calib_set``, or a
        stratified slice of (X, y) held out from training (DESIGN §5 rule 5)."""
        train_cfg = self.train_config()
        if calib_set is not None:
            return texts, y, self.labelled_rows(calib_set, "calib_set"), "calib_set"
        if not parse_calibration(self.calibration):  # "none": nothing to hold out for
            return texts, y, None, ""
        keep, held, source = calibration_split(y, train_cfg.calib_fraction, seed=train_cfg.seed)
        return [texts[i] for i in keep], [y[i] for i in keep], ([texts[i] for i in held], [y[i] for i in held]), source

    def _train_backbone(
        self,
        train: tuple[list[str], np.ndarray],
        evaluation: tuple[list[str], np.ndarray] | None,
        eval_name: str | None,
        run_dir: str | Path | None,
        resume: bool,
        callback: Any,
    ) -> dict[str, Any]:
        """Train the backbone on ``train`` (texts, class indices or a multi-label indicator matrix), evaluating on
        ``evaluation`` (named ``eval_name`` in ``training_``); returns the training summary."""
        from classlm.training import train_method

        summary = train_method(
            self.method_,
            self.train_config(),
            train,
            evaluation,
            resume=resume,
            run_dir=run_dir,
            progress=self.progress,
            callback=callback,
            eval_batch_size=self.batch_size,
            eval_batch_tokens=token_budget(self.batch_tokens, self.backbone_),
        )
        self.training_ = {**summary, "eval_set": eval_name}
        return summary

    # -- multi-label ----------------------------------------------------------------------------------------------
    def _multi_label_classes(self, y: Any) -> tuple[Any, np.ndarray]:
        """(the label spec, the typed classes): ``labels=`` where given, else the sorted labels of ``y``'s lists
        (an indicator matrix without ``labels=`` has classes 0..k-1)."""
        from classlm.estimator import as_classes, classes_from_spec

        if self.labels is not None:
            spec, classes = classes_from_spec(self.labels)
            if classes is None:
                raise ConfigError("labels: expected a list or mapping of class names for multi-label classification")
            return spec, classes
        if is_label_lists(y):
            found = label_classes(y)
            if not found:
                raise DataError("y: every row's label list is empty; multi-label training needs some labels")
            classes = as_classes(found)
            return [str(c) for c in classes], classes
        k = np.asarray(y).shape[1]
        return [str(i) for i in range(k)], np.arange(k)

    def _fit_multi_label(
        self, texts: list[str], y: Any, eval_set: Any, calib_set: Any, run_dir: Any, resume: bool, callback: Any
    ) -> Any:
        """``fit`` for multi-label ``y``: the same sliced head, one logit per class read as its own yes/no (a
        sigmoid), LoRA trained with BCE and a per-class offset; then per-class Platt scaling and per-class cuts on
        held-out rows (:class:`~classlm.thresholds.MultiLabelCalibrator`)."""
        if self.calibration not in MULTI_LABEL_CALIBRATION:
            raise ConfigError(
                f"calibration={self.calibration!r} does not apply to multi-label classification, which calibrates "
                "each class on its own (Platt scaling): use calibration='temperature' (the default) or 'none'"
            )
        if self.method not in MULTI_LABEL_METHODS:
            raise ConfigError(
                f"multi-label classification needs one yes/no logit per class: method='label_tokens' or 'letters' "
                f"(its LM-head row), 'pairwise' (a yes/no question per class), 'tfidf' or 'embedding' (a logistic "
                f"regression per class); got {self.method!r}"
            )
        if self.train_config().loss == "vocab_ce":
            raise ConfigError(
                "loss='vocab_ce' trains one answer token per text; multi-label trains a yes/no per class with BCE: "
                "use loss='class_ce' (the default)"
            )
        spec, classes = self._multi_label_classes(y)
        names = [str(c) for c in classes]
        target = indicator_matrix(y, names)
        if len(target) != len(texts):
            raise DataError(f"X has {len(texts)} texts but y has {len(target)} rows of labels; they must match")
        learns, training = self._learning(texts, target, eval_set, calib_set, run_dir, resume)
        self._build(LabelSet.from_spec(spec), classes=classes, training=training)
        scaling = MULTI_LABEL_CALIBRATION[self.calibration]
        offset = None
        if learns:
            cfg = self.train_config()
            if calib_set is not None:
                calib_texts, calib_y = self._multi_label_rows(calib_set, "calib_set", names)
                train_texts, train_y = texts, target
                source = "calib_set"
            elif scaling is None:  # calibration="none": nothing to hold out for
                train_texts, train_y, calib_texts, calib_y, source = texts, target, [], target[:0], ""
            else:
                keep, held = multilabel_split(target, cfg.calib_fraction, seed=cfg.seed)
                train_texts, train_y = [texts[i] for i in keep], target[keep]
                calib_texts, calib_y = [texts[i] for i in held], target[held]
                source = f"held out from fit(X, y): {len(held)} of {len(texts)} rows (seed {cfg.seed}), every class"
                source += " with two or more rows on both sides"
            if training:
                evaluation = self._multi_label_rows(eval_set, "eval_set", names) if eval_set is not None else None
                summary = self._train_backbone(
                    (train_texts, train_y),
                    evaluation or ((calib_texts, calib_y) if calib_texts else None),
                    "eval_set" if eval_set is not None else ("calibration split" if calib_texts else None),
                    run_dir,
                    resume,
                    callback,
                )
                offset = summary.get("class_bias")
            else:  # tfidf, embedding: a logistic regression per class, with its own intercepts
                t0 = time.perf_counter()
                fitted = self.method_.fit_data(train_texts, train_y, progress=bool(self.progress))
                seconds = time.perf_counter() - t0
                self.training_ = {"n_train": len(train_texts), "seconds": round(seconds, 2), **fitted}
        else:
            calib_texts, calib_y = texts, target
            source = "fit(X, y): zero-shot, no weights trained, so all of it is held out for calibration"
        self.calibrator_ = MultiLabelCalibrator(len(names), scaling or "platt", offset)
        self.calibration_info_ = {"fitted": False, "multi_label": True}
        if scaling is not None:
            self.calibrate_multi_label(calib_texts, calib_y, source)
        return self

    def _multi_label_rows(self, pair: Any, name: str, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ConfigError(f"{name} must be a (texts, labels) pair, got {type(pair).__name__}")
        texts, target = self.read_inputs(pair[0]), indicator_matrix(pair[1], names)
        if len(texts) != len(target) or not texts:
            raise DataError(
                f"{name}: {len(texts)} texts and {len(target)} label rows; expected the same, non-zero count"
            )
        return texts, target

    def calibrate_multi_label(self, texts: list[str], target: np.ndarray, source: str) -> None:
        """Fit the per-class scaling and cuts on held-out rows (texts and their indicator matrix); the metrics
        before (sigmoid of the raw logits plus the offset, cuts at 0.5) and after go to ``calibration_info_``."""
        logits = self.predict_scores(texts).logits
        names = [str(c) for c in self.classes_]
        before = multilabel_metrics(target, sigmoid(logits + self.calibrator_.offset), names)
        self.calibrator_.fit(logits, target)
        after = multilabel_metrics(
            target, sigmoid(self.calibrator_.transform(logits)), names, self.calibrator_.thresholds_
        )
        keys = ("macro_f1", "micro_f1", "bce", "per_class_ece_mean")
        self.calibration_info_ = {
            "fitted": True,
            "multi_label": True,
            "source": source,
            "n": len(texts),
            "before": {k: before[k] for k in keys},
            "after": {k: after[k] for k in keys},
        }


def multi_label_info(calibrator: Any, names: Sequence[str]) -> Mapping[str, Any]:
    """What ``model_info`` says of a multi-label classifier: each class's cut and where it came from."""
    return {
        "multi_label": True,
        "thresholds": dict(zip(names, map(float, calibrator.thresholds_), strict=True)),
        "threshold_source": dict(zip(names, calibrator.threshold_source_, strict=True)),
    }
