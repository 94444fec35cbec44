"""How an ECE target compares with the noise of ECE itself, on the recipe benchmark's rows.

For a classifier trained by ``benchmarks/recipe.py`` (its run folder, ``--run``) or a baseline fitted here on the
same rows (``--method tfidf``), on the same seeded test rows:

- ``ece``: the test ECE after temperature, as the recipe benchmark reports it;
- ``floor``: the ECE a perfectly calibrated classifier with the same probabilities scores on as many rows, from
  chance alone (:func:`classlm.metrics.ece_floor`: median and 90th percentile of 200 draws);
- ``adapted``: ECE and NLL after label-free prior adaptation to the test texts (``adapt_priors``: ``auto``, ``em``,
  ``bbse``), with the balance each estimates;
- ``test_balance``: ECE and NLL at the test rows' own class balance (taken from the test labels: what the shift
  between the train and test splits costs, not a method).

Writes ``benchmarks/results/ece_floor.{json,md}`` (keys ``<dataset>.<n_train>.<name>``), merged with what is there::

    .venv/bin/python benchmarks/ece_floor.py --dataset tweet_eval_offensive --n-train 3000 \\
        --run /work/runs/tweet_eval_offensive_3000_epochs_2
    .venv/bin/python benchmarks/ece_floor.py --dataset tweet_eval_offensive --n-train 3000 --method tfidf
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classlm import LMClassifier, allocator
from classlm.io import write_results
from classlm.machine import machine_block, machine_line
from classlm.metrics import classification_metrics, ece_floor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe  # noqa: E402  (the recipe benchmark's rows, rebuilt with the CLI's functions)

OUT = recipe.HERE / "results" / "ece_floor"
PRIOR_METHODS = ("auto", "em", "bbse")


def fitted(args: argparse.Namespace, data: dict[str, Any]) -> tuple[str, Any]:
    """The classifier under test and its name in the results: a saved run (checked to have trained on the rows
    rebuilt here) or a baseline fitted on the run's training rows with its temperature on the calibration rows."""
    if args.run is not None:
        clf = LMClassifier.load(args.run)
        n = (clf.training_["n_train"], clf.calibration_info_.get("n"))
        if n != (len(data["fit"]), len(data["calib"])):
            sys.exit(f"{args.run}: trained on {n[0]} rows, calibrated on {n[1]}; the recipe benchmark's rows for "
                     f"--dataset {args.dataset} --n-train {args.n_train} are {len(data['fit'])} and "
                     f"{len(data['calib'])}: pass the run that `benchmarks/recipe.py` trains for them")  # fmt: skip
        return args.name or args.run.name, clf
    clf = LMClassifier(method=args.method, labels=data["spec"], train={"seed": 0})
    clf.fit(*recipe.pairs(data["fit"]), calib_set=recipe.pairs(data["calib"]))
    return args.name or args.method, clf


def measure(clf: Any, test: Any) -> dict[str, Any]:
    tx, ty = recipe.pairs(test)
    classes = [str(c) for c in clf.classes_]
    y = np.array([classes.index(v) for v in ty])
    logits = clf.predict_scores(tx).logits

    def figures(proba: np.ndarray) -> dict[str, float]:
        m = classification_metrics(y, proba, classes)
        return {k: float(m[k]) for k in ("ece", "nll", "macro_f1")}

    # Scored once: every figure below re-reads these logits (an LM run's test pass is the slow part).
    proba = clf.probabilities(logits)
    balance = np.bincount(y, minlength=len(classes)) / len(y)
    adapted = {}
    for method in PRIOR_METHODS:
        estimate = clf.adapt_priors_to(logits, method)
        adapted[method] = {**figures(clf.probabilities(logits)), "priors": estimate,
                           "ran": clf.priors()["deployment_source"]["method"]}  # fmt: skip
    clf.set_priors(None)
    return {
        **figures(proba),
        "n_test": len(y),
        "floor": ece_floor(proba),
        "training_priors": dict(zip(classes, map(float, clf.training_priors_), strict=True)),
        "test_priors": dict(zip(classes, map(float, balance), strict=True)),
        "adapted": adapted,
        "test_balance": figures(clf.probabilities(logits, priors=dict(zip(classes, balance, strict=True)))),
    }


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# ECE against its own noise",
        "",
        "See `benchmarks/ece_floor.py`. floor: the ECE a perfectly calibrated classifier with the same probabilities "
        "scores on the same test rows by chance (median, 90th percentile of 200 draws). adapted: after label-free "
        "prior adaptation to the test texts. test balance: at the test rows' own class balance (from the test "
        "labels: a diagnostic, not a method).",
        "",
    ]
    for name in (k for k in doc if k != "machine"):
        for n_train, cells in doc[name].items():
            lines += [f"## {name}, {n_train} training rows", ""]
            lines += [
                "| classifier | test rows | macro-F1 | ECE | floor median | floor p90 | adapted: auto | em | bbse | "
                "test balance |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for run, c in cells.items():
                a = c["adapted"]
                lines.append(
                    f"| {run} | {c['n_test']} | {c['macro_f1']:.3f} | {c['ece']:.3f} | {c['floor']['median']:.3f} | "
                    f"{c['floor']['p90']:.3f} | {a['auto']['ece']:.3f} ({a['auto']['ran']}) | {a['em']['ece']:.3f} | "
                    f"{a['bbse']['ece']:.3f} | {c['test_balance']['ece']:.3f} |"
                )
            lines += [""]
            for run, c in cells.items():
                before, after = c["training_priors"], c["test_priors"]
                moved = sorted(after, key=lambda k: -abs(after[k] - before[k]))[:3]  # 151 classes: the largest
                share = ", ".join(f"{k} {before[k]:.3f} → {after[k]:.3f}" for k in moved)
                lines += [f"- {run}: `{c['command']}` on {c['machine']}. Class balance, training → test: {share}."]
            lines += [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--n-train", type=int, required=True, help="rows before the hold-outs, as recipe.py's")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--run", type=Path, help="a run folder that benchmarks/recipe.py trained for these rows")
    given.add_argument("--method", help="a baseline fitted here on the same rows (e.g. tfidf)")
    parser.add_argument("--name", default=None, help="its name in the results (default: the run folder's name)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not (recipe.DATA / args.dataset / "train.jsonl").is_file():
        sys.exit(f"ece_floor.py needs ../shared/data/{args.dataset} (not found at {recipe.DATA / args.dataset})")
    torch.set_num_threads(args.threads)
    data = recipe.rows(recipe.DATA, args.dataset, args.n_train, 0)
    name, clf = fitted(args, data)
    path = args.out.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    doc["machine"] = machine_block(threads=args.threads)
    command = "python benchmarks/ece_floor.py " + shlex.join(sys.argv[1:])
    cell = {**measure(clf, data["test"]), "command": command, "machine": machine_line(doc["machine"])}
    doc.setdefault(args.dataset, {}).setdefault(str(args.n_train), {})[name] = cell
    write_results(args.out, doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    allocator.reexec()
    main()
