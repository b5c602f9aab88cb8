"""The scan line's Triton kernels (hgrn): interpreter checks on CPU at tiny sizes, GPU checks marked ``gpu``.

TRITON_INTERPRET must be set before triton is imported: where this process already interprets Triton
(tests/lowering/conftest.py sets it on machines without CUDA) the interpreter checks run here, else in
one child process (this file run as a script, ~4 s of imports) that reports per case. The
reference is the fp64 torch path, itself checked against the loop in ``tests/ops/test_hgrn.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.compare import rel


def make(B=2, T=29, D=20, strength=1.0, lens=None, device="cpu", dtype=torch.float32, seed=0):
    """x, g, h0 (and cu_seqlens when ``lens`` packs sequences of those lengths into B = 1)."""
    gen = torch.Generator().manual_seed(seed)
    if lens is not None:
        B, T = 1, sum(lens)
    x = torch.randn(B, T, D, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, D, generator=gen)) * strength
    N = B if lens is None else len(lens)
    h0 = torch.randn(N, D, generator=gen)
    cu = None if lens is None else torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=device)
    return x.to(device, dtype), g.to(device), h0.to(device), cu


def reference(x, g, h0, cu, do, dht):
    from fla_compile.lowering.scan import torch_path as TP

    d = lambda t: None if t is None else t.double()  # noqa: E731
    o, ht = TP.scan_forward(d(x), d(g), d(h0), cu)
    return o, ht, TP.scan_backward(d(x), d(g), d(h0), cu, o, d(do), d(dht))


# ---------------------------------------------------------------- interpreter checks (child process)


def _case(lens=None, strength=1.0, with_h0=True, bd=None, reset=False, dtype=torch.float32):
    from fla_compile.lowering.scan import triton_scan as TS

    bd_max, TS.BD_MAX = TS.BD_MAX, bd or TS.BD_MAX
    try:
        return _scan_case(TS, lens, strength, with_h0, reset, dtype)
    finally:
        TS.BD_MAX = bd_max


def _scan_case(TS, lens, strength, with_h0, reset, dtype):
    x, g, h0, cu = make(lens=lens, strength=strength, dtype=dtype)
    if reset:
        g[:, 3, ::2] = -float("inf")
    h0 = h0 if with_h0 else None
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(x.shape, generator=gen).to(dtype), torch.randn(g.shape[0] if cu is None else len(lens),
                                                                         x.shape[-1], generator=gen)  # fmt: skip
    o, ht = TS.forward(x, g, h0, cu)
    dx, dg, dh0 = TS.backward(x, g, h0, cu, o, do, dht)
    ro, rh, (rdx, rdg, rdh0) = reference(x, g, h0, cu, do, dht)
    out = {"o": rel(o, ro), "ht": rel(ht, rh), "dx": rel(dx, rdx), "dg": rel(dg, rdg)}
    if h0 is not None:
        out["dh0"] = rel(dh0, rdh0)
    if dtype != torch.float32:
        out["tol"] = 1e-2
        out["o_dtype"] = float(o.dtype != dtype)
    o2, _ = TS.forward(x, g, h0, cu)
    out["deterministic"] = float(not torch.equal(o, o2))
    return out


def _case_op_dispatch():
    """The custom op with the Triton path taken on CPU tensors (FLA_COMPILE_TRITON=interpret), with autograd."""
    import fla_compile.ops as ops

    x, g, h0, cu = make(lens=[5, 0, 13])
    x, g, h0 = (t.requires_grad_() for t in (x, g, h0))
    o, ht = ops.hgrn(x, g, h0, output_final_state=True, cu_seqlens=cu)
    (o.square().sum() + ht.sum()).backward()
    ro, rh, (rdx, rdg, rdh0) = reference(x.detach(), g.detach(), h0.detach(), cu, 2 * o.detach(), torch.ones_like(ht))
    return {"o": rel(o, ro), "ht": rel(ht, rh), "dx": rel(x.grad, rdx), "dg": rel(g.grad, rdg),
            "dh0": rel(h0.grad, rdh0)}  # fmt: skip


def make_selective(B=2, T=13, D=20, N=5, strength=2.0, lens=None, device="cpu", dtype=torch.float32, seed=0):
    """u, dt, A, B, C, h0 (and cu_seqlens) of a selective scan."""
    gen = torch.Generator().manual_seed(seed)
    if lens is not None:
        B, T = 1, sum(lens)
    u = torch.randn(B, T, D, generator=gen)
    dt = F.softplus(torch.randn(B, T, D, generator=gen))
    A = -torch.rand(D, N, generator=gen) * strength
    Bm, C = torch.randn(B, T, N, generator=gen), torch.randn(B, T, N, generator=gen)
    h0 = torch.randn(B if lens is None else len(lens), D, N, generator=gen)
    cu = None if lens is None else torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=device)
    xs = [x.to(device, dtype) for x in (u, dt)] + [x.to(device) for x in (A, Bm, C, h0)]
    return (*xs, cu)


def _case_selective(lens=None, strength=2.0, dtype=torch.float32):
    from fla_compile.lowering.scan import torch_path as TP
    from fla_compile.lowering.scan import triton_scan as TS

    *xs, h0, cu = make_selective(lens=lens, strength=strength, dtype=dtype)
    y, ht = TS.selective_forward(*xs, h0, cu)
    ry, rh = TP.selective_forward(*(x.double() for x in (*xs, h0)), cu)
    out = {"y": rel(y, ry), "ht": rel(ht, rh)}
    if dtype != torch.float32:
        out.update(tol=1e-2, o_dtype=float(y.dtype != dtype))
    return out


def _case_selective_backward(lens=None, with_h0=True, strength=2.0):
    from fla_compile.lowering.scan import torch_path as TP
    from fla_compile.lowering.scan import triton_scan as TS

    *xs, h0, cu = make_selective(T=21, D=10, lens=lens, strength=strength)
    h0 = h0 if with_h0 else None
    gen = torch.Generator().manual_seed(9)
    dy, dht = torch.randn(xs[0].shape, generator=gen), torch.randn((xs[0].shape[0] if cu is None else len(lens)),
                                                                    *xs[2].shape, generator=gen)  # fmt: skip
    bt, TS.SELECTIVE_BT = TS.SELECTIVE_BT, 8  # segments of 8 steps: several per sequence at this T
    try:
        got = TS.selective_backward(*xs, h0, cu, dy, dht)
    finally:
        TS.SELECTIVE_BT = bt
    leaves = [x.double().requires_grad_() for x in (*xs, *(() if h0 is None else (h0,)))]
    y, ht = TP.selective_forward(*leaves[:5], leaves[5] if h0 is not None else None, cu)
    want = torch.autograd.grad((y, ht), leaves, (dy.double(), dht.double()))
    names = ["du", "ddt", "dA", "dB", "dC", "dh0"]
    return {n: rel(a, b) for n, a, b in zip(names, got, want)}


def _case_selective_op():
    """The mamba op with the Triton forward and backward on CPU tensors (interpret), through autograd."""
    import fla_compile.ops as ops
    from fla_compile.reference.mamba import selective_scan as loop

    *xs, h0, _ = make_selective(T=9, D=6, N=3)
    xs = [x.requires_grad_() for x in (*xs, h0)]
    y, ht = ops.mamba(*xs[:5], initial_state=xs[5], output_final_state=True)
    (y.square().sum() + ht.sum()).backward()
    ds = [x.detach().double().requires_grad_() for x in xs]
    ry, rh = loop(ds[1] * ds[0], *ds[1:5], ds[5], output_final_state=True)
    (ry.square().sum() + rh.sum()).backward()
    out = {"y": rel(y, ry), "ht": rel(ht, rh)}
    out.update({f"d{i}": rel(a.grad, b.grad) for i, (a, b) in enumerate(zip(xs, ds))})
    return out


INTERPRETER_CASES = {
    "dense": (_case, ()),
    "dense-no-h0": (_case, (None, 1.0, False)),
    "blocks-of-8": (_case, (None, 1.0, True, 8)),
    "packed": (_case, ([5, 0, 17, 1],)),
    "packed-no-h0": (_case, ([9, 12], 1.0, False)),
    "strong-gates-and-resets": (_case, (None, 20.0, True, None, True)),
    "bf16": (_case, (None, 1.0, True, None, False, torch.bfloat16)),
    "op-dispatch": (_case_op_dispatch, ()),
    "selective": (_case_selective, ()),
    "selective-packed-strong": (_case_selective, ([4, 0, 9], 40.0)),
    "selective-bf16": (_case_selective, (None, 2.0, torch.bfloat16)),
    "selective-op": (_case_selective_op, ()),
    "selective-bwd": (_case_selective_backward, ()),
    "selective-bwd-packed": (_case_selective_backward, ([9, 0, 1, 12],)),
    "selective-bwd-no-h0-strong": (_case_selective_backward, (None, False, 40.0)),
}


def _interpreted_here() -> bool:
    """Whether this process's triton is the interpreter (TRITON_INTERPRET was set before its import)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language.standard as std

    return type(std.cdiv).__name__ == "InterpretedFunction"


