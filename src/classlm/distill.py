"""Learning from a bigger model: a teacher's probabilities over (many, unlabelled) texts, cached so a crash loses
nothing already scored, and ``LMClassifier.fit(X, y, y_proba=P)`` / ``fit(X, y, teacher=T)`` training on them.

The teacher is anything with ``classes_`` and ``predict_proba`` (a fitted classlm classifier, an ``Ensemble``, a
``RemoteClassifier`` over an OpenAI-compatible server). Its columns are matched to the student's classes by name.
A remote teacher reads the next token's top-k only: classes absent from it get an estimated share (its
``missing_mass``), and :func:`teacher_probabilities` reports how much of the mass that was (coverage).

The student's loss (:func:`classlm.objectives.distill_loss`): on a row with a hard label, ``alpha`` times its
cross-entropy plus ``1 - alpha`` times ``T^2 KL(teacher_T || student_T)``; on a row with the teacher's probabilities
only, the KL term alone. LoRA trains on exactly that; the hidden-state and embedding heads on the cross-entropy to the
mixed target ``alpha * onehot + (1 - alpha) * teacher`` (the same thing at ``T = 1``); TF-IDF's logistic regression
on each row's most probable class weighted by its probability (scikit-learn fits labels, not distributions).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classlm.errors import ConfigError, DataError

CACHE_VERSION = 1


def text_digest(texts: Sequence[str]) -> str:
    """What a cache was made for: the texts, in order."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(str(t).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def teacher_columns(teacher: Any, names: Sequence[str]) -> np.ndarray:
    """For each student class (by name), its column in the teacher's ``classes_``; refused when one is missing."""
    own = [str(c) for c in getattr(teacher, "classes_", [])]
    missing = [n for n in names if n not in own]
    extra = [c for c in own if c not in names]
    if missing or extra or len(own) != len(names):
        diff = "; ".join(
            f"{what}: {found}"
            for what, found in (("the teacher lacks", missing), ("the student lacks", extra))
            if found
        )
        raise ConfigError(
            f"the teacher's classes {own} are not the student's {list(names)} ({diff or 'a class repeats'}); a "
            "teacher must score the same classes, by name (the student's come from labels=, --labels, or the "
            "labelled data's)"
        )
    return np.array([own.index(n) for n in names])


def teacher_probabilities(
    teacher: Any,
    texts: Sequence[str],
    names: Sequence[str],
    *,
    cache: str | Path | None = None,
    chunk: int = 256,
    progress: bool = False,
    teacher_id: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The teacher's probabilities ``(n, k)`` of ``texts`` in the student's class order ``names``, and a report
    (rows scored now and from the cache; for a remote teacher, the mass given to classes absent from its top-k).

    ``cache``: a JSONL file (a header with the texts' digest, the classes and ``teacher_id``, then one line per
    scored chunk, each flushed to disk): a run stopped while scoring resumes after the last complete chunk; a cache
    made for other texts, classes or teacher is refused, never mixed in. ``teacher_id`` names the teacher (default:
    its type and its probabilities of a probe text, rounded: another teacher answers the probe differently)."""
    from classlm.progress import progress_bar

    if getattr(teacher, "multi_label_", False):
        raise ConfigError("a multi-label teacher gives a probability per class, not a distribution: not a teacher here")
    columns = teacher_columns(teacher, names)
    rows: list[list[float]] = []
    missing: list[float] = []
    path = Path(cache) if cache is not None else None
    if path is not None:  # what the cache is for: these texts, these classes, this teacher
        header = {"classlm_teacher_cache": CACHE_VERSION, "texts": text_digest(texts), "n": len(texts),
                  "classes": list(names), "teacher": teacher_id or _identity(teacher)}  # fmt: skip
    if path is not None and path.is_file():
        rows, missing = _read_cache(path, header)
    cached = len(rows)
    handle = None
    if path is not None:
        if not cached:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + "\n")
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115  # closed below; appended chunk by chunk
    bar = progress_bar(total=len(texts), initial=cached, desc="teacher", unit="text", disable=not progress)
    try:
        for start in range(cached, len(texts), chunk):
            part = list(texts[start : start + chunk])
            proba, lost = _score(teacher, part)
            proba = check_soft_targets(proba, len(part), len(names))[:, columns]
            rows += proba.tolist()
            missing += lost
            if handle is not None:
                handle.write(json.dumps({"start": start, "probs": proba.tolist(), "missing_mass": lost}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            bar.update(len(part))
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    probs = check_soft_targets(np.asarray(rows, dtype=np.float64).reshape(len(texts), len(names)), len(texts),
                               len(names))  # fmt: skip
    report: dict[str, Any] = {"n": len(texts), "from_cache": cached, "scored": len(texts) - cached}
    if missing:
        lost_mass = np.asarray(missing, dtype=np.float64)
        report["missing_mass_mean"] = float(lost_mass.mean())
        report["texts_with_missing_classes"] = float(np.mean(lost_mass > 0))
    return probs, report


def _identity(teacher: Any) -> str:
    """What a cache records of the teacher when not told: its type and a digest of its probabilities of a probe
    text (three decimals: the same teacher gives them again, another one does not)."""
    probe, _ = _score(teacher, ["A probe text, to tell one teacher from another."])
    digest = hashlib.sha256(np.round(probe, 3).astype(np.float64).tobytes()).hexdigest()[:16]
    return f"{type(teacher).__name__}:{digest}"


def _score(teacher: Any, texts: list[str]) -> tuple[np.ndarray, list[float]]:
    """A chunk's probabilities (the teacher's own column order) and, for a remote teacher, each text's mass on
    classes absent from the server's top-k."""
    if hasattr(teacher, "predict_scores") and hasattr(teacher, "probabilities"):
        scores = teacher.predict_scores(texts)
        lost = getattr(scores, "missing_mass", None)
        return np.asarray(teacher.probabilities(scores.logits)), [] if lost is None else [float(v) for v in lost]
    return np.asarray(teacher.predict_proba(texts)), []


