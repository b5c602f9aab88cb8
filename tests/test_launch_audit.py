"""benchmarks/launch_audit.py without a GPU: it records retention's launches under the interpreter with sm90's
options and compiles each for sm_90, so a kernel whose signature or constexprs drift from its launches shows here."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_launch_audit_retention():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FLA_COMPILE_TRITON")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "launch_audit.py"), "--families", "retention", "--dims", "64"],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| retention |")]
    kernels = {row.split("|")[2].strip() for row in rows}
    assert kernels == {"chunk_fwd_h_kernel", "chunk_fwd_o_kernel", "chunk_bwd_dh_kernel", "chunk_bwd_dv_kernel",
                       "chunk_bwd_dqk_kernel"}, out.stdout  # fmt: skip
    assert not any("Error" in row for row in rows), rows
    assert not any("over the shared memory" in row for row in rows), rows  # the table's stages are the GPU's
    # sm90's K = 64 entry: the output kernel on 4 warps, 2 stages, capped at 128 registers
    assert any(row.split("|")[2:6] == [" chunk_fwd_o_kernel ", " 4 ", " 2 ", " 128 "] for row in rows), rows