def _report():
    pytest.importorskip("triton")
    if _interpreted_here():  # no child: the cases run in this process, the Triton path taken on CPU tensors
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FLA_COMPILE_TRITON", "interpret")
            return _run_cases()
    root = Path(__file__).resolve().parents[2]
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        FLA_COMPILE_TRITON="interpret",
        PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def interpreter_report():
    return _report()


@pytest.mark.parametrize("case", list(INTERPRETER_CASES))
def test_interpreter(interpreter_report, case):
    result = interpreter_report[case]
    assert "error" not in result, result.get("error")
    assert result.pop("deterministic", 0.0) == 0.0, "two runs differ"
    assert result.pop("o_dtype", 0.0) == 0.0, "o must come back in x's dtype"
    tol = result.pop("tol", 1e-5)
    bad = {name: err for name, err in result.items() if not err < tol}  # NaN fails too
    assert not bad, f"relative errors above {tol}: {bad}"


def _run_cases() -> dict:
    import traceback

    report = {}
    for name, (fn, args) in INTERPRETER_CASES.items():
        try:
            report[name] = fn(*args)
        except Exception:  # reported per case: the test of that case fails with it
            report[name] = {"error": traceback.format_exc()[-2000:]}
    return report


def _run_interpreter_cases():
    torch.set_num_threads(1)
    print(json.dumps(_run_cases()))