def _read_cache(path: Path, header: dict[str, Any]) -> tuple[list[list[float]], list[float]]:
    """The complete chunks of a cache; a last line a crash cut mid-write is cut off the file, so the chunks appended
    next start on a line of their own."""
    lines = path.read_bytes().splitlines(keepends=True)
    try:
        found = json.loads(lines[0]) if lines else {}
    except ValueError:
        found = {}
    if not isinstance(found, dict) or {k: found.get(k) for k in header} != header:
        raise ConfigError(
            f"{path} is a teacher cache for other texts, classes or teacher (or not one): delete it, or choose another "
            "cache file for these texts and this teacher"
        )
    rows: list[list[float]] = []
    missing: list[float] = []
    good = len(lines[0])  # bytes of complete lines so far
    for line in lines[1:]:
        try:
            entry = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            entry = None
        if entry is None:  # the chunk a crash cut mid-write: cut off the file, scored again
            with open(path, "r+b") as fh:
                fh.truncate(good)
            break
        if entry.get("start") != len(rows):
            raise DataError(f"{path}: chunk at row {entry.get('start')} where row {len(rows)} was expected")
        rows += entry["probs"]
        missing += entry.get("missing_mass") or []
        good += len(line)
    return rows, missing


def check_soft_targets(y_proba: Any, n: int, k: int) -> np.ndarray:
    """``y_proba`` as an ``(n, k)`` float array of probability rows; refused otherwise, in the caller's terms."""
    try:
        p = np.asarray(y_proba, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"y_proba must be an (n, k) array of probabilities ({exc})") from exc
    if p.shape != (n, k):
        raise DataError(f"y_proba has shape {p.shape}; expected ({n}, {k}): one row per text, a column per class")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise DataError("y_proba: every row must be non-negative probabilities summing to 1 (a softmax's output)")
    return p / p.sum(axis=1, keepdims=True)


