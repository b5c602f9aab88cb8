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


def _start() -> list:
    """Two children (CI's two cores), the tests of ``FILES`` that this run selected (``CHILD_TESTS``, set by
    tests/conftest.py) dealt between them; every test of ``FILES`` in one child where the run selected none."""
    here = pathlib.Path(__file__).parent
    groups = [CHILD_TESTS[i::2] for i in range(2)] if CHILD_TESTS else [[here / name for name in FILES]]
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    root = here.parent.parent
    return [child_runs.start([*argv, *ids], cwd=root, TRITON_INTERPRET="1", FLA_TESTS_IN_CHILD="1") for ids in groups]


CHILD_TESTS: list = []  # node ids (from the repository root) of FILES' selected tests


def start_background_reports(selected):
    """tests/conftest.py, once collection is done: the children start now, beside the rest of the run."""
    if runs_in_child() and not _STARTED:
        _STARTED.extend(_start())


@pytest.mark.skipif(not (runs_in_child() or _needs_child()), reason="the interpreter tests run in this process")
def test_interpreter_tests_in_child_process():
    procs = list(_STARTED) or _start()
    _STARTED.clear()
    passed = 0
    for proc in procs:
        code, out, err = child_runs.output(proc, timeout=1800)
        assert code == 0, out[-4000:] + err[-2000:]
        summary = out.strip().splitlines()[-1]
        passed += int(summary.split(" passed")[0].split()[-1]) if " passed" in summary else 0
    assert passed >= min(50, max(1, len(CHILD_TESTS) // 2)), passed  # the kernels really ran, not skipped
