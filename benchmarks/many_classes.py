"""Many classes: the heads for class names that share first tokens, against TF-IDF + LR, embedding + LR and
hidden_head trained on the same rows, on clinc150 (151 classes, ``oos`` counted as one) and trec_fine (50).

Writes ``benchmarks/results/many_classes.json`` and ``.md``, rewritten after every run so a long benchmark keeps
what it finished; ``--merge`` keeps the runs of earlier commands (each run records the command that made it).
Everything (hours on the 2-core CPU)::

    .venv/bin/python benchmarks/many_classes.py

One cell by hand::

    .venv/bin/python benchmarks/many_classes.py --datasets trec_fine --n-train 1000 --heads name_rows,tfidf --merge

Per (dataset, n_train): a seeded sample of ``n_train`` train rows, from which every method holds out its own
stratified 10% (at least one row per class) for the temperature, as ``classlm train`` does; 300 seeded rows for LoRA's
evaluation during training (clinc150: its validation split; trec_fine: train rows outside the sample); figures on
1,000 seeded test rows (trec_fine: its 500), after temperature. The LoRA heads train the default recipe (r 16 on every
projection, lr 5e-4, batch 16, ``epochs=None``: passes by rows per class, the best adapter by eval NLL kept).
``default`` is the head ``scoring="auto"`` resolves to for the dataset's class names (the same run, not a second one).
``speed.ratio_151_vs_4``: zero-shot texts/s with clinc150's 151 classes over the same texts with 4 of its classes,
the shipped dtype and prompt settings, in the same process.
"""

from __future__ import annotations

import argparse
import gc
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
from classlm.metrics import classification_metrics
from classlm.priors import em_priors, shift_priors

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "many_classes"
LM_HEADS = {"auto_verbalizer": "auto_verbalizer", "name_rows": "name_rows", "trie_exact": "exact"}
BASELINES = {"tfidf": "tfidf", "embedding": "embedding", "hidden_head": "hidden_head"}
HEADS = (*LM_HEADS, *BASELINES)
N_EVAL, N_TEST = 300, 1000
KEEP = ("accuracy", "macro_f1", "nll", "ece")
NOT_DATASETS = ("machine", "speed")  # the results file's other top-level keys
OOS = "oos"  # clinc150's out-of-scope class


def splits(name: str, n_train: int, seed: int) -> dict[str, Any]:
    train = load_dataset(DATA / name, split="train")
    test = load_dataset(DATA / name, split="test")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    if (DATA / name / "validation.jsonl").is_file():
        val = load_dataset(DATA / name, split="validation")
        evaluation = val.subset(np.sort(rng.permutation(len(val))[:N_EVAL]))
        sample = order[:n_train]
    else:  # eval rows from the train split, outside the training sample
        evaluation, sample = train.subset(np.sort(order[:N_EVAL])), order[N_EVAL : N_EVAL + n_train]
    return {
        "train": train.subset(np.sort(sample)),
        "eval": evaluation,
        "test": test.subset(np.sort(rng.permutation(len(test))[: min(N_TEST, len(test))])),
        "names": json.loads((DATA / name / "labels.json").read_text()),
    }


def pairs(ds: Any) -> tuple[list[str], list[str]]:
    return list(ds.texts), [str(v) for v in ds.labels]


