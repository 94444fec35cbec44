"""Side-by-side comparison of methods on one dataset (``classlm bench``).

Every method gets the same splits, drawn once from the seed: a training subsample of ``budget`` examples (the
training budget: what each method may learn from), a calibration split for the temperatures, an evaluation split
for ensemble weights and LoRA's evaluation during training, and a test sample. Zero-shot methods learn nothing
from the training subsample; their temperature is fitted on the calibration split like everyone else's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classlm.errors import ConfigError
from classlm.machine import machine_line

KEEP = ("accuracy", "macro_f1", "weighted_f1", "nll", "ece", "calibration_ratio_min", "calibration_ratio_max")


@dataclass(frozen=True)
class Entry:
    """One row of the table: a method with its options, optionally with LoRA on the backbone."""

    method: str
    options: dict[str, Any] | None = None
    lora: bool = False
    note: str = ""
    max_length: int = 512


# What `--methods` accepts. The LoRA rows train with the default TrainConfig (epochs=None: passes by the rows).
ENTRIES: dict[str, Entry] = {
    "label_tokens": Entry("label_tokens", note="zero-shot"),
    "letters": Entry("letters", note="zero-shot"),
    # Eight examples of up to 300 characters do not fit in 512 tokens beside the text.
    "few_shot": Entry("few_shot", {"k": 8}, note="8 fixed examples", max_length=1024),
    "few_shot_nearest": Entry("few_shot", {"k": 4, "selection": "nearest"}, note="4 nearest examples", max_length=1024),
    "generate": Entry("generate", note="one-hot; temperature only"),
    "similarity": Entry("similarity", note="zero-shot, all-MiniLM-L6-v2"),
    "tfidf": Entry("tfidf"),
    "tfidf_boosting": Entry("tfidf", {"model": "boosting"}, note="TF-IDF, 2,000 chi2 columns, gradient boosting"),
    "embedding": Entry("embedding", note="all-MiniLM-L6-v2 + logistic regression"),
    "embedding_mlp": Entry("embedding", {"head": "mlp"}, note="all-MiniLM-L6-v2 + MLP"),
    "hidden_head": Entry("hidden_head", note="frozen LM, linear head"),
    "hidden_head_prompt": Entry("hidden_head", {"prompt": True}, note="frozen LM with the prompt, linear head"),
    "hidden_head_top2": Entry("hidden_head", {"top_k": 2}, note="head + top 2 blocks + final norm"),
    "hidden_head_lora": Entry("hidden_head", lora=True, note="head + LoRA"),
    "lora": Entry("label_tokens", lora=True, note="label_tokens + LoRA (class_ce)"),
    "pairwise": Entry("pairwise", note="zero-shot, a yes/no question per class"),
    "pairwise_lora": Entry("pairwise", lora=True, note="pairwise + LoRA (class_ce)"),
}


@dataclass
class BenchSplits:
    train: tuple[list[str], list[str]]
    calib: tuple[list[str], list[str]]
    eval: tuple[list[str], list[str]]
    test: tuple[list[str], list[str]]
    info: dict[str, Any] = field(default_factory=dict)


def make_splits(
    texts: Sequence[str],
    labels: Sequence[str],
    test_texts: Sequence[str],
    test_labels: Sequence[str],
    *,
    budget: int,
    n_calib: int,
    n_eval: int,
    n_test: int,
    seed: int,
) -> BenchSplits:
    """Calibration rows (stratified), then evaluation rows, then the training subsample: disjoint, seeded."""
    from classlm.data import stratified_split

    n = len(texts)
    if n_calib + n_eval + 1 > n:
        raise ConfigError(f"the train split has {n} rows; calibration ({n_calib}) and eval ({n_eval}) need more")
    rng = np.random.default_rng(seed)
    rest, calib_idx = stratified_split(list(labels), n_calib / n, seed=seed)
    rest = rng.permutation(rest)
    eval_idx, pool = rest[:n_eval], rest[n_eval:]
    train_idx = np.sort(pool[:budget])
    test_idx = np.sort(rng.permutation(len(test_texts))[: min(n_test, len(test_texts))])

    def pick(t: Sequence[str], y: Sequence[str], idx: Any) -> tuple[list[str], list[str]]:
        return [t[i] for i in idx], [y[i] for i in idx]

    return BenchSplits(
        train=pick(texts, labels, train_idx),
        calib=pick(texts, labels, calib_idx),
        eval=pick(texts, labels, np.sort(eval_idx)),
        test=pick(test_texts, test_labels, test_idx),
        info={"train": len(train_idx), "calib": len(calib_idx), "eval": len(eval_idx), "test": len(test_idx)},
    )


def _metrics(clf: Any, texts: list[str], labels: list[str]) -> dict[str, Any]:
    from classlm.data import validate_labels
    from classlm.metrics import classification_metrics

    validate_labels(labels, [str(c) for c in clf.classes_])
    t0 = time.perf_counter()
    p = clf.predict_proba(texts)
    seconds = time.perf_counter() - t0
    names = [str(c) for c in clf.classes_]
    y = np.array([names.index(v) for v in labels])
    m = classification_metrics(y, p, names)
    return {**{k: m[k] for k in KEEP}, "texts_per_second": len(texts) / seconds if seconds else None}


def entry_for(name: str) -> Entry:
    """A row of ENTRIES, or any registered method by its name (with its default options)."""
    from classlm.methods import available_methods

    if name in ENTRIES:
        return ENTRIES[name]
    if name in available_methods():
        return Entry(name)
    raise ConfigError(f"unknown bench method {name!r}; known: {sorted(set(ENTRIES) | set(available_methods()))}")


def check_methods(methods: Sequence[str], ensemble: Sequence[str] = ()) -> None:
    """Known rows, and an ensemble of at least two of them; before any data or model is loaded."""
    for name in methods:
        entry_for(name)
    if ensemble and (len(ensemble) < 2 or set(ensemble) - set(methods)):
        raise ConfigError(f"--ensemble needs at least two rows that are also in --methods, got {list(ensemble)}")


def _bench_row(entry: Entry, splits: BenchSplits, *, seed: int, progress: bool, **build: Any) -> tuple[Any, dict]:
    """One method fitted on the splits as it learns (LoRA/backbone, data, or only the temperature) and tested."""
    from classlm.classifier import LMClassifier
    from classlm.methods import get_method

    clf = LMClassifier(
        method=entry.method,
        method_options=entry.options,
        max_length=entry.max_length,
        lora={} if entry.lora else None,
        # Read only where the backbone trains (LoRA, top_k); the other methods ignore it.
        train={"seed": seed, "eval_every": 0},
        progress=progress,
        **build,
    )
    t0 = time.perf_counter()
    if clf.trains_backbone():
        clf.fit(*splits.train, calib_set=splits.calib, eval_set=splits.eval)
    elif get_method(entry.method).learns_from_data:
        clf.fit(*splits.train, calib_set=splits.calib)
    else:  # zero-shot: only the temperature, on the calibration split
        clf.fit(*splits.calib)
    fit_seconds = time.perf_counter() - t0
    row = _metrics(clf, *splits.test)
    training = getattr(clf, "training_", None) or {}
    row.update(
        {
            "method": entry.method,
            "method_options": entry.options,
            "lora": entry.lora,
            "note": entry.note,
            "train_examples": training.get("n_train", 0),
            "train_seconds": training.get("seconds", 0.0),
            "fit_seconds": fit_seconds,
            "trainable_parameters": training.get("trainable_parameters", 0),
            "temperature": float(clf.temperature_),
            # The dtype its test rows were scored in (None: no language model): rows that train the backbone
            # (LoRA, top_k) stay in float32 on CPU, the others follow dtype="auto".
            "dtype": (clf.run_info()["dtype"] or {}).get("dtype"),
        }
    )
    stats = clf.method_.scoring_stats()
    if "unparsed" in stats:  # generate: answers of the test rows that did not parse
        row["unparsed_share"] = stats["unparsed"] / max(1, len(splits.test[0]))
    return clf, row


def run_bench(
    splits: BenchSplits,
    methods: Sequence[str],
    *,
    labels: Any,
    instruction: str | None,
    model: str = "smollm2-135m",
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    ensemble: Sequence[str] = (),
    progress: bool = False,
    on_row: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit and test every method on ``splits``; returns ``{row name: figures}`` in the order run."""
    check_methods(methods, ensemble)
    rows: dict[str, dict[str, Any]] = {}
    fitted: dict[str, Any] = {}
    for name in methods:
        common = dict(model=model, labels=labels, instruction=instruction, device=device, dtype=dtype, seed=seed)
        fitted[name], rows[name] = _bench_row(entry_for(name), splits, progress=progress, **common)
        if on_row is not None:
            on_row(name, rows[name])
    if ensemble:
        from classlm.ensemble import Ensemble

        t0 = time.perf_counter()
        ens = Ensemble([fitted[m] for m in ensemble]).fit(*splits.eval)
        seconds = time.perf_counter() - t0
        name = "ensemble(" + "+".join(ensemble) + ")"
        row = _metrics(ens, *splits.test)
        row.update(
            {
                "method": "ensemble",
                "members": list(ensemble),
                "weights": [float(w) for w in ens.weights_],
                "note": "weights and temperature fitted on the eval split",
                "train_examples": 0,
                "train_seconds": sum(rows[m]["train_seconds"] for m in ensemble),
                "fit_seconds": seconds,
                "trainable_parameters": sum(rows[m]["trainable_parameters"] for m in ensemble),
                "temperature": float(ens.temperature_),
            }
        )
        rows[name] = row
        if on_row is not None:
            on_row(name, row)
    return rows


