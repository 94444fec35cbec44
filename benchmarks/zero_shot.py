"""Zero-shot benchmark: label_tokens vs letters on ag_news, before/after temperature, and sliced-head throughput.

Writes ``benchmarks/results/zero_shot.json`` and ``.md``. Run with ``make bench-zero-shot`` or::

    .venv/bin/python benchmarks/zero_shot.py --n-test 2000 --n-calib 500

The temperature is fitted on rows of ag_news *train*, disjoint from the evaluated *test* rows. The throughput part
times, on the same length-sorted batches in the same run, (a) classlm's path (transformer stack, hidden state at the
last real token, k LM-head rows) and (b) a plain causal-LM forward that computes full-vocabulary logits at every
position, then reads the same k logits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classlm import LMClassifier
from classlm.data import load_dataset
from classlm.io import write_results
from classlm.machine import machine_block
from classlm.metrics import classification_metrics, softmax
from classlm.scoring import length_sorted_batches, pad_right

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
# The default prompt of the accuracy benchmarks: the ag_news classes with one-line descriptions.
NEWS_LABELS = {
    "World": "world politics and international affairs",
    "Sports": "sport",
    "Business": "business and the economy",
    "Sci/Tech": "science and technology",
}
INSTRUCTION = "Classify the news article by topic."


def method_results(method: str, test: Any, calib: Any, batch_size: int) -> dict[str, Any]:
    clf = LMClassifier(method=method, labels=NEWS_LABELS, instruction=INSTRUCTION, batch_size=batch_size, progress=True)
    t0 = time.perf_counter()
    clf.fit(list(calib.texts), list(calib.labels))
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = clf.predict_scores(list(test.texts), class_mass=True)
    seconds = time.perf_counter() - t0
    index = {c: i for i, c in enumerate(clf.classes_)}
    y = np.array([index[v] for v in test.labels])
    names = [str(c) for c in clf.classes_]
    before = classification_metrics(y, softmax(scores.logits), names)
    after = classification_metrics(y, softmax(clf.calibrator_.transform(scores.logits)), names)
    keep = (
        "accuracy",
        "macro_f1",
        "nll",
        "brier",
        "ece",
        "classwise_ece",
        "calibration_ratio_min",
        "calibration_ratio_max",
    )
    ratio = {c: v["calibration_ratio"] for c, v in before["per_class"].items()}
    ratio_after = {c: v["calibration_ratio"] for c, v in after["per_class"].items()}
    return {
        "temperature": float(clf.calibrator_.temperature),
        "before_temperature": {k: before[k] for k in keep} | {"calibration_ratio": ratio},
        "after_temperature": {k: after[k] for k in keep} | {"calibration_ratio": ratio_after},
        "class_mass_mean": float(np.mean(scores.class_mass)),
        "n_truncated": scores.n_truncated,
        "texts_per_second": len(test) / seconds,
        "calibration_fit_seconds": fit_seconds,
        "prompt_tokens": clf.method_.describe()["prompt_tokens"],
        "class_tokens": clf.method_.describe()["tokens"],
    }


def throughput(texts: list[str], batch_size: int, rounds: int) -> dict[str, Any]:
    clf = LMClassifier(labels=NEWS_LABELS, instruction=INSTRUCTION, batch_size=batch_size).fit([])
    method, bb = clf.method_, clf.backbone_
    # Both paths run every prompt in full, so the ratio isolates the sliced head; what reusing the shared prompt
    # prefix adds on top is measured by benchmarks/throughput.py.
    method.reuse_prefix = False
    rows = method.encoder.encode(texts).ids
    batches = [[rows[i] for i in idx] for idx in length_sorted_batches([len(r) for r in rows], batch_size)]
    ids = torch.as_tensor(method.tokens.first_ids)
    pad = bb.tokenizer.pad_token_id

    def sliced() -> list[torch.Tensor]:
        return [method._first_token(b, None, class_mass=False)[0] for b in batches]

    def full_logits() -> list[torch.Tensor]:
        outs = []
        for b in batches:
            input_ids, mask = pad_right(b, pad, bb.device)
            logits = bb.model(input_ids=input_ids, attention_mask=mask).logits  # (b, L, V): every position
            last = torch.as_tensor([len(r) - 1 for r in b])
            outs.append(logits[torch.arange(len(b)), last][:, ids].float())
        return outs

    times: dict[str, list[float]] = {"sliced": [], "full": []}
    with torch.inference_mode():
        sliced(), full_logits()  # warm-up: first calls pay for allocation
        for _ in range(rounds):  # alternate so both see the same machine state
            for name, fn in (("sliced", sliced), ("full", full_logits)):
                t0 = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - t0)
                if name == "sliced":
                    a = result
                else:
                    diff = max(float((x - y).abs().max()) for x, y in zip(a, result))
    best = {k: min(v) for k, v in times.items()}
    return {
        "n_texts": len(texts),
        "batch_size": batch_size,
        "rounds": rounds,
        "mean_tokens_per_text": float(np.mean([len(r) for r in rows])),
        "sliced_head_texts_per_second": len(texts) / best["sliced"],
        "full_logits_texts_per_second": len(texts) / best["full"],
        "ratio": best["full"] / best["sliced"],
        "seconds": times,
        "max_abs_logit_difference": diff,
    }


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Zero-shot benchmark: ag_news",
        "",
        f"Reproduce: `{doc['command']}`",
        "",
        f"Model `{doc['model']}`, {doc['machine']['cpu']['cores']} CPU cores, torch {doc['machine']['torch']} "
        f"({doc['machine']['threads']} threads), {doc['machine']['dtype']['dtype']}. Test: first {doc['n_test']} "
        "rows of ag_news test; temperature "
        f"fitted on the first {doc['n_calib']} rows of ag_news train (disjoint). Prompt: chat template, "
        f"instruction {INSTRUCTION!r}, the 4 classes with one-line descriptions.",
        "",
        "| method | temperature | T | accuracy | macro-F1 | NLL | Brier | ECE | calibration ratio (min–max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in doc["methods"].items():
        for when in ("before_temperature", "after_temperature"):
            m = r[when]
            t = r["temperature"] if when == "after_temperature" else 1.0
            lines.append(
                f"| {method} | {when.split('_')[0]} | {t:.3f} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
                f"{m['nll']:.3f} | {m['brier']:.3f} | {m['ece']:.3f} | "
                f"{m['calibration_ratio_min']:.2f}–{m['calibration_ratio_max']:.2f} |"
            )
    lines += [
        "",
        "Per-class calibration ratio sum(p)/sum(y):",
        "",
        "| method | temperature | " + " | ".join(NEWS_LABELS) + " |",
        "|---|---|" + "---|" * len(NEWS_LABELS),
    ]
    for method, r in doc["methods"].items():
        for when in ("before_temperature", "after_temperature"):
            ratio = r[when]["calibration_ratio"]
            lines.append(
                f"| {method} | {when.split('_')[0]} | "
                + " | ".join("–" if ratio[c] is None else f"{ratio[c]:.2f}" for c in NEWS_LABELS)
                + " |"
            )
    lines += ["", "| method | class-token mass (mean) | scoring texts/s | prompt tokens |", "|---|---|---|---|"]
    for method, r in doc["methods"].items():
        lines.append(f"| {method} | {r['class_mass_mean']:.3f} | {r['texts_per_second']:.2f} | {r['prompt_tokens']} |")
    t = doc["throughput"]
    lines += [
        "",
        f"## Throughput: sliced head vs full-vocabulary logits ({t['n_texts']} texts, batch {t['batch_size']}, "
        f"best of {t['rounds']} alternating rounds, {t['mean_tokens_per_text']:.0f} tokens per prompt on average)",
        "",
        "| path | texts/s |",
        "|---|---|",
        f"| (a) sliced head: hidden state at the last real token × 4 LM-head rows | "
        f"{t['sliced_head_texts_per_second']:.2f} |",
        f"| (b) plain forward, full-vocabulary logits at every position | {t['full_logits_texts_per_second']:.2f} |",
        f"| ratio (a)/(b) | **{t['ratio']:.2f}x** |",
        "",
        f"Both paths give the same class logits (max difference {t['max_abs_logit_difference']:.1e}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-calib", type=int, default=500)
    parser.add_argument("--throughput-texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (DATA / "ag_news").is_dir():
        sys.exit(f"{DATA / 'ag_news'} not found: this benchmark reads ../shared/data beside the repo")
    test = load_dataset(DATA / "ag_news", split="test", limit=args.n_test)
    calib = load_dataset(DATA / "ag_news", split="train", limit=args.n_calib)
    doc: dict[str, Any] = {
        "benchmark": "zero_shot",
        "command": "python benchmarks/zero_shot.py " + " ".join(sys.argv[1:]),
        "model": "smollm2-135m",
        "dataset": "ag_news",
        "n_test": len(test),
        "n_calib": len(calib),
        "instruction": INSTRUCTION,
        "labels": NEWS_LABELS,
        "machine": machine_block("cpu"),
    }
    print("throughput: sliced head vs full logits…", file=sys.stderr)
    doc["throughput"] = throughput(list(test.texts[: args.throughput_texts]), args.batch_size, args.rounds)
    doc["methods"] = {}
    for method in ("label_tokens", "letters"):
        print(f"{method}: fitting the temperature and scoring {len(test)} texts…", file=sys.stderr)
        doc["methods"][method] = method_results(method, test, calib, args.batch_size)
    write_results(args.out / "zero_shot", doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
