"""``classlm bench``: methods side by side on one dataset, with the same splits, seed and training budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.common import command_line, err, out, parse_labels, quiet_transformers
from classlm.cli.options import DeviceOpt, DtypeOpt, InstructionOpt, LabelsOpt, ModelOpt
from classlm.errors import ConfigError

# The rows `classlm bench` runs by default (classlm.bench.ENTRIES names them all); here to keep the CLI import light.
DEFAULT_BENCH_METHODS = (
    "label_tokens,letters,few_shot,generate,similarity,tfidf,embedding,hidden_head,hidden_head_prompt,lora"
)


def bench(
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="A dataset folder with train and test splits (and labels.json).")
    ],
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated rows to run; see classlm.bench.ENTRIES.")
    ] = DEFAULT_BENCH_METHODS,
    budget: Annotated[
        int, typer.Option("--budget", min=1, help="Training examples every learning method gets (the same ones).")
    ] = 1000,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="Test rows (a seeded sample).")] = 1000,
    n_calib: Annotated[int, typer.Option("--n-calib", min=1, help="Calibration rows, held out of train.")] = 500,
    n_eval: Annotated[int, typer.Option("--n-eval", min=1, help="Eval rows (ensemble weights, LoRA evals).")] = 300,
    ensemble: Annotated[
        str | None, typer.Option("--ensemble", help="Also an Ensemble of these rows (comma-separated).")
    ] = None,
    prompt_file: Annotated[
        Path | None,
        typer.Option("--prompt", help='JSON {"instruction": …, "labels": {name: description}} for the dataset.'),
    ] = None,
    labels: LabelsOpt = None,
    instruction: InstructionOpt = None,
    model: ModelOpt = "smollm2-135m",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits and of LoRA / backbone training.")] = 0,
    output: Annotated[Path, typer.Option("--out", "-o", help="Folder for bench_<dataset>.json and .md.")] = Path("."),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
) -> None:
    """Compare methods side by side on one dataset: same splits, same seed, same training budget."""
    from classlm.bench import check_methods, make_splits, run_bench, write_results
    from classlm.data import load_dataset

    names = [m.strip() for m in methods.split(",") if m.strip()]
    members = [m.strip() for m in (ensemble or "").split(",") if m.strip()]
    check_methods(names, members)
    if not Path(data).is_dir():
        raise ConfigError(f"bench needs a dataset folder with train and test splits, got {data}")
    train_set = load_dataset(data, split="train")
    test_set = load_dataset(data, split="test")
    assert train_set.labels is not None and test_set.labels is not None
    label_spec, instruction = _prompt(labels, instruction, prompt_file, train_set)
    splits = make_splits(
        list(train_set.texts),
        list(train_set.labels),
        list(test_set.texts),
        list(test_set.labels),
        budget=budget,
        n_calib=n_calib,
        n_eval=n_eval,
        n_test=n_test,
        seed=seed,
    )
    dataset = Path(data).resolve().name
    dtype = dtype or "auto"
    doc = _results_doc(dataset, model=model, device=device, dtype=dtype, seed=seed, budget=budget, splits=splits)

    def on_row(name: str, row: dict[str, Any]) -> None:
        doc["rows"][name] = row  # written after every row: a long run keeps what it finished
        write_results(doc, output, f"bench_{dataset}")
        err.print(f"[{dataset}] {name}: macro-F1 {row['macro_f1']:.3f}, NLL {row['nll']:.3f}, ECE {row['ece']:.3f}")

    quiet_transformers()
    run_bench(
        splits,
        names,
        labels=label_spec,
        instruction=instruction,
        model=model,
        device=device,
        dtype=dtype,
        seed=seed,
        ensemble=members,
        progress=True,
        on_row=on_row,
    )
    json_path, md_path = write_results(doc, output, f"bench_{dataset}")
    md = md_path.read_text()
    out.print(md, soft_wrap=True, markup=False, highlight=False)
    err.print(f"results written to {json_path}, {md_path} and {md_path.with_suffix('.html')} (charts)")


def _prompt(labels: str | None, instruction: str | None, prompt_file: Path | None, train_set: Any) -> tuple[Any, Any]:
    """(labels, instruction): --labels and --instruction, else --prompt's, else the data's label names or labels."""
    label_spec = parse_labels(labels)
    if prompt_file is not None:
        try:
            spec = json.loads(prompt_file.read_text())
            label_spec = label_spec or spec["labels"]
            instruction = instruction or spec.get("instruction")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f'--prompt {prompt_file}: expected JSON {{"instruction", "labels"}} ({exc})') from exc
    if label_spec is None:
        label_spec = list(train_set.label_names) if train_set.label_names else sorted(set(train_set.labels))
    return label_spec, instruction


def _results_doc(
    dataset: str, *, model: str, device: str, dtype: str, seed: int, budget: int, splits: Any
) -> dict[str, Any]:
    """The results file before any row: the command that reproduces it, the machine, the model and the splits."""
    from classlm.machine import machine_block

    return {
        "benchmark": "bench",
        "dataset": dataset,
        "command": command_line(),
        "machine": machine_block(device, dtype),
        "model": model,
        "seed": seed,
        "budget": budget,
        "splits": splits.info,
        "rows": {},
    }
