"""LoRA fine-tuning against zero-shot and TF-IDF + logistic regression, on ../shared/data, with calibration.

Writes ``benchmarks/results/finetune.json`` and ``.md`` (``finetune_gpu.*`` with ``--device cuda``), rewritten after
every run so a long benchmark keeps what it has finished, plus each run's training curves and reliability diagram
under ``benchmarks/results/finetune_runs/``. CPU default::

    .venv/bin/python benchmarks/finetune.py

Per dataset: a seeded random training subsample (``--n-train``; the whole train split with ``--full``); from the
rest of the train split, 500 rows (stratified) for the temperature and 300 rows for evaluation during training; a
seeded random sample of ``--n-test`` test rows for the reported figures. The same subsample trains TF-IDF + LR
(the fair comparison); TF-IDF + LR on the whole train split shows what a user with all the data gets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classlm import LMClassifier, allocator  # noqa: E402
from classlm.bench import KEEP  # noqa: E402
from classlm.config import DTYPES  # noqa: E402
from classlm.data import load_dataset, stratified_split  # noqa: E402
from classlm.io import write_results  # noqa: E402
from classlm.machine import choose_dtype, machine_block, machine_line  # noqa: E402
from classlm.metrics import classification_metrics, softmax  # noqa: E402
from classlm.reports import plot_reliability, plot_training_curves  # noqa: E402
from classlm.training import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The default prompt of the accuracy benchmarks: chat template, an instruction, the classes with one-line descriptions.
# The same files feed `classlm bench --prompt` (ag_news's equals zero_shot.py's INSTRUCTION and NEWS_LABELS).
PROMPTS: dict[str, tuple[str, dict[str, str]]] = {
    f.stem: (spec["instruction"], spec["labels"])
    for f in sorted((HERE / "prompts").glob("*.json"))
    for spec in [json.loads(f.read_text())]
}
# Training examples per dataset on the 2-core CPU: at most about 17 minutes each at the measured examples/s
# (sms_spam texts are short: 3,400 of them take about as long as 1,800 ag_news articles). ag_news: 4,200 (its whole
# 5,000-row train file less the calibration and eval rows) since CPU training runs in bf16 on tcmalloc (5.30
# examples/s in the recipe run, against 2.25 in float32 before the lean micro-batches and LoRA dropout 0).
N_TRAIN = {"ag_news": 4200, "emotion": 2400, "sms_spam": 3400, "trec": 2400}
N_CALIB, N_EVAL = 500, 300
# The LoRA recipe's schedule (the command-line defaults; benchmarks/recipe_speed.py trains the same).
RECIPE = {"lr": 5e-4, "batch_size": 16, "epochs": 1.0, "eval_every": 40}


def splits(name: str, n_train: int | None, n_test: int, seed: int) -> dict[str, Any]:
    full = load_dataset(DATA / name, split="train")
    test = load_dataset(DATA / name, split="test")
    assert full.labels is not None and test.labels is not None
    rng = np.random.default_rng(seed)
    test = test.subset(np.sort(rng.permutation(len(test))[: min(n_test, len(test))]))
    # Calibration rows first (stratified), then evaluation rows, then the training subsample, all disjoint.
    rest, calib_idx = stratified_split(list(full.labels), N_CALIB / len(full), seed=seed)
    rest = rng.permutation(rest)
    eval_idx, train_pool = rest[:N_EVAL], rest[N_EVAL:]
    train_idx = train_pool if n_train is None else train_pool[:n_train]
    return {
        "full": full,
        "train": full.subset(np.sort(train_idx)),
        "calib": full.subset(calib_idx),
        "eval": full.subset(np.sort(eval_idx)),
        "test": test,
    }


def scored(clf: LMClassifier, test: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    scores = clf.predict_scores(list(test.texts), class_mass=True)
    seconds = time.perf_counter() - t0
    names = [str(c) for c in clf.classes_]
    y = np.array([names.index(v) for v in test.labels])
    before = classification_metrics(y, softmax(scores.logits), names)
    after = classification_metrics(y, softmax(clf.calibrator_.transform(scores.logits)), names)
    support = {c: v["support"] for c, v in after["per_class"].items()}
    big = [c for c, s in support.items() if s >= 100]
    ratios = {c: after["per_class"][c]["calibration_ratio"] for c in names}
    return {
        "before_temperature": {k: before[k] for k in KEEP},
        "after_temperature": {k: after[k] for k in KEEP},
        "temperature": float(clf.calibrator_.temperature),
        "calibration_ratio_after": ratios,
        "calibration_ratio_range_100plus": [min(ratios[c] for c in big), max(ratios[c] for c in big)] if big else None,
        "support": support,
        "class_mass": float(np.mean(scores.class_mass)) if scores.class_mass is not None else None,
        "test_texts_per_second": len(test) / seconds,
        "_report": after,
    }


def tfidf(train: Any, test: Any, names: list[str]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    model = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        ),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    t0 = time.perf_counter()
    model.fit(list(train.texts), list(train.labels))
    seconds = time.perf_counter() - t0
    proba = model.predict_proba(list(test.texts))
    order = [list(model.classes_).index(c) for c in names]
    y = np.array([names.index(v) for v in test.labels])
    m = classification_metrics(y, proba[:, order], names)
    return {"n_train": len(train), "train_seconds": seconds, **{k: m[k] for k in KEEP}}


def recipe(name: str, loss: str, args: argparse.Namespace, dtype: str) -> LMClassifier:
    """The benchmark's LoRA classifier for dataset ``name`` (``benchmarks/throughput.py`` times the same one)."""
    instruction, labels = PROMPTS[name]
    return LMClassifier(
        labels=labels,
        instruction=instruction,
        device=args.device,
        dtype=dtype,  # auto trains in float32 on CPU; bfloat16: frozen bf16 weights, float32 adapters and AdamW
        progress=True,
        lora={"r": 16, "alpha": 32},
        train={
            "loss": loss,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "eval_every": args.eval_every,
            "eval_limit": N_EVAL,
            "seed": args.seed,
        },
    )


