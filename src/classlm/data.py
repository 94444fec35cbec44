"""Labelled text data: files, dataset folders, DataFrames, Hugging Face datasets and lists of dicts.

Every source becomes a :class:`TextDataset` (texts, string labels, optional canonical class names). Problems
raise :class:`~classlm.errors.DataError` saying what was expected, what was found and how to fix it. Only the
stdlib and numpy are imported here; pandas/pyarrow are imported when a parquet file is read.
"""

from __future__ import annotations

import csv
import difflib
import json
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

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SPLIT_EXTENSIONS = (".jsonl", ".csv", ".tsv", ".parquet")  # no .json: labels.json would pass for a split
_SHOW = 5  # how many offending rows/labels an error message names
_ABSENT = object()  # a record without the key at all, told apart from an explicit null


@dataclass(frozen=True)
class TextDataset:
    """Texts with optional string labels, where they came from, and the canonical class names if known."""

    texts: tuple[str, ...]
    labels: tuple[str, ...] | None
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
        """A seeded random sample of ``n`` rows, stratified by label, in file order (all rows when ``n`` is None or
        not smaller). Files are often sorted by class, so their first rows can hold a few classes only.

        Labelled rows: every class gets one row first when ``n`` allows it, the rest goes to the classes in
        proportion to their remaining rows (largest remainders, ties broken by the seed).
        """
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ConfigError(f"sample(n) needs n >= 1, got {n}")
        rng = np.random.default_rng(seed)
        if self.labels is None:
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


@dataclass
class _Table:
    """What every reader produces: the wanted columns as lists, and how to name a row in an error."""

    source: str
    available: list[str]
    columns: dict[str, list[Any]]
    lines: list[int] | None = None  # file line number per row; None means 0-based positions in memory
    label_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None  # ClassLabel names: int labels are indices into these
    n_rows: int = 0

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i}"


