"""Labelled text data: files, dataset folders, DataFrames, Hugging Face datasets and lists of dicts.

Every source becomes a :class:`TextDataset` (texts, string labels, optional canonical class names): read into raw
columns by :mod:`classlm.readers`, then validated here. Problems raise :class:`~classlm.errors.DataError` saying what
was expected, what was found and how to fix it. Only the stdlib and numpy are imported here; pandas/pyarrow are
imported when a parquet file is read.
"""

from __future__ import annotations

import collections
import difflib
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from classlm.errors import ConfigError, DataError
from classlm.fields import PAIR, TEXT, Record, as_texts
from classlm.label_files import find_label_names, find_label_spec, read_labels_file
from classlm.readers import ABSENT, DATA_EXTENSIONS, SPLIT_EXTENSIONS, Table, not_utf8, read_source

# Re-exported: ``from classlm.data import …`` is where callers have always found the readers' and labels files' names.
__all__ = [
    "DATA_EXTENSIONS",
    "SPLIT_EXTENSIONS",
    "TextDataset",
    "as_texts",
    "find_label_names",
    "find_label_spec",
    "load_dataset",
    "read_labels_file",
    "read_texts",
    "stratified_split",
    "validate_labels",
]

_SHOW = 5  # how many offending rows/labels an error message names


@dataclass(frozen=True)
class TextDataset:
    """Texts with optional string labels (multi-label: a tuple of them per row), where they came from, and the
    canonical class names if known."""

    texts: tuple[str, ...]
    labels: tuple[Any, ...] | None  # class names; for multi-label data a tuple of names per row
    source: str
    label_names: tuple[str, ...] | None = None
    dropped: int = 0  # rows left out by ``load_dataset(drop_invalid=True)``

    def __post_init__(self) -> None:
        # Frozen, so normalise via object.__setattr__: callers may pass lists; tuples keep it immutable.
        object.__setattr__(self, "texts", tuple(self.texts))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if len(self.labels) != len(self.texts):
                raise DataError(
                    f"TextDataset from {self.source}: {len(self.texts)} texts but {len(self.labels)} labels; "
                    "expected one label per text (or labels=None)"
                )
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> TextDataset:
        """The rows at ``indices`` (any int iterable or array), in that order."""
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(self.texts)]
        if bad:
            raise DataError(f"subset of {self.source}: indices {bad[:_SHOW]} out of range for {len(self)} rows")
        labels = None if self.labels is None else tuple(self.labels[i] for i in idx)
        return TextDataset(tuple(self.texts[i] for i in idx), labels, self.source, self.label_names, self.dropped)

    def head(self, n: int) -> TextDataset:
        """The first ``n`` rows (all of them when there are fewer)."""
        if n < 0:
            raise ConfigError(f"head(n) needs n >= 0, got {n}")
        return self.subset(range(min(n, len(self))))

    def sample(self, n: int | None, seed: int = 0) -> TextDataset:
        """A seeded random sample of ``n`` rows, stratified by label (single-label rows), in file order (all rows
        when ``n`` is None or not smaller). Files are often sorted by class, so their first rows can hold a few
        classes only.

        Labelled rows: every class gets one row first when ``n`` allows it, the rest goes to the classes in
        proportion to their remaining rows (largest remainders, ties broken by the seed).
        """
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ConfigError(f"sample(n) needs n >= 1, got {n}")
        rng = np.random.default_rng(seed)
        # Multi-label rows are not stratified: one row per distinct label set first would over-sample rare sets.
        if self.labels is None or any(isinstance(v, tuple) for v in self.labels):
            return self.subset(np.sort(rng.permutation(len(self))[:n]))
        groups: dict[str, list[int]] = {}
        for i, lab in enumerate(self.labels):
            groups.setdefault(lab, []).append(i)
        rows = [rng.permutation(g) for g in groups.values()]
        counts = np.array([len(g) for g in rows])
        take = np.ones(len(rows), dtype=np.int64) if n >= len(rows) else np.zeros(len(rows), dtype=np.int64)
        if n < len(rows):  # fewer rows than classes: n classes drawn with the weight of their size
            take[rng.choice(len(rows), size=n, replace=False, p=counts / counts.sum())] = 1
        left, room = n - int(take.sum()), counts - take
        if left > 0:
            share = left * room / room.sum()
            take += np.floor(share).astype(np.int64)
            rest = left - int(np.floor(share).sum())
            order = np.lexsort((rng.random(len(rows)), -(share - np.floor(share))))
            take[order[:rest]] += 1
        picked = np.concatenate([g[:t] for g, t in zip(rows, take)])
        return self.subset(np.sort(picked))


