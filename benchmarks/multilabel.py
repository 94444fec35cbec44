"""Multi-label on the sliced head against TF-IDF and embedding + one-vs-rest LR on the same rows: goemotions_ekman
(7 labels) and goemotions (28), on CPU with a fixed training budget.

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
train_seconds}``. rte (text pairs) waits for inputs with several fields.
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
from classlm.io import write_results
from classlm.machine import machine_block, machine_line
from classlm.multilabel import indicator_matrix, multilabel_metrics

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "multilabel"
DATASETS = ("goemotions_ekman", "goemotions")
METHODS = ("lora", "zero_shot", "tfidf", "embedding")
KEEP = ("macro_f1", "micro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "bce", "per_class_ece_mean")
INSTRUCTION = "Which emotions does this text express?"


def rows(name: str, n_train: int, n_test: int, seed: int) -> dict[str, Any]:
    train = load_dataset(DATA / name, split="train", label_col="labels").sample(n_train, seed=seed)
    test = load_dataset(DATA / name, split="test", label_col="labels").sample(n_test, seed=seed)
    names = json.loads((DATA / name / "labels.json").read_text())
    return {"train": train, "test": test, "names": names}


Result = tuple[np.ndarray, np.ndarray, float, dict[str, Any]]  # test probabilities, cuts, training seconds, extras


def _fitted(clf: LMClassifier, data: dict[str, Any]) -> Result:
    """Fit ``clf`` on the training rows (label lists); its test probabilities, cuts and fit seconds."""
    t0 = time.perf_counter()
    clf.fit(list(data["train"].texts), [list(v) for v in data["train"].labels])
    seconds = time.perf_counter() - t0
    return clf.predict_proba(list(data["test"].texts)), clf.thresholds_, seconds, {}


def lora(data: dict[str, Any], args: argparse.Namespace) -> Result:
    train_cfg = {"seed": args.seed, "epochs": args.epochs, "eval_every": args.eval_every}
    clf = LMClassifier(
        labels=data["names"], instruction=INSTRUCTION, lora={"r": 16, "alpha": 32}, train=train_cfg, progress=True
    )
    proba, cuts, seconds, _ = _fitted(clf, data)
    training = {k: clf.training_.get(k) for k in ("steps", "epochs", "best_step", "examples_per_second")}
    return proba, cuts, seconds, {"training": training}


def zero_shot(data: dict[str, Any], args: argparse.Namespace) -> Result:
    return _fitted(LMClassifier(labels=data["names"], instruction=INSTRUCTION, progress=True), data)


def tfidf(data: dict[str, Any], args: argparse.Namespace) -> Result:
    return _fitted(LMClassifier(method="tfidf", labels=data["names"], train={"seed": args.seed}), data)


def embedding(data: dict[str, Any], args: argparse.Namespace) -> Result:
    clf = LMClassifier(method="embedding", labels=data["names"], train={"seed": args.seed}, progress=True)
    return _fitted(clf, data)


RUN = {"lora": lora, "zero_shot": zero_shot, "tfidf": tfidf, "embedding": embedding}


def cell(name: str, method: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
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
    for name in (k for k in doc if k != "machine"):
        lines += [f"## {name}", "", "| method | macro-F1 | micro-F1 | samples-F1 | Hamming loss | BCE | per-class ECE |"
                  " labels per text (true / predicted) | train s |", "|---" * 9 + "|"]  # fmt: skip
        for method, r in doc[name].items():
            if not isinstance(r, dict) or "macro_f1" not in r:
                continue
            lines.append(
                f"| {method} | {r['macro_f1']:.3f} | {r['micro_f1']:.3f} | {r['samples_f1']:.3f} | "
                f"{r['hamming_loss']:.4f} | {r['bce']:.4f} | {r['per_class_ece_mean']:.4f} | "
                f"{r['cardinality_true']:.2f} / {r['cardinality_predicted']:.2f} | {r['train_seconds']} |"
            )
        commands = sorted({r["command"] for r in doc[name].values() if isinstance(r, dict) and "command" in r})
        lines += ["", "Made by " + "; ".join(f"`{c}`" for c in commands) + f"; {doc[name].get('machine', '')}", ""]
    return "\n".join(lines)


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
    for name in names:
        data = rows(name, args.n_train, args.n_test, args.seed)
        section = doc.setdefault(name, {})
        section["machine"] = machine_line(doc["machine"])
        for method in methods:
            print(f"[{name} {method}]", file=sys.stderr, flush=True)
            section[method] = {**cell(name, method, data, args), "command": command}
            write_results(OUT, doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs
    main()
