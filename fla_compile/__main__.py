"""``python -m fla_compile <command>``: ``explain``, ``tune`` and ``bench`` (see ``fla_compile/cli.py``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