def classifier(head: str, names: list[str], seed: int, n_fit: int) -> LMClassifier:
    if head in BASELINES:
        return LMClassifier(method=BASELINES[head], labels=names, train={"seed": seed})
    # About eight evaluations over the run whatever its length (epochs=None decides the length).
    from classlm.config import auto_epochs

    steps = auto_epochs(n_fit, len(names)) * -(-n_fit // 16)
    train = {"seed": seed, "eval_every": max(10, steps // 8), "eval_limit": N_EVAL}
    return LMClassifier(labels=names, scoring=LM_HEADS[head], lora={"r": 16, "alpha": 32}, train=train, progress=True)


def run_head(head: str, data: dict[str, Any], seed: int) -> dict[str, Any]:
    x, y = pairs(data["train"])
    clf = classifier(head, data["names"], seed, int(len(x) * 0.9))
    t0 = time.perf_counter()
    if head in LM_HEADS:
        clf.fit(x, y, eval_set=pairs(data["eval"]))
    else:
        clf.fit(x, y)
    fit_seconds = time.perf_counter() - t0
    tx, ty = pairs(data["test"])
    t0 = time.perf_counter()
    proba = clf.predict_proba(tx)
    seconds = time.perf_counter() - t0
    classes = [str(c) for c in clf.classes_]
    y = np.array([classes.index(v) for v in ty])
    m = classification_metrics(y, proba, classes)
    t = getattr(clf, "training_", {}) or {}
    row = {k: float(m[k]) for k in KEEP}
    row.update(out_of_scope(y, proba, classes, clf.training_priors_))
    row.update(
        train_examples_per_second=t.get("examples_per_second"),
        texts_per_second=len(tx) / seconds,
        fit_seconds=round(fit_seconds, 1),
        n_fit=t.get("n_train"),
        n_calib=clf.calibration_info_.get("n"),
        scoring=getattr(clf, "scoring_", None) if head in LM_HEADS else None,
        epochs=t.get("epochs"),
        steps=t.get("steps"),
        best_step=t.get("best_step"),
        dtype=(clf.run_info()["dtype"] or {}).get("dtype"),
        peak_rss_mib=t.get("peak_rss_mib"),
    )
    del clf
    gc.collect()
    return row


def out_of_scope(y: np.ndarray, proba: np.ndarray, classes: list[str], source: np.ndarray) -> dict[str, float]:
    """clinc150's ``oos`` rows are 0.7% of its train split and 18% of its test split: the temperature is fitted on
    rows almost free of them. The test figures without those rows, and how many of them the classifier catches.

    Then the same probabilities moved to a deployment whose ``oos`` share is known (``priors=``, as a user who knows
    what share of the traffic is out of scope would pass it: the test rows' share, the in-scope classes equal; the
    share comes from the test labels, so these ``known_share_*`` figures show what the prior shift costs, not a
    method), and the share EM estimates from the test texts without labels."""
    if OOS not in classes:
        return {}
    o = classes.index(OOS)
    inside = y != o
    m = classification_metrics(y[inside], proba[inside], classes)
    caught = np.argmax(proba[~inside], axis=1) == o
    share = float(np.mean(~inside))
    # The in-scope intents equal, as in the train split (100 rows each): the seeded sample's uneven counts are noise.
    target = np.full(len(classes), (1 - share) / (len(classes) - 1))
    target[o] = share
    moved = shift_priors(proba, source, target)
    known = classification_metrics(y, moved, classes)
    return {
        "in_scope_ece": float(m["ece"]),
        "in_scope_accuracy": float(m["accuracy"]),
        "oos_recall": float(caught.mean()),
        "oos_share": share,
        "known_share_ece": float(known["ece"]),
        "known_share_nll": float(known["nll"]),
        "known_share_accuracy": float(known["accuracy"]),
        "known_share_oos_recall": float(np.mean(np.argmax(moved[~inside], axis=1) == o)),
        "em_oos_share": float(em_priors(proba, source).priors[o]),
    }


def resolved_default(names: list[str]) -> str:
    """The head scoring='auto' picks for these class names (resolved on a zero-shot classifier)."""
    scoring = LMClassifier(labels=names).fit([]).scoring_
    return {v: k for k, v in LM_HEADS.items()}.get(scoring, scoring)


def speed_ratio(seed: int) -> dict[str, Any]:
    data = splits("clinc150", 0, seed)
    texts, _ = pairs(data["test"])
    names = data["names"]
    out: dict[str, Any] = {}
    for label, classes in (("151", names), ("4", ["alarm", "balance", "calculator", "definition"])):
        clf = LMClassifier(labels=classes).fit([])
        clf.predict_scores(texts[:64])  # warm-up: the prompt prefix, oneDNN's kernels
        t0 = time.perf_counter()
        clf.predict_scores(texts)
        out[f"texts_per_second_{label}"] = len(texts) / (time.perf_counter() - t0)
        out[f"scoring_{label}"] = clf.scoring_
        out[f"prompt_tokens_{label}"] = clf.method_.describe()["prompt_tokens"]
    out["ratio_151_vs_4"] = out["texts_per_second_151"] / out["texts_per_second_4"]
    out["n_texts"] = len(texts)
    out["exact"] = {name: exact_speed(name, seed) for name in ("trec_fine", "clinc150")}
    return out


def exact_speed(name: str, seed: int, n_trie: int = 64, n_rows: int = 2) -> dict[str, Any]:
    """Zero-shot ``scoring="exact"``: texts/s through the answer trie against the k-row path it replaces (every
    class's answer run after the whole prompt, ``reuse_prefix=False``: k full rows per text), on test texts."""
    data = splits(name, 0, seed)
    texts, _ = pairs(data["test"])
    out: dict[str, Any] = {}
    for path, n in (("trie", n_trie), ("k_rows", n_rows)):
        clf = LMClassifier(labels=data["names"], scoring="exact").fit([])
        clf.method_.reuse_prefix = path == "trie"  # without the cached prefix, exact takes the k-row path
        clf.predict_scores(texts[:1])  # warm-up
        t0 = time.perf_counter()
        clf.predict_scores(texts[1 : 1 + n])
        out[f"{path}_texts_per_second"] = n / (time.perf_counter() - t0)
        out[f"{path}_n_texts"] = n
        if path == "trie":
            out["trie_nodes"] = clf.method_.trie.size
            out["answer_tokens"] = sum(len(s) for s in clf.method_.tokens.sequences)
            out["k"] = len(clf.classes_)
    out["trie_speedup"] = out["trie_texts_per_second"] / out["k_rows_texts_per_second"]
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Many classes: heads for class names that share first tokens",
        "",
        "Model smollm2-135m; each section names the machine of its rows (the latest run's: "
        f"{machine_line(doc['machine'])}). See `benchmarks/many_classes.py` for the splits; "
        "figures on the seeded test rows after temperature. train ex/s: LoRA's examples seen per second of "
        "training (for the baselines: rows fitted per second); texts/s: predict_proba on the test rows.",
        "",
    ]
    for name in (k for k in doc if k not in NOT_DATASETS):
        for n_train, rows in doc[name].items():
            lines += [f"## {name}, {n_train} training rows", ""]
            lines += [
                "| head | accuracy | macro-F1 | NLL | ECE | train ex/s | texts/s | passes |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for head, r in rows.items():
                cells = [f"{r[k]:.3f}" for k in KEEP]
                speed = r.get("train_examples_per_second")
                lines.append(
                    f"| {head}{' → ' + r['resolves_to'] if 'resolves_to' in r else ''} | {' | '.join(cells)} | "
                    f"{'–' if speed is None else f'{speed:.1f}'} | {r['texts_per_second']:.1f} | "
                    f"{r.get('epochs') or '–'} |"
                )
            scoped = {h: r for h, r in rows.items() if "oos_recall" in r}
            if scoped:
                lines += ["", "Test rows without `oos` (0.7% of train, 18% of test), and the `oos` rows caught:", ""]
                lines += ["| head | ECE | accuracy | oos recall |", "|---|---|---|---|"] + [
                    f"| {h} | {r['in_scope_ece']:.3f} | {r['in_scope_accuracy']:.3f} | {r['oos_recall']:.3f} |"
                    for h, r in scoped.items()
                ]
            known = {h: r for h, r in scoped.items() if "known_share_ece" in r}
            if known:
                lines += [
                    "",
                    "All test rows, the probabilities moved to the test's `oos` share (`priors=`, the share taken from "
                    "the test labels: what the prior shift costs, not a method), and the share EM finds unlabelled:",
                    "",
                    "| head | oos share | ECE | NLL | accuracy | oos recall | EM's oos share |",
                    "|---|---|---|---|---|---|---|",
                ]
                lines += [
                    f"| {h} | {r['oos_share']:.3f} | {r['known_share_ece']:.3f} | {r['known_share_nll']:.3f} | "
                    f"{r['known_share_accuracy']:.3f} | {r['known_share_oos_recall']:.3f} | {r['em_oos_share']:.3f} |"
                    for h, r in known.items()
                ]
            commands = dict.fromkeys(r.get("command", "") for r in rows.values())
            machines = dict.fromkeys(r.get("machine", "") for r in rows.values())
            lines += ["", "Made by " + "; ".join(f"`{c}`" for c in commands if c), ""]
            lines += ["On " + "; ".join(m for m in machines if m), ""] if any(machines) else []
    if "speed" in doc:
        s = doc["speed"]
        lines += [
            "## Scoring speed against the class count",
            "",
            f"clinc150, {s['n_texts']} test texts, zero-shot, shipped settings: 151 classes "
            f"{s['texts_per_second_151']:.1f} texts/s ({s['scoring_151']}, prompt {s['prompt_tokens_151']} tokens), "
            "4 classes "
            f"{s['texts_per_second_4']:.1f} ({s['scoring_4']}, prompt {s['prompt_tokens_4']}): ratio "
            f"**{s['ratio_151_vs_4']:.2f}**. `{s.get('command', '')}`"
            + (f" On {s['machine']}." if "machine" in s else ""),
            "",
        ]
        if "exact" in s:
            lines += [
                '`scoring="exact"` zero-shot on test texts: the answer trie against the k-row path it replaces',
                "",
                "| dataset | k | answer tokens | trie nodes | trie texts/s | k rows texts/s | speed-up |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {name} | {e['k']} | {e['answer_tokens']} | {e['trie_nodes']} | {e['trie_texts_per_second']:.2f} "
                f"({e['trie_n_texts']} texts) | {e['k_rows_texts_per_second']:.3f} ({e['k_rows_n_texts']}) | "
                f"{e['trie_speedup']:.0f}x |"
                for name, e in s["exact"].items()
            ]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="clinc150,trec_fine")
    parser.add_argument("--n-train", default="1000,3000")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"some of {','.join(HEADS)}")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the runs of the results file")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    heads = [h for h in args.heads.split(",") if h]  # --heads "": the speed section alone
    if set(heads) - set(HEADS):
        parser.error(f"--heads: unknown {sorted(set(heads) - set(HEADS))}; known: {', '.join(HEADS)}")
    missing = [d for d in args.datasets.split(",") if not (DATA / d / "train.jsonl").is_file()]
    if missing:
        sys.exit(f"many_classes.py needs ../shared/data/{missing[0]} (not found at {DATA / missing[0]}); skipped")
    torch.set_num_threads(torch.get_num_threads())  # as the process started: OMP_NUM_THREADS, else the cores
    command = "python benchmarks/many_classes.py " + shlex.join(sys.argv[1:])
    path = args.out.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    doc["machine"] = machine_block(training=True)  # this run's; every row keeps the line of the run that made it
    here = machine_line(doc["machine"])
    for name in args.datasets.split(",") if heads else ():
        for n_train in args.n_train.split(","):
            data = splits(name, int(n_train), args.seed)
            cell = doc.setdefault(name, {}).setdefault(n_train, {})  # the keys: <dataset>.<n_train>.<head>
            default = resolved_default(data["names"])
            for head in heads:
                print(f"[{name} {n_train}] {head}…", file=sys.stderr, flush=True)
                cell[head] = {**run_head(head, data, args.seed), "command": command, "machine": here}
                if head == default:
                    cell["default"] = {**cell[head], "resolves_to": head}
                write_results(args.out, doc, to_markdown(doc))
    if args.speed:
        doc["speed"] = {**speed_ratio(args.seed), "command": command, "machine": here}
        write_results(args.out, doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    allocator.reexec()  # onto tcmalloc where installed, as the classlm command runs (bf16 training pays there)
    main()
