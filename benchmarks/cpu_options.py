"""CPU speed options measured one at a time against classlm as shipped: int8 dynamic quantisation, torch.compile,
MKL pre-packed weights and running the last layer's output projection and MLP at the answer position only.

Writes ``benchmarks/results/cpu_options.{json,md}``. For each option: texts/s on the throughput benchmark's texts and
prompt (first N ag_news test texts, best of R passes after a warm-up), and for int8 the accuracy and calibration
change on ag_news test rows (zero-shot, temperature fitted on train rows), since quantisation changes the logits::

    .venv/bin/python benchmarks/cpu_options.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zero_shot import INSTRUCTION, NEWS_LABELS  # noqa: E402

from classlm import LMClassifier  # noqa: E402
from classlm.data import load_dataset  # noqa: E402
from classlm.io import write_results  # noqa: E402
from classlm.machine import machine_block  # noqa: E402
from classlm.methods import label_tokens  # noqa: E402
from classlm.metrics import classification_metrics, softmax  # noqa: E402
from classlm.scoring import decoder_of  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KEEP = ("accuracy", "macro_f1", "nll", "ece")


def speed(clf: LMClassifier, texts: list[str], rounds: int) -> float:
    clf.predict_scores(texts[:16])  # warm-up (and, for torch.compile, the compilation)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        clf.predict_scores(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def quality(clf: LMClassifier, test: Any, calib: Any) -> dict[str, Any]:
    names = [str(c) for c in clf.classes_]
    clf.calibrate(list(calib.texts), list(calib.labels), source="train rows")
    z = clf.predict_scores(list(test.texts)).logits
    y = np.array([names.index(v) for v in test.labels])
    before = classification_metrics(y, softmax(z), names)
    after = classification_metrics(y, softmax(clf.calibrator_.transform(z)), names)
    return {
        "before_temperature": {k: before[k] for k in KEEP},
        "after_temperature": {k: after[k] for k in KEEP},
        "temperature": float(clf.calibrator_.temperature),
        "_logits": z,
    }


def clone(clf: LMClassifier) -> LMClassifier:
    """``clf`` with its own copy of the model (and no cached prompt prefix), so an option cannot touch the others."""
    out = copy.copy(clf)
    out.backbone_ = copy.copy(clf.backbone_)
    out.backbone_.model = copy.deepcopy(clf.backbone_.model)
    out.method_ = copy.copy(clf.method_)
    out.method_.backbone = out.backbone_
    out.method_.bind_prompt(clf.method_.rendered)  # a PromptedLM of its own, on the copied model, nothing cached
    out.calibrator_ = copy.deepcopy(clf.calibrator_)
    return out


def int8(clf: LMClassifier) -> LMClassifier:
    """Dynamic int8 quantisation of every linear layer of the transformer blocks (the LM head, whose rows are read
    directly, stays fp32)."""
    quant = clone(clf)
    layers = decoder_of(quant.backbone_.model).layers
    torch.ao.quantization.quantize_dynamic(layers, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return quant


def packed(clf: LMClassifier, rows_hint: int = 512) -> tuple[LMClassifier, float]:
    """Every linear layer of the transformer blocks through MKL with its weight packed once, instead of on every
    call as a plain ``F.linear`` does (what inductor's CPU freezing does). Exact; also returns the packed copies'
    size relative to the weights, since they are kept beside them."""
    out = clone(clf)
    packed_numel = weight_numel = 0
    for module in decoder_of(out.backbone_.model).layers.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight.detach()
            pw = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows_hint)
            packed_numel, weight_numel = packed_numel + pw.numel(), weight_numel + weight.numel()

            def forward(x: torch.Tensor, m: torch.nn.Linear = module, pw: torch.Tensor = pw) -> torch.Tensor:
                y = torch.ops.mkl._mkl_linear(x.reshape(-1, x.shape[-1]), pw, m.weight, m.bias, rows_hint)
                return y.view(*x.shape[:-1], y.shape[-1])

            module.forward = forward
    return out, packed_numel / weight_numel


@contextlib.contextmanager
def last_layer_at_answer() -> Iterator[None]:
    """While open, the last layer's output projection and MLP run on each row's last real token only (its keys and
    values still cover every position): the rest of that layer's output is never read. Exact. Done with pre-hooks
    that hand those two modules ``(b, 1, d)``; the residual additions broadcast it, and only the read position
    matters."""
    plain = label_tokens.last_token_hidden

    def trimmed(model: Any, rows: Any, pad_id: int, device: torch.device, prefix: Any = None) -> torch.Tensor:
        last = torch.as_tensor([len(r) - 1 for r in rows], device=device)
        take = torch.arange(len(rows), device=device)

        def gather(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0][take, last].unsqueeze(1), *args[1:])

        layer = decoder_of(model).layers[-1]
        hooks = [m.register_forward_pre_hook(gather) for m in (layer.self_attn.o_proj, layer.mlp)]
        try:
            return plain(model, rows, pad_id, device, prefix)
        finally:
            for h in hooks:
                h.remove()

    label_tokens.last_token_hidden = trimmed
    try:
        yield
    finally:
        label_tokens.last_token_hidden = plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-calib", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (DATA / "ag_news").is_dir():
        sys.exit(f"{DATA / 'ag_news'} not found: this benchmark reads ../shared/data beside the repo")
    texts = list(load_dataset(DATA / "ag_news", split="test", limit=args.n_texts).texts)
    test = load_dataset(DATA / "ag_news", split="test", limit=args.n_test)
    calib = load_dataset(DATA / "ag_news", split="train", limit=args.n_calib)
    # A study of options for the float32 model (its int8 quantises fp32 layers): float32 whatever auto picks here.
    base = LMClassifier(labels=NEWS_LABELS, instruction=INSTRUCTION, dtype="float32").fit([])
    results: dict[str, Any] = {}

    print("fp32 as shipped…", file=sys.stderr)
    results["fp32 (as shipped)"] = {"texts_per_second": speed(base, texts, args.rounds), **quality(base, test, calib)}

    print("int8 dynamic quantisation…", file=sys.stderr)
    try:
        q = int8(base)
        results["int8 dynamic (transformer linears)"] = {
            "texts_per_second": speed(q, texts, args.rounds),
            **quality(q, test, calib),
        }
    except Exception as exc:  # an option that does not run here is a result too
        results["int8 dynamic (transformer linears)"] = {"error": f"{type(exc).__name__}: {exc}"}

    # The exact options are checked on the speed texts: their logits should not move beyond float rounding.
    plain_logits = base.predict_scores(texts).logits
    print("MKL pre-packed weights…", file=sys.stderr)
    try:
        pk, size = packed(base)
        results["MKL pre-packed linear weights"] = {
            "texts_per_second": speed(pk, texts, args.rounds),
            "packed_size_vs_weights": size,
            "max_abs_logit_change": float(np.abs(pk.predict_scores(texts).logits - plain_logits).max()),
        }
        del pk
    except Exception as exc:
        results["MKL pre-packed linear weights"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}

    print("last layer at the answer position only…", file=sys.stderr)
    with last_layer_at_answer():
        trimmed_logits = base.predict_scores(texts).logits
        results["last layer's o_proj + MLP at the answer position only"] = {
            "texts_per_second": speed(base, texts, args.rounds),
            "max_abs_logit_change": float(np.abs(trimmed_logits - plain_logits).max()),
        }

    print("torch.compile…", file=sys.stderr)
    try:
        compiled = LMClassifier(labels=NEWS_LABELS, instruction=INSTRUCTION, dtype="float32").fit([])
        decoder = decoder_of(compiled.backbone_.model)
        t0 = time.perf_counter()
        decoder.forward = torch.compile(decoder.forward, dynamic=True)
        tps = speed(compiled, texts, args.rounds)
        results["torch.compile (decoder, dynamic shapes)"] = {
            "texts_per_second": tps,
            "compile_and_first_pass_seconds": time.perf_counter() - t0,
        }
    except Exception as exc:
        results["torch.compile (decoder, dynamic shapes)"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}

    ref = results["fp32 (as shipped)"]
    for r in results.values():
        if "_logits" in r:
            r["max_abs_logit_change"] = float(np.abs(r["_logits"] - ref["_logits"]).max())
    for r in results.values():
        r.pop("_logits", None)
        if "texts_per_second" in r:
            r["speed_vs_shipped"] = r["texts_per_second"] / ref["texts_per_second"]
    doc = {
        "benchmark": "cpu_options",
        "command": "python benchmarks/cpu_options.py " + " ".join(sys.argv[1:]),
        "machine": machine_block("cpu", "float32"),
        "n_texts": len(texts),
        "n_test": len(test),
        "n_calib": len(calib),
        "results": results,
    }
    lines = [
        "# CPU options: int8, torch.compile, pre-packed weights, last-layer trim",
        "",
        f"Reproduce: `{doc['command']}`",
        "",
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, smollm2-135m, the throughput benchmark's prompt. "
        f"Speed: {len(texts)} ag_news test texts, best of {args.rounds} passes after a warm-up, shipped batching. "
        f"Quality: zero-shot on {len(test)} ag_news test rows, temperature fitted on {len(calib)} train rows.",
        "",
        "| option | texts/s | vs shipped | accuracy | macro-F1 | ECE before T | ECE after T | max logit change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:200]} | | | | | | |")
            continue
        b, a = r.get("before_temperature"), r.get("after_temperature")
        lines.append(
            f"| {name} | {r['texts_per_second']:.2f} | {r['speed_vs_shipped']:.2f}x | "
            + (
                f"{a['accuracy']:.3f} | {a['macro_f1']:.3f} | {b['ece']:.3f} | {a['ece']:.3f} | "
                if a and b
                else "– | – | – | – | "
            )
            + (f"{r['max_abs_logit_change']:.3g} |" if "max_abs_logit_change" in r else "– |")
        )
    lines += [
        "",
        "Max logit change: on the quality rows for int8, on the speed texts for the two exact options (pre-packed "
        "weights, last-layer trim), where only float rounding should move them.",
    ]
    packed_r = results["MKL pre-packed linear weights"]
    if "packed_size_vs_weights" in packed_r:
        lines.append(
            "Pre-packed weights: the packed copies, kept beside the weights, are "
            f"{packed_r['packed_size_vs_weights']:.1f}x their size."
        )
    compiled_r = results["torch.compile (decoder, dynamic shapes)"]
    if "compile_and_first_pass_seconds" in compiled_r:
        lines += [
            "",
            f"torch.compile: compiling and the first pass took {compiled_r['compile_and_first_pass_seconds']:.0f} s "
            "(texts/s counts the timed passes after it only).",
        ]
    write_results(args.out / "cpu_options", doc, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
