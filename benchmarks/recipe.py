"""The default training recipe against the previous default, TF-IDF + LR on the same rows and zero-shot, trained
through ``classlm train`` as a new user runs it.

Writes ``benchmarks/results/recipe.json`` and ``.md`` (keys ``<dataset>.<n_train>.<run>.{macro_f1,nll,ece,
train_seconds}``), rewritten after every cell; ``--merge`` keeps the cells of earlier commands (each cell records
the command and machine that made it). One budget per command::

    .venv/bin/python benchmarks/recipe.py --n-train 1000
    .venv/bin/python benchmarks/recipe.py --n-train 3000 --merge

The recipe study (``benchmarks/results/recipe_study.{json,md}``, every recipe of :data:`RECIPES` named as a run)::

    .venv/bin/python benchmarks/recipe.py --study --n-train 1000 --datasets sst2,trec --recipes epochs_3

Per (dataset, n_train): ``classlm train DATA -o RUN --limit n_train <recipe flags> --no-baseline`` in a subprocess
(``OMP_NUM_THREADS`` set, the shipped dtype: bf16 where the CPU has the instructions), so the rows are the CLI's own:
a seeded stratified sample of ``n_train`` train rows, evaluation on the dataset's validation split (else a stratified
10% of the sample), the temperature on a stratified 10% of the rest. The same rows are rebuilt here with the CLI's
functions for TF-IDF + LR (fitted on the LM's training rows, its temperature on the LM's calibration rows) and for
zero-shot (its temperature on the calibration rows). Every run is scored on the same 1,000 seeded test rows (fewer where
the test split is smaller), after temperature. ``train_seconds``: the training loop's seconds for the LoRA runs (from
the saved classifier's training summary; ``wall_seconds``: the whole command), the fit for TF-IDF, 0 for zero-shot.
Run folders go under ``--runs`` and a finished one is reused when its command matches (``--retrain``: train anew).
``default`` (``epochs=None``) and ``previous_default`` resolve to ``--epochs E`` on the rows at hand; a recipe that
resolves to the same flags as one with a finished run is stood in by that run — the same training step for step
(tested: ``epochs=None`` and ``--epochs E`` give the same weights) — and the cell says so (``same_training_as``).
At 3,000 rows both defaults are one pass, on clinc150 both are eight: one training each.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classlm import LMClassifier, allocator
from classlm.cli.rows import held_out_rows, label_spec_for, load_rows
from classlm.config import TrainConfig, auto_epochs
from classlm.data import calibration_split, load_dataset
from classlm.io import write_results, write_text_atomic
from classlm.machine import machine_block, machine_line
from classlm.metrics import classification_metrics

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "recipe"
STUDY_OUT = HERE / "results" / "recipe_study"
MODEL = "smollm2-135m"
N_TEST = 1000
KEEP = ("macro_f1", "nll", "ece", "accuracy")
ROWS = {"text_col": "text", "label_col": "label", "labels_given": False, "drop_invalid": False}
DATASETS = {
    "1000": "ag_news,emotion,sms_spam,sst2,trec,tweet_eval_emotion,tweet_eval_offensive,clinc150",
    "3000": "ag_news,emotion,trec,tweet_eval_offensive",
}
# The flags each recipe adds to `classlm train DATA -o RUN --limit N`. "default" is whatever the CLI does without
# flags (the recipe under test); "previous_default" is the default before the study, whose passes depend on the
# rows (:func:`previous_epochs`): its flags are filled in per cell by :func:`flags`.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "previous_default": [],
    "epochs_2": ["--epochs", "2"],
    "epochs_3": ["--epochs", "3"],
    "epochs_3_balanced": ["--epochs", "3", "--class-weights", "balanced"],
    "epochs_3_lr_1e-3": ["--epochs", "3", "--lr", "1e-3"],
    "epochs_3_lr_2e-4": ["--epochs", "3", "--lr", "2e-4"],
    "epochs_5": ["--epochs", "5"],
    "epochs_3_r8": ["--epochs", "3", "--lora-r", "8", "--lora-alpha", "16"],
    "epochs_3_vocab_ce": ["--epochs", "3", "--loss", "vocab_ce"],
}
BASELINES = ("tfidf", "zero_shot")
NOT_DATASETS = ("machine",)


def rows(data_dir: Path, name: str, n_train: int, seed: int) -> dict[str, Any]:
    """The rows ``classlm train DATA --limit n_train --seed seed`` trains, evaluates and calibrates on, rebuilt
    with the CLI's own functions, and the seeded test rows."""
    data = str(data_dir / name)
    sample = load_rows(data, split="train", limit=n_train, seed=seed, **ROWS)
    spec = label_spec_for(None, data, sample)
    train, _, _, _ = held_out_rows(data, sample, ("train", None, None), seed, ROWS)
    keep, held, _ = calibration_split(list(train.labels), TrainConfig().calib_fraction, seed=seed)  # as train does
    test = load_dataset(data, split="test")
    pick = np.sort(np.random.default_rng(seed).permutation(len(test))[: min(N_TEST, len(test))])
    return {"spec": spec, "fit": train.subset(keep), "calib": train.subset(held), "test": test.subset(pick)}