def load_dataset(
    source: Any,
    *,
    split: str | None = None,
    text_col: str = "text",
    label_col: str | None = "label",
    require_labels: bool = True,
    limit: int | None = None,
    label_names: bool = True,
    drop_invalid: bool = False,
) -> TextDataset:
    """Load texts and labels from a file, a dataset folder, a DataFrame, a HF Dataset/DatasetDict or dicts.

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
    wanted = [c for c in (text_col, label_col) if c is not None]
    table = _read_source(source, split, wanted, label_col, limit, label_names)
    return _to_dataset(table, text_col, label_col, require_labels, drop_invalid)


def _read_source(
    source: Any, split: str | None, wanted: list[str], label_col: str | None, limit: int | None, label_names: bool
) -> _Table:
    if isinstance(source, (str, os.PathLike)):
        return _read_path(Path(source).expanduser(), split, wanted, label_col, limit, label_names)
    pd = sys.modules.get("pandas")  # a DataFrame implies pandas is already imported: no import needed here
    if pd is not None and isinstance(source, pd.DataFrame):
        return _from_frame(source, "pandas DataFrame", wanted, limit)
    if isinstance(source, Mapping) and source and all(hasattr(v, "column_names") for v in source.values()):
        # A DatasetDict (a dict of Datasets): the caller must say which split.
        if split is None or split not in source:
            got = "no split" if split is None else f"split={split!r}"
            raise DataError(
                f"a DatasetDict needs split=...; got {got}; available splits: {', '.join(map(str, source))}"
            )
        return _from_hf(source[split], split, wanted, label_col, limit)
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        return _from_hf(source, split, wanted, label_col, limit)
    if isinstance(source, (list, tuple)):
        return _from_records(source, "list of dicts", None, limit)
    raise DataError(
        f"cannot load data from a {type(source).__name__}; expected a file path, a dataset folder, a pandas "
        "DataFrame, a Hugging Face Dataset/DatasetDict, or a list of dicts like {'text': ..., 'label': ...}"
    )


def _read_path(
    path: Path, split: str | None, wanted: list[str], label_col: str | None, limit: int | None, label_names: bool
) -> _Table:
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return _from_disk(path, split, wanted, label_col, limit)
    if path.is_dir():
        file = _split_file(path, split or "test")
    elif path.is_file():
        file = path
    else:
        raise DataError(
            f"no such file or folder: {path}; expected a data file ({', '.join(DATA_EXTENSIONS)}) or a "
            "dataset folder holding <split>.jsonl files. For a Hugging Face Hub dataset, load it with "
            "datasets.load_dataset(...) and pass the Dataset"
        )
    ext = file.suffix.lower()
    try:
        if ext == ".jsonl":
            table = _read_jsonl(file, limit)
        elif ext == ".json":
            table = _read_json(file, limit)
        elif ext in (".csv", ".tsv"):
            table = _read_csv(file, "\t" if ext == ".tsv" else ",", limit)
        elif ext == ".parquet":
            table = _read_parquet(file, wanted, limit)
        else:
            hint = " (for one unlabelled text per line, use read_texts / `classlm classify --file`)"
            raise DataError(
                f"unsupported file type {ext or '(none)'!r} for {file}; expected one of "
                f"{', '.join(DATA_EXTENSIONS)}: convert it, or pass a DataFrame or list of dicts"
                + (hint if ext == ".txt" else "")
            )
    except UnicodeDecodeError as exc:
        raise _not_utf8(file, exc) from None
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc
    names = find_label_names(file) if label_names else None
    table.label_names = tuple(names) if names is not None else None
    return table


def _split_file(folder: Path, split: str) -> Path:
    for ext in SPLIT_EXTENSIONS:
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    found = sorted({p.stem for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SPLIT_EXTENSIONS})
    raise DataError(
        f"no {split!r} split in {folder}: expected {split}.jsonl (or .csv/.tsv/.parquet); available splits: "
        f"{', '.join(found) if found else '(none: no .jsonl/.csv/.tsv/.parquet files)'}; choose one with "
        "split=... (--split on the command line)"
    )


def _read_jsonl(path: Path, limit: int | None) -> _Table:
    records: list[Any] = []
    lines: list[int] = []
    # utf-8-sig drops the byte-order mark some Windows editors write, which json.loads would reject.
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {number}: malformed JSON ({exc.msg}, column {exc.colno}); expected one "
                    'JSON object per line like {"text": "...", "label": "..."}'
                ) from None
            lines.append(number)
            if limit is not None and len(records) >= limit:
                break  # stop parsing early: a big file with a small limit should not be read in full
    return _from_records(records, str(path), lines, limit)


def _read_json(path: Path, limit: int | None) -> _Table:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: JSON lines saved as .json
            return _read_jsonl(path, limit)
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); expected a list "
            'of objects like [{"text": "...", "label": "..."}] or one object per line'
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got a JSON {type(data).__name__}")
    return _from_records(data, str(path), None, limit)


def _read_csv(path: Path, delimiter: str, limit: int | None) -> _Table:
    # newline="" lets the csv module handle quoted fields that contain line breaks.
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty; expected a header row such as 'text,label' and data rows")
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(f"{path}: duplicate column name(s) {dupes} in the header; rename them")
            columns: dict[str, list[Any]] = {h: [] for h in header}
            lines: list[int] = []
            for row in reader:
                if not row:
                    continue  # csv yields [] for a blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {reader.line_num}: {len(row)} fields but the header has "
                        f"{len(header)}; check the delimiter, and quote fields that contain it"
                    )
                for name, value in zip(header, row, strict=True):
                    columns[name].append(value)
                lines.append(reader.line_num)
                if limit is not None and len(lines) >= limit:
                    break
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: unreadable CSV/TSV ({exc})") from None
    return _Table(str(path), list(header), columns, lines, n_rows=len(lines))


def _read_parquet(path: Path, wanted: list[str], limit: int | None) -> _Table:
    try:
        import pandas as pd

        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(
            f"reading {path} needs pandas and pyarrow ({exc}); install them with: pip install 'classlm[data]'"
        ) from None
    except (ValueError, TypeError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path} is not a readable parquet file: {exc}") from exc
    return _from_frame(frame, str(path), wanted, limit)


def _from_frame(frame: Any, source: str, wanted: list[str], limit: int | None) -> _Table:
    if limit is not None:
        frame = frame.iloc[:limit]
    by_name = {str(c): c for c in frame.columns}  # non-string column names are matched by their str()
    columns = {name: frame[by_name[name]].tolist() for name in wanted if name in by_name}
    return _Table(source, list(by_name), columns, n_rows=len(frame))


def _from_hf(ds: Any, split: str | None, wanted: list[str], label_col: str | None, limit: int | None) -> _Table:
    name = getattr(getattr(ds, "info", None), "dataset_name", None)
    source = "Hugging Face dataset" + (f" {name!r}" if name else "") + (f" split {split!r}" if split else "")
    if limit is not None and hasattr(ds, "select") and len(ds) > limit:
        ds = ds.select(range(limit))
    available = [str(c) for c in ds.column_names]
    # Materialise only the needed columns: a dataset may also hold images or token ids.
    columns = {c: list(ds[c]) for c in wanted if c in available}
    table = _Table(source, available, columns, n_rows=len(ds))
    features = getattr(ds, "features", None)
    feature = features.get(label_col) if isinstance(features, Mapping) and label_col is not None else None
    names = getattr(feature, "names", None)  # a ClassLabel feature: int labels index these names
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        table.class_names = table.label_names = tuple(names)
    return table


def _from_disk(folder: Path, split: str | None, wanted: list[str], label_col: str | None, limit: int | None) -> _Table:
    """A folder written by ``datasets``' ``save_to_disk``: a Dataset, or a DatasetDict (one folder per split)."""
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(
            f"{folder} is a Hugging Face dataset saved with save_to_disk; reading it needs the datasets package: "
            "pip install datasets (or export the split to .jsonl/.parquet)"
        ) from None
    try:
        loaded = load_from_disk(str(folder))
    except (OSError, ValueError) as exc:  # FileNotFoundError for a half-written folder is an OSError
        raise DataError(f"cannot read the saved Hugging Face dataset {folder}: {exc}") from exc
    if isinstance(loaded, Mapping):  # a DatasetDict: pick the split like a folder of <split>.jsonl files
        split = split or "test"
        if split not in loaded:
            raise DataError(
                f"no {split!r} split in the saved dataset {folder}; available splits: {', '.join(map(str, loaded))}; "
                "choose one with split=... (--split on the command line)"
            )
        loaded = loaded[split]
    table = _from_hf(loaded, split, wanted, label_col, limit)
    table.source = f"{folder}" + (f" split {split!r}" if split else "")
    return table