def load_dataset(
    source: Any,
    *,
    split: str | None = None,
    text_col: str | Sequence[str] = "text",
    label_col: str | None = "label",
    require_labels: bool = True,
    limit: int | None = None,
    label_names: bool = True,
    drop_invalid: bool = False,
) -> TextDataset:
    """Load texts and labels from a file, a dataset folder, a DataFrame, a HF Dataset/DatasetDict or dicts.

    ``text_col`` may name several columns (``"premise,hypothesis"`` or a list): each row becomes a
    :class:`~classlm.fields.Record` of those fields. The default ``"text"`` also reads a ``text_pair`` column where
    the data has one (text pairs such as rte).
    The default ``label_col="label"`` reads a ``labels`` column of lists (multi-label) where there is no ``label``
    one.
    ``split`` picks ``<split>.jsonl|csv|tsv|parquet`` in a folder (default ``"test"``) or a DatasetDict entry;
    it is ignored for a single file. ``label_col=None`` skips labels. ``limit`` keeps the first N rows (for a
    random, stratified sample use :meth:`TextDataset.sample`). ``label_names=False`` does not read a
    ``labels.json`` beside the data (when the classes are given otherwise). ``drop_invalid=True`` leaves out rows
    with an empty or non-string text or a missing label instead of refusing them; their count is ``dropped``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive int or None, got {limit!r}")
    if label_col is None and require_labels:
        raise ConfigError("label_col=None reads no labels; pass require_labels=False with it")
    text_cols = text_columns(text_col)
    pair = text_cols == [TEXT]  # the default also reads a text_pair column where there is one
    lists = label_col == "label"  # ... and the default label a "labels" column of lists where "label" is absent
    wanted = [*text_cols, *(PAIR[1:] if pair else []), *([label_col] if label_col is not None else [])]
    table = read_source(source, split, [*wanted, *(["labels"] if lists else [])], label_col, limit, label_names)
    if pair and PAIR[1] in table.columns:
        text_cols = list(PAIR)
    if lists and "label" not in table.columns and "labels" in table.columns:
        if any(isinstance(v, (list, tuple)) for v in table.columns["labels"]):  # lists: multi-label rows
            label_col = "labels"
    return _to_dataset(table, text_cols, label_col, require_labels, drop_invalid)


def text_columns(text_col: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]``: the text columns, in order."""
    cols = [c.strip() for c in text_col.split(",")] if isinstance(text_col, str) else list(text_col)
    if not cols or not all(isinstance(c, str) and c for c in cols) or len(set(cols)) != len(cols):
        raise ConfigError(
            f"text_col must name one or more distinct columns ('text' or 'premise,hypothesis'), got {text_col!r}"
        )
    return cols


def _to_dataset(
    table: Table, text_cols: list[str], label_col: str | None, require_labels: bool, drop_invalid: bool = False
) -> TextDataset:
    if table.n_rows == 0:
        raise DataError(f"{table.source} has no rows; expected at least one record with a {text_cols[0]!r} field")
    for col in text_cols:
        if col not in table.columns:
            raise _missing_column(table, col, "text")
    dropped = 0
    if drop_invalid:
        table, dropped = _without_invalid(table, text_cols, label_col if label_col in table.columns else None)
    for col in text_cols:
        _check_text_column(table, col)
    labels = None
    if label_col is not None and label_col in table.columns:
        labels = _labels(table, label_col)
    elif require_labels and label_col is not None:
        raise _missing_column(table, label_col, "label")
    if len(text_cols) == 1:
        texts: list[str] = table.columns[text_cols[0]]
    else:
        texts = [Record(values, text_cols) for values in zip(*(table.columns[c] for c in text_cols))]
    return TextDataset(tuple(texts), labels, table.source, table.label_names, dropped)


def _check_text_column(table: Table, text_col: str) -> None:
    texts = table.columns[text_col]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(
            f"{len(bad)} non-string value(s) in text column {text_col!r} of {table.source}: "
            f"{_rows(table, bad, texts)}; expected a string in every row: fill in or drop these rows, or "
            "pick another column with text_col=... (--text-col)"
        )
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise DataError(
            f"{len(blank)} empty or whitespace-only text(s) in column {text_col!r} of {table.source}: "
            f"{_rows(table, blank)}; expected non-empty text: fill in or drop these rows, or load with "
            "drop_invalid=True to leave them out"
        )


