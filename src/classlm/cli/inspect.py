"""``classlm inspect``: how the labels map to tokens, and the exact prompt the model reads."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from classlm.cli.classifiers import build_classifier
from classlm.cli.common import out, parse_labels
from classlm.cli.options import (
    DeviceOpt,
    DtypeOpt,
    InstructionOpt,
    LabelsOpt,
    MaxLenOpt,
    MethodOpt,
    ModelOpt,
    RunOpt,
    ScoringOpt,
)
from classlm.machine import MATRIX_FLAGS


def inspect(
    run: RunOpt = None,
    model: ModelOpt = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "auto",
    text: Annotated[str, typer.Option("--text", help="Example text shown in the rendered prompt.")] = "<text>",
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show how the labels map to tokens and the exact prompt the model reads."""
    clf = build_classifier(
        run=run,
        model=model,
        labels=parse_labels(labels),
        method=method,
        instruction=instruction,
        scoring=scoring,
        batch_size=1,
        max_length=max_length,
        device=device,
        dtype=dtype,
    )
    desc = clf.method_.describe()
    run_info = clf.run_info()
    if as_json or "token_ids" not in desc:  # methods without class tokens: their description as it is
        doc = {**desc, "classes": list(map(str, clf.classes_)), "run": run_info}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"classes → tokens ({desc['scoring']} scoring)")
    for col in ("class", "answer", "tokens", "ids"):
        table.add_column(col)
    for name, answer, toks, ids in zip(clf.classes_, desc["answers"], desc["tokens"], desc["token_ids"]):
        table.add_row(str(name), repr(answer), " ".join(toks), " ".join(map(str, ids)))
    out.print(table)
    out.print(dtype_line(run_info), markup=False, highlight=False)
    out.print(
        f"prompt: {desc['prompt_tokens']} tokens around the text (chat template: {desc['chat_template']}; class "
        f"list: {desc['class_list']}); room for {desc['text_budget']} text tokens"
    )
    out.rule("rendered prompt")
    fields = clf.method_.prompt.fields
    if len(fields) > 1:  # every field in its slot: the example text in the first, the others by name
        from classlm.fields import Record

        shown = clf.method_.rendered.format(Record([text, *(f"<{f}>" for f in fields[1:])], fields))
    else:
        shown = desc["prompt_head"] + text + desc["prompt_tail"]
    out.print(shown, markup=False, highlight=False)
    out.rule()


def dtype_line(run_info: dict) -> str:
    """``dtype: bfloat16 (auto: the CPU reports amx_bf16 …; CPU flags …)``, from a classifier's ``run_info()``."""
    choice, cpu = run_info["dtype"], run_info["cpu"]
    flags = ", ".join(cpu["flags"]) or "none of " + ", ".join(MATRIX_FLAGS)
    return (
        f"dtype: {choice['dtype']} ({choice['source']}: {choice['reason']}) on {choice['device']}; "
        f"CPU {cpu['model']}, flags: {flags}; {run_info['threads']} torch threads; "
        f"allocator {run_info['allocator']}"
    )