def mixed_targets(soft: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The heads' training target: ``alpha * onehot(y) + (1 - alpha) * soft`` where ``y >= 0``, ``soft`` elsewhere."""
    out = soft.copy()
    labelled = y >= 0
    onehot = np.eye(soft.shape[1])[y[labelled]]
    out[labelled] = alpha * onehot + (1 - alpha) * soft[labelled]
    return out


class Distilling:
    """``LMClassifier.fit(X, y, y_proba=P)`` and ``fit(X, y, teacher=T)``: training on a teacher's probabilities, with
    whatever hard labels ``y`` has (``None`` entries, or ``y=None``, for rows the teacher alone labels). A mixin of the
    classifier: it uses its ``_build``, ``_train_backbone``, ``calibrate`` and the rest."""

    def _fit_distilled(self, texts: list[str], y: Any, y_proba: Any, teacher: Any, fit_args: dict[str, Any]) -> Any:
        from classlm.calibrators import parse_calibration
        from classlm.data import calibration_split, is_missing, validate_labels
        from classlm.distributed import launched_size
        from classlm.estimator import resolve_classes
        from classlm.labels import LabelSet
        from classlm.methods import get_method

        me: Any = self
        if (y_proba is None) == (teacher is None):
            raise ConfigError("distillation takes the teacher's probabilities as y_proba= or a teacher=, not both")
        if y_proba is not None and me.labels is None:
            raise ConfigError("y_proba's columns are classes: pass labels=[...] to LMClassifier, in its column order")
        if launched_size() > 1:
            raise ConfigError("distillation runs in one process (every rank would label and cache the same texts)")
        cfg = me.train_config()
        if cfg.class_weights is not None or cfg.loss != "class_ce":
            raise ConfigError("distillation trains with loss='class_ce' and no class_weights (the teacher sets them)")
        y_list = None if y is None else list(y)
        if y_list is not None and len(y_list) != len(texts):
            raise DataError(f"X has {len(texts)} texts but y has {len(y_list)} labels; they must match")
        hard = [i for i, v in enumerate(y_list or []) if not is_missing(v)]
        spec, classes, hard_names = resolve_classes(
            me.labels if me.labels is not None or teacher is None else list(teacher.classes_),
            [y_list[i] for i in hard] if y_list is not None and hard else None,
        )
        if spec is None:
            raise ConfigError("no classes: pass labels=[...] to LMClassifier (y_proba's columns, in that order)")
        training = me.trains_backbone()
        if not (training or get_method(me.method).learns_from_data):
            raise ConfigError(
                f"method {me.method!r} learns nothing to distil into: pass lora={{...}}, or use a method that learns "
                "from data (tfidf, embedding, hidden_head)"
            )
        if not training and any(fit_args.get(k) for k in ("eval_set", "run_dir", "resume")):
            raise ConfigError("eval_set, run_dir and resume are for training the backbone (lora={...})")
        me._build(LabelSet.from_spec(spec), classes=classes, training=training)
        names = [str(c) for c in me.classes_]
        hard_names = hard_names or []
        validate_labels(hard_names, names)
        if teacher is not None:
            soft, report = teacher_probabilities(
                teacher, texts, names, cache=fit_args.get("teacher_cache"), progress=bool(me.progress)
            )
        else:
            soft, report = check_soft_targets(y_proba, len(texts), len(names)), {"n": len(texts), "given": True}
        y_idx = np.full(len(texts), -1, dtype=np.int64)
        y_idx[hard] = me.class_indices(hard_names)
        if hard:
            report["agreement_with_labels"] = float(np.mean(soft[hard].argmax(1) == y_idx[hard]))
        keep = np.arange(len(texts))
        calib, source = None, ""
        if fit_args.get("calib_set") is not None:
            calib, source = me.labelled_rows(fit_args["calib_set"], "calib_set"), "calib_set"
        elif parse_calibration(me.calibration) and len(hard) >= 4 * len(names):
            _, held, source = calibration_split(hard_names, cfg.calib_fraction, seed=cfg.seed)
            rows = [hard[i] for i in held]
            calib = ([texts[i] for i in rows], [hard_names[i] for i in held])
            keep = np.setdiff1d(keep, rows)
        train_texts = [texts[i] for i in keep]
        me.record_priors(training=soft[keep].mean(0), training_source="the teacher's mean over the training rows")
        self._train_student(train_texts, y_idx[keep], soft[keep], calib, fit_args)
        me.training_["distillation"] = {
            **report,
            "n_labelled": len(hard),
            "n_teacher_only": len(texts) - len(hard),
            "alpha": cfg.distill_alpha,
            "temperature": cfg.distill_temperature,
        }
        if calib is not None:
            me.calibrate(calib[0], calib[1], source=source)
        else:  # the student learned the teacher's (calibrated) probabilities: T stays 1
            me.calibration_info_ = {
                "fitted": False,
                "note": f"distilled with {len(hard)} labelled rows, fewer than 4 per class: no temperature fitted",
            }
        me.fit_feature_distance([texts[i] for i in hard], hard_names or None)
        return me

    def _train_student(
        self, texts: list[str], y: np.ndarray, soft: np.ndarray, calib: Any, fit_args: dict[str, Any]
    ) -> None:
        """LoRA (and hidden_head's trained blocks) on the distillation loss; a head or TF-IDF on the mixed target."""
        import time

        me: Any = self
        if me.trains_backbone():
            eval_set = fit_args.get("eval_set")
            evaluation = me.labelled_rows(eval_set, "eval_set") if eval_set is not None else calib
            me._train_backbone(
                (texts, y, soft),
                None if evaluation is None else (evaluation[0], me.class_indices(evaluation[1])),
                "eval_set" if eval_set is not None else ("calibration split" if calib else None),
                fit_args.get("run_dir"),
                bool(fit_args.get("resume")),
                fit_args.get("callback"),
            )
            return
        target = mixed_targets(soft, y, me.train_config().distill_alpha)
        t0 = time.perf_counter()
        fitted = me.method_.fit_data(texts, target.argmax(1), progress=bool(me.progress), soft=target)
        seconds = time.perf_counter() - t0
        me.training_ = {
            "n_train": len(texts),
            "seconds": round(seconds, 2),
            "examples_per_second": len(texts) / seconds if seconds else None,
            **fitted,
        }
