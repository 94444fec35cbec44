"""Multi-label on the sliced head against TF-IDF and embedding + one-vs-rest LR on the same rows: goemotions_ekman
(7 labels) and goemotions (28), on CPU with a fixed training budget; and text pairs (rte).

Writes ``benchmarks/results/multilabel.json`` and ``.md`` (rewritten after every cell; ``--merge`` keeps the cells of
earlier commands, each recording the command that made it)::

    .venv/bin/python benchmarks/multilabel.py --datasets goemotions_ekman --methods lora,zero_shot,tfidf

Per dataset: a seeded sample of ``--n-train`` train rows; every method holds out the same 10% for calibration and
cuts (``classlm.multilabel.multilabel_split``: every class with two or more rows on both sides); figures on
``--n-test`` seeded test rows. ``lora``: LMClassifier with LoRA r 16 on every projection, BCE with a per-class offset,
``--epochs`` passes, the best adapter by eval BCE on the hold-out, then per-class Platt scaling and F1 cuts on it.
``zero_shot``: the same head untrained, Platt and cuts fitted on all training rows (nothing is trained).
``tfidf``: ``method="tfidf"``, one logistic regression per class on the training rows minus the same hold-out,
then Platt scaling and cuts on it as for the others; ``embedding``: the same with all-MiniLM-L6-v2 sentence
embeddings. Keys
``<dataset>.<method>.{macro_f1,micro_f1,samples_f1,hamming_loss,subset_accuracy,bce,per_class_ece_mean,
train_seconds}``.

``pairwise``: ``method="pairwise"`` (a yes/no question per class after the text, one tree pass) with LoRA, as ``lora``;
``pairwise_zero_shot``: the same untrained, as ``zero_shot``. ``texts_per_second``: scoring the test rows.

``rte`` (premise + hypothesis, single-label): the pair in the prompt's two slots (``benchmarks/prompts/rte.json``),
``lora`` with the default recipe (auto epochs, temperature on the 10% hold-out), ``zero_shot`` with the temperature
fitted on the training rows, ``tfidf`` / ``embedding`` over the pair laid out as one text. Keys
``rte.<method>.{accuracy,macro_f1,nll,ece,train_seconds}``.
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
from classlm.data import load_dataset
from classlm.evaluation import evaluate
from classlm.io import write_results
from classlm.machine import machine_block, machine_line
from classlm.multilabel import indicator_matrix, multilabel_metrics

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "multilabel"
DATASETS = ("goemotions_ekman", "goemotions", "rte")
PAIRS = ("rte",)  # single-label text pairs: accuracy, macro-F1, NLL, ECE
METHODS = ("lora", "zero_shot", "tfidf", "embedding", "pairwise")
KEEP = ("macro_f1", "micro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "bce", "per_class_ece_mean")
INSTRUCTION = "Which emotions does this text express?"


def rows(name: str, n_train: int | None, n_test: int | None, seed: int) -> dict[str, Any]:
    """Seeded samples of the train and test splits (``None``: the whole split)."""
    label_col = "label" if name in PAIRS else "labels"
    full = load_dataset(DATA / name, split="train", label_col=label_col)
    train = full if n_train is None else full.sample(min(n_train, len(full)), seed=seed)
    test = load_dataset(DATA / name, split="test", label_col=label_col)
    test = test if n_test is None else test.sample(min(n_test, len(test)), seed=seed)
    names = json.loads((DATA / name / "labels.json").read_text())
    return {"train": train, "test": test, "names": names}


def pair_cell(method: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A single-label classifier of text pairs fitted on the training rows; its figures on the test rows."""
    spec = json.loads((HERE / "prompts" / "rte.json").read_text())
    prompt = {"input_format": spec["input_format"]}
    options: dict[str, Any] = {
        "lora": {"lora": {"r": 16, "alpha": 32}, "train": {"seed": args.seed, "eval_every": args.eval_every}},
        "pairwise": {
            "method": "pairwise",
            "lora": {"r": 16, "alpha": 32},
            "train": {"seed": args.seed, "eval_every": args.eval_every},
        },  # fmt: skip
        "zero_shot": {},
        "tfidf": {"method": "tfidf", "train": {"seed": args.seed}},
        "embedding": {"method": "embedding", "train": {"seed": args.seed}},
    }[method]
    clf = LMClassifier(
        device=args.device,
        labels=spec["labels"],
        instruction=spec["instruction"],
        prompt=prompt,
        progress=True,
        **options,
    )
    t0 = time.perf_counter()
    clf.fit(list(data["train"].texts), list(data["train"].labels))
    seconds = time.perf_counter() - t0
    report = evaluate(clf, list(data["test"].texts), list(data["test"].labels))
    m = report.metrics
    extra: dict[str, Any] = {"texts_per_second": report.info.get("texts_per_second")}
    if method in ("lora", "pairwise"):
        extra["training"] = {k: clf.training_.get(k) for k in ("steps", "epochs", "best_step", "examples_per_second")}
    return {
        **{k: m[k] for k in ("accuracy", "macro_f1", "nll", "ece")},
        "train_seconds": round(seconds, 1) if method != "zero_shot" else 0.0,
        "n_train": len(data["train"]),
        "n_test": len(data["test"]),
        **extra,
    }


