"""Readers: every data source read into a :class:`Table` of raw columns, before any validation.

A file (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``), a folder of ``<split>`` files, a Hugging Face
``save_to_disk`` folder, a pandas DataFrame, a Hugging Face Dataset/DatasetDict or a list of dicts. Only the stdlib is
imported here; pandas/pyarrow when a parquet file is read, ``datasets`` when a saved dataset is. :mod:`classlm.data`
turns a table into a validated :class:`~classlm.data.TextDataset`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classlm.errors import DataError
from classlm.label_files import find_label_names

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SPLIT_EXTENSIONS = (".jsonl", ".csv", ".tsv", ".parquet")  # no .json: labels.json would pass for a split
ABSENT = object()  # a record without the key at all, told apart from an explicit null


@dataclass
class Table:
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


def read_source(
    source: Any, split: str | None, wanted: list[str], label_col: str | None, limit: int | None, label_names: bool
) -> Table:
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
) -> Table:
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
        raise not_utf8(file, exc) from None
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


def has_split(folder: str | os.PathLike[str], split: str) -> bool:
    """Whether ``folder`` is a dataset folder with a ``<split>`` file (``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``)."""
    path = Path(folder)
    return path.is_dir() and any((path / f"{split}{ext}").is_file() for ext in SPLIT_EXTENSIONS)


def _read_jsonl(path: Path, limit: int | None) -> Table:
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


def _read_json(path: Path, limit: int | None) -> Table:
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


def _read_csv(path: Path, delimiter: str, limit: int | None) -> Table:
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
    return Table(str(path), list(header), columns, lines, n_rows=len(lines))


def _read_parquet(path: Path, wanted: list[str], limit: int | None) -> Table:
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


def _from_frame(frame: Any, source: str, wanted: list[str], limit: int | None) -> Table:
    if limit is not None:
        frame = frame.iloc[:limit]
    by_name = {str(c): c for c in frame.columns}  # non-string column names are matched by their str()
    columns = {name: frame[by_name[name]].tolist() for name in wanted if name in by_name}
    return Table(source, list(by_name), columns, n_rows=len(frame))


def _from_hf(ds: Any, split: str | None, wanted: list[str], label_col: str | None, limit: int | None) -> Table:
    name = getattr(getattr(ds, "info", None), "dataset_name", None)
    source = "Hugging Face dataset" + (f" {name!r}" if name else "") + (f" split {split!r}" if split else "")
    if limit is not None and hasattr(ds, "select") and len(ds) > limit:
        ds = ds.select(range(limit))
    available = [str(c) for c in ds.column_names]
    # Materialise only the needed columns: a dataset may also hold images or token ids.
    columns = {c: list(ds[c]) for c in wanted if c in available}
    table = Table(source, available, columns, n_rows=len(ds))
    features = getattr(ds, "features", None)
    feature = features.get(label_col) if isinstance(features, Mapping) and label_col is not None else None
    names = getattr(feature, "names", None)  # a ClassLabel feature: int labels index these names
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        table.class_names = table.label_names = tuple(names)
    return table


def _from_disk(folder: Path, split: str | None, wanted: list[str], label_col: str | None, limit: int | None) -> Table:
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


def _from_records(records: Sequence[Any], source: str, lines: list[int] | None, limit: int | None) -> Table:
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
    columns = {c: [rec.get(c, ABSENT) for rec in records] for c in available}
    return Table(source, list(available), columns, lines, n_rows=len(records))


def not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8")
