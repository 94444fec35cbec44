"""The ``classlm`` command line: demo, classify, evaluate, train, distill, calibrate, export, score, bench, serve,
inspect.

One module per verb; the options several verbs share are in :mod:`classlm.cli.options`, the consoles and error
terms in :mod:`classlm.cli.common`, data rows in :mod:`classlm.cli.rows`, classifier loading in
:mod:`classlm.cli.classifiers`, the run folder in :mod:`classlm.cli.runs`. User errors (bad labels, missing columns,
unknown model, …) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from classlm import allocator
from classlm.cli import bench, calibrate, classify, demo, distill, evaluate, export, inspect, score, serve, train
from classlm.cli.common import cli_terms, err, log_warnings
from classlm.errors import ClasslmError

__all__ = ["app", "cli_terms", "main", "run"]

app = typer.Typer(
    name="classlm",
    help="Causal language models as text classifiers with a calibrated probability for every class.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click usage errors ("Usage: … Error: No such option: --x", exit 2) instead of rich panels: they read
    # the same piped or in a terminal, and the usage line is what a user copies.
    rich_markup_mode=None,
)
# In the order `classlm --help` lists them.
for verb in (
    demo.demo,
    classify.classify,
    evaluate.evaluate,
    train.train,
    distill.distill,
    calibrate.calibrate,
    export.export,
    score.score,
    bench.bench,
    serve.serve,
    inspect.inspect,
):
    app.command()(verb)


def _version_callback(value: bool) -> None:
    if value:
        from classlm import __version__

        print(f"classlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Causal language models as text classifiers with a calibrated probability for every class."""


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2.

    Usage errors (unknown option, missing argument, bad number) are left to typer's standalone mode, which prints
    click's usage message and exits 2: typer bundles its own copy of click, so catching ``click``'s exception
    classes here would miss them (they surfaced as tracebacks). Only classlm's own errors are caught.
    """
    log_warnings()
    try:
        app(prog_name="classlm")
    except ClasslmError as exc:
        err.print(f"[bold red]error:[/] {escape(cli_terms(str(exc)))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def run() -> None:
    """The ``classlm`` script and ``python -m classlm``: re-executed once on tcmalloc or jemalloc when one is
    installed (:mod:`classlm.allocator`: CPU training measured faster and leaner on either), then :func:`main`.
    Kept apart from :func:`main` so that tests calling ``main()`` in-process are never replaced by a new process."""
    allocator.reexec()
    main()