Result = tuple[np.ndarray, np.ndarray, float, dict[str, Any]]  # test probabilities, cuts, training seconds, extras


def _fitted(clf: LMClassifier, data: dict[str, Any]) -> Result:
    """Fit ``clf`` on the training rows (label lists); its test probabilities, cuts and fit seconds."""
    t0 = time.perf_counter()
    clf.fit(list(data["train"].texts), [list(v) for v in data["train"].labels])
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    proba = clf.predict_proba(list(data["test"].texts))
    speed = {"texts_per_second": round(len(proba) / (time.perf_counter() - t0), 1)}  # scoring the test rows
    return proba, clf.thresholds_, seconds, speed


def lora(data: dict[str, Any], args: argparse.Namespace) -> Result:
    train_cfg = {"seed": args.seed, "epochs": args.epochs, "eval_every": args.eval_every}
    clf = LMClassifier(
        device=args.device,
        labels=data["names"],
        instruction=INSTRUCTION,
        lora={"r": 16, "alpha": 32},
        train=train_cfg,
        progress=True,
    )
    proba, cuts, seconds, speed = _fitted(clf, data)
    training = {k: clf.training_.get(k) for k in ("steps", "epochs", "best_step", "examples_per_second")}
    return proba, cuts, seconds, {**speed, "training": training}


def zero_shot(data: dict[str, Any], args: argparse.Namespace) -> Result:
    return _fitted(LMClassifier(device=args.device, labels=data["names"], instruction=INSTRUCTION, progress=True), data)


def tfidf(data: dict[str, Any], args: argparse.Namespace) -> Result:
    return _fitted(
        LMClassifier(device=args.device, method="tfidf", labels=data["names"], train={"seed": args.seed}), data
    )


def embedding(data: dict[str, Any], args: argparse.Namespace) -> Result:
    clf = LMClassifier(
        device=args.device, method="embedding", labels=data["names"], train={"seed": args.seed}, progress=True
    )
    return _fitted(clf, data)


def pairwise(data: dict[str, Any], args: argparse.Namespace) -> Result:
    train_cfg = {"seed": args.seed, "epochs": args.epochs, "eval_every": args.eval_every}
    clf = LMClassifier(device=args.device, method="pairwise", labels=data["names"], instruction=INSTRUCTION,
                       lora={"r": 16, "alpha": 32}, train=train_cfg, progress=True)  # fmt: skip
    proba, cuts, seconds, speed = _fitted(clf, data)
    training = {k: clf.training_.get(k) for k in ("steps", "epochs", "best_step", "examples_per_second")}
    return proba, cuts, seconds, {**speed, "training": training}


def pairwise_zero_shot(data: dict[str, Any], args: argparse.Namespace) -> Result:
    return _fitted(
        LMClassifier(
            device=args.device, method="pairwise", labels=data["names"], instruction=INSTRUCTION, progress=True
        ),
        data,
    )


RUN = {"lora": lora, "zero_shot": zero_shot, "tfidf": tfidf, "embedding": embedding, "pairwise": pairwise,
       "pairwise_zero_shot": pairwise_zero_shot}  # fmt: skip


