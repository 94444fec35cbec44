"""Distillation: students trained on a teacher's probabilities over unlabelled texts, against the same students on the
hard labels only, on ag_news and emotion.

Writes ``benchmarks/results/distill.json`` and ``.md`` (rewritten after every dataset; ``--merge`` keeps the
datasets of earlier commands)::

    .venv/bin/python benchmarks/distill.py --datasets ag_news,emotion

Per dataset: a seeded, stratified sample of ``--n-labelled`` + ``--n-unlabelled`` train rows; the first
``--n-labelled`` keep their labels, the rest have them hidden.

- ``hard_only``: each student fitted on the labelled rows alone (the default recipe; every method holds out the same
  stratified 10% for its temperature).
- ``teacher``: ``Ensemble([LoRA, TF-IDF])`` of the two ``hard_only`` students, its weights and temperature fitted on
  that same 10% (the issue's "from those rows too").
- ``distilled``: each student fitted on all the rows, the labelled ones with their labels, every row with the
  teacher's probabilities (``fit(X, y, teacher=...)``): LoRA on ``alpha * CE + (1 - alpha) * KL`` (``alpha`` 0.5,
  T 1) with the default recipe, as ``hard_only`` (``epochs=None``: 2 passes over the 5,000 rows less the hold-out,
  recorded as ``epochs``; ``--distilled-epochs`` sets them); the embedding head on the mixed soft target; TF-IDF on
  the teacher's argmax weighted by its probability. The temperature is fitted on the same held-out labelled rows.

Metrics on ``--n-test`` seeded test rows. Keys ``<dataset>.<student>.<run>.{accuracy,macro_f1,nll,ece,
train_seconds,texts_per_second}``, ``<student>`` one of ``lora``, ``tfidf``, ``embedding``; ``<run>`` one of
``hard_only``, ``distilled``, ``teacher`` (the same teacher under every student). ``texts_per_second``: scoring the
test rows (the teacher runs both its members).
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

from classlm import Ensemble, LMClassifier, allocator
from classlm.config import TrainConfig
from classlm.data import calibration_split, load_dataset
from classlm.io import write_results
from classlm.machine import machine_block, machine_line
from classlm.metrics import classification_metrics

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "distill"
STUDENTS = ("tfidf", "embedding", "lora")  # the fast ones first: minutes, then the LoRA student's pass


def student(kind: str, spec: dict[str, Any], args: argparse.Namespace, *, distilled: bool) -> LMClassifier:
    common = {"labels": spec["labels"], "progress": False}
    if kind == "lora":
        # The same recipe as hard_only unless asked: epochs=None passes by the rows (2 over ~4,900, 3 over 900).
        train = {"epochs": args.distilled_epochs} if distilled and args.distilled_epochs is not None else {}
        if args.max_steps is not None:  # the smoke test's budget
            train = {"max_steps": args.max_steps}
        return LMClassifier(model=args.model, instruction=spec["instruction"], lora={}, train=train, **common)
    return LMClassifier(method=kind, **common)


def scored(clf: Any, texts: list[str], y: np.ndarray, names: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proba = clf.predict_proba(texts)
    speed = len(texts) / (time.perf_counter() - t0)
    m = classification_metrics(y, proba, names)
    return {**{k: float(m[k]) for k in ("accuracy", "macro_f1", "nll", "ece")}, "texts_per_second": round(speed, 1)}


def run_dataset(name: str, args: argparse.Namespace, students: list[str], save: Any) -> dict[str, Any]:
    spec = json.loads((HERE / "prompts" / f"{name}.json").read_text())
    names = [str(c) for c in spec["labels"]]
    pool = load_dataset(DATA / name, split="train").sample(args.n_labelled + args.n_unlabelled, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(pool))
    texts = [pool.texts[i] for i in order]
    labels = [pool.labels[i] for i in order]
    hard_texts, hard_labels = texts[: args.n_labelled], labels[: args.n_labelled]
    partial = hard_labels + [None] * (len(texts) - args.n_labelled)
    test = load_dataset(DATA / name, split="test").sample(args.n_test, seed=args.seed)
    y_test = np.array([names.index(str(v)) for v in test.labels])
    test_texts = list(test.texts)
    out: dict[str, Any] = {"n_labelled": args.n_labelled, "n_unlabelled": len(texts) - args.n_labelled,
                           "n_test": len(test_texts)}  # fmt: skip
    hard: dict[str, LMClassifier] = {}
    for kind in dict.fromkeys(["tfidf", "lora", *students]):  # the teacher's members first
        t0 = time.perf_counter()
        hard[kind] = student(kind, spec, args, distilled=False).fit(hard_texts, hard_labels)
        seconds = time.perf_counter() - t0
        out.setdefault(kind, {})["hard_only"] = {**scored(hard[kind], test_texts, y_test, names),
                                                 "train_seconds": round(seconds, 1)}  # fmt: skip
        print(f"{name} {kind} hard_only: {out[kind]['hard_only']}", flush=True)
        save(out)
    # The members' shared hold-out, the rows fit(X, y) kept out for the temperature (the library's split, the same
    # labels and seed): the teacher's weights and temperature come from them too.
    _, held, _ = calibration_split([str(v) for v in hard_labels], TrainConfig().calib_fraction, seed=TrainConfig().seed)
    teacher = Ensemble([hard["lora"], hard["tfidf"]]).fit([hard_texts[i] for i in held], [hard_labels[i] for i in held])
    teacher_row = scored(teacher, test_texts, y_test, names)
    t0 = time.perf_counter()
    soft = teacher.predict_proba(texts)  # once for every student: the same teacher probabilities
    teacher_row["label_seconds"] = round(time.perf_counter() - t0, 1)
    teacher_row["weights"] = [float(w) for w in teacher.weights_]
    for kind in students:
        t0 = time.perf_counter()
        clf = student(kind, spec, args, distilled=True).fit(texts, partial, y_proba=soft)
        seconds = time.perf_counter() - t0
        epochs = (getattr(clf, "training_", None) or {}).get("epochs")
        out[kind]["distilled"] = {**scored(clf, test_texts, y_test, names), "train_seconds": round(seconds, 1),
                                  **({"epochs": epochs} if epochs is not None else {})}  # fmt: skip
        out[kind]["teacher"] = teacher_row
        print(f"{name} {kind} distilled: {out[kind]['distilled']}", flush=True)
        save(out)  # every cell as it comes: the LoRA student's pass takes the longest
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Distillation", ""]
    for name, d in doc.items():
        if not isinstance(d, dict) or "n_labelled" not in d:
            continue
        header = "| student | run | accuracy | macro-F1 | NLL | ECE | train s | texts/s |"
        rows = f"{d['n_labelled']} labelled + {d['n_unlabelled']} unlabelled train rows, {d['n_test']} test rows"
        lines += [f"## {name}", "", f"`{d['command']}`; {d['machine']}", "", rows, "", header, "|---" * 8 + "|"]
        for kind in STUDENTS:
            for run in ("hard_only", "distilled", "teacher"):
                r = d.get(kind, {}).get(run)
                if r:
                    cells = [kind, run, *(f"{r[k]:.3f}" for k in ("accuracy", "macro_f1", "nll", "ece"))]
                    cells += [str(r.get("train_seconds", "–")), str(r["texts_per_second"])]
                    lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ag_news,emotion")
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-labelled", type=int, default=1000)
    parser.add_argument("--n-unlabelled", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument(
        "--distilled-epochs", type=float, default=None, help="the distilled LoRA's passes (default: the recipe's)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="LoRA steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the datasets of earlier commands")
    args = parser.parse_args()
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs (training's bf16 follows it)
    path = OUT.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    command = "python benchmarks/distill.py " + shlex.join(sys.argv[1:])
    for name in [d for d in args.datasets.split(",") if d]:
        if not (DATA / name / "test.jsonl").is_file():
            print(f"distill.py: ../shared/data/{name} not found; skipped", file=sys.stderr)
            continue
        machine = machine_line(machine_block())

        def save(found: dict[str, Any], name: str = name, machine: str = machine) -> None:
            doc[name] = {**found, "command": command, "machine": machine}
            write_results(OUT, doc, to_markdown(doc))

        save(run_dataset(name, args, [s for s in args.students.split(",") if s], save))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
