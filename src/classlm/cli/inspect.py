"""``classlm inspect``: how the labels map to tokens, and the exact prompt the model reads."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from classlm.cli.classifiers import build_classifier
from classlm.cli.common import out, parse_labels
from classlm.cli.options import InstructionOpt, LabelsOpt, MaxLenOpt, MethodOpt, ModelOpt, RunOpt, ScoringOpt


def inspect(
    run: RunOpt = None,
    model: ModelOpt = "smollm2-135m",
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "first_token",
    text: Annotated[str, typer.Option("--text", help="Example text shown in the rendered prompt.")] = "<text>",
    max_length: MaxLenOpt = 512,
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
        device="auto",
    )
    desc = clf.method_.describe()
    if as_json or "token_ids" not in desc:  # methods without class tokens: their description as it is
        print(json.dumps({**desc, "classes": list(map(str, clf.classes_))}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"classes → tokens ({desc['scoring']} scoring)")
    for col in ("class", "answer", "tokens", "ids"):
        table.add_column(col)
    for name, answer, toks, ids in zip(clf.classes_, desc["answers"], desc["tokens"], desc["token_ids"]):
        table.add_row(str(name), repr(answer), " ".join(toks), " ".join(map(str, ids)))
    out.print(table)
    out.print(
        f"prompt: {desc['prompt_tokens']} tokens around the text (chat template: {desc['chat_template']}); "
        f"room for {desc['text_budget']} text tokens"
    )
    out.rule("rendered prompt")
    out.print(desc["prompt_head"] + text + desc["prompt_tail"], markup=False, highlight=False)
    out.rule()