def _without_invalid(table: Table, text_cols: list[str], label_col: str | None) -> tuple[Table, int]:
    """The table without rows whose text is empty/non-string or whose label is missing/empty, and their count."""
    text_values = [table.columns[c] for c in text_cols]
    labels = table.columns[label_col] if label_col is not None else None

    def ok(i: int) -> bool:
        if not all(isinstance(col[i], str) and col[i].strip() for col in text_values):
            return False
        v = labels[i] if labels is not None else "x"
        return not (is_missing(v) or (isinstance(v, str) and not v.strip()))

    keep = [i for i in range(table.n_rows) if ok(i)]
    if not keep:
        raise DataError(f"{table.source}: every row has an empty text or a missing label; nothing is left to use")
    columns = {name: [col[i] for i in keep] for name, col in table.columns.items()}
    lines = None if table.lines is None else [table.lines[i] for i in keep]
    kept = Table(table.source, table.available, columns, lines, table.label_names, table.class_names, len(keep))
    return kept, table.n_rows - len(keep)


def _labels(table: Table, label_col: str) -> tuple[Any, ...]:
    raw = table.columns[label_col]
    if raw and all(isinstance(v, (list, tuple)) for v in raw):
        return _label_lists(table, label_col, raw)
    missing = [i for i, v in enumerate(raw) if is_missing(v) or (isinstance(v, str) and not v.strip())]
    nonscalar = [i for i, v in enumerate(raw) if isinstance(v, (Mapping, list, tuple, set))]
    if missing or nonscalar:
        what, rows = ("missing or empty", missing) if missing else ("non-scalar", nonscalar)
        raise DataError(
            f"{len(rows)} {what} label(s) in column {label_col!r} of {table.source}: "
            f"{_rows(table, rows, raw)}; expected a class name in every row: fix or drop these rows (or load with "
            "drop_invalid=True to leave them out), or pass label_col=None, require_labels=False for unlabelled data"
        )
    names = table.class_names
    if names is None:
        return tuple(str(v) for v in raw)  # CSV "1" stays "1", JSON 1 becomes "1"
    out, bad = [], []
    for i, v in enumerate(raw):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            if 0 <= v < len(names):
                out.append(names[int(v)])
                continue
            bad.append(i)
        out.append(str(v))
    if bad:
        raise DataError(
            f"{len(bad)} label index(es) outside 0..{len(names) - 1} in {table.source}: "
            f"{_rows(table, bad, raw)}; Hugging Face test splits often use -1 for 'unlabelled': evaluate a "
            "labelled split"
        )
    return tuple(out)


def _label_lists(table: Table, label_col: str, raw: list[Any]) -> tuple[tuple[str, ...], ...]:
    """Multi-label rows (``"labels": ["joy", "love"]``, ``[]`` for none): a tuple of class names per row."""
    bad = [i for i, v in enumerate(raw) if any(is_missing(x) or isinstance(x, (Mapping, list, tuple, set)) for x in v)]
    if bad:
        raise DataError(
            f"{len(bad)} label list(s) in column {label_col!r} of {table.source} hold a missing or nested value: "
            f"{_rows(table, bad, raw)}; expected a list of class names in every row ([] for none)"
        )
    return tuple(tuple(str(x) for x in v) for v in raw)


def is_missing(value: Any) -> bool:
    """None, the field absent, NaN or pandas' NA/NaT: a value that is not there."""
    if value is None or value is ABSENT:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True  # pandas turns empty cells into NaN
    return type(value).__name__ in ("NAType", "NaTType")  # pandas.NA / NaT without importing pandas


def _rows(table: Table, rows: list[int], values: list[Any] | None = None) -> str:
    def one(i: int) -> str:
        if values is None:
            return table.where(i)
        v = values[i]
        shown = "field absent" if v is ABSENT else f"{type(v).__name__} {v!r}" if v is not None else "null"
        return f"{table.where(i)} ({shown})"

    more = f", … ({len(rows)} in all)" if len(rows) > _SHOW else ""
    return ", ".join(one(i) for i in rows[:_SHOW]) + more


