"""``python -m classlm``: the same command line as the ``classlm`` script."""

from classlm.cli import run

if __name__ == "__main__":
    run()
