"""Every Triton kernel path of the ops under ``compute-sanitizer`` (marked ``gpu``; skipped where the tool is absent).

Each case of ``tests/sanitizer_cases.py`` (small odd sizes, forward and backward) runs in a child process of its
own under the sanitizer's memcheck (out-of-bounds and misaligned accesses), and a subset under initcheck (reads of
device memory that nothing wrote). Torch's caching allocator is off, so that each buffer is an allocation of its own and an
access past its end is reported; compiling ahead is off, since its dry run reads buffers its compile-only
launches never wrote. A numeric test cannot see a bad access whose stray bytes are masked out later or happen to
be zeros; the sanitizer sees the access itself. ``FLA_SANITIZER_LOGS=DIR`` keeps each run's report there.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.sanitizer_cases import groups

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="needs compute-sanitizer on PATH"),
]

ROOT = pathlib.Path(__file__).resolve().parent.parent
# (tool, case): memcheck every case; initcheck (slower, and it has less to find: a read of an unwritten buffer
# mostly shows as a NaN in the poisoned GPU tests) a dense, a packed and a decoding case of each chunked family
# and every case of the others
INITCHECK_QKV = (0, 2, 3)
# initcheck does not see cuBLAS's bf16 products being written (H200, compute-sanitizer 2025.3.1, forty-third
# session): the control group, torch.mm's bf16 output read by torch's own copy and sum kernels, reports thousands
# of uninitialized reads; the fused losses read their logits from the same torch.mm and report the same (their
# fp32 cases, and memcheck on all of them, are clean). Expected to report, not a fault of ours.
CUBLAS_UNSEEN = pytest.mark.xfail(reason="initcheck misses cuBLAS's bf16 stores (see the control group)", strict=False)


def _marks(tool: str, group: str, name: str) -> list:
    bf16_product = group == "control" or (group == "loss" and "bfloat16" in name)
    return [CUBLAS_UNSEEN] if tool == "initcheck" and bf16_product else []


CASES = [
    pytest.param(
        tool,
        f"{group}:{i}",
        id=f"{tool}-" + re.sub(r"[^\w.,-]+", "_", case.name),
        marks=_marks(tool, group, case.name),
    )
    for group, cases in groups().items()
    for i, case in enumerate(cases)
    for tool in ("memcheck", "initcheck")
    if tool == "memcheck" or group in ("mamba", "loss", "control") or i in INITCHECK_QKV
]


def first_error(log: str) -> str:
    """The sanitizer's first report: its kind, kernel and the frames of our code that launched it."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"=+ (Invalid|Uninitialized|Misaligned|Out)", line)), 0)
    report = lines[start : start + 60]
    ours = [line for line in report if "Host Frame" in line and ".py:" in line]
    return "\n".join(report[:4] + ours[:12])


@pytest.mark.parametrize("tool,case", CASES)
def test_no_bad_access(tool, case):
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", FLA_COMPILE_AHEAD="0")
    cmd = ["compute-sanitizer", f"--tool={tool}", "--error-exitcode=97", "--print-limit=4"]
    out = subprocess.run(
        [*cmd, sys.executable, str(ROOT / "tests" / "sanitizer_cases.py"), case],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    log = out.stdout + out.stderr
    if os.environ.get("FLA_SANITIZER_LOGS"):  # each run's whole report kept (a run cut by a limit keeps the done ones)
        keep = pathlib.Path(os.environ["FLA_SANITIZER_LOGS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{tool}-{case.replace(':', '_')}.log").write_text(f"exit {out.returncode}\n{log}")
    assert out.returncode == 0 and "ERROR SUMMARY: 0 errors" in log, (
        f"{tool}, {case}: exit {out.returncode}\n{first_error(log)}\n{log[-3000:]}"
    )
