"""The LoRA recipe of ``benchmarks/finetune.py`` on ag_news, trained once per dtype, each in its own process:
examples/s, the process's peak RSS during training, and the test macro-F1 of the trained adapter scored in float32.

``benchmarks/throughput.py --sections training`` runs it and writes the figures under ``training`` and
``quality.bf16_trained`` of ``benchmarks/results/throughput.json``. One dtype by hand::

    .venv/bin/python benchmarks/recipe_speed.py --dtype bfloat16 --json /tmp/bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune import RECIPE, fit_recipe, recipe, splits  # noqa: E402

from classlm import LMClassifier, allocator  # noqa: E402
from classlm.metrics import classification_metrics, softmax  # noqa: E402

DATASET = "ag_news"
# ag_news rows of the recipe runs: finetune.py's ag_news size before this release's faster training (it now trains
# 2,700), so both dtypes take minutes, not an hour.
RECIPE_ROWS = 1800


def child(args: argparse.Namespace) -> dict[str, Any]:
    data = splits(DATASET, args.n_train, args.n_test, args.seed)
    ns = argparse.Namespace(device="cpu", seed=args.seed, **RECIPE)
    clf = recipe(DATASET, "class_ce", ns, args.dtype)
    clf.progress = False
    with tempfile.TemporaryDirectory(prefix="classlm-recipe-") as tmp:
        t0 = time.perf_counter()
        fit_recipe(clf, data, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        t = clf.training_
        clf.save(Path(tmp) / "clf")
        # Scored in float32 whatever it trained in: the comparison is of the trained adapters, not of scoring dtypes.
        scorer = LMClassifier.load(Path(tmp) / "clf", dtype="float32", progress=False)
        scores = scorer.predict_scores(list(data["test"].texts))
    names = [str(c) for c in scorer.classes_]
    y = np.array([names.index(v) for v in data["test"].labels])
    m = classification_metrics(y, softmax(scorer.calibrator_.transform(scores.logits)), names)
    return {
        "dtype": t["dtype"],
        "allocator": t["allocator"],
        "kernels": t["kernels"],  # every training summary says how its backward math ran
        "n_train": t["n_train"],
        "steps": t["steps"],
        "examples_seen": t["examples_seen"],
        "train_seconds": t["seconds"],
        "examples_per_second": t["examples_per_second"],
        # Read right after training (the float32 scorer loaded afterwards would add its own copy of the model).
        "peak_rss_mib": t["peak_rss_mib"],
        "fit_wall_seconds": wall,
        "best_step": t["best_step"],
        "n_test": len(data["test"]),
        "test_after_temperature": {k: m[k] for k in ("macro_f1", "accuracy", "nll", "ece")},
    }


def run(
    dtype: str, n_train: int, n_test: int, seed: int, threads: int | None = None, heap: str = "auto"
) -> dict[str, Any]:
    """One dtype in a fresh process (so its peak RSS is its own) on the heap allocator ``heap`` (``auto``: the one
    the ``classlm`` command runs on, tcmalloc where installed; ``system``: glibc's malloc); the figures, or the
    error it ended with."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--dtype", dtype, "--json", str(out), "--n-train", str(n_train)]
        cmd += ["--n-test", str(n_test), "--seed", str(seed)]
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, allocator.MARK)}
        # maps="": choose as a process on glibc's malloc would, whatever this one runs on.
        env = allocator.preload_env({**env, allocator.ENV: heap}, maps="") or env
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", required=True, choices=("float32", "bfloat16"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=RECIPE_ROWS)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.json.write_text(json.dumps(child(args), indent=2) + "\n")


if __name__ == "__main__":
    main()
