"""The suite tests matching and rewriting at small sizes, where the cost table
(``fla_compile.costs``) would keep regions as written: it runs with the choice off (always
rewrite), subprocesses included. ``tests/test_costs.py`` tests the choice with tables of its own."""

import os

os.environ.setdefault("FLA_COMPILE_COSTS", "off")