def _from_records(records: Sequence[Any], source: str, lines: list[int] | None, limit: int | None) -> _Table:
    if limit is not None:
        records, lines = records[:limit], None if lines is None else lines[:limit]
    available: dict[str, None] = {}  # ordered set: keys in order of first appearance
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            where = f"line {lines[i]}" if lines is not None else f"row {i}"
            raise DataError(
                f"{source}, {where}: expected an object/dict like {{'text': ..., 'label': ...}}, "
                f"got {type(rec).__name__}"
            )
        available.update(dict.fromkeys(map(str, rec)))
    columns = {c: [rec.get(c, _ABSENT) for rec in records] for c in available}
    return _Table(source, list(available), columns, lines, n_rows=len(records))


def _to_dataset(
    table: _Table, text_col: str, label_col: str | None, require_labels: bool, drop_invalid: bool = False
) -> TextDataset:
    if table.n_rows == 0:
        raise DataError(f"{table.source} has no rows; expected at least one record with a {text_col!r} field")
    if text_col not in table.columns:
        raise _missing_column(table, text_col, "text")
    dropped = 0
    if drop_invalid:
        table, dropped = _without_invalid(table, text_col, label_col if label_col in table.columns else None)
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
    labels = None
    if label_col is not None and label_col in table.columns:
        labels = _labels(table, label_col)
    elif require_labels and label_col is not None:
        raise _missing_column(table, label_col, "label")
    return TextDataset(tuple(texts), labels, table.source, table.label_names, dropped)