# ---------------------------------------------------------------- GPU checks

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _poison():
    """Fill the caching allocator's free blocks with NaN so unwritten outputs show up."""
    junk = torch.full((1 << 27,), float("nan"), device="cuda")
    del junk


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("strength", [1.0, 20.0], ids=["weak", "strong"])
@pytest.mark.parametrize("lens", [None, [300, 0, 1, 723]], ids=["dense", "packed"])
def test_gpu_vs_fp64(dtype, tol, strength, lens):
    from fla_compile.lowering.scan import triton_scan

    _kernels_vs_fp64(triton_scan, dtype, tol, strength, lens, resets=(), B=3, T=517)


@pytest.mark.gpu
@gpu
def test_gpu_op_compiled_fullgraph():
    """The op under torch.compile(fullgraph=True) on CUDA: the kernels run, gradients match the fp64 loop."""
    import fla_compile.ops as ops
    from fla_compile.reference.hgrn import hgrn as loop

    x, g, h0, _ = make(B=2, T=64, D=256, device="cuda")
    xs = [t.requires_grad_() for t in (x, g, h0)]
    fn = torch.compile(lambda *a: ops.hgrn(*a, output_final_state=True), fullgraph=True)
    o, ht = fn(*xs)
    (o.sum() + ht.square().sum()).backward()
    ds = [t.double().detach().requires_grad_() for t in (x, g, h0)]
    ro, rh = loop(*ds, output_final_state=True)
    (ro.sum() + rh.square().sum()).backward()
    for a, b in zip([o, ht, *(t.grad for t in xs)], [ro, rh, *(t.grad for t in ds)]):
        assert rel(a, b) < 1e-5


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lens", [None, [300, 0, 1, 723]], ids=["dense", "packed"])
def test_gpu_selective_vs_fp64(dtype, tol, lens):
    from fla_compile.lowering.scan import torch_path as TP
    from fla_compile.lowering.scan import triton_scan as TS

    *xs, h0, cu = make_selective(B=3, T=517, D=768, N=16, strength=8.0, lens=lens, device="cuda", dtype=dtype)
    dy, dht = torch.randn_like(xs[0]), torch.randn_like(h0)
    _poison()
    y, ht = TS.selective_forward(*xs, h0, cu)
    _poison()
    grads = TS.selective_backward(*xs, h0, cu, dy, dht)
    leaves = [x.double().requires_grad_() for x in (*xs, h0)]
    ry, rh = TP.selective_forward(*leaves[:5], leaves[5], cu)
    want = torch.autograd.grad((ry, rh), leaves, (dy.double(), dht.double()))
    errs = {"y": rel(y, ry), "ht": rel(ht, rh)}
    errs.update({n: rel(a, b) for n, a, b in zip(["du", "ddt", "dA", "dB", "dC", "dh0"], grads, want)})
    assert all(e < tol for e in errs.values()), errs
    y2, _ = TS.selective_forward(*xs, h0, cu)
    grads2 = TS.selective_backward(*xs, h0, cu, dy, dht)
    assert torch.equal(y, y2) and all(torch.equal(a, b) for a, b in zip(grads, grads2)), "not bitwise deterministic"


