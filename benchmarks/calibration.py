"""Calibration with few or no labels, prior shift and the out-of-scope signal (classlm.calibrators, classlm.priors,
classlm.out_of_scope), on the shared datasets.

Writes ``benchmarks/results/calibration.json`` and ``.md``; each section is re-runnable on its own (``--sections``,
``--merge`` keeps the others)::

    .venv/bin/python benchmarks/calibration.py --sections zero_shot,prior_shift
    .venv/bin/python benchmarks/calibration.py --sections oos --merge

- ``zero_shot``: the default model zero-shot with each dataset's prompt from ``benchmarks/prompts/``; its raw logits on
  ``--n-test`` seeded test rows, 500 labelled calibration rows and up to 500 further texts used unlabelled (batch),
  both from the validation split where there is one (else train; a split too small for both lends the batch step
  all its texts, unlabelled), and the content-free inputs (contextual) are
  scored once, and every calibrator is fitted on them
  by the library's own classes. Keys ``zero_shot.<dataset>.<calibrator>.{accuracy,macro_f1,nll,ece,ratio_min,
  ratio_max}``; ``bias_50`` uses 50 of the 500 labelled rows.
- ``prior_shift``: a classifier trained on a balanced-as-given train sample (``--shift-classifier``: ``lora``, the
  default LoRA recipe on ``--shift-n-train`` rows (1,000), or ``tfidf``), calibrated again on ``--shift-calib-rows``
  (500) further seeded train rows, labelled; its test rows resampled to other class balances; the estimate
  ``adapt_priors()`` makes by default (``method="auto"``), with EM and BBSE beside it. Keys
  ``prior_shift.<dataset>.<balance>.{method,nll_before,nll_after,ece_before,ece_after,prior_error,em_prior_error,
  em_nll_after,bbse_prior_error,bbse_nll_after,bbse_counts_prior_error}`` (errors: the largest absolute error over
  classes; ``bbse_*`` BBSE-soft as ``method="bbse"`` runs, ``_counts`` from the hard confusion counts) for the
  temperature, and the same under ``.bias`` for a bias calibration (temperature + per-class offset) fitted on the same
  rows; ``prior_shift.<dataset>.redrawn``: the errors over 200 stratified redraws of 100 and 300 of those rows (what
  the number of labelled rows does). ``--shift-calib-rows 0`` keeps the classifier's own hold-out (10%: 100 rows) and
  writes ``prior_shift_holdout``, another N ``prior_shift_calib<N>``; another ``--shift-n-train`` than 1,000 adds
  ``_<rows>`` after ``prior_shift``. Cells written before ``method="auto"`` hold EM's figures as the main ones.
- ``oos``: LoRA (the default recipe) on clinc150 rows of in-scope classes only, ``--n-oos-train`` of them; its
  ``--n-test`` seeded test rows, ``oos`` ones included, scored by each out-of-scope score. Keys
  ``oos.<score>.{auroc,accuracy_at_90}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classlm import LMClassifier, allocator
from classlm.calibration import BiasScaler, TemperatureScaler
from classlm.calibrators import CONTENT_FREE, make_calibrator
from classlm.data import calibration_split, load_dataset
from classlm.evaluation import evaluate
from classlm.io import write_results
from classlm.machine import machine_block, machine_line
from classlm.metrics import classification_metrics, confusion_matrix, ece, nll, softmax
from classlm.priors import bbse_priors, class_balance, em_priors, prior_method, shift_priors, soft_confusion

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "calibration"
PROMPTS = {f.stem: json.loads(f.read_text()) for f in sorted((HERE / "prompts").glob("*.json"))}
CALIB_ROWS = 500  # prior_shift's labelled calibration rows by default (--shift-calib-rows)
DRAWS, REDRAWN = 200, (100, 300)  # prior_shift's redrawn calibration rows: draws per size, and the sizes
ZERO_SHOT = ("ag_news", "sst2", "trec", "emotion", "sms_spam", "tweet_eval_emotion")
CALIBRATORS = (
    "raw",
    "temperature",
    "contextual",
    "batch",
    "bias_50",
    "bias_500",
    "contextual+temperature",
    "batch+temperature",
)
SHIFTS = {
    "sms_spam": {"spam_5": {"spam": 0.05}, "spam_30": {"spam": 0.3}, "spam_50": {"spam": 0.5}},
    "ag_news": {
        "world_55": {"World": 0.55, "Sports": 0.25, "Business": 0.15, "Sci/Tech": 0.05},
        "scitech_70": {"World": 0.1, "Sports": 0.1, "Business": 0.1, "Sci/Tech": 0.7},
        "two_classes": {"World": 0.5, "Sports": 0.5, "Business": 0.0, "Sci/Tech": 0.0},
    },
}


def split_rows(name: str, n_test: int, n_calib: int, n_unlabelled: int, seed: int) -> dict[str, Any]:
    """Seeded test rows; from the validation split where there is one, else train, disjoint: labelled calibration
    rows and unlabelled texts. (sst2's train split is mostly short phrases, its validation and test whole sentences:
    calibrators fitted on train rows there fit the wrong texts.)"""
    split = "validation" if (DATA / name / "validation.jsonl").is_file() else "train"
    pool = load_dataset(DATA / name, split=split)
    test = load_dataset(DATA / name, split="test").sample(n_test, seed=seed)
    order = np.random.default_rng(seed).permutation(len(pool))
    calib = pool.subset(np.sort(order[:n_calib]))
    rest = order[n_calib : n_calib + n_unlabelled]
    if len(rest) < 200:  # a small split (tweet_eval_emotion's 374 rows): the batch step reads them all, unlabelled
        rest = order[:n_unlabelled]
    unlabelled = pool.subset(np.sort(rest))
    return {"test": test, "calib": calib, "unlabelled": unlabelled, "split": split}


def indices(clf: Any, labels: Any) -> np.ndarray:
    names = [str(c) for c in clf.classes_]
    return np.array([names.index(str(v)) for v in labels], dtype=np.int64)


def row(y: np.ndarray, proba: np.ndarray, names: list[str]) -> dict[str, Any]:
    m = classification_metrics(y, proba, names)
    out = {k: float(m[k]) for k in ("accuracy", "macro_f1", "nll", "ece")}
    out.update(ratio_min=float(m["calibration_ratio_min"]), ratio_max=float(m["calibration_ratio_max"]))
    return out


def nll_gap(y: np.ndarray, proba: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, float]:
    """The mean per-row NLL of ``proba`` minus that of ``reference`` on the same rows, with a 95% paired bootstrap
    interval (2,000 resamples of the rows): whether a gap is more than the test rows' noise."""
    rows = np.arange(len(y))
    gap = np.log(np.maximum(reference[rows, y], 1e-12)) - np.log(np.maximum(proba[rows, y], 1e-12))
    draws = np.random.default_rng(seed).integers(0, len(y), (2000, len(y)))
    means = gap[draws].mean(axis=1)
    return {
        "mean": float(gap.mean()),
        "low": float(np.percentile(means, 2.5)),
        "high": float(np.percentile(means, 97.5)),
    }


