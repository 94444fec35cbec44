"""``classlm score``: a saved classifier over a whole file on Ray Data, to a file, in input order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from classlm.cli.common import err, out
from classlm.errors import ConfigError


def score(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A saved classifier (run or ensemble folder).")],
    source: Annotated[Path, typer.Argument(metavar="INPUT", help="A .jsonl, .csv, .parquet or .txt file of texts.")],
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Output file; its suffix (.jsonl, .csv, .parquet) picks the format.")
    ],
    actors: Annotated[int, typer.Option("--actors", min=1, help="Classifier copies (Ray actors) side by side.")] = 2,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads of each actor.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch handed to an actor.")] = 64,
    text_col: Annotated[
        str | None,
        typer.Option("--text-col", help="Text column(s), 'a,b' for several fields (default: the classifier's)."),
    ] = None,
) -> None:
    """Score every row of INPUT on Ray Data (a local Ray unless one runs): every input column kept, the label and
    every class's probability added, rows in input order; an actor that dies is restarted and its batch retried."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("classlm score runs on Ray: pip install 'classlm[ray]'") from None
    from classlm.batch_scoring import score_file

    cols = [c.strip() for c in text_col.split(",")] if text_col else None
    with err.status(f"scoring {source} with {actors} actor(s)…"):
        stats = score_file(run, source, output, actors=actors, threads=threads, batch_size=batch_size, text_cols=cols)
    scored = f"{stats['rows'] - stats['unscored']} of {stats['rows']}" if stats["unscored"] else f"{stats['rows']}"
    out.print(
        f"{scored} rows scored in {stats['seconds']} s ({stats['texts_per_second']} rows/s, {actors} "
        f"actor(s)) → {output}"
    )
    if stats["unscored"]:
        err.print(
            f"{stats['unscored']} row(s) had no text (missing or null) and were not scored: their answers are null"
        )