@pytest.mark.gpu
@gpu
def test_gpu_mamba_op_gradients():
    """ops.mamba on CUDA (the Triton forward and backward walks) against the fp64 loop."""
    import fla_compile.ops as ops
    from fla_compile.reference.mamba import selective_scan as loop

    *xs, h0, _ = make_selective(B=2, T=200, D=64, N=16, device="cuda")
    xs = [x.requires_grad_() for x in (*xs, h0)]
    y, ht = ops.mamba(*xs[:5], initial_state=xs[5], output_final_state=True)
    (y.square().sum() + ht.sum()).backward()
    ds = [x.detach().double().requires_grad_() for x in xs]
    ry, rh = loop(ds[1] * ds[0], *ds[1:5], ds[5], output_final_state=True)
    (ry.square().sum() + rh.sum()).backward()
    for a, b in zip([y, ht, *(x.grad for x in xs)], [ry, rh, *(d.grad for d in ds)]):
        assert rel(a, b) < 1e-5


# ---------------------------------------------------------------- the chunked scan (triton_chunk)
# Tiny chunks (BT=8) and carry blocks (BC=2) so a few dozen steps cross several chunks, carry blocks and
# sequence starts inside chunks; D=12 over blocks of 8 channels leaves a masked tail. The interpreter runs
# the associative scan's combine per element, so these sizes are what keeps the cases ~1 s each.
CHUNK_TINY = {"BT": 8, "BD": 8, "num_warps": 1, "BC": 2, "BDC": 8, "carry_warps": 1}


class _PoisonedTorch:
    """``torch`` for the kernels' launchers with every ``empty`` filled with NaN: an output element the
    kernels do not write shows up."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    @staticmethod
    def empty_like(*args, **kwargs):
        return torch.empty_like(*args, **kwargs).fill_(float("nan"))


def _case_chunk(*args):
    from fla_compile.lowering.scan import triton_chunk as TC

    saved, TC.CONFIG = TC.CONFIG, dict(CHUNK_TINY)
    real_torch, TC.torch = TC.torch, _PoisonedTorch()
    try:
        return _check_kernels(TC, *args)
    finally:
        TC.CONFIG, TC.torch = saved, real_torch


def _check_kernels(K, lens=None, with_h0=True, with_dht=True, strength=1.0, resets=(), dtype=torch.float32,
                   twice=False):  # fmt: skip
    """Module ``K``'s forward and backward (launch options and poisoned outputs set by the caller) against fp64."""
    x, g, h0, cu = make(B=2, T=21, D=12, lens=lens, strength=strength, dtype=dtype)
    for t in resets:  # a decay of exactly 0 on every other channel (chunk starts, ends, inside)
        g[:, t, ::2] = -float("inf")
    h0 = h0 if with_h0 else None
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(x.shape, generator=gen).to(dtype)
    n_seq = x.shape[0] if cu is None else len(lens)
    dht = torch.randn(n_seq, x.shape[-1], generator=gen) if with_dht else None
    o, ht = K.forward(x, g, h0, cu)
    dx, dg, dh0 = K.backward(x, g, h0, cu, o, do, dht)
    ro, rh, (rdx, rdg, rdh0) = reference(x, g, h0, cu, do, dht if with_dht else torch.zeros(n_seq, x.shape[-1]))
    out = {"o": rel(o, ro), "ht": rel(ht, rh), "dx": rel(dx, rdx), "dg": rel(dg, rdg)}
    if h0 is not None:
        out["dh0"] = rel(dh0, rdh0)
    if dtype != torch.float32:
        out.update(tol=1e-2, o_dtype=float(o.dtype != dtype or dx.dtype != dtype))
    if twice:
        o2, ht2 = K.forward(x, g, h0, cu)
        again = K.backward(x, g, h0, cu, o, do, dht)
        same = torch.equal(o, o2) and torch.equal(ht, ht2)
        same = same and all(torch.equal(a, b) for a, b in zip((dx, dg, dh0), again) if a is not None)
        out["deterministic"] = float(not same)
    return out


def _case_chunk_op():
    """ops.hgrn through autograd with the chunked kernels forced (FLA_COMPILE_TRITON=interpret)."""
    from fla_compile.lowering.scan import dispatch
    from fla_compile.lowering.scan import triton_chunk as TC

    saved, TC.CONFIG = TC.CONFIG, dict(CHUNK_TINY)
    force, dispatch.FORCE_KERNEL = dispatch.FORCE_KERNEL, "chunk"
    try:
        return _case_op_dispatch()
    finally:
        TC.CONFIG, dispatch.FORCE_KERNEL = saved, force


