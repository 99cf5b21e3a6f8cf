"""``python -m ann2snn``: the command line (see :mod:`ann2snn.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
