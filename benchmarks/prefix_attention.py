"""Where (a)'s time over the floor (f) goes: the attention of each text's tokens to the prompt's keys.

(f) runs the backbone over each text's own tokens with no prompt, so its attention covers those tokens only; (a) runs
the same tokens and also attends to the prompt head's keys/values, which any exact method must do. This times one
layer's attention both ways on SmolLM2-135M's shapes (9 query heads, 3 kv heads, head dim 64) and an ag_news-like
batch, and writes ``benchmarks/results/prefix_attention.{json,md}``::

    .venv/bin/python benchmarks/prefix_attention.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from classlm.io import write_results
from classlm.machine import machine_block
from classlm.scoring import _FUSED_CPU, _fused_cpu

HERE = Path(__file__).resolve().parent


class _Prefix:
    """The part of SharedPrefix that the fused kernel reads: one layer's keys/values, one per query head."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, groups: int) -> None:
        self.kv = (k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1))

    def per_query_head(self, layer: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv


def best_ms(fn: Callable[[], Any], n: int, rounds: int = 3) -> float:
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="texts per batch (the shipped 512-token budget / ~64)")
    parser.add_argument("--text-tokens", type=int, default=60, help="each row's own tokens (text + answer tail)")
    parser.add_argument("--prompt-tokens", type=int, default=86, help="the prompt head (the benchmark's prompt)")
    parser.add_argument("--n", type=int, default=200, help="calls per timing")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if _FUSED_CPU is None:
        sys.exit(f"torch {torch.__version__} has no CPU flash-attention op; nothing to measure")
    torch.manual_seed(0)
    b, s, p, n_heads, h, d = args.rows, args.text_tokens, args.prompt_tokens, 9, 3, 64
    g, scale = n_heads // h, d**-0.5
    q, k, v = torch.randn(b, n_heads, s, d), torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    prefix = _Prefix(torch.randn(1, h, p, d), torch.randn(1, h, p, d), g)
    pk, pv = prefix.kv
    with torch.inference_mode():
        timings = {
            "shipped: prompt + own keys (one softmax, fused CPU kernel)": best_ms(
                lambda: _fused_cpu(prefix, 0, q, k, v, g, scale),
                args.n,  # type: ignore[arg-type]
            ),
            "of which: the prompt-keys pass alone": best_ms(
                lambda: _FUSED_CPU(q.transpose(0, 1).reshape(1, n_heads, b * s, d), pk, pv, 0.0, False, scale=scale),
                args.n,
            ),
            "floor (f): own keys only (sdpa, causal, grouped-query)": best_ms(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True), args.n
            ),
        }
    doc = {
        "benchmark": "prefix_attention",
        "command": "python benchmarks/prefix_attention.py " + " ".join(sys.argv[1:]),
        "machine": machine_block("cpu", "float32"),
        "shape": {
            "rows": b,
            "text_tokens": s,
            "prompt_tokens": p,
            "query_heads": n_heads,
            "kv_heads": h,
            "head_dim": d,
        },
        "ms_per_layer_call": timings,
    }
    lines = [
        "# Attention to the prompt: the cost (a) pays over the floor (f)",
        "",
        f"Reproduce: `{doc['command']}`",
        "",
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), fp32. One "
        f"layer's attention for {b} rows of {s} own tokens after a {p}-token prompt, SmolLM2-135M's heads "
        f"({n_heads} query, {h} kv, dim {d}); best of 3 x {args.n} calls.",
        "",
        "| attention | ms per layer call |",
        "|---|---|",
        *(f"| {name} | {ms:.3f} |" for name, ms in timings.items()),
    ]
    write_results(args.out / "prefix_attention", doc, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