CHUNK_CASES = {
    "chunk-dense": (_case_chunk, (None, True, True, 1.0, (), torch.float32, True)),
    "chunk-dense-no-h0-no-dht": (_case_chunk, (None, False, False)),
    "chunk-packed": (_case_chunk, ([5, 0, 17, 1, 8, 0],)),
    "chunk-packed-no-h0": (_case_chunk, ([0, 16, 3], False, False)),
    "chunk-packed-one-step": (_case_chunk, ([1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1],)),  # first and last at once
    "chunk-strong-gates-and-resets": (_case_chunk, (None, True, True, 20.0, (0, 3, 7, 8, 16, 20))),
    "chunk-bf16": (_case_chunk, (None, True, True, 1.0, (), torch.bfloat16)),
    "chunk-op-dispatch": (_case_chunk_op, ()),
}
INTERPRETER_CASES.update(CHUNK_CASES)  # run by the same child process as the walk's cases


@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_interpreter_chunk(interpreter_report, case):
    test_interpreter(interpreter_report, case)


@pytest.mark.parametrize(
    "shape,lens,chunk",
    [
        ((1, 1, 4096), None, False),  # decoding: the walk
        ((64, 256, 4096), None, False),  # short and wide: 4096 walk programs fill the GPU
        ((2, 256, 256), None, True),  # short but 8 walk programs: chunked
        ((1, 16384, 1024), None, True),  # long, 64 tile programs: chunked
        ((1, 20000, 4096), [16] * 1250, False),  # packed short sequences: the walk
        ((1, 20000, 256), [10000, 10000], True),  # packed long ones: chunked
    ],
)
def test_use_chunks_rule(shape, lens, chunk):
    from fla_compile.lowering.scan import dispatch

    x = torch.empty(shape, device="meta")
    cu = None if lens is None else torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    assert dispatch.use_chunks(x, cu) is chunk


# ---------------------------------------------------------------- the tile walk (triton_tile)
# Tiles of 8 rows so 21 steps cross tiles with a partial last one, sequence starts and ends at every row of a
# tile when packed; D=12 over blocks of 8 channels leaves a masked tail. One stage: the interpreter has no
# pipeline (the GPU cases run the default options).
TILE_TINY = {"BT": 8, "BD": 8, "num_warps": 1, "num_stages": 1}


def _tiny_tile():
    """Context: triton_tile's launch options set to TILE_TINY and its outputs poisoned."""
    import contextlib

    from fla_compile.lowering.scan import triton_tile as TT

    @contextlib.contextmanager
    def ctx():
        saved = TT.CONFIG, TT.BWD_CONFIG, TT.torch
        TT.CONFIG, TT.BWD_CONFIG, TT.torch = dict(TILE_TINY), dict(TILE_TINY), _PoisonedTorch()
        try:
            yield TT
        finally:
            TT.CONFIG, TT.BWD_CONFIG, TT.torch = saved

    return ctx()


def _case_tile(*args):
    with _tiny_tile() as TT:
        return _check_kernels(TT, *args)


def _case_tile_op():
    """ops.hgrn through autograd with the tile walk forced (FLA_COMPILE_TRITON=interpret)."""
    from fla_compile.lowering.scan import dispatch

    force, dispatch.FORCE_KERNEL = dispatch.FORCE_KERNEL, "tile"
    try:
        with _tiny_tile():
            return _case_op_dispatch()
    finally:
        dispatch.FORCE_KERNEL = force


TILE_CASES = {
    "tile-dense": (_case_tile, (None, True, True, 1.0, (), torch.float32, True)),
    "tile-dense-no-h0-no-dht": (_case_tile, (None, False, False)),
    "tile-packed": (_case_tile, ([5, 0, 17, 1, 8, 0],)),
    "tile-packed-no-h0": (_case_tile, ([0, 16, 3], False, False)),
    "tile-packed-one-step": (_case_tile, ([1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1],)),
    "tile-strong-gates-and-resets": (_case_tile, (None, True, True, 20.0, (0, 3, 7, 8, 16, 20))),
    "tile-bf16": (_case_tile, (None, True, True, 1.0, (), torch.bfloat16)),
    "tile-fp16-packed": (_case_tile, ([7, 0, 14], True, True, 1.0, (), torch.float16)),
    "tile-op-dispatch": (_case_tile_op, ()),
}
INTERPRETER_CASES.update(TILE_CASES)