def _without_invalid(table: _Table, text_col: str, label_col: str | None) -> tuple[_Table, int]:
    """The table without rows whose text is empty/non-string or whose label is missing/empty, and their count."""
    texts = table.columns[text_col]
    labels = table.columns[label_col] if label_col is not None else None

    def ok(i: int) -> bool:
        if not isinstance(texts[i], str) or not texts[i].strip():
            return False
        v = labels[i] if labels is not None else "x"
        return not (_is_missing(v) or (isinstance(v, str) and not v.strip()))

    keep = [i for i in range(table.n_rows) if ok(i)]
    if not keep:
        raise DataError(f"{table.source}: every row has an empty text or a missing label; nothing is left to use")
    columns = {name: [col[i] for i in keep] for name, col in table.columns.items()}
    lines = None if table.lines is None else [table.lines[i] for i in keep]
    kept = _Table(table.source, table.available, columns, lines, table.label_names, table.class_names, len(keep))
    return kept, table.n_rows - len(keep)


def _labels(table: _Table, label_col: str) -> tuple[str, ...]:
    raw = table.columns[label_col]
    missing = [i for i, v in enumerate(raw) if _is_missing(v) or (isinstance(v, str) and not v.strip())]
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


def _is_missing(value: Any) -> bool:
    if value is None or value is _ABSENT:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True  # pandas turns empty cells into NaN
    return type(value).__name__ in ("NAType", "NaTType")  # pandas.NA / NaT without importing pandas


def _rows(table: _Table, rows: list[int], values: list[Any] | None = None) -> str:
    def one(i: int) -> str:
        if values is None:
            return table.where(i)
        v = values[i]
        shown = "field absent" if v is _ABSENT else f"{type(v).__name__} {v!r}" if v is not None else "null"
        return f"{table.where(i)} ({shown})"

    more = f", … ({len(rows)} in all)" if len(rows) > _SHOW else ""
    return ", ".join(one(i) for i in rows[:_SHOW]) + more


def _missing_column(table: _Table, col: str, role: str) -> DataError:
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
        raise _not_utf8(path, exc) from None


def _text_lines(stream: IO[str]) -> list[str]:
    return [line.rstrip("\r\n") for line in stream if line.strip()]


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8")


def as_texts(X: Any) -> list[str]:
    """Validate ``X`` as a 1-D collection of strings (list, tuple, numpy array, pandas Series)."""
    if isinstance(X, str):
        raise DataError(f"expected a list of texts, got a single string ({X[:40]!r}…); wrap it in a list: [text]")
    if hasattr(X, "ndim") and getattr(X, "ndim", 1) != 1:
        raise DataError(f"expected a 1-D collection of texts, got an array of shape {getattr(X, 'shape', '?')}")
    if not isinstance(X, Iterable):
        raise DataError(f"expected a list of texts, got {type(X).__name__}")
    texts = list(X)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text #{i} is a {type(t).__name__} ({t!r}), expected a string")
    return texts


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


def read_labels_file(file: str | os.PathLike[str]) -> list[str] | dict[str, Any]:
    """A labels file: a JSON list of class names, or ``{name: description}`` / ``{name: {"description": …,
    "verbalizer": …}}`` (the forms ``labels=`` takes). Names must be unique, non-empty strings."""
    file = Path(file).expanduser()
    expected = 'expected a JSON list of class names like ["World", "Sports"] or {"World": "world politics", …}'
    try:
        spec = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {file}: {exc}; {expected}") from exc
    names = list(spec) if isinstance(spec, (list, dict)) else []
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{file}: {expected}")
    if isinstance(spec, dict) and not all(isinstance(v, (str, dict)) or v is None for v in spec.values()):
        raise DataError(f"{file}: each class maps to a description string or an object, {expected}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{file}: duplicate class names {dupes}; each class must appear once")
    return spec


def find_label_spec(source: str | os.PathLike[str]) -> list[str] | dict[str, Any] | None:
    """The contents of ``labels.json`` in a folder or beside a file (see :func:`read_labels_file`); None if absent."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    file = (path if path.is_dir() else path.parent) / "labels.json"
    return read_labels_file(file) if file.is_file() else None


def find_label_names(source: str | os.PathLike[str]) -> list[str] | None:
    """Class names from ``labels.json`` in a folder or beside a file; None when there is none."""
    spec = find_label_spec(source)
    return None if spec is None else list(spec)
