"""The labelled rows the verbs read: a split with ``--limit`` and ``--drop-invalid``, the classes, and the rows that
``train`` holds out for evaluation and calibration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from classlm.cli.common import err, parse_labels
from classlm.errors import ConfigError
from classlm.multilabel import indicator_matrix, is_label_lists, label_classes, multilabel_split


def load_rows(
    data: str,
    *,
    split: str,
    text_col: str,
    label_col: str,
    limit: int | None = None,
    seed: int = 0,
    labels_given: bool = False,
    drop_invalid: bool = False,
) -> Any:
    """A labelled split for a CLI verb: ``--limit`` as a seeded stratified sample, ``--drop-invalid`` reported.

    With ``--labels`` given, a ``labels.json`` beside the data is not read: the explicit classes win.
    """
    from classlm.data import load_dataset

    dataset = load_dataset(
        data,
        split=split,
        text_col=text_col,
        label_col=label_col,
        label_names=not labels_given,
        drop_invalid=drop_invalid,
    )
    if dataset.dropped:
        err.print(f"--drop-invalid: left out {dataset.dropped} row(s) of {dataset.source} (empty text or no label)")
    return dataset.sample(limit, seed)


def label_spec_for(labels: str | None, data: str, dataset: Any, order: Sequence[str] | None = None) -> Any:
    """``--labels`` if given, else the data's ``labels.json`` (its descriptions too), else the labels seen: in
    ``order`` (a teacher's classes) where it names the same classes, else sorted."""
    from classlm.data import find_label_spec

    spec = parse_labels(labels)
    if spec is None and Path(data).exists():
        spec = find_label_spec(data)
    if spec is not None:
        return spec
    if is_label_lists(dataset.labels):  # multi-label: the classes of every row's list
        return label_classes(dataset.labels)
    seen = sorted(set(dataset.labels))
    if order is not None and len(order) == len(seen) and {str(c) for c in order} == {str(c) for c in seen}:
        return list(order)
    return seen


def held_out_rows(
    data: str, dataset: Any, splits: tuple[str, str | None, str | None], seed: int, rows: dict[str, Any]
) -> tuple[Any, Any, Any, str | None]:
    """(training rows, evaluation rows, calibration rows or None, where the evaluation rows came from if held out).

    The evaluation split is --eval-split, else 'validation' when DATA has one; without one, a stratified 10% of the
    training rows is held out for evaluation, so that the temperature's calibration rows are not also the eval set.
    """
    from classlm.data import stratified_split
    from classlm.readers import has_split

    split, eval_split, calib_split = splits
    evaluation = calibration = None
    eval_source = None
    if eval_split is not None and eval_split == split:
        raise ConfigError(f"--eval-split {eval_split!r} is the training split; evaluation rows must be held out")
    if eval_split is not None and not has_split(data, eval_split):
        raise ConfigError(f"--eval-split {eval_split!r}: {data} has no such split (a folder with {eval_split}.jsonl)")
    if eval_split is None and has_split(data, "validation") and "validation" not in (split, calib_split):
        eval_split = "validation"
    if eval_split is not None:
        evaluation = load_rows(data, split=eval_split, **rows)
    else:
        if is_label_lists(dataset.labels):  # multi-label: 10%, every class on both sides
            labels = list(dataset.labels)
            keep, held = multilabel_split(indicator_matrix(labels, label_classes(labels)), 0.1, seed=seed + 1)
        else:
            keep, held = stratified_split(list(dataset.labels), 0.1, seed=seed + 1)
        dataset, evaluation = dataset.subset(keep), dataset.subset(held)
        eval_source = f"{evaluation.source}: {len(evaluation)} rows held out of the training split for evaluation"
        err.print(
            f"{data} has no validation split: evaluating on {len(evaluation)} training rows held out for it, "
            "apart from the calibration rows (name a split with --eval-split)"
        )
    if calib_split is not None:
        if calib_split in (split, eval_split):
            raise ConfigError(f"--calib-split {calib_split!r} must differ from the training and evaluation splits")
        calibration = load_rows(data, split=calib_split, **rows)
    return dataset, evaluation, calibration, eval_source