def _case_strided(kernel):
    """ops.hgrn (autograd) on x and g that are permuted views, as a loop over heads hands them over (steps
    stacked first: [T, B H, Dh] read as [B H, T, Dh]): every kernel writes its outputs and gradients as dense
    rows, whatever the inputs' strides (dx once took x's strides from empty_like: a wrong gradient, 2026-11-30)."""
    import fla_compile.ops as ops
    from fla_compile.lowering.scan import dispatch

    BH, T, Dh = 4, 19, 6
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, BH, Dh, generator=gen).transpose(0, 1)
    g = F.logsigmoid(torch.randn(T, BH, Dh, generator=gen)).transpose(0, 1)
    assert not x.is_contiguous() and torch.empty_like(x).stride() == x.stride()  # dense: empty_like keeps them
    x, g = x.requires_grad_(), g.requires_grad_()
    force, dispatch.FORCE_KERNEL = dispatch.FORCE_KERNEL, kernel
    try:
        with _tiny_tile():
            o, _ = ops.hgrn(x, g)
            o.square().sum().backward()
    finally:
        dispatch.FORCE_KERNEL = force
    ro, _, (rdx, rdg, _) = reference(x.detach(), g.detach(), None, None, 2 * o.detach(), torch.zeros(BH, Dh))
    return {"o": rel(o, ro), "dx": rel(x.grad, rdx), "dg": rel(g.grad, rdg)}


STRIDED_CASES = {f"strided-{k}": (_case_strided, (k,)) for k in ("walk", "chunk", "tile")}
INTERPRETER_CASES.update(STRIDED_CASES)


@pytest.mark.parametrize("case", list(STRIDED_CASES))
def test_interpreter_strided(interpreter_report, case):
    test_interpreter(interpreter_report, case)


@pytest.mark.parametrize("case", list(TILE_CASES))
def test_interpreter_tile(interpreter_report, case):
    test_interpreter(interpreter_report, case)


@pytest.mark.parametrize(
    "shape,lens,kernel",
    [
        ((8, 2048, 2048), None, "tile"),  # 1024 programs of 16 channels: ~8 per SM
        ((64, 256, 4096), None, "tile"),  # short but wide: tiles rather than rows
        ((4, 8192, 1024), None, "tile"),  # 256 programs: ~2 per SM
        ((1, 16384, 4096), None, "tile"),
        ((1, 16384, 1024), None, "chunk"),  # 64 programs, fewer than the SMs: time-parallel
        ((2, 256, 256), None, "chunk"),  # 32 programs
        ((8, 32, 4096), None, "walk"),  # short sequences: one row at a time
        ((1, 1, 4096), None, "walk"),  # decoding
        ((1, 20000, 4096), [16] * 1250, "walk"),  # packed short sequences
        ((1, 20000, 256), [10000, 10000], "chunk"),  # packed long ones, few programs
        ((1, 32768, 2048), [512] * 64, "tile"),  # packed, 64 sequences x 128 blocks
    ],
)
def test_pick_rule(shape, lens, kernel):
    from fla_compile.lowering.scan import dispatch

    x = torch.empty(shape, device="meta")
    cu = None if lens is None else torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    assert dispatch.pick(x, cu) == kernel
    assert dispatch.use_chunks(x, cu) is (kernel == "chunk")


def test_pick_forced(monkeypatch):
    from fla_compile.lowering.scan import dispatch

    x = torch.empty(1, 1, 4096, device="meta")
    for kernel in dispatch.KERNELS:
        monkeypatch.setattr(dispatch, "FORCE_KERNEL", kernel)
        assert dispatch.pick(x) == kernel
    monkeypatch.setattr(dispatch, "FORCE_KERNEL", "tiles")
    with pytest.raises(ValueError, match="FORCE_KERNEL"):
        dispatch.pick(x)


# ---------------------------------------------------------------- the chunked scan on the GPU


def _op_picks_and_matches_loop(B, T, D, kernel):
    """ops.hgrn at [B, T, D] runs ``kernel`` (the dispatch rule), and its outputs and gradients match the fp64
    reference loop's."""
    import fla_compile.ops as ops
    from fla_compile.lowering.scan import dispatch
    from fla_compile.reference.hgrn import hgrn as loop

    x, g, h0, _ = make(B=B, T=T, D=D, device="cuda")
    assert dispatch.pick(x) == kernel
    xs = [t.requires_grad_() for t in (x, g, h0)]
    o, ht = ops.hgrn(*xs, output_final_state=True)
    (o.sum() + ht.square().sum()).backward()
    ds = [t.double().detach().requires_grad_() for t in (x, g, h0)]
    ro, rh = loop(*ds, output_final_state=True)
    (ro.sum() + rh.square().sum()).backward()
    for a, b in zip([o, ht, *(t.grad for t in xs)], [ro, rh, *(t.grad for t in ds)]):
        assert rel(a, b) < 1e-5