def fit_recipe(clf: LMClassifier, data: dict[str, Any], run_dir: Path) -> None:
    clf.fit(
        list(data["train"].texts),
        list(data["train"].labels),
        eval_set=(list(data["eval"].texts), list(data["eval"].labels)),
        calib_set=(list(data["calib"].texts), list(data["calib"].labels)),
        run_dir=run_dir,
    )


def lora_run(name: str, data: dict[str, Any], loss: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    clf = recipe(name, loss, args, args.dtype)
    run_dir = Path(tempfile.mkdtemp(prefix=f"classlm-finetune-{name}-{loss}-"))
    try:
        print(f"[{name}] LoRA {loss}: training on {len(data['train'])} examples…", file=sys.stderr)
        fit_recipe(clf, data, run_dir)
        folder = out / "finetune_runs" / f"{name}_{loss}{'_gpu' if args.device == 'cuda' else ''}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "metrics.jsonl", folder / "metrics.jsonl")
        plot_training_curves(read_metrics(run_dir), folder / "training_curves.png")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    result = scored(clf, data["test"])
    plot_reliability(result.pop("_report")["reliability"], folder / "reliability.png")
    history = clf.training_["history"]
    t = clf.training_
    return {
        **result,
        "n_train": t["n_train"],
        "train_seconds": t["seconds"],
        "examples_per_second": t["examples_per_second"],
        "steps": t["steps"],
        "best_step": t["best_step"],
        "trainable_parameters": t["trainable_parameters"],
        "dtype": t.get("dtype"),
        "peak_rss_mib": t.get("peak_rss_mib"),
        "class_mass_start": history[0]["eval"]["class_mass"] if history else None,
        "class_mass_end": history[-1]["eval"]["class_mass"] if history else None,
        "curves": str(folder.relative_to(out)),
    }


def zero_shot(name: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    instruction, labels = PROMPTS[name]
    print(f"[{name}] zero-shot…", file=sys.stderr)
    # The LoRA rows' dtype, so zero-shot vs fine-tuned compares training, not dtypes.
    dtype = choose_dtype(args.dtype, args.device, training=True).dtype
    clf = LMClassifier(labels=labels, instruction=instruction, device=args.device, dtype=dtype, progress=True)
    clf.fit(list(data["calib"].texts), list(data["calib"].labels))
    result = scored(clf, data["test"])
    result.pop("_report")
    return result


def fmt(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Fine-tuning: LoRA on the label-token head vs zero-shot vs TF-IDF + LR",
        "",
        f"Last command: `{doc['command']}` (each section names the command that produced it)",
        "",
        f"{machine_line(doc['machine'])}. Model smollm2-135m (SmolLM2-135M-Instruct), "
        f"LoRA r=16 alpha=32 on every attention and MLP projection (embeddings and LM head frozen), lr {doc['lr']}, "
        f"batch {doc['batch_size']}, {doc['epochs']} epoch(s) over the training subsample, chat-template prompt with "
        "the classes and one-line descriptions. Temperature fitted on 500 train rows disjoint from the training "
        f"subsample; evaluation during training on 300 more; reported figures on {doc['n_test']} seeded random test "
        "rows (per dataset, below). Calibration ratio = sum(p)/sum(y) per class, after temperature, over classes "
        "with at least 100 test rows.",
    ]
    for name, d in doc["datasets"].items():
        lines += [
            "",
            f"## {name} ({d['n_test']} test rows, {d['k']} classes)",
            "",
            f"Reproduce this section: `{d.get('command', doc['command'])}`",
            "",
            "| method | train examples | macro-F1 | accuracy | NLL | ECE before T | ECE after T | ratio range | "
            "class mass | train s | examples/s | dtype | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, r in d["runs"].items():
            if "before_temperature" in r:
                b, a = r["before_temperature"], r["after_temperature"]
                rr = r["calibration_ratio_range_100plus"]
                mass = r["class_mass"]
                if r.get("class_mass_start") is not None:
                    mass_s = f"{fmt(r['class_mass_start'])} → {fmt(mass)}"
                else:
                    mass_s = fmt(mass)
                lines.append(
                    f"| {label} | {r.get('n_train', 0)} | {a['macro_f1']:.3f} | {a['accuracy']:.3f} | {a['nll']:.3f} "
                    f"| {b['ece']:.3f} | {a['ece']:.3f} | {f'{rr[0]:.2f}–{rr[1]:.2f}' if rr else '–'} "
                    f"| {mass_s} | {fmt(r.get('train_seconds'), '.0f')} "
                    f"| {fmt(r.get('examples_per_second'), '.2f')} | {r.get('dtype') or '–'} "
                    f"| {fmt(r.get('peak_rss_mib'), '.0f')} |"
                )
            else:
                lines.append(
                    f"| {label} | {r['n_train']} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {r['nll']:.3f} | "
                    f"{r['ece']:.3f} | – | – | – | {r['train_seconds']:.0f} | – | – | – |"
                )
        for label, r in d["runs"].items():
            if "curves" in r:
                lines.append(
                    f"\n{label}: per-class ratio after T "
                    + ", ".join(f"{c} {fmt(v, '.2f')}" for c, v in r["calibration_ratio_after"].items())
                    + f"; T = {r['temperature']:.2f}; best step {r['best_step']} of {r['steps']}; curves and "
                    f"reliability diagram in `benchmarks/results/{r['curves']}/`."
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs (training's auto dtype follows it)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ag_news,emotion,sms_spam")
    parser.add_argument("--vocab-ce", default="ag_news", help="datasets also trained with loss vocab_ce")
    parser.add_argument("--n-train", type=int, default=None, help="training subsample (default: per dataset)")
    parser.add_argument("--full", action="store_true", help="train on the whole train split (GPU)")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=RECIPE["lr"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--epochs", type=float, default=RECIPE["epochs"])
    parser.add_argument("--eval-every", type=int, default=RECIPE["eval_every"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype", choices=DTYPES, help="default: auto on CPU (training: float32), float32 on CUDA (bf16 autocast)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other datasets' sections of an existing result file"
    )
    args = parser.parse_args()
    # On CUDA the results so far trained float32 weights under bf16 autocast: kept, so they stay comparable.
    args.dtype = args.dtype or ("float32" if args.device == "cuda" else "auto")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: CUDA is not available here (torch {torch.__version__})")
    names = [n for n in args.datasets.split(",") if n]
    missing = [n for n in names if not (DATA / n).is_dir()]
    if missing:
        sys.exit(f"{[str(DATA / n) for n in missing]} not found: this benchmark reads ../shared/data beside the repo")
    unknown = [n for n in names if n not in PROMPTS]
    if unknown:
        sys.exit(f"no prompt defined for {unknown}; known: {sorted(PROMPTS)}")
    stem = "finetune_gpu" if args.device == "cuda" else "finetune"
    doc: dict[str, Any] = {
        "benchmark": stem,
        "command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:]),
        "machine": machine_block(args.device, args.dtype, training=True),  # the LoRA rows' dtype
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "n_test": args.n_test,
        "datasets": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / f"{stem}.json"
    if args.merge and previous.is_file():
        old = json.loads(previous.read_text())
        # A section re-run alone keeps its own command line, so every number stays reproducible.
        for name, entry in old["datasets"].items():
            if name not in names:
                entry.setdefault("command", old["command"])
                doc["datasets"][name] = entry

    def save() -> None:
        write_results(args.out / stem, doc, to_markdown(doc))

    def data_of(name: str) -> dict[str, Any]:
        return splits(name, None if args.full else (args.n_train or N_TRAIN[name]), args.n_test, args.seed)

    # class_ce on every dataset first, then vocab_ce: the main comparison is saved before the extra runs.
    for name in names:
        data = data_of(name)
        label_names = list(PROMPTS[name][1])
        entry: dict[str, Any] = {
            "k": len(label_names),
            "n_test": len(data["test"]),
            "command": doc["command"],
            "runs": {},
        }
        doc["datasets"][name] = entry
        entry["runs"]["TF-IDF + LR, same subsample"] = tfidf(data["train"], data["test"], label_names)
        entry["runs"]["TF-IDF + LR, whole train split"] = tfidf(data["full"], data["test"], label_names)
        entry["runs"]["zero-shot (temperature only)"] = zero_shot(name, data, args)
        save()
        entry["runs"]["LoRA class_ce"] = lora_run(name, data, "class_ce", args, args.out)
        save()
    for name in [n for n in names if n in args.vocab_ce.split(",")]:
        doc["datasets"][name]["runs"]["LoRA vocab_ce"] = lora_run(name, data_of(name), "vocab_ce", args, args.out)
        save()
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
