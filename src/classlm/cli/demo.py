"""``classlm demo``: zero-shot vs LoRA-trained vs TF-IDF on the shipped sample, an HTML report, held-out examples."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.common import err, out, quiet_transformers
from classlm.cli.options import DeviceOpt, DtypeOpt, ModelOpt
from classlm.demo import DEMO_DATA

WIDTH = 80  # what a terminal and a piped log both show whole


def demo(
    data: Annotated[
        Path, typer.Option("--data", help="A dataset folder with train.jsonl and test.jsonl (and labels.json).")
    ] = DEMO_DATA,
    output: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run, its report.html and results.")] = (
        Path("runs/demo")
    ),
    model: ModelOpt = "smollm2-135m",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits, the training and the examples drawn.")] = 0,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Held-out texts to classify at the end.")] = 8,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01, help="Passes of LoRA training over the rows.")] = 3.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or step lines: the results only.")] = (
        False
    ),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
) -> None:
    """Train a calibrated classifier on a small shipped sample and show what it gained over zero-shot and TF-IDF."""
    from classlm.demo import DemoConfig, run_demo

    quiet_transformers()
    config = DemoConfig(
        data=data, out=output, model=model, seed=seed, n_examples=examples, epochs=epochs, dtype=dtype or "auto",
        device=device, progress=not quiet,
    )  # fmt: skip
    result = run_demo(config, say=(lambda _: None) if quiet else (lambda line: err.print(line, highlight=False)))
    for line in results_lines(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def results_lines(r: Any) -> list[str]:
    """The tables and closing lines, each at most :data:`WIDTH` characters."""
    lines = ["", f"Held-out rows: {r.n_test} (none of them seen in training or for the temperature)", ""]
    lines.append(f"{'classifier':<30}{'accuracy':>10}{'macro-F1':>10}{'NLL':>8}{'ECE':>8}{'ratio':>13}")
    for name, m in r.rows.items():
        ratio = f"{m['calibration_ratio_min']:.2f}-{m['calibration_ratio_max']:.2f}"
        lines.append(
            f"{name:<30}{m['accuracy']:>10.3f}{m['macro_f1']:>10.3f}{max(0.0, m['nll']):>8.3f}"  # -1e-12: not "-0.000"
            f"{m['ece']:>8.3f}{ratio:>13}"
        )
    lines += ["", "ratio: sum(p) / sum(y) per class, min-max (1 is calibrated)"]
    if r.examples:
        right = sum(e["label"] == e["predicted"] for e in r.examples)
        lines += ["", f"{len(r.examples)} held-out texts drawn at random (seeded), classified by the trained model:"]
        for e in r.examples:
            mark = "right" if e["label"] == e["predicted"] else f"WRONG (true: {e['label']})"
            lines += textwrap.wrap(e["text"], WIDTH - 2, initial_indent="- ", subsequent_indent="  ")
            top = sorted(zip(r.classes, e["probabilities"]), key=lambda t: -t[1])[:3]
            shown = ", ".join(f"{name} {p:.2f}" for name, p in top)
            lines += textwrap.wrap(f"-> {e['predicted']} ({mark}); top: {shown}", WIDTH - 2, initial_indent="  ")
        lines.append(f"{right} of {len(r.examples)} right.")
    best, zero, tfidf = (r.rows[f"{n} + temperature"] for n in ("LoRA-trained", "zero-shot", "TF-IDF + LR"))
    t = r.training
    lines += [
        "",
        f"Trained {t['steps']} LoRA steps on {r.n_train} rows in {t['seconds']:.0f} s: macro-F1 {zero['macro_f1']:.3f} "
        f"zero-shot -> {best['macro_f1']:.3f} trained (TF-IDF + LR on the same rows: {tfidf['macro_f1']:.3f}); "
        f"ECE after temperature {best['ece']:.3f}.",
        f"Report: {r.report}  (open it in a browser)",
        f"Classifier: {r.report.parent / 'run'}  (try: classlm serve {r.report.parent / 'run'})",
    ]

    # Paths are never broken (a cut path cannot be copied): a line holding a long one may run past WIDTH.
    def wrap(line: str) -> list[str]:
        return textwrap.wrap(line, WIDTH, break_long_words=False, break_on_hyphens=False)

    return [w for line in lines for w in (wrap(line) if len(line) > WIDTH else [line])]
