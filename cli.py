"""Runs the `synthgen` command line from a checkout: `python cli.py generate ...`.

The commands live in synthgen/cli.py; the installed console script `synthgen` runs the same
group. This file is not installed: it only spares a checkout the `pip install`.
"""

import sys

from synthgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
