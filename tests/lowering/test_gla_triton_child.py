"""Runs the interpreter tests of the GLA kernels (``FILES``) in a child process on machines without CUDA.

TRITON_INTERPRET must be set before ``import triton``: tests/lowering/conftest.py sets it on machines without
CUDA, but when another test module imported triton first, the kernels cannot be interpreted in this process. And
in a whole-suite run on CI's two cores the child runs beside the single-threaded suite, started once collection is
done (``tests/child_runs.py``): ``tests/conftest.py`` then leaves the files' in-process copies out. Run alone, the
files run in-process as usual.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest
import torch

from tests import child_runs

FILES = ("test_gla_triton.py", "test_gla_triton_autotune.py", "test_gla_saved_A.py", "test_rwkv6_triton.py")
BACKGROUND_TESTS = ("test_interpreter_tests_in_child_process",)
_STARTED: list = []


def _needs_child() -> bool:
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language.standard as std

    return type(std.cdiv).__name__ != "InterpretedFunction"


def runs_in_child() -> bool:
    """Whether this run's interpreter tests of ``FILES`` go to the child: on a machine without CUDA, always when this
    test is selected (``tests/conftest.py`` then leaves their in-process copies out), so they run beside the rest of
    the suite; where this process cannot interpret the kernels, the child is the only way they run."""
    return not torch.cuda.is_available() and os.environ.get("FLA_TESTS_IN_CHILD") != "1"


def _start():
    here = pathlib.Path(__file__).parent
    return child_runs.start(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *(here / name for name in FILES)],
        TRITON_INTERPRET="1",
        FLA_TESTS_IN_CHILD="1",
    )


def start_background_reports(selected):
    """tests/conftest.py, once collection is done: the child starts now, beside the rest of the run."""
    if runs_in_child() and not _STARTED:
        _STARTED.append(_start())


@pytest.mark.skipif(not (runs_in_child() or _needs_child()), reason="the interpreter tests run in this process")
def test_interpreter_tests_in_child_process():
    proc = _STARTED.pop() if _STARTED else _start()
    code, out, err = child_runs.output(proc, timeout=1800)
    assert code == 0, out[-4000:] + err[-2000:]
    summary = out.strip().splitlines()[-1]
    assert int(summary.split(" passed")[0].split()[-1]) >= 50, summary  # the kernels really ran
