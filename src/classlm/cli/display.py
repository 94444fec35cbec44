"""How ``classify`` prints its results: one JSON object per text, or a table."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.table import Table

from classlm.cli.common import err, out
from classlm.fields import Record
from classlm.multilabel import answers


def show_classifications(
    clf: Any, items: list[str], scores: Any, missing: Any, *, fmt: str, class_mass: bool, priors: Any = None
) -> None:
    """The calibrated probabilities of ``scores`` (for the class balance ``priors``, see ``predict_proba``) as JSON
    lines (``fmt="jsonl"``) or a table; then a note on stderr when texts were truncated. ``missing``: the openai
    backend's estimate of the mass outside its top-k, or None."""
    proba = clf.probabilities(scores.logits, priors)
    mass = scores.class_mass if class_mass else None
    values = clf.classes_.tolist()  # the labels as JSON values of their own type: integer classes stay integers
    # Multi-label: every class at or above its cut, in class order.
    found = answers(proba, values, clf.thresholds_ if getattr(clf, "multi_label_", False) else None)
    if fmt == "jsonl":
        _print_jsonl(clf, items, proba, found, mass, missing, scores)
    else:
        _print_table([str(c) for c in clf.classes_], items, proba, found, mass, missing)
    if scores.n_truncated:
        cut = Counter(f for fields in scores.cut_fields or () for f in fields)
        which = f" (fields cut: {', '.join(f'{f} in {n}' for f, n in cut.items())})" if cut else ""
        err.print(
            f"{scores.n_truncated} text(s) were longer than the classifier reads and were truncated{which} (raise "
            "--max-length for the prompt methods; a sentence encoder reads a fixed number of tokens)"
        )


def _print_jsonl(
    clf: Any, items: list[str], proba: Any, answers: list[Any], mass: Any, missing: Any, scores: Any
) -> None:
    classes = [str(c) for c in clf.classes_]
    key = "labels" if getattr(clf, "multi_label_", False) else "label"
    for i, text in enumerate(items):
        # An input of several fields is shown by field; one text as it came.
        shown = dict(zip(text.fields, text.values)) if isinstance(text, Record) else {"text": text}
        row: dict[str, Any] = {
            **shown,
            key: answers[i],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, proba[i])},
        }
        if mass is not None:
            row["class_mass"] = round(float(mass[i]), 6)
        if missing is not None:
            # Probability given to classes absent from the server's top-k: an upper-bound estimate, not a reading.
            row["missing_mass"] = round(float(missing[i]), 6)
        if scores.truncated is not None:
            row["truncated"] = bool(scores.truncated[i])
        if scores.cut_fields is not None and scores.cut_fields[i]:
            row["fields_cut"] = list(scores.cut_fields[i])
        print(json.dumps(row, ensure_ascii=False))


def _print_table(classes: list[str], items: list[str], proba: Any, answers: list[Any], mass: Any, missing: Any) -> None:
    # Piped output is 80 columns wide. The text gives way first (cut with an ellipsis: --format jsonl keeps it whole);
    # a probability is never cut ("0.…" reads as nothing): a column per class only when they all fit, else each
    # row's top classes, one per line.
    extra = [name for name, v in (("class mass", mass), ("missing", missing)) if v is not None]
    multi = any(isinstance(a, list) for a in answers)  # multi-label: a class per line in "labels"
    label_w = max(min(12, max(map(len, classes))), 6 if multi else 0)
    widths = {c: min(8, max(5, len(c))) for c in classes}  # longer names fold in the header
    # Each column costs its width + 3 (padding and border); +1 for the table's last border.
    others = label_w + 3 + 8 * len(extra) + 3 + 1
    per_class = sum(w + 3 for w in widths.values())
    shown = classes if len(classes) <= 8 and 12 + others + per_class <= out.width else []
    top_w = 6 + min(14, max(map(len, classes)))  # "0.716 Business"
    text_w = max(12, min(48, out.width - others - (per_class if shown else top_w + 3)))
    table = Table(show_lines=bool((not shown or multi) and len(items) > 1))
    table.add_column("text", overflow="ellipsis", max_width=text_w, no_wrap=True)
    table.add_column("labels" if multi else "label", style="bold", overflow="fold", max_width=label_w)
    for c in shown:
        table.add_column(c, justify="right", overflow="fold", width=widths[c])
    if not shown:
        table.add_column("top classes", overflow="fold", width=top_w)
    for name in extra:
        table.add_column(name, justify="right", overflow="fold", width=5)
    for i, text in enumerate(items):
        answer = answers[i]
        shown_answer = ("\n".join(map(str, answer)) or "–") if isinstance(answer, list) else str(answer)
        cells = [text.replace("\n", " "), shown_answer]
        if shown:
            cells += [f"{p:.3f}" for p in proba[i]]
        else:
            top = proba[i].argsort()[::-1][:3]
            cells.append("\n".join(f"{proba[i, j]:.3f} {classes[j]}" for j in top))
        if mass is not None:
            cells.append(f"{mass[i]:.3f}")
        if missing is not None:
            cells.append(f"{missing[i]:.3f}")
        table.add_row(*cells)
    out.print(table)