def pairs(ds: Any) -> tuple[list[str], list[str]]:
    return list(ds.texts), [str(v) for v in ds.labels]


def score(clf: Any, test: Any) -> dict[str, Any]:
    tx, ty = pairs(test)
    t0 = time.perf_counter()
    proba = clf.predict_proba(tx)
    seconds = time.perf_counter() - t0
    classes = [str(c) for c in clf.classes_]
    m = classification_metrics(np.array([classes.index(v) for v in ty]), proba, classes)
    return {**{k: float(m[k]) for k in KEEP}, "n_test": len(tx), "texts_per_second": round(len(tx) / seconds, 1)}


def previous_epochs(n_rows: int, n_classes: int) -> int:
    """The passes of ``epochs=None`` before the study: ceil(48 / rows per class), 1 to 8 — one pass for a 2- to
    6-class set of 900 rows, which collapsed on tweet_eval_offensive."""
    return auto_epochs(n_rows, n_classes, min_examples=0)


def flags(recipe: str, data: dict[str, Any]) -> list[str]:
    """The flags ``recipe`` adds on these rows."""
    if recipe == "previous_default":
        return ["--epochs", str(previous_epochs(len(data["fit"]), len(data["spec"])))]
    return RECIPES[recipe]


def resolved(recipe: str, data: dict[str, Any]) -> list[str]:
    """What ``recipe`` trains on these rows, as flags: the default's passes made explicit."""
    if recipe == "default":
        return ["--epochs", str(auto_epochs(len(data["fit"]), len(data["spec"])))]
    return flags(recipe, data)


def train_command(name: str, n_train: int, run: Path, extra: list[str], args: argparse.Namespace) -> list[str]:
    base = [sys.executable, "-m", "classlm", "train", str(args.data / name), "-o", str(run), "--limit", str(n_train)]
    model = ["-m", args.model] if args.model != MODEL else []
    return [*base, *model, *extra, "--seed", str(args.seed), "--no-baseline", "--overwrite"]


def planned(
    name: str, n_train: int, recipe: str, args: argparse.Namespace, data: dict[str, Any]
) -> tuple[Path, list[str], str, dict[str, Any]]:
    """(run folder, command, the command as shown, what a finished run of it recorded, or {})."""
    run = args.runs / f"{name}_{n_train}_{recipe}"
    cmd = train_command(name, n_train, run, flags(recipe, data), args)
    shown = "classlm " + shlex.join(cmd[3:]).replace(str(DATA.parent) + "/", "../shared/")
    done = run / "benchmark_run.json"  # written only after the command succeeded: a reusable run
    fresh = not args.retrain or run in args.trained_now  # --retrain: only runs this command trained count
    previous = json.loads(done.read_text()) if done.is_file() and fresh else {}
    return run, cmd, shown, previous if previous.get("command") == shown else {}


def stand_in(name: str, n_train: int, recipe: str, args: argparse.Namespace, data: dict[str, Any]) -> str:
    """Another recipe with a finished run that trains what ``recipe`` trains on these rows (the same resolved flags,
    rows and seed: the same weights), else ``recipe`` itself: no second run of the same training."""
    want = resolved(recipe, data)
    for other in RECIPES:
        if other != recipe and resolved(other, data) == want and planned(name, n_train, other, args, data)[3]:
            return other
    return recipe


