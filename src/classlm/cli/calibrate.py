"""``classlm calibrate``: refit a saved classifier's temperature on held-out data, and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from classlm.cli.classifiers import load_run
from classlm.cli.common import out
from classlm.cli.options import (
    BatchOpt,
    DeviceOpt,
    DropInvalidOpt,
    DtypeOpt,
    LabelColOpt,
    LimitOpt,
    SeedOpt,
    TextColOpt,
)
from classlm.cli.rows import load_rows


def calibrate(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A saved classifier folder.")],
    data: Annotated[
        str, typer.Argument(metavar="DATA", help="Labelled data held out from training (file or dataset folder).")
    ],
    split: Annotated[str, typer.Option("--split", help="Split when DATA is a folder.")] = "validation",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    drop_invalid: DropInvalidOpt = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
) -> None:
    """Refit a saved classifier's calibration (its temperature, or the steps its --calibration named) on held-out
    data and save it (metrics before/after are recorded)."""
    dataset = load_rows(
        data,
        split=split,
        text_col=text_col,
        label_col=label_col,
        limit=limit,
        seed=seed,
        labels_given=True,
        drop_invalid=drop_invalid,
    )
    clf = load_run(run, batch_size=batch_size, device=device, dtype=dtype)
    clf.calibrate(list(dataset.texts), list(dataset.labels or []), source=f"classlm calibrate: {dataset.source}")
    clf.save(run)
    info = clf.calibration_info_
    free = info.get("label_free")
    if free is not None:
        out.print(f"{free['kind']} correction fitted on {free['n']} texts (their labels unused)")
    if "before" in info:  # a labelled step (temperature or bias) was fitted
        out.print(
            f"temperature {clf.temperature_:.4f} on {info['n']} rows: NLL {info['before']['nll']:.4f} -> "
            f"{info['after']['nll']:.4f}, ECE {info['before']['ece']:.4f} -> {info['after']['ece']:.4f}"
        )