def _f(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def to_markdown(doc: dict[str, Any]) -> str:
    s = doc["splits"]
    lines = [
        f"# classlm bench: {doc['dataset']}",
        "",
        f"Reproduce: `{doc['command']}`",
        "",
        f"{machine_line(doc['machine'])}; model {doc['model']}; seed {doc['seed']}. "
        f"Training budget: the same {s['train']} training examples for every method that learns; temperatures on "
        f"{s['calib']} calibration rows and ensemble weights / LoRA evaluation on {s['eval']} eval rows, all "
        f"from the train split and disjoint; figures on {s['test']} test rows, after temperature. Ratio = "
        "sum(p)/sum(y) per class (min–max over classes). Train s: training alone (features, head, LoRA steps); "
        "texts/s: predict_proba on the test rows.",
        "",
        "| method | note | accuracy | macro-F1 | weighted-F1 | NLL | ECE | ratio range | train s | texts/s | "
        "trainable params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["rows"].items():
        note = r.get("note", "")
        if "unparsed_share" in r:
            note += f"; unparsed {r['unparsed_share']:.1%}"
        if "weights" in r:
            note += "; weights " + ", ".join(f"{w:.2f}" for w in r["weights"])
        if r.get("dtype"):
            note += f"; {r['dtype']}"
        lines.append(
            f"| {name} | {note} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['weighted_f1']:.3f} | "
            f"{r['nll']:.3f} | {r['ece']:.3f} | {_f(r['calibration_ratio_min'], '.2f')}–"
            f"{_f(r['calibration_ratio_max'], '.2f')} | {r['train_seconds']:.0f} | {_f(r['texts_per_second'], '.1f')} "
            f"| {r['trainable_parameters']:,} |"
        )
    return "\n".join(lines) + "\n"


def write_results(doc: dict[str, Any], out: Path, stem: str) -> tuple[Path, Path]:
    """``stem``.json, .md and .html (the comparison chart) in ``out``; returns the JSON and markdown paths."""
    from classlm.html_report import write_html
    from classlm.io import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_text_atomic(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    write_text_atomic(md_path, to_markdown(doc))
    s = doc["splits"]
    write_html(
        out / f"{stem}.html",
        f"classlm bench: {doc['dataset']}",
        subtitle=f"{machine_line(doc['machine'])}; model {doc['model']}; the same {s['train']} training examples "
        f"for every method that learns; {s['test']} test rows, after temperature",
        comparison=[{"name": name, **row} for name, row in doc["rows"].items()],
        command=doc["command"],
    )
    return json_path, md_path
