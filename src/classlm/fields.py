"""Inputs made of several text fields: premise + hypothesis, query + document, prompt + response A + response B.

A :class:`Record` is one such input. It *is* a string — the fields laid out as plain text by the prompt's
``input_format`` ("Premise:\\n…\\n\\nHypothesis:\\n…") — so methods that read one string (TF-IDF, sentence
embeddings, a remote chat model) read the whole input with no change, while prompt methods put each field's tokens
in its own slot (:class:`classlm.scoring.PromptEncoder`) and share the length budget fairly between them.

:func:`as_texts` turns what users pass (strings, dicts, tuples, a DataFrame, a 2-D array) into strings and Records
with one set of field names. Pure layer: no torch, no pandas import.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from classlm.errors import ConfigError, DataError

TEXT = "text"
PAIR = (TEXT, "text_pair")  # the Hugging Face name of the second text (tokenizer(text, text_pair))


class Record(str):
    """One input of several named text fields; its string value is the fields laid out by ``layout``."""

    fields: tuple[str, ...]
    values: tuple[str, ...]
    layout: str | None

    def __new__(cls, values: Sequence[str], fields: Sequence[str], layout: str | None = None) -> Record:
        fields, values = tuple(fields), tuple(values)
        record = super().__new__(cls, fill_slots(layout_pieces(layout or default_layout(fields), fields), values))
        record.fields, record.values, record.layout = fields, values, layout
        return record

    def __reduce__(self) -> Any:  # copies keep their fields (str's own reduce would make a plain string)
        return (Record, (self.values, self.fields, self.layout))


def fill_slots(pieces: Sequence[str], values: Sequence[str]) -> str:
    """``pieces`` (the text before, between and after the slots) with each value, stripped, in its slot."""
    return pieces[0] + "".join(v.strip() + after for v, after in zip(values, pieces[1:]))


def field_header(name: str) -> str:
    """The line above a field in the default layout: ``text_pair`` → ``Text pair:``."""
    words = name.replace("_", " ").strip()
    return (words[:1].upper() + words[1:] if words else name) + ":"


def default_layout(fields: Sequence[str], text_header: str | None = None) -> str:
    """Each field under its header, blank lines between: ``Text:\\n{text}\\n\\nText pair:\\n{text_pair}``;
    ``text_header`` (the prompt's) heads a field named ``text``."""
    heads = [text_header if f == TEXT and text_header else field_header(f) for f in fields]
    return "\n\n".join(f"{h}\n{{{f}}}" for h, f in zip(heads, fields))


def layout_fields(layout: str) -> tuple[str, ...]:
    """The slot names of ``layout`` in order (``"{premise} … {hypothesis}"`` → ``("premise", "hypothesis")``)."""
    if not isinstance(layout, str):
        raise ConfigError(f"input_format must be a string with {{field}} slots or None, got {layout!r}")
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ConfigError(f"input_format {layout!r} is not a valid template ({exc}); write slots as {{name}}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        # Any column name may be a slot ("sentence 1", "0"): the template is only split, never formatted.
        if not name.strip() or spec or conversion:
            raise ConfigError(
                f"input_format slot {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                "is not a plain field name; write slots as {name}, e.g. 'Premise:\\n{text}\\n\\nHypothesis:\\n"
                "{text_pair}' (double braces {{ }} for literal ones)"
            )
        if name in names:
            raise ConfigError(f"input_format names the field {name!r} twice; each field has one slot")
        names.append(name)
    if not names:
        raise ConfigError(f"input_format {layout!r} has no {{field}} slot; e.g. 'Question:\\n{{text}}'")
    return tuple(names)


def layout_pieces(layout: str, fields: Sequence[str]) -> list[str]:
    """The literal text around ``fields``' slots in ``layout``: ``len(fields) + 1`` pieces (before the first slot,
    between slots, after the last), with the slots put in ``fields`` order."""
    named = layout_fields(layout)
    if set(named) != set(fields):
        raise ConfigError(
            f"input_format has the slots {list(named)} but the inputs have the fields {list(fields)}; name every "
            "field once in input_format, or pass inputs with these fields"
        )
    if named != tuple(fields):
        raise ConfigError(f"input_format puts the fields in the order {list(named)}; pass them as {list(named)}")
    pieces = [""]
    for text, name, _, _ in string.Formatter().parse(layout):  # literal text comes unescaped ("{{" → "{")
        pieces[-1] += text
        if name is not None:
            pieces.append("")
    return pieces


def share_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """How many tokens each field keeps when together they may have ``budget``: short fields keep all they have,
    the rest split what is left evenly (water-filling), so one long field cannot crowd out the others."""
    keep = [0] * len(lengths)
    left = budget
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for done, i in enumerate(order):
        keep[i] = min(lengths[i], left // (len(order) - done))
        left -= keep[i]
    return keep


def _field_names(n: int) -> tuple[str, ...]:
    return PAIR if n == 2 else (TEXT, *(f"text_{i}" for i in range(2, n + 1)))


def input_rows(X: Any) -> list[Any]:
    """``X`` as a list of rows (strings, dicts, tuples): a DataFrame's records, a 2-D array's rows."""
    if isinstance(X, str):
        raise DataError(f"expected a list of texts, got a single string ({X[:40]!r}…); wrap it in a list: [text]")
    if hasattr(X, "to_dict") and hasattr(X, "columns"):  # a pandas DataFrame: one field per column
        return list(X.to_dict("records"))
    ndim = getattr(X, "ndim", 1)
    if ndim == 2 and hasattr(X, "tolist"):  # a numpy array of shape (n, fields)
        return [tuple(row) for row in X.tolist()]
    if ndim != 1:
        raise DataError(f"expected a 1-D collection of texts, got an array of shape {getattr(X, 'shape', '?')}")
    if isinstance(X, Mapping) or not isinstance(X, Iterable):
        raise DataError(f"expected a list of texts, got {type(X).__name__}")
    return list(X)


def as_texts(X: Any, fields: Sequence[str] | None = None, layout: str | None = None) -> list[str]:
    """``X`` as texts: strings for one field, :class:`Record` s for several.

    ``X``: strings; dicts ``{"text": …, "text_pair": …}`` (any field names); tuples ``(text, text_pair)``; a
    DataFrame (its columns); a 2-D array. ``fields``: the names a fitted classifier reads (dict rows must have
    them, tuple rows that many values); ``None`` takes them from the rows. ``layout``: the prompt's
    ``input_format`` (default :func:`default_layout`).
    """
    rows = input_rows(X)
    want = tuple(fields) if fields is not None else _fields_of(rows)
    bad = [f for f in want if not f.strip() or any(c in f for c in "{}:!")]
    if bad:
        raise DataError(
            f"field name(s) {bad} cannot name a prompt slot (no braces, colons or '!'): rename those keys or columns"
        )
    out: list[str] = []
    for i, row in enumerate(rows):
        values = _values(row, want, i)
        if len(want) == 1:
            out.append(values[0])
        else:
            out.append(Record(values, want, layout))
    return out


def input_fields(X: Any) -> tuple[str, ...]:
    """The field names of the inputs ``X`` (:func:`as_texts`'s rows): ``("text",)`` for strings, a dict's keys,
    ``("text", "text_pair")`` for pairs."""
    return _fields_of(input_rows(X))


def _fields_of(rows: list[Any]) -> tuple[str, ...]:
    first = rows[0] if rows else ""
    if isinstance(first, Record):
        return first.fields
    if isinstance(first, Mapping):
        if not first:
            raise DataError("input #0 is an empty dict; expected its text fields, e.g. {'text': …, 'text_pair': …}")
        return tuple(str(k) for k in first)
    if isinstance(first, (tuple, list)) and not isinstance(first, str):
        if not first:
            raise DataError("input #0 is an empty tuple; expected its text fields, e.g. (text, text_pair)")
        return _field_names(len(first))
    return (TEXT,)


def _values(row: Any, fields: tuple[str, ...], i: int) -> tuple[str, ...]:
    if isinstance(row, Record):
        if row.fields == fields:
            return row.values
        if set(row.fields) - set(fields):  # a field this classifier does not read would be dropped unseen
            raise DataError(
                f"input #{i} has the fields {list(row.fields)}, but this classifier reads {list(fields)}: train it on "
                f"inputs with these fields, or pass only {list(fields)} (--text-col on the command line)"
            )
        return _values(dict(zip(row.fields, row.values)), fields, i)
    if isinstance(row, str):
        if len(fields) == 1:
            return (row,)
        raise DataError(
            f"text #{i} is a single string but the inputs have the fields {list(fields)}; pass a dict with these "
            "keys or a tuple of that many texts"
        )
    if isinstance(row, Mapping):
        row = {str(k): v for k, v in row.items()}  # a DataFrame's columns may be numbers: the fields are their names
        missing = [f for f in fields if f not in row]
        if missing:  # other keys (a label, an id) are left alone
            raise DataError(
                f"input #{i} has the fields {list(row)}; expected {list(fields)} (missing: {missing}). Every input "
                "needs the same text fields"
            )
        values = tuple(row[f] for f in fields)
    elif isinstance(row, (tuple, list)):
        if len(row) != len(fields):
            raise DataError(
                f"input #{i} has {len(row)} text(s); expected {len(fields)} (the fields {list(fields)}), as in the "
                "first input"
            )
        values = tuple(row)
    else:
        raise DataError(f"text #{i} is a {type(row).__name__} ({row!r}), expected a string")
    for name, v in zip(fields, values):
        if not isinstance(v, str):
            raise DataError(f"field {name!r} of input #{i} is a {type(v).__name__} ({v!r}), expected a string")
    return values
