"""``python -m classlm.cli``: the same command line as the ``classlm`` script."""

from classlm.cli import run

if __name__ == "__main__":  # the guard: importing every submodule (a test does) must not run the CLI
    run()
