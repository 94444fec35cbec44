"""Scoring a file of texts on Ray Data: a saved classifier per actor, every row once, in input order.

:class:`Predictor` is a callable class for ``ray.data.Dataset.map_batches`` (``concurrency=N`` actors, each loading
the classifier once): it adds ``label`` (``labels`` for a multi-label classifier) and ``probabilities`` (every class)
to each batch and keeps every input column, ids included. :func:`score_file` (``classlm score``) reads a JSONL, CSV
or Parquet file, runs it through ``N`` actors with Ray Data's order preserved, and writes one output file of the same
kinds, atomically. Ray restarts an actor that dies and retries its batch (Ray Data's defaults for actor pools), so a
killed actor costs time, not rows: the output has each input row exactly once.

Ray is an optional extra (``pip install 'classlm[ray]'``); nothing here imports it until it is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from classlm.errors import ConfigError, DataError
from classlm.io import write_bytes_atomic
from classlm.multilabel import answers

FORMATS = (".jsonl", ".json", ".csv", ".parquet")


class Predictor:
    """One saved classifier (a run or an ensemble folder) as a ``map_batches`` callable over pandas batches.

    ``text_cols``: the columns that hold the text fields (default: the classifier's own fields, ``("text",)`` for
    one text). ``threads``: torch's threads per actor, set deliberately because actors share the machine's cores.
    """

    def __init__(
        self, classifier: str, *, text_cols: Sequence[str] | None = None, threads: int = 1, batch_size: int = 64
    ) -> None:
        import torch

        from classlm.targets import load_ensemble, load_run, target_kind

        torch.set_num_threads(threads)
        kind = target_kind(classifier)
        if kind == "model":
            raise ConfigError(f"{classifier} is not a saved classifier (a run or ensemble folder); train or save one")
        load = load_ensemble if kind == "ensemble" else load_run
        self.clf = load(classifier, batch_size=batch_size, device="cpu" if not torch.cuda.is_available() else "auto")
        if kind == "run":
            self.clf.progress = False
        prompt = getattr(getattr(self.clf, "method_", None), "prompt", None)
        self.text_cols = tuple(text_cols or (prompt.fields if prompt is not None else ("text",)))
        self.names = [str(c) for c in self.clf.classes_]
        self.values = self.clf.classes_.tolist()  # labels as values of their own type (ints stay ints)

    def __call__(self, batch: Any) -> Any:
        """``batch`` (a pandas DataFrame) with ``label``/``labels`` and ``probabilities`` columns added (named
        ``predicted_…`` where the input has a column of either name: a gold label is kept, not overwritten). A row
        whose text (any of its fields) is missing or null is not scored: its two columns are null."""
        missing = [c for c in self.text_cols if c not in batch.columns]
        if missing:
            raise ConfigError(f"the input has no column(s) {missing}; it has {list(batch.columns)} (--text-col)")
        ok = [i for i, row in enumerate(batch[list(self.text_cols)].itertuples(index=False)) if all(map(_given, row))]
        rows = batch.iloc[ok]
        if len(self.text_cols) == 1:
            inputs: list[Any] = [str(t) for t in rows[self.text_cols[0]]]
        else:
            inputs = rows[list(self.text_cols)].to_dict("records")
        multi = getattr(self.clf, "multi_label_", False)
        label: list[Any] = [None] * len(batch)
        probabilities: list[Any] = [None] * len(batch)
        if inputs:
            proba = self.clf.predict_proba(inputs)
            for i, answer, row in zip(ok, answers(proba, self.values, self.clf.thresholds_ if multi else None), proba):
                label[i], probabilities[i] = answer, dict(zip(self.names, map(float, row)))
        import pandas as pd

        out = batch.copy()
        # dtype object: None stays None (null in the output), not the NaN a plain list would turn it into
        out[output_column("labels" if multi else "label", batch.columns)] = pd.Series(label, batch.index, object)
        out[output_column("probabilities", batch.columns)] = pd.Series(probabilities, batch.index, object)
        return out


def output_column(name: str, columns: Sequence[str]) -> str:
    """``name``, or ``predicted_<name>`` where the input already has a column of an output's name (a gold label,
    say): both outputs are renamed then, so that they stay a pair."""
    return f"predicted_{name}" if {"label", "labels", "probabilities"} & set(columns) else name


def _given(value: Any) -> bool:
    """A value that is there: not None, not a missing value (an absent key reads as pandas' NA or NaN, depending on
    the reader) and not a blank string (pyarrow's CSV reader reads an empty cell as '')."""
    import pandas as pd

    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and not (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def saved_fields(classifier: str | Path) -> tuple[str, ...]:
    """The text fields a saved run reads (its prompt's), without loading it; ``("text",)`` for an ensemble."""
    from classlm.artifacts import MANIFEST

    manifest = Path(classifier) / MANIFEST
    if not manifest.is_file():
        return ("text",)
    return tuple(json.loads(manifest.read_text()).get("prompt", {}).get("fields") or ("text",))


@contextmanager
def _quiet_console(logger: str = "ray.data") -> Iterator[None]:
    """Ray Data logs each dataset's plan and progress at INFO (as log lines where stderr is not a terminal): about 35
    lines for a 20-row file, around our one line. Its console handlers go to WARNING for the run and back after; its
    session log files keep everything."""
    # Console handlers only: a FileHandler is a StreamHandler too; Ray's session-file handler is neither.
    every = logging.getLogger(logger).handlers
    handlers = [h for h in every if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield
    finally:
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)


def _non_blank(batch: Any) -> Any:
    return batch[batch["text"].str.strip() != ""]


def read_dataset(source: str | Path) -> Any:
    """A Ray Dataset of a JSONL (``.jsonl``/``.json``, one object per line), CSV or Parquet file, or of a ``.txt``
    file's non-blank lines (a ``text`` column; a byte-order mark is dropped, as ``classify --file`` does)."""
    import ray.data

    path = Path(source)
    kinds = ", ".join((*FORMATS, ".txt"))
    if not path.is_file():
        raise ConfigError(f"no such file: {path}; expected a file of texts, one of {kinds}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        # map_batches, not filter(fn): Ray 2.60 warns on every filter given a function instead of an expression.
        return ray.data.read_text(str(path), encoding="utf-8-sig").map_batches(_non_blank, batch_format="pandas")
    readers = {".jsonl": ray.data.read_json, ".json": ray.data.read_json, ".csv": ray.data.read_csv,
               ".parquet": ray.data.read_parquet}  # fmt: skip
    if suffix not in readers:
        raise ConfigError(f"{path}: expected one of {kinds}, got {suffix or 'no suffix'}")
    return readers[suffix](str(path))


def score_file(
    classifier: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    actors: int = 2,
    threads: int = 1,
    batch_size: int = 64,
    text_cols: Sequence[str] | None = None,
    predictor: type = Predictor,
) -> dict[str, Any]:
    """Score every row of ``source`` with ``actors`` copies of the saved ``classifier`` on Ray Data and write
    ``out`` (its suffix picks JSONL, CSV or Parquet) in input order. Starts a local Ray (``num_cpus`` = actors x
    threads + 1) unless one is running. Returns ``{"rows", "unscored", "seconds", "texts_per_second", "actors"}``
    (``unscored``: rows without their text, left with null answers)."""
    import time

    import ray

    target = Path(out)
    if target.suffix.lower() not in FORMATS:
        raise ConfigError(f"{target}: the output's suffix picks its format, one of {', '.join(FORMATS)}")
    if actors < 1 or threads < 1 or batch_size < 1:
        raise ConfigError(f"actors, threads and batch_size must be at least 1, got {actors}, {threads}, {batch_size}")
    if not ray.is_initialized():
        # One CPU beyond the actors' for the tasks that read the file: without it the read waits for a CPU that the
        # actors, idle until it is read, never give back.
        ray.init(num_cpus=actors * threads + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows come back in input order
    start = time.perf_counter()
    dataset = read_dataset(source)
    with _quiet_console():  # reading the schema runs the read
        schema = dataset.schema()
    if schema is None:
        raise DataError(f"{source}: expected rows of texts to score, found none (an empty file?)")
    wanted = list(text_cols or saved_fields(classifier))
    missing = [c for c in wanted if c not in schema.names]
    if missing:  # said here, before any actor starts, not as a worker's traceback
        raise ConfigError(
            f"{source} has no column(s) {missing}; it has {schema.names}: name the text column(s) with "
            "--text-col (text_cols=)"
        )
    scored = dataset.map_batches(
        predictor,
        fn_constructor_kwargs={
            "classifier": str(classifier),
            "text_cols": text_cols,
            "threads": threads,
            "batch_size": batch_size,
        },  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="pandas",
        num_cpus=threads,
    )
    with _quiet_console():
        frames = list(scored.iter_batches(batch_format="pandas", batch_size=None))
    seconds = time.perf_counter() - start
    import pandas as pd

    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    _write(table, target)
    unscored = int(table[output_column("probabilities", schema.names)].isna().sum()) if len(table) else 0
    return {"rows": len(table), "unscored": unscored, "seconds": round(seconds, 2), "actors": actors,
            "texts_per_second": round(len(table) / seconds, 1) if seconds else None}  # fmt: skip


def _write(table: Any, target: Path) -> None:
    """One output file, written atomically: JSON lines (nested probabilities), CSV (a JSON string per cell) or
    Parquet (a struct column)."""
    suffix = target.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = table.to_dict("records")
        data = "".join(json.dumps(_plain(r), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    elif suffix == ".csv":
        flat = table.copy()
        for col in ("probabilities", "labels", "predicted_probabilities", "predicted_labels"):
            if col in flat.columns:
                # Ray's Arrow-backed frames hand a null as pd.NA, which json cannot write: an empty cell instead
                flat[col] = [json.dumps(_plain(v)) if _given(v) else None for v in flat[col]]
        data = flat.to_csv(index=False).encode("utf-8")
    else:
        import io

        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        data = buf.getvalue()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, data)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (as pandas hands them back) as JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