def lm_run(name: str, n_train: int, recipe: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    run, cmd, shown, previous = planned(name, n_train, recipe, args, data)
    if previous:
        wall = previous["wall_seconds"]
        print(f"  reusing {run} (trained by the same command)", file=sys.stderr, flush=True)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        with open(args.runs / f"{run.name}.log", "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        wall = round(time.perf_counter() - t0, 1)
        if proc.returncode:
            sys.exit(f"{shown} failed (exit {proc.returncode}); its output: {args.runs / (run.name + '.log')}")
        write_text_atomic(run / "benchmark_run.json", json.dumps({"command": shown, "wall_seconds": wall}) + "\n")
        args.trained_now.add(run)
    clf = LMClassifier.load(run)
    t = clf.training_
    if (t["n_train"], clf.calibration_info_.get("n")) != (len(data["fit"]), len(data["calib"])):
        sys.exit(
            f"{run}: trained on {t['n_train']} rows, calibrated on {clf.calibration_info_.get('n')}; the rows "
            f"rebuilt for the baselines are {len(data['fit'])} and {len(data['calib'])}: they must be the same"
        )
    cell = {
        **score(clf, data["test"]),
        "train_seconds": t["seconds"],
        "wall_seconds": wall,
        "examples_per_second": t.get("examples_per_second"),
        "n_fit": t["n_train"],
        "n_calib": clf.calibration_info_.get("n"),
        "epochs": t.get("epochs"),
        "steps": t.get("steps"),
        "best_step": t.get("best_step"),
        "dtype": t.get("dtype"),
        "peak_rss_mib": t.get("peak_rss_mib"),
        "collapse": (t.get("checks") or {}).get("collapse"),
        "train_command": shown,
    }
    del clf
    gc.collect()
    return cell


def baseline_run(kind: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """TF-IDF + LR on the LM's training rows, or zero-shot; the temperature on the LM's calibration rows."""
    t0 = time.perf_counter()
    if kind == "tfidf":
        clf = LMClassifier(method="tfidf", labels=data["spec"], train={"seed": args.seed})
        clf.fit(*pairs(data["fit"]), calib_set=pairs(data["calib"]))
    else:  # zero-shot: only the temperature
        clf = LMClassifier(model=args.model, labels=data["spec"]).fit(*pairs(data["calib"]))
    seconds = time.perf_counter() - t0
    cell = {**score(clf, data["test"]), "train_seconds": round(seconds, 2) if kind == "tfidf" else 0.0}
    return {**cell, "n_fit": len(data["fit"]) if kind == "tfidf" else 0, "n_calib": len(data["calib"])}


def margins(doc: dict[str, Any], run: str) -> list[float]:
    """``run``'s macro-F1 minus TF-IDF's over every (dataset, n_train) cell that has both."""
    return [
        cell[run]["macro_f1"] - cell["tfidf"]["macro_f1"]
        for name, budgets in doc.items()
        if name not in NOT_DATASETS
        for cell in budgets.values()
        if run in cell and "tfidf" in cell
    ]


def to_markdown(doc: dict[str, Any], study: bool) -> str:
    title = "Recipe study" if study else "The default training recipe against its alternatives"
    lines = [
        f"# {title}",
        "",
        f"Model {doc['machine'].get('model', MODEL)}, trained by `classlm train` (see `benchmarks/recipe.py` for "
        "the rows); figures on the seeded test rows after temperature. train s: the training loop (TF-IDF: its "
        f"fit); wall s: the whole command. Latest run on {machine_line(doc['machine'])}.",
        "",
    ]
    runs = dict.fromkeys(r for n, b in doc.items() if n not in NOT_DATASETS for c in b.values() for r in c)
    lines += ["## Margin over TF-IDF + LR (macro-F1), worst and mean over the cells", ""]
    lines += ["| run | cells | worst | mean |", "|---|---|---|---|"]
    for run in (r for r in runs if r != "tfidf"):
        m = margins(doc, run)
        if m:
            lines.append(f"| {run} | {len(m)} | {min(m):+.3f} | {sum(m) / len(m):+.3f} |")
    lines.append("")
    for name in (k for k in doc if k not in NOT_DATASETS):
        for n_train, cell in doc[name].items():
            lines += [f"## {name}, {n_train} rows", ""]
            lines += [
                "| run | macro-F1 | NLL | ECE | accuracy | train s | wall s | passes | best step / steps |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for run, r in cell.items():
                steps = f"{r['best_step']} / {r['steps']}" if r.get("steps") else "–"
                same = f" (the {r['same_training_as']} run)" if "same_training_as" in r else ""
                lines.append(
                    f"| {run}{same} | {r['macro_f1']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} | {r['accuracy']:.3f} | "
                    f"{r['train_seconds']:.0f} | {r.get('wall_seconds', '–')} | {r.get('epochs') or '–'} | {steps} |"
                )
            commands = dict.fromkeys(r["command"] for r in cell.values())
            trained = [f"{run}: `{r['train_command']}`" for run, r in cell.items() if "train_command" in r]
            lines += ["", "Made by " + "; ".join(f"`{c}`" for c in commands) + "; on "]
            lines[-1] += "; ".join(dict.fromkeys(r["machine"] for r in cell.values())) + "."
            lines += ["", "Trained by " + "; ".join(trained) + ".", ""] if trained else [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", default="1000", help="one budget or several: 1000,3000")
    parser.add_argument("--datasets", default=None, help="default: the issue's sets for the budget")
    parser.add_argument("--recipes", default="default,previous_default", help=f"some of {','.join(RECIPES)}")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--study", action="store_true", help="write recipe_study.{json,md}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--data", type=Path, default=DATA, help="the folder of dataset folders")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the training commands")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/classlm_recipe_runs"), help="run folders")
    parser.add_argument("--retrain", action="store_true", help="train anew even where a finished run matches")
    parser.add_argument("--merge", action="store_true", help="keep the cells of the results file")
    parser.add_argument("--out", type=Path, default=None, help="results file stem (default: results/recipe[_study])")
    args = parser.parse_args()
    recipes = [r for r in args.recipes.split(",") if r]
    baselines = [b for b in args.baselines.split(",") if b]
    if set(recipes) - set(RECIPES) or set(baselines) - set(BASELINES):
        parser.error(f"--recipes: some of {', '.join(RECIPES)}; --baselines: some of {', '.join(BASELINES)}")
    torch.set_num_threads(args.threads)  # the scoring here; the training commands get OMP_NUM_THREADS
    args.runs.mkdir(parents=True, exist_ok=True)
    args.trained_now = set()
    out = args.out or (STUDY_OUT if args.study else OUT)
    command = "python benchmarks/recipe.py " + shlex.join(sys.argv[1:])
    path = out.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    doc["machine"] = {**machine_block(threads=args.threads, training=True), "model": args.model}
    here = machine_line(doc["machine"])
    for n_train in args.n_train.split(","):
        names = (args.datasets or DATASETS.get(n_train, DATASETS["1000"])).split(",")
        missing = [d for d in names if not (args.data / d / "train.jsonl").is_file()]
        if missing:
            sys.exit(f"recipe.py needs ../shared/data/{missing[0]} (not found at {args.data / missing[0]}); skipped")
        for name in names:
            data = rows(args.data, name, int(n_train), args.seed)
            cell = doc.setdefault(name, {}).setdefault(n_train, {})
            for run in [*recipes, *baselines]:
                print(f"[{name} {n_train}] {run}…", file=sys.stderr, flush=True)
                if run in BASELINES:
                    result = baseline_run(run, data, args)
                else:
                    trained_as = stand_in(name, int(n_train), run, args, data)
                    result = lm_run(name, int(n_train), trained_as, args, data)
                    if trained_as != run:
                        print(f"  {run} trains as {trained_as} on these rows: its run stands in", file=sys.stderr)
                        result["same_training_as"] = trained_as
                cell[run] = {**result, "command": command, "machine": here}
                write_results(out, doc, to_markdown(doc, args.study))
    print(to_markdown(doc, args.study))


if __name__ == "__main__":
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs
    main()