def zero_shot(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = PROMPTS[name]
    clf = LMClassifier(labels=spec["labels"], instruction=spec["instruction"], calibration="none", progress=True)
    clf.fit([])
    rows = split_rows(name, args.n_test, 500, 500, args.seed)
    parts = ("test", "calib", "unlabelled")
    logits = {part: clf.predict_scores(list(rows[part].texts)).logits.astype(np.float64) for part in parts}
    logits["content_free"] = clf.predict_scores(list(CONTENT_FREE)).logits.astype(np.float64)
    y = {part: indices(clf, rows[part].labels) for part in ("test", "calib")}
    fifty_idx = np.sort(np.random.default_rng(args.seed).permutation(len(y["calib"]))[:50])
    names = [str(c) for c in clf.classes_]
    out: dict[str, Any] = {}
    proba: dict[str, np.ndarray] = {}
    for cal in CALIBRATORS:
        if cal == "raw":
            z = logits["test"]
        elif cal in ("bias_50", "bias_500"):
            pick = fifty_idx if cal == "bias_50" else np.arange(len(y["calib"]))
            z = BiasScaler().fit(logits["calib"][pick], y["calib"][pick]).transform(logits["test"])
        else:
            chain = make_calibrator(cal)
            if cal.startswith("contextual"):
                chain.fit_label_free(logits["content_free"])
            elif cal.startswith("batch"):
                chain.fit_label_free(logits["unlabelled"])
            if cal.endswith("temperature"):
                chain.fit(logits["calib"], y["calib"])
            z = chain.transform(logits["test"])
        out[cal] = row(y["test"], softmax(z), names)
        proba[cal] = softmax(z)
        if cal.endswith("+temperature"):  # against the temperature alone, on the same test rows
            out[cal]["nll_minus_temperature"] = nll_gap(y["test"], proba[cal], proba["temperature"], args.seed)
    out.update(
        n_test=len(y["test"]),
        calibration_split=rows["split"],
        n_unlabelled=len(rows["unlabelled"]),
        command="python benchmarks/calibration.py " + shlex.join(sys.argv[1:]),
    )
    return out


def shift_classifier(
    name: str, kind: str, seed: int, n_train: int = 1000, n_calib: int = 0
) -> tuple[Any, Any, tuple[list[str], list[str]]]:
    """A classifier of ``kind`` fitted on ``n_train`` seeded train rows (its own calibration hold-out), the test
    split, and the held-out calibration rows: the classifier's own split, rebuilt; or, with ``n_calib``, that many
    further seeded train rows outside the sample, on which the classifier is calibrated again (``calibrate``)."""
    spec = PROMPTS[name]
    every = load_dataset(DATA / name, split="train")
    train = every.sample(n_train, seed=seed)
    options: dict[str, Any] = {"labels": spec["labels"], "instruction": spec["instruction"], "progress": True}
    if kind == "lora":
        options.update(lora={"r": 16, "alpha": 32}, train={"seed": seed})
    else:
        options.update(method="tfidf", train={"seed": seed})
    clf = LMClassifier(**options)
    texts, labels = list(train.texts), [str(v) for v in train.labels or ()]
    clf.fit(texts, labels)
    test = load_dataset(DATA / name, split="test")
    if n_calib:
        seen = set(texts)
        rest = every.subset(i for i, t in enumerate(every.texts) if t not in seen).sample(n_calib, seed=seed)
        held_texts, held_labels = list(rest.texts), [str(v) for v in rest.labels or ()]
        clf.calibrate(held_texts, held_labels, source=f"{len(held_texts)} further train rows")
        return clf, test, (held_texts, held_labels)
    _, held, _ = calibration_split(labels, clf.train_config().calib_fraction, seed=seed)
    return clf, test, ([texts[i] for i in held], [labels[i] for i in held])


def resample(y: np.ndarray, shares: np.ndarray, rng: np.random.Generator, n_max: int) -> np.ndarray:
    """Row indices holding the classes in ``shares``: as many rows as the scarcest class allows, at most n_max."""
    have = np.bincount(y, minlength=len(shares))
    n = int(min(n_max, *(have[c] / s for c, s in enumerate(shares) if s > 0)))
    return np.concatenate(
        [rng.choice(np.flatnonzero(y == c), int(round(s * n)), replace=False) for c, s in enumerate(shares) if s > 0]
    )


def held_confusions(held_y: np.ndarray, held_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BBSE's two views of the calibration rows (classes ``held_y``, probabilities ``held_p``): summed probabilities
    (BBSE-soft, what ``method="bbse"`` uses) and confusion counts."""
    return soft_confusion(held_y, held_p), confusion_matrix(held_y, held_p.argmax(axis=1), held_p.shape[1])


def adaptation(
    y: np.ndarray, p: np.ndarray, training: np.ndarray, held: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """The prior estimate ``adapt_priors()`` makes by default (``method="auto"``: BBSE-soft with 50 calibration rows of
    every class, else EM), and EM, BBSE-soft and BBSE from counts beside it (``held``, from :func:`held_confusions`),
    on the probabilities ``p`` of rows of classes ``y``: errors, NLL and ECE before and after."""
    true = class_balance(y, p.shape[1])
    soft, counts = held
    em = em_priors(p, training).priors
    bbse = bbse_priors(soft, p, soft=True)
    method = prior_method("auto", soft)
    chosen = bbse if method == "bbse" else em
    after = shift_priors(p, training, chosen)
    return {
        "method": method,
        "priors": chosen.tolist(),
        "nll_before": nll(y, p),
        "nll_after": nll(y, after),
        "nll_known_priors": nll(y, shift_priors(p, training, true)),
        "ece_before": ece(y, p),
        "ece_after": ece(y, after),
        "prior_error": float(np.max(np.abs(chosen - true))),
        "em_prior_error": float(np.max(np.abs(em - true))),
        "em_nll_after": nll(y, shift_priors(p, training, em)),
        "bbse_prior_error": float(np.max(np.abs(bbse - true))),
        "bbse_nll_after": nll(y, shift_priors(p, training, bbse)),
        "bbse_counts_prior_error": float(np.max(np.abs(bbse_priors(counts, p) - true))),
    }


def redrawn(
    held: tuple[np.ndarray, np.ndarray, list[str]],
    logits: np.ndarray,
    y_all: np.ndarray,
    sets: dict[str, Any],
    src: Any,
) -> dict[str, Any]:
    """How the estimate's error depends on the number of labelled calibration rows: ``DRAWS`` times, a stratified
    draw (the library's own hold-out split) of each size of ``REDRAWN`` below 80% of the calibration rows ``held``
    (raw logits, class indices, labels), a temperature fitted on it, and each estimator on each resampled test set
    (``sets``: row indices into ``logits`` and ``y_all``). Per size, balance and estimator: the median and 90th
    percentile of the largest error, and the share of draws within 0.03."""
    held_logits, held_y, held_labels = held
    out: dict[str, Any] = {"draws": DRAWS}
    for n in (m for m in REDRAWN if m < 0.8 * len(held_y)):
        errors: dict[str, dict[str, list[float]]] = {b: {"em": [], "bbse": [], "auto": []} for b in sets}
        for draw in range(DRAWS):
            _, h, _ = calibration_split(held_labels, n / len(held_y), seed=draw)
            scaler = TemperatureScaler().fit(held_logits[h], held_y[h])
            soft = soft_confusion(held_y[h], scaler.predict_proba(held_logits[h]))
            for b, idx in sets.items():
                p, true = scaler.predict_proba(logits[idx]), class_balance(y_all[idx], logits.shape[1])
                found = {"em": em_priors(p, src).priors, "bbse": bbse_priors(soft, p, soft=True)}
                found["auto"] = found[prior_method("auto", soft)]
                for m, q in found.items():
                    errors[b][m].append(float(np.max(np.abs(q - true))))
        out[str(n)] = {
            b: {m: {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)), "within_0.03": float(np.mean(
                np.asarray(e) <= 0.03))} for m, e in per.items()} for b, per in errors.items()
        }  # fmt: skip
    return out


def prior_shift(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The default estimate (``method="auto"``), EM and BBSE under each of ``SHIFTS[name]``, for the classifier as
    calibrated (its temperature) and for the same weights with ``bias`` calibration (a temperature and a per-class
    offset) fitted on the same labelled rows: EM assumes probabilities calibrated per class, which a per-class offset
    gives (Alexandari et al. 2020, "bias-corrected temperature scaling"); and, with more than 125 of those rows (a size
    of ``REDRAWN`` below 80% of them), the errors over redraws of fewer of them (:func:`redrawn`)."""
    clf, test, (held_texts, held_labels) = shift_classifier(
        name, args.shift_classifier, args.seed, args.shift_n_train, args.shift_calib_rows
    )
    names = [str(c) for c in clf.classes_]
    y_all = indices(clf, test.labels)
    logits = clf.predict_scores(list(test.texts)).logits
    held_y = indices(clf, held_labels)
    held_logits = clf.predict_scores(held_texts).logits
    held = held_confusions(held_y, softmax(clf.calibrated_logits(held_logits, "training")))
    saved = clf.calibration_info_["priors"]
    if not args.shift_calib_rows and not (
        np.array_equal(held[1], saved["confusion"]) and np.allclose(held[0], saved["soft_confusion"], atol=1e-5)
    ):
        raise AssertionError("the rebuilt calibration rows are not the classifier's own hold-out")
    bias = BiasScaler().fit(held_logits, held_y)
    calibrated = {
        "temperature": (clf.probabilities(logits, "training"), held),
        "bias": (softmax(bias.transform(logits)), held_confusions(held_y, softmax(bias.transform(held_logits)))),
    }
    rng = np.random.default_rng(args.seed)
    out: dict[str, Any] = {
        "classifier": args.shift_classifier,
        "n_train": args.shift_n_train,
        "training_priors": clf.priors()["training"],
        "n_calibration_rows": len(held_y),
        "calibration_rows": f"{len(held_y)} further seeded train rows" if args.shift_calib_rows else "its hold-out",
    }
    sets = {}
    for balance, given in SHIFTS[name].items():
        rest = [c for c in names if c not in given]
        left = 1.0 - sum(given.values())
        shares = np.array([given.get(c, left / max(len(rest), 1)) for c in names])
        idx = sets[balance] = resample(y_all, shares, rng, args.n_test)
        y = y_all[idx]
        found = {cal: adaptation(y, p[idx], clf.training_priors_, h) for cal, (p, h) in calibrated.items()}
        true = class_balance(y, len(names))
        named = {cal: {**f, "priors": dict(zip(names, f["priors"], strict=True))} for cal, f in found.items()}
        out[balance] = {"n": len(idx), "true_priors": dict(zip(names, true.tolist(), strict=True))}
        out[balance].update({**named["temperature"], "bias": named["bias"]})
    if any(m < 0.8 * len(held_y) for m in REDRAWN):  # fewer rows than those at hand, else a draw is all of them
        out["redrawn"] = redrawn((held_logits, held_y, held_labels), logits, y_all, sets, clf.training_priors_)
    return out


def oos(args: argparse.Namespace) -> dict[str, Any]:
    train = load_dataset(DATA / "clinc150", split="train")
    keep = [i for i, v in enumerate(train.labels or ()) if v != "oos"]
    inside = train.subset(keep).sample(args.n_oos_train, seed=args.seed)
    names = sorted({str(v) for v in inside.labels or ()})
    fit_seconds: float | None
    if args.load_oos is not None:  # a classifier saved by --save-oos from these rows: no second training
        clf = LMClassifier.load(args.load_oos, progress=True)
        if clf.feature_model_ is None:  # saved before fit kept the feature distance: the step fit ends with
            clf.fit_feature_distance(list(inside.texts), [str(v) for v in inside.labels or ()])
        fit_seconds = None
    else:
        clf = LMClassifier(labels=names, lora={"r": 16, "alpha": 32}, train={"seed": args.seed}, progress=True)
        t0 = time.perf_counter()
        clf.fit(list(inside.texts), list(inside.labels))
        fit_seconds = time.perf_counter() - t0
    if args.save_oos is not None:  # to compare other scores on the same classifier without training it again
        clf.save(args.save_oos)
    test = load_dataset(DATA / "clinc150", split="test").sample(args.n_test, seed=args.seed)
    report = evaluate(clf, list(test.texts), list(test.labels), oos_label="oos")
    found = report.metrics["out_of_scope"]
    out: dict[str, Any] = {
        score: {"auroc": s["auroc"], "accuracy_at_90": s["accuracy_at_90"], "coverage_curve": s["coverage_curve"]}
        for score, s in found["scores"].items()
    }
    out.update(
        n_train=len(inside),
        n_test=found["n"],
        n_out_of_scope=found["n_out_of_scope"],
        in_scope={k: report.metrics[k] for k in ("accuracy", "macro_f1", "nll", "ece")},
        fit_seconds=None if fit_seconds is None else round(fit_seconds, 1),
        classifier="loaded from --load-oos (trained by an earlier run of this section)"
        if args.load_oos
        else "trained here",
        training={k: clf.training_.get(k) for k in ("epochs", "steps", "best_step", "examples_per_second")},
    )
    return out


def _shift_columns(c: dict[str, Any]) -> str:
    """After NLL and ECE: the default estimate's method and error, then EM's, BBSE-soft's (error, NLL) and BBSE from
    counts. Cells written before ``method="auto"`` hold EM's figures as the main ones; before BBSE-soft, only the
    counts' error, under ``bbse_prior_error``."""
    if "method" not in c:  # EM was the only default then
        c = {**c, "method": "em (then default)", "em_prior_error": c["prior_error"], "em_nll_after": c["nll_after"]}
    if "bbse_counts_prior_error" not in c:
        c = {**c, "bbse_counts_prior_error": c["bbse_prior_error"], "bbse_prior_error": None, "bbse_nll_after": None}
    cells = [c["method"]] + [
        "–" if c[k] is None else f"{c[k]:.3f}"
        for k in ("prior_error", "em_prior_error", "em_nll_after", "bbse_prior_error", "bbse_nll_after")
    ]
    return " | ".join([*cells, f"{c['bbse_counts_prior_error']:.3f}"])


def _redrawn_lines(sec: dict[str, Any]) -> list[str]:
    """The redrawn-calibration-rows table of a prior-shift section, if it has one."""
    lines = []
    for d in (k for k in sec if isinstance(sec[k], dict) and "redrawn" in sec[k]):
        found = sec[d]["redrawn"]
        for n in (k for k in found if k != "draws"):
            for b, per in found[n].items():
                cells = [f"{per[m]['within_0.03']:.2f} ({per[m]['median']:.3f}, {per[m]['p90']:.3f})" for m in
                         ("em", "bbse", "auto")]  # fmt: skip
                lines.append(f"| {d} | {n} of {sec[d]['n_calibration_rows']} | {b} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    head = [f"Calibration rows redrawn ({sec[d]['redrawn']['draws']} stratified draws each, the temperature fitted "
            "again): share of draws whose largest prior error is within 0.03 (median error, 90th percentile)", "",
            "| dataset | calibration rows | balance | EM | BBSE-soft | auto |", "|---" * 6 + "|"]  # fmt: skip
    return [*head, *lines, ""]


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Calibration with few or no labels, prior shift, out of scope", ""]
    if "zero_shot" in doc:
        sec = doc["zero_shot"]
        lines += ["## Zero-shot: macro-F1 (ECE) per calibrator", "", f"`{sec['command']}`; {sec['machine']}", ""]
        names = [d for d in sec if d not in ("command", "machine")]
        lines += ["| calibrator | " + " | ".join(names) + " | mean macro-F1 |", "|---" * (len(names) + 2) + "|"]
        for cal in CALIBRATORS:
            cells = [f"{sec[d][cal]['macro_f1']:.3f} ({sec[d][cal]['ece']:.3f})" for d in names]
            mean = np.mean([sec[d][cal]["macro_f1"] for d in names])
            lines.append(f"| {cal} | " + " | ".join(cells) + f" | {mean:.3f} |")
        lines += ["", "NLL after the label-free step and the temperature, minus the temperature's alone (95% paired "
                  "bootstrap interval over the test rows; below 0: the step helped):", ""]  # fmt: skip
        lines += ["| calibrator | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for cal in (c for c in CALIBRATORS if c.endswith("+temperature")):
            gaps = [sec[d][cal].get("nll_minus_temperature") for d in names]
            cells = ["–" if g is None else f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" for g in gaps]
            lines.append(f"| {cal} | " + " | ".join(cells) + " |")
        lines.append("")
    for key in (k for k in doc if k.startswith("prior_shift")):  # prior_shift, and prior_shift_<rows> of other sizes
        sec = doc[key]
        lines += [f"## Prior shift: the estimate on the resampled test rows ({key})", "",
                  f"`{sec['command']}`; {sec['machine']}", *([f"({sec['note']})"] if "note" in sec else []),
                  ""]  # fmt: skip
        lines += ["| dataset (classifier) | calibration on rows | balance | rows | NLL before | after | with true "
                  "priors | ECE before | after | method | max error | EM error | EM NLL after | BBSE-soft error | "
                  "BBSE-soft NLL after | BBSE from counts |", "|---" * 16 + "|"]  # fmt: skip
        for d in (k for k in sec if isinstance(sec[k], dict)):  # the datasets
            for b, r in ((b, r) for b, r in sec[d].items() if isinstance(r, dict) and "nll_before" in r):
                for cal, c in (("temperature", r), ("bias", r.get("bias"))):
                    if c is not None:
                        lines.append(
                            f"| {d} ({sec[d]['classifier']}, {sec[d].get('n_train', 1000)} rows) | {cal} on "
                            f"{sec[d]['n_calibration_rows']} | {b} | "
                            f"{r['n']} | {c['nll_before']:.3f} | "
                            f"{c['nll_after']:.3f} | {c['nll_known_priors']:.3f} | {c['ece_before']:.3f} | "
                            f"{c['ece_after']:.3f} | {_shift_columns(c)} |"
                        )
        lines += ["", *_redrawn_lines(sec)]
    if "oos" in doc:
        sec = doc["oos"]
        lines += ["## Out of scope: clinc150, LoRA on in-scope rows only", "", f"`{sec['command']}`; {sec['machine']}"]
        lines += ["", f"{sec['n_test']} test rows, {sec['n_out_of_scope']} of them `oos`; in-scope: {sec['in_scope']}"]
        lines += ["", "| score | AUROC | accuracy at 90% answered |", "|---|---|---|"]
        for score in ("mahalanobis", "answer_mass", "class_mass", "max_proba", "energy"):
            if score in sec:
                lines.append(f"| {score} | {sec[score]['auroc']:.3f} | {sec[score]['accuracy_at_90']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="zero_shot,prior_shift,oos")
    parser.add_argument("--datasets", default=",".join(ZERO_SHOT), help="zero_shot's datasets")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-oos-train", type=int, default=1000)
    parser.add_argument("--shift-classifier", choices=("lora", "tfidf"), default="lora")
    parser.add_argument("--shift-n-train", type=int, default=1000, help="prior_shift's training rows")
    parser.add_argument(
        "--shift-calib-rows",
        type=int,
        default=500,
        help="prior_shift: calibrate on N more train rows (0: its hold-out)",
    )
    parser.add_argument("--save-oos", type=Path, default=None, help="save the oos section's classifier here")
    parser.add_argument(
        "--load-oos", type=Path, default=None, help="the oos section scores this saved classifier instead of training"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the other sections of the results file")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    needed = {"zero_shot": args.datasets.split(","), "prior_shift": list(SHIFTS), "oos": ["clinc150"]}
    missing = [d for s in sections for d in needed.get(s, []) if not (DATA / d / "train.jsonl").is_file()]
    if missing:
        sys.exit(f"calibration.py needs ../shared/data/{missing[0]} (not found at {DATA / missing[0]}); skipped")
    torch.set_num_threads(torch.get_num_threads())
    command = "python benchmarks/calibration.py " + shlex.join(sys.argv[1:])
    path = OUT.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    here = machine_line(machine_block(training="oos" in sections or args.shift_classifier == "lora"))
    for section in sections:
        print(f"[{section}]", file=sys.stderr, flush=True)
        sec: dict[str, Any] = {"command": command, "machine": here}
        if args.merge and section != "oos":  # per-dataset sections: a run of some datasets keeps the others
            sec = {**doc.get(section, {}), **sec}
        if section == "zero_shot":
            for name in args.datasets.split(","):
                sec[name] = zero_shot(name, args)
                doc[section] = sec
                write_results(OUT, doc, to_markdown(doc))
        elif section == "prior_shift":
            # The classifier's size is part of the experiment: another --shift-n-train is a section of its own.
            key = section if args.shift_n_train == 1000 else f"{section}_{args.shift_n_train}"
            calib = args.shift_calib_rows
            key += "_holdout" if not calib else (f"_calib{calib}" if calib != CALIB_ROWS else "")
            kept = {k: v for k, v in doc.get(key, {}).items() if k != "note"}  # a note on the rows it replaces
            sec = {**kept, "command": command, "machine": here} if args.merge else sec
            for name in SHIFTS:
                sec[name] = prior_shift(name, args)
                doc[key] = sec
                write_results(OUT, doc, to_markdown(doc))
        elif section == "oos":
            doc[section] = {**sec, **oos(args)}
            write_results(OUT, doc, to_markdown(doc))
        else:
            parser.error(f"--sections: some of zero_shot, prior_shift, oos; got {section!r}")
    print(to_markdown(doc))


if __name__ == "__main__":
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs
    main()
