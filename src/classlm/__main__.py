"""``python -m classlm``: the same command line as the ``classlm`` script."""

from classlm.cli import main

if __name__ == "__main__":
    main()
