"""benchmarks/kernels.py's side-by-side table without a GPU: the wall-time ratio, the kernel-time ratio beside it,
a refused FLA row named by its error, and kernel-time rows kept out of the op rows."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kt():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("kernels_table", ROOT / "benchmarks" / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(name, value, note=""):
    return {"row": name, "shape": "B=8", "value": value, "unit": "ms", "note": note}


def test_side_by_side_ratios(kt):
    rows = [
        _row("ours gla fwd", "0.5000"),
        _row("fla gla fwd", "0.7000"),
        _row("ours gla fwd kernels", "0.4000"),
        _row("fla gla fwd kernels", "0.2000"),
        _row("ours simple_gla fwd+bwd", "1.0000"),
        _row("fla simple_gla fwd+bwd", "", "RuntimeError: Triton >= 3.4.0 refused"),
        _row("ours gla decode step", "0.0450"),
    ]
    lines = kt.side_by_side(rows).splitlines()
    assert lines[0].endswith("| FLA / ours, kernel time |")
    body = lines[2:]
    assert body[0] == "| gla fwd | B=8 | 0.5000 | 0.7000 | 1.40 | 0.50 |"
    assert body[1] == "| simple_gla fwd+bwd | B=8 | 1.0000 | RuntimeError |  |  |"
    assert len(body) == 2  # no row for the kernel-time rows themselves, none for decode