def cell(name: str, method: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if name in PAIRS:
        return pair_cell(method, data, args)
    proba, cuts, seconds, extra = RUN[method](data, args)
    truth = indicator_matrix([list(v) for v in data["test"].labels], data["names"])
    m = multilabel_metrics(truth, proba, data["names"], cuts)
    return {
        **{k: m[k] for k in KEEP},
        "cardinality_true": m["cardinality_true"],
        "cardinality_predicted": m["cardinality_predicted"],
        "train_seconds": round(seconds, 1),
        "n_train": len(data["train"]),
        "n_test": len(data["test"]),
        "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
        **extra,
    }


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Multi-label: the sliced head against TF-IDF + one-vs-rest LR", ""]
    for title, part in (("", doc), ("GPU, full data: ", doc.get("gpu", {}))):
        for name in (k for k in part if k not in ("machine", "gpu")):
            lines += (_pair_table if name in PAIRS else _label_table)(title + name, part[name])
    return "\n".join(lines)


def _made_by(section: dict[str, Any]) -> list[str]:
    commands = sorted({r["command"] for r in section.values() if isinstance(r, dict) and "command" in r})
    return ["", "Made by " + "; ".join(f"`{c}`" for c in commands) + f"; {section.get('machine', '')}", ""]


def _label_table(name: str, section: dict[str, Any]) -> list[str]:
    # Cells of one dataset may come from runs on other numbers of rows (each records its command): say so per row.
    head = "| method | train rows | macro-F1 | micro-F1 | samples-F1 | Hamming loss | BCE | per-class ECE |"
    lines = [f"## {name}", "", head + " labels per text (true / predicted) | train s | texts/s |", "|---" * 11 + "|"]
    for method, r in section.items():
        if isinstance(r, dict) and "macro_f1" in r:
            lines.append(
                f"| {method} | {r.get('n_train', '–')} | {r['macro_f1']:.3f} | {r['micro_f1']:.3f} | "
                f"{r['samples_f1']:.3f} | "
                f"{r['hamming_loss']:.4f} | {r['bce']:.4f} | {r['per_class_ece_mean']:.4f} | "
                f"{r['cardinality_true']:.2f} / {r['cardinality_predicted']:.2f} | {r['train_seconds']} | "
                f"{r.get('texts_per_second', '–')} |"
            )
    return lines + _made_by(section)


def _pair_table(name: str, section: dict[str, Any]) -> list[str]:
    lines = [f"## {name} (text pairs, single-label)", "",
             "| method | accuracy | macro-F1 | NLL | ECE | train s | texts/s |", "|---" * 7 + "|"]  # fmt: skip
    for method, r in section.items():
        if isinstance(r, dict) and "accuracy" in r:
            lines.append(f"| {method} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} "
                         f"| {r['train_seconds']} | {r.get('texts_per_second', '–')} |")  # fmt: skip
    return lines + _made_by(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the cells of earlier commands")
    parser.add_argument("--device", default="auto", help="cuda: the GPU mode, results under gpu.<dataset>")
    parser.add_argument("--full", action="store_true", help="every train and test row (the GPU mode's budget)")
    args = parser.parse_args()
    names = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in RUN]
    if bad:
        parser.error(f"--methods: some of {', '.join(RUN)}; got {bad}")
    missing = [d for d in names if not (DATA / d / "train.jsonl").is_file()]
    if missing:
        sys.exit(f"multilabel.py needs ../shared/data/{missing[0]} (not found at {DATA / missing[0]}); skipped")
    torch.set_num_threads(torch.get_num_threads())
    path = OUT.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    doc["machine"] = machine_block(training="lora" in methods)
    command = "python benchmarks/multilabel.py " + shlex.join(sys.argv[1:])
    # A GPU run is another budget (full data, published figures to meet): its cells go apart, under "gpu".
    root = doc.setdefault("gpu", {}) if args.device.startswith("cuda") else doc
    for name in names:
        data = rows(name, None if args.full else args.n_train, None if args.full else args.n_test, args.seed)
        section = root.setdefault(name, {})
        section["machine"] = machine_line(doc["machine"])
        for method in methods:
            print(f"[{name} {method}]", file=sys.stderr, flush=True)
            section[method] = {**cell(name, method, data, args), "command": command}
            write_results(OUT, doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs
    main()
