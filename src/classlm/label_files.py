"""Labels files: a dataset's ``labels.json`` (a list of class names, or ``{name: description}``), read and checked.

Only the stdlib is imported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from classlm.errors import DataError


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