def _kernels_in_cuda_graph(K):
    """Module K's forward and backward on packed sequences (one empty) captured in a CUDA graph: nothing reads
    cu_seqlens back to the host (a sync would fail the capture), and the replay matches the fp64 path."""
    x, g, h0, cu = make(lens=[700, 0, 1500, 3], D=256, device="cuda")
    do, dht = torch.randn_like(x), torch.randn_like(h0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up off the capture
        K.backward(x, g, h0, cu, K.forward(x, g, h0, cu)[0], do, dht)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o, ht = K.forward(x, g, h0, cu)
        dx, dg, dh0 = K.backward(x, g, h0, cu, o, do, dht)
    graph.replay()
    torch.cuda.synchronize()
    ro, rh, (rdx, rdg, rdh0) = reference(x, g, h0, cu, do, dht)
    errs = {"o": rel(o, ro), "ht": rel(ht, rh), "dx": rel(dx, rdx), "dg": rel(dg, rdg), "dh0": rel(dh0, rdh0)}
    assert all(e < 1e-5 for e in errs.values()), errs


def _kernels_vs_fp64(K, dtype, tol, strength, lens, resets, B=2, T=8192):
    """Module K's forward and backward at [B, T, 1000] (a masked channel tail) against the fp64 torch path: o,
    ht, dx, dg, dh0, outputs poisoned, resets (-inf gates, every third channel from the i-th) at the steps
    ``resets``, bitwise determinism."""
    x, g, h0, cu = make(B=B, T=T, D=1000, strength=strength, lens=lens, device="cuda", dtype=dtype)
    for i, step in enumerate(resets):
        g[:, step, i::3] = -float("inf")
    do = torch.randn_like(x)
    dht = torch.randn_like(h0)
    _poison()
    o, ht = K.forward(x, g, h0, cu)
    _poison()
    dx, dg, dh0 = K.backward(x, g, h0, cu, o, do, dht)
    ro, rh, (rdx, rdg, rdh0) = reference(x, g, h0, cu, do, dht)
    errs = {"o": rel(o, ro), "ht": rel(ht, rh), "dx": rel(dx, rdx), "dg": rel(dg, rdg), "dh0": rel(dh0, rdh0)}
    assert all(e < tol for e in errs.values()), errs  # NaN fails too
    o2, ht2 = K.forward(x, g, h0, cu)
    again = K.backward(x, g, h0, cu, o, do, dht)
    assert torch.equal(o, o2) and torch.equal(ht, ht2), "forward not bitwise deterministic"
    assert all(torch.equal(a, b) for a, b in zip((dx, dg, dh0), again)), "backward not bitwise deterministic"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("strength", [1.0, 20.0], ids=["weak", "strong"])
@pytest.mark.parametrize("lens", [None, [3000, 0, 1, 5191]], ids=["dense", "packed"])
def test_gpu_chunk_vs_fp64(dtype, tol, strength, lens):
    """The chunked kernels at T=8192 against the fp64 torch path: o, ht, dx, dg, dh0, outputs poisoned,
    resets (-inf gates) on a chunk boundary, bitwise determinism."""
    from fla_compile.lowering.scan import triton_chunk

    _kernels_vs_fp64(triton_chunk, dtype, tol, strength, lens, resets=(128, 4000))  # 4000: off a chunk boundary


@pytest.mark.gpu
@gpu
def test_gpu_op_takes_chunks_at_long_T():
    """ops.hgrn at T=2048 runs the chunked kernels (the dispatch rule) and matches the fp64 loop's gradients."""
    _op_picks_and_matches_loop(B=2, T=2048, D=256, kernel="chunk")


@pytest.mark.gpu
@gpu
def test_gpu_chunk_packed_in_cuda_graph():
    """Packed sequences through the chunked kernels inside CUDA-graph capture: nothing reads cu_seqlens back
    to the host (a sync would fail the capture), and the replay matches the fp64 path."""
    from fla_compile.lowering.scan import triton_chunk

    _kernels_in_cuda_graph(triton_chunk)


# ---------------------------------------------------------------- the tile walk on the GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("strength", [1.0, 20.0], ids=["weak", "strong"])
@pytest.mark.parametrize("lens", [None, [3000, 0, 1, 5191]], ids=["dense", "packed"])
def test_gpu_tile_vs_fp64(dtype, tol, strength, lens):
    """The tile walk (default launch options: pipelined) at T=8192 against the fp64 torch path: o, ht, dx, dg,
    dh0, outputs poisoned, resets (-inf gates) on and off tile boundaries, a masked channel tail (D=1000),
    bitwise determinism."""
    from fla_compile.lowering.scan import triton_tile

    _kernels_vs_fp64(triton_tile, dtype, tol, strength, lens, resets=(128, 4001))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("opts", [dict(BT=128, BD=64, num_warps=8, num_stages=4), dict(BT=32, BD=16, num_warps=2,
                                                                                         num_stages=2)])  # fmt: skip
def test_gpu_tile_other_options(opts):
    """Other launch options (the --sweep-tile corners) give the same gradients, no dht or h0."""
    from fla_compile.lowering.scan import triton_tile as TT

    x, g, _, cu = make(lens=[700, 0, 1500, 3], D=300, device="cuda")
    do = torch.randn_like(x)
    saved = TT.CONFIG, TT.BWD_CONFIG
    TT.CONFIG = TT.BWD_CONFIG = opts
    try:
        o, ht = TT.forward(x, g, None, cu)
        dx, dg, dh0 = TT.backward(x, g, None, cu, o, do, None)
    finally:
        TT.CONFIG, TT.BWD_CONFIG = saved
    ro, rh, (rdx, rdg, _) = reference(x, g, None, cu, do, torch.zeros_like(ht))
    errs = {"o": rel(o, ro), "ht": rel(ht, rh), "dx": rel(dx, rdx), "dg": rel(dg, rdg)}
    assert dh0 is None and all(e < 1e-5 for e in errs.values()), errs


@pytest.mark.gpu
@gpu
def test_gpu_op_takes_tile():
    """ops.hgrn where the tile walk fills the GPU runs it (the dispatch rule) and matches the fp64 loop."""
    _op_picks_and_matches_loop(B=4, T=256, D=4096, kernel="tile")


@pytest.mark.gpu
@gpu
def test_gpu_tile_packed_in_cuda_graph():
    """Packed sequences through the tile walk inside CUDA-graph capture (no host read of cu_seqlens)."""
    from fla_compile.lowering.scan import triton_tile

    _kernels_in_cuda_graph(triton_tile)


@pytest.mark.gpu
@gpu
def test_gpu_tile_int64_offsets():
    """Element offsets past 2^31: of two packed sequences the second starts at step 2^21 of D = 1024 (element
    2^31); its outputs, final state and gradients equal the same sequence's run alone, bitwise (~30 GB)."""
    from fla_compile.lowering.scan import triton_tile as TT

    if torch.cuda.get_device_properties(0).total_memory < 48 << 30:
        pytest.skip("needs ~30 GB of GPU memory")
    D, T1, T2 = 1024, 1 << 21, 1000
    xs, gs, h0, _ = make(B=1, T=T2, D=D, device="cuda", dtype=torch.bfloat16)
    gs = gs.bfloat16()
    dos, dht = torch.randn_like(xs), torch.randn(2, D, device="cuda")
    x = torch.zeros(1, T1 + T2, D, device="cuda", dtype=torch.bfloat16)
    g, do = torch.zeros_like(x), torch.zeros_like(x)
    x[:, T1:], g[:, T1:], do[:, T1:] = xs, gs, dos
    h0s = torch.cat([torch.zeros_like(h0), h0])
    cu = torch.tensor([0, T1, T1 + T2], device="cuda")
    o, ht = TT.forward(x, g, h0s, cu)
    dx, dg, dh0 = TT.backward(x, g, h0s, cu, o, do, dht)
    cu1 = torch.tensor([0, T2], device="cuda")
    o1, ht1 = TT.forward(xs, gs, h0, cu1)
    dx1, dg1, dh01 = TT.backward(xs, gs, h0, cu1, o1, dos, dht[1:])
    assert torch.equal(o[:, T1:], o1) and torch.equal(ht[1:], ht1), "forward differs past 2^31"
    assert torch.equal(dx[:, T1:], dx1) and torch.equal(dg[:, T1:], dg1), "backward differs past 2^31"
    assert torch.equal(dh0[1:], dh01)


if __name__ == "__main__":
    _run_interpreter_cases()
