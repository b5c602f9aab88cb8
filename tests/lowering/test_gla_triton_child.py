"""Runs the interpreter tests of the GLA kernels in a fresh process when this one cannot.

TRITON_INTERPRET must be set before ``import triton``. tests/lowering/conftest.py sets it on machines
without CUDA, but when another test module imported triton first (a whole-suite run), the kernels
cannot be interpreted here: test_gla_triton.py then skips itself and this test runs it, and the
screening test of test_gla_triton_autotune.py and test_gla_saved_A.py, in a child process with the variable set from the start.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch


def _needs_child() -> bool:
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language.standard as std

    return type(std.cdiv).__name__ != "InterpretedFunction"


@pytest.mark.skipif(not _needs_child(), reason="the interpreter tests run in this process")
def test_interpreter_tests_in_child_process():
    here = pathlib.Path(__file__).parent
    files = [
        str(here / name)
        for name in ("test_gla_triton.py", "test_gla_triton_autotune.py", "test_gla_saved_A.py", "test_rwkv6_triton.py")
    ]
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=here.parent.parent,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert int(summary.split(" passed")[0].split()[-1]) >= 50, summary  # the kernels really ran