def _missing_column(table: Table, col: str, role: str) -> DataError:
    shown = ", ".join(map(repr, table.available[:20])) or "(none)"
    if len(table.available) > 20:
        shown += f", … ({len(table.available)} in all)"
    close = difflib.get_close_matches(col, table.available, n=1, cutoff=0.6)
    msg = f"{role} column {col!r} not found in {table.source}; available columns: {shown}"
    msg += f"; did you mean {close[0]!r}?" if close else "."
    msg += f" Name the column with {role}_col='...' (--{role}-col on the command line)"
    if role == "label":
        msg += ", or load unlabelled data with require_labels=False"
    return DataError(msg)


def validate_labels(labels: Sequence[str], allowed: Sequence[str]) -> None:
    """Raise DataError naming up to 5 labels not in ``allowed`` (with counts and a close match each)."""
    allowed = list(allowed)
    allowed_set = set(allowed)
    unknown = Counter(lab for lab in labels if lab not in allowed_set)
    if not unknown:
        return
    by_lower = {str(a).lower(): a for a in allowed}
    parts = []
    for lab, count in unknown.most_common(_SHOW):
        # Case slips ("sports" vs "Sports") are the commonest mistake; difflib covers typos.
        close = [by_lower[str(lab).lower()]] if str(lab).lower() in by_lower else []
        close = close or difflib.get_close_matches(str(lab), list(map(str, allowed)), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        parts.append(f"{lab!r} ({count} row{'s' if count != 1 else ''}{hint})")
    more = f" and {len(unknown) - _SHOW} more" if len(unknown) > _SHOW else ""
    shown = ", ".join(map(repr, allowed[:30])) + (f", … ({len(allowed)} in all)" if len(allowed) > 30 else "")
    raise DataError(
        f"{sum(unknown.values())} label(s) are not among the {len(allowed)} classes: {', '.join(parts)}"
        f"{more}. Allowed: {shown}. Fix the labels in the data, or include these classes in the label set"
    )


def read_texts(path_or_dash: str | os.PathLike[str], *, text_col: str = "text") -> list[str]:
    """Texts for the CLI: one per non-blank line of a text file or stdin (``"-"``); data files and dataset
    folders go through :func:`load_dataset` (labels not required)."""
    if str(path_or_dash) == "-":
        return _text_lines(sys.stdin)
    path = Path(path_or_dash).expanduser()
    if path.is_dir() or path.suffix.lower() in DATA_EXTENSIONS:
        dataset = load_dataset(path, text_col=text_col, label_col=None, require_labels=False)
        return list(dataset.texts)
    if not path.is_file():
        raise DataError(f"no such file: {path}; expected a .txt file (one text per line), a data file, or '-'")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return _text_lines(fh)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None


def _text_lines(stream: IO[str]) -> list[str]:
    return [line.rstrip("\r\n") for line in stream if line.strip()]


def stratified_split(labels: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (keep, held_out), sorted and disjoint, holding out ``fraction`` of every class.

    A class gives round-half-up(fraction * count) rows, at least 1 and at most count - 1 when it has >= 2 rows
    (so both sides see it); a single-row class stays in ``keep``. Deterministic for a given seed.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction < 1:
        raise ConfigError(f"fraction must be strictly between 0 and 1 (0.2 holds out 20%), got {fraction!r}")
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    held: list[int] = []
    for rows in groups.values():  # first-appearance order: deterministic for the same input
        count = len(rows)
        n = min(max(math.floor(fraction * count + 0.5), 1), count - 1) if count >= 2 else 0
        held.extend(rng.permutation(rows)[:n].tolist())
    held_idx = np.array(sorted(held), dtype=np.int64)
    keep_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), held_idx)
    return keep_idx, held_idx


def calibration_split(labels: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`stratified_split` for the temperature's hold-out, with a note of what was held out: with many classes
    and few rows (151 classes in 1,000 rows) "at least one row per class" holds out more than ``fraction``."""
    keep, held = stratified_split(labels, fraction, seed=seed)
    counts = collections.Counter(labels)
    single = sum(1 for c in counts.values() if c < 2)
    note = (
        f"held out from fit(X, y): stratified {fraction:.0%} (seed {seed}), disjoint from training: {len(held)} of "
        f"{len(labels)} rows, at least one of every class with two or more"
        + (f" ({single} class(es) with one row stay in training only)" if single else "")
    )
    return keep, held, note
