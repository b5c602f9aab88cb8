"""Compile every GLA-line kernel for sm90 and sm80 without a GPU (``triton.compile`` to a GPUTarget).

The interpreter runs the kernels' Python; this catches what only code generation sees (types of
loop-carried values, dot shapes, constexpr branches). Runs in a child process, since the kernels
of this test session are interpreted: one per (arch, dtype), started beside the rest of the run
(``tests/child_runs.py``).
"""

from __future__ import annotations

import pathlib
import sys
import textwrap

import pytest

from tests import child_runs

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository: the child compiles by benchmarks/delta_bwd_regs

SCRIPT = textwrap.dedent(
    """
    import sys
    import traceback

    sys.path.insert(0, sys.argv[1] + "/benchmarks")
    from delta_bwd_regs import compile_one
    from fla_compile.lowering.gla import triton_intra as intra, triton_kernels as kern

    def compile_gate(arch, dt, gid):
        prec = "ieee" if dt == "fp32" else "tf32"
        # fp32's exact dots unroll to FMA loops: tiles of 32 there (a quarter of the compile time), 64 for half inputs
        # (sm90's warpgroup products)
        K, V, BT, BK, BV = (100, 64, 64, 64, 64) if dt != "fp32" else (50, 32, 32, 32, 32)
        base = dict(H=4, G=2, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gid)
        jobs = [
            (kern.chunk_fwd_h_kernel, dict(base, USE_H0=True, STORE_H=True, STORE_HT=True, PREC=prec)),
            (kern.chunk_fwd_o_kernel, dict(base, PREC=prec, SA=BT)),
            (kern.chunk_bwd_dh_kernel, dict(base, USE_DHT=True, STORE_DH0=True, PREC=prec)),
            (kern.chunk_bwd_dv_kernel, dict(base, PREC=prec, SA=BT)),
            (kern.chunk_bwd_dqk_kernel, dict(base, PREC=prec)),
        ]
        if gid != 4:  # gate id 4 (a scalar gate the chunk kernels scan) never reaches the decode kernel
            jobs.append(
                (kern.fused_recurrent_kernel, dict(H=4, G=2, K=K, V=V, BK=128, BV=32, GATE=gid, USE_H0=True, STORE_HT=True))
            )
        if gid in (1, 2):  # one decay per head (3) and a scalar gate the kernels scan (4) run no cumsum kernel
            jobs.append((kern.chunk_cumsum_kernel, dict(H=4, K=K, BT=BT, BK=128, GATE=gid)))
        if gid == 2:
            sub = dict(H=4, G=2, K=K, BT=BT, BC=16, BK=BK, NC=BT // 16, PREC=prec)
            jobs += [(intra.chunk_gla_A_kernel, dict(sub, SA=64)), (intra.chunk_gla_bwd_intra_kernel, sub)]
            # the saved layout with a smaller chunk: rows of 64 entries, BT = 32
            jobs.append((kern.chunk_fwd_o_kernel, dict(base, BT=32, PREC=prec, SA=64)))
            jobs.append((kern.chunk_bwd_dv_kernel, dict(base, BT=32, PREC=prec, SA=64)))
            jobs.append((intra.chunk_rc_add_kernel, dict(H=4, K=K, BT=BT, BK=BK)))
        for fn, consts in jobs:
            # flags with defaults (rwkv6's BONUS/EXCL off, the delta line's USE_DH on) compile at their defaults;
            # A in the inputs' dtype (the vector gate's; a placeholder pointer otherwise), the gate too
            compile_one(fn, consts, dt, arch, 4, 2, types={"g": dt, "A": dt})
            print("compiled", fn.__name__)

    arch, dt = int(sys.argv[2]), sys.argv[3]
    for gid in map(int, sys.argv[4:]):  # each gate id apart: one that fails leaves the others' results
        try:
            compile_gate(arch, dt, gid)
            print("@@ok", gid, flush=True)
        except Exception:
            print("@@failed", gid, traceback.format_exc()[-3000:], flush=True)
    """
)


CASES = [
    pytest.param(90, "bf16", 2, id="sm90-bf16-vector"),
    pytest.param(90, "bf16", 1, id="sm90-bf16-scalar", marks=pytest.mark.slow),
    pytest.param(90, "bf16", 0, id="sm90-bf16-none", marks=pytest.mark.slow),
    pytest.param(90, "bf16", 3, id="sm90-bf16-head", marks=pytest.mark.slow),
    pytest.param(90, "bf16", 4, id="sm90-bf16-scalar-scan", marks=pytest.mark.slow),
    pytest.param(80, "fp32", 2, id="sm80-fp32-vector", marks=pytest.mark.slow),
    pytest.param(80, "fp32", 1, id="sm80-fp32-scalar", marks=pytest.mark.slow),
]


_GROUPS: dict = {}  # (arch, dtype) -> the child compiling its gate ids, started by start_background_reports


def _start(arch, dt):
    gids = [p.values[2] for p in CASES if p.values[:2] == (arch, dt)]
    return child_runs.start([sys.executable, "-c", SCRIPT, str(ROOT), arch, dt, *gids], TRITON_INTERPRET="0")


BACKGROUND_TESTS = ("test_kernels_compile",)


def start_background_reports(selected):
    """tests/conftest.py, once collection is done: one child per (arch, dtype), every gate id of it in turn."""
    if "test_kernels_compile" in selected:
        for arch, dt in dict.fromkeys(p.values[:2] for p in CASES):
            if (arch, dt) not in _GROUPS:
                _GROUPS[(arch, dt)] = _start(arch, dt)


_DONE: dict = {}


@pytest.mark.parametrize("arch,dt,gid", CASES)
def test_kernels_compile(arch, dt, gid):
    if (arch, dt) not in _DONE:
        proc = _GROUPS.pop((arch, dt), None) or _start(arch, dt)
        _DONE[(arch, dt)] = child_runs.output(proc, timeout=900)
    code, out, err = _DONE[(arch, dt)]
    assert code == 0, err[-3000:]
    if f"@@ok {gid}\n" not in out:
        failed = out.split(f"@@failed {gid} ", 1)
        pytest.fail(failed[1].split("@@")[0] if len(failed) > 1 else f"gate id {gid} did not run:\n{err[-3000:]}")
