"""GPU tests of the GLA-line Triton kernels at real sizes (marked ``gpu``, skipped without CUDA).

Tolerances of issue 5 against a float64 reference: relative error < 1e-5 for fp32 inputs (the
kernels use IEEE fp32 dots for fp32), < 5e-3 for bf16; gates from weak to strong (log-gates down
to -5 per step); every buffer poisoned with NaN first; two runs bitwise identical.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.compare import rel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

KINDS = ["none", "scalar", "vector"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _poison():
    from fla_compile.lowering.gla import triton_launch as gla_triton

    gla_triton.POISON = True
    yield
    gla_triton.POISON = False


def make(kind, B, T, H, HK, K, V, dtype, gate="range", cu=None, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen)

    q, k, v = rnd(B, T, HK, K), rnd(B, T, HK, K), rnd(B, T, H, V)
    g = None
    if kind != "none":
        shape = (B, T, H) if kind == "scalar" else (B, T, H, K)
        g = -5 * torch.rand(*shape, generator=gen) if gate == "range" else F.logsigmoid(rnd(*shape) + 2)
    N = B if cu is None else len(cu) - 1
    h0 = rnd(N, H, K, V)
    do, dht = rnd(B, T, H, V), rnd(N, H, K, V)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    cast = [q.to(dtype), k.to(dtype), v.to(dtype), g, h0, cu_t, do.to(dtype), dht]
    return [x.cuda() if x is not None else None for x in cast]


def reference(q, k, v, g, kind, scale, h0, cu, do, dht):
    from fla_compile.lowering.gla.torch_path import gla_line_forward

    leaves = [x.detach().double().requires_grad_() if x is not None else None for x in (q, k, v, g, h0)]
    o, ht = gla_line_forward(*leaves[:4], kind, scale, leaves[4], cu)
    wrt = [x for x in leaves if x is not None]
    grads = torch.autograd.grad((o, ht), wrt, (do.double(), dht.double()))
    return [o, ht, *grads]


def run(q, k, v, g, kind, scale, h0, cu, do, dht):
    from fla_compile.lowering.gla import triton_launch as gla_triton

    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, scale, h0, cu)
    grads = gla_triton.chunk_backward(q, k, v, g, kind, scale, h0, cu, do, dht)
    torch.cuda.synchronize()
    return [o, ht, *[x for x in grads if x is not None]]


def check_fwd_bwd(kind, args, dtype):
    """Forward and gradients (twice: bitwise the same) against the fp64 torch path, every output finite."""
    q, k, v, g, h0, cu, do, dht = args
    scale = q.shape[-1] ** -0.5
    ours, again = run(q, k, v, g, kind, scale, h0, cu, do, dht), run(q, k, v, g, kind, scale, h0, cu, do, dht)
    ref = reference(q, k, v, g, kind, scale, h0, cu, do, dht)
    names = ["o", "ht", "dq", "dk", "dv"] + (["dg"] if g is not None else []) + ["dh0"]
    for name, a, b, r in zip(names, ours, again, ref):
        assert torch.isfinite(a).all(), f"{name}: NaN/inf (unwritten element?)"
        assert torch.equal(a, b), f"{name}: not bitwise deterministic"
        assert rel(a, r) < TOL[dtype], f"{name}: relative error {rel(a, r):.2e}"


SHAPES = {
    "T300_K64": dict(B=2, T=300, H=4, HK=4, K=64, V=64),
    "T257_gqa_K128_V64": dict(B=1, T=257, H=4, HK=2, K=128, V=64),
    "T200_K32_V256": dict(B=1, T=200, H=2, HK=1, K=32, V=256),
    "T130_K256": dict(B=1, T=130, H=2, HK=2, K=256, V=128),
    # the GLA and RetNet papers' heads (K 256, V 512), and K at MAX_HEAD_DIM with V past 256 and odd
    "T150_gqa_K256_V512": dict(B=1, T=150, H=2, HK=1, K=256, V=512),
    "T150_gqa_K256_V256": dict(B=1, T=150, H=2, HK=1, K=256, V=256),  # sm90's K256V256 chunk options
    "T90_K512_V272": dict(B=1, T=90, H=2, HK=2, K=512, V=272),
    # odd head dims with masked tails: K = 153 (Based's Taylor map of 16 features) crosses a 128 block, where
    # Triton 3.7 on sm_90 miscompiles a masked tail iteration of FLA's chunk_bwd_dv (fla-org/...#1241: an IMA)
    "T150_K153_V96": dict(B=1, T=150, H=2, HK=2, K=153, V=96),
    "T70_K37_V33": dict(B=2, T=70, H=2, HK=1, K=37, V=33),
    # tiles of 32 along a dot's N (V = 32: the dv kernel's do and dh; K = 32): under compute-sanitizer's memcheck
    # (Triton 3.6, H200, forty-first session) linear_attn's dv kernel at K 64 x V 32 read shared memory past its
    # allocation, the pattern of Triton's two-dot shared-memory faults on sm_90 with blocks of 16 and 32
    "T200_gqa_K64_V32": dict(B=2, T=200, H=4, HK=2, K=64, V=32),
    "T200_K32_V64": dict(B=2, T=200, H=2, HK=2, K=32, V=64),
    # 64 sequence-heads at K = V = 128: the state passes' full V blocks, as training shapes run them
    "T200_K128_wide": dict(B=4, T=200, H=16, HK=16, K=128, V=128),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_chunk_fwd_bwd(kind, shape, dtype):
    check_fwd_bwd(kind, make(kind, **SHAPES[shape], dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", ["T300_K64", "T257_gqa_K128_V64", "T70_K37_V33", "T200_K128_wide"])
def test_scalar_scan_in_kernels(shape, dtype, monkeypatch):
    """``SCALAR_SCAN_IN_KERNELS`` True (sm90 ships it in the forward at K = V = 64): the chunk kernels scan a scalar
    gate's log decays themselves (gate id 4, no cumsum kernel). Against fp64 with poisoned buffers, bitwise
    repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "SCALAR_SCAN_IN_KERNELS", True)
    check_fwd_bwd("scalar", make("scalar", **SHAPES[shape], dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", ["T300_K64", "T257_gqa_K128_V64", "T70_K37_V33", "T200_K128_wide"])
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
def test_forward_walk(kind, shape, dtype, monkeypatch):
    """``FWD_WALK`` forced: the forward in one pass, the state in registers (``chunk_fwd_walk_kernel``). Against
    fp64 with poisoned buffers (the backward still the two-pass one), bitwise repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "FWD_WALK", True)
    q, k, v, g, h0, cu, do, dht = make(kind, **SHAPES[shape], dtype=dtype)
    scale = q.shape[-1] ** -0.5
    ours, again = run(q, k, v, g, kind, scale, h0, cu, do, dht), run(q, k, v, g, kind, scale, h0, cu, do, dht)
    ref = reference(q, k, v, g, kind, scale, h0, cu, do, dht)
    for name, a, b, r in zip(["o", "ht"], ours, again, ref):
        assert torch.isfinite(a).all(), f"{name}: NaN/inf (unwritten element?)"
        assert torch.equal(a, b), f"{name}: not bitwise deterministic"
        assert rel(a, r) < TOL[dtype], f"{name}: relative error {rel(a, r):.2e}"


WALK_SHAPES = {  # grids of 256+ programs at V blocks of 64: the sm90 table's walk (WALK_FILL programs an SM)
    "B8_K128": dict(B=8, T=200, H=16, HK=16, K=128, V=128),
    "B8_K64": dict(B=8, T=130, H=32, HK=32, K=64, V=64),
    "packed_K128": dict(
        B=1, T=600, H=16, HK=16, K=128, V=128, cu=[0, 0, 37, 64, 65, 130, 200, 257, 300, 333, 400, 470, 512, 600]
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(WALK_SHAPES))
@pytest.mark.parametrize("kind", ["none", "scalar"])
def test_forward_walk_from_table(kind, shape, dtype, monkeypatch):
    """The one-pass forward as the tables ship it (``fwd_walk``, ``walk_BV`` 64, their warps and stages), taken
    without forcing at a grid that fills the GPU: forward and gradients against fp64, poisoned buffers, bitwise
    repeatable; on an H200 (132 SMs) the walk must be what ran in bf16 (fp32 keeps the two-pass form)."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    walks = []
    real = gla_triton._fwd_walk
    monkeypatch.setattr(gla_triton, "_fwd_walk", lambda *a, **kw: walks.append(1) or real(*a, **kw))
    check_fwd_bwd(kind, make(kind, **WALK_SHAPES[shape], dtype=dtype), dtype)
    if (
        torch.cuda.get_device_capability() == (9, 0)
        and torch.cuda.get_device_properties(0).multi_processor_count == 132
    ):
        assert len(walks) == (0 if dtype == torch.float32 else 2), "the sm90 table's walk: fp32 no, half yes"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cu", [None, [0, 0, 77, 300]], ids=["batch", "packed"])
def test_head_decay(cu, dtype, monkeypatch):
    """One decay per head broadcast over batch and steps (retention's): the kernels form its in-chunk cumsum (gate
    id 3, ``HEAD_DECAY``). Forward and gradients against fp64, K = V = 128, poisoned buffers, bitwise repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "HEAD_DECAY", True)
    B = 1 if cu else 2
    q, k, v, _, h0, cu_t, do, dht = make("scalar", B, 300, 4, 2, 128, 128, dtype, cu=cu)
    g = torch.tensor([-0.05, -0.3, -1.0, -4.0], device="cuda").reshape(1, 1, 4).expand(B, 300, 4)
    ours, again = run(q, k, v, g, "scalar", 0.1, h0, cu_t, do, dht), run(q, k, v, g, "scalar", 0.1, h0, cu_t, do, dht)
    ref = reference(q, k, v, g.contiguous(), "scalar", 0.1, h0, cu_t, do, dht)
    for name, a, b, r in zip(["o", "ht", "dq", "dk", "dv", "dg", "dh0"], ours, again, ref):
        assert torch.equal(a, b), f"{name}: not bitwise deterministic"
        assert rel(a, r) < TOL[dtype], f"{name}: relative error {rel(a, r):.2e}"


@pytest.mark.parametrize("head_decay", [True, False], ids=["gate-id-3", "gate-id-1"])
@pytest.mark.parametrize("K", [64, 128])
def test_scalar_gate_gradient_skipped(K, head_decay, monkeypatch):
    """``need_dgate=False`` (a fixed decay): the dq/dk kernel forms no gate gradient (``DG``); dq, dk, dv, dh0 against
    fp64, bitwise repeatable, at the K blocks the arch table gives (two at K = 128). Not bitwise the run that forms
    dg: the compiler contracts dk's sum into FMAs differently without it (H200, 2026-12-01)."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "HEAD_DECAY", head_decay)
    q, k, v, _, h0, cu, do, dht = make("scalar", 2, 300, 4, 2, K, K, torch.bfloat16)
    g = torch.tensor([-0.05, -0.3, -1.0, -4.0], device="cuda").reshape(1, 1, 4).expand(2, 300, 4)
    part = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.1, h0, cu, do, dht, need_dgate=False)
    again = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.1, h0, cu, do, dht, need_dgate=False)
    assert part[3] is None
    ref = reference(q, k, v, g.contiguous(), "scalar", 0.1, h0, cu, do, dht)[2:]  # after o and ht
    for name, a, b, r in zip(["dq", "dk", "dv", "dg", "dh0"], part, again, ref):
        if name != "dg":
            assert torch.equal(a, b), f"{name}: not bitwise deterministic"
            assert rel(a, r) < TOL[torch.bfloat16], f"{name}: relative error {rel(a, r):.2e}"


@pytest.mark.parametrize("kind", KINDS)
def test_heads_inner_launch_order(kind, monkeypatch):
    """The output, dv and dq/dk kernels in a 1-D grid, a chunk's heads side by side (``chunks.HEADS_INNER``, A/B):
    bitwise the 3-D grid's outputs and gradients, bf16 at K = V = 128 over 64 sequence-heads, packed sequences."""
    from fla_compile.lowering.common import chunks

    q, k, v, g, h0, cu, do, dht = make(kind, 1, 700, 16, 8, 128, 128, torch.bfloat16, cu=[0, 300, 301, 700])
    runs = {}
    for inner in (True, False):
        monkeypatch.setattr(chunks, "HEADS_INNER", inner)
        runs[inner] = run(q, k, v, g, kind, 0.1, h0, cu, do, dht)
    for a, b in zip(runs[True], runs[False]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("K,V", [(16, 8), (16, 16), (32, 32)])
@pytest.mark.parametrize("kind", KINDS)
def test_fp32_tf32_mode_small_heads(kind, K, V):
    """fp32 under "high" (plain tf32 dots) at small head dims, forward and gradients within tf32's accuracy of fp64
    (the three-tf32 split was wrong at K = V = 16 on the H200, 2026-12-01: narrow tf32 tiles are suspect)."""
    q, k, v, g, h0, cu, do, dht = make(kind, 2, 150, 4, 2, K, V, torch.float32)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        ours = run(q, k, v, g, kind, K**-0.5, h0, cu, do, dht)
    finally:
        torch.set_float32_matmul_precision(old)
    ref = reference(q, k, v, g, kind, K**-0.5, h0, cu, do, dht)
    names = ["o", "ht", "dq", "dk", "dv"] + (["dg"] if g is not None else []) + ["dh0"]
    for name, a, r in zip(names, ours, ref):
        assert rel(a, r) < 5e-3, f"{name}: relative error {rel(a, r):.2e}"


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_three_tf32_wide_grid(kind, monkeypatch):
    """fp32 at "highest" by three tf32 products (``FP32_SPLIT``, on since this passed on the H200) at K = V = 128 on
    64 sequence-heads (the state passes' full V blocks) and on a small grid, against fp64, bitwise repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "FP32_SPLIT", True)
    for shape in ("T200_K128_wide", "T257_gqa_K128_V64", "T300_K64"):
        test_chunk_fwd_bwd(kind, shape, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_varlen(kind):
    cu = [0, 1, 64, 64, 200, 333]
    q, k, v, g, h0, cu_t, do, dht = make(kind, 1, 333, 4, 2, 64, 64, torch.float32, cu=cu)
    ours = run(q, k, v, g, kind, 0.125, h0, cu_t, do, dht)
    # the torch path does not take empty sequences: compare against the same batch without them
    keep = [0, 1, 3, 4]
    cu2 = torch.tensor([0, 1, 64, 200, 333], dtype=torch.int32, device="cuda")
    ref = reference(q, k, v, g, kind, 0.125, h0[keep], cu2.cpu(), do, dht[keep])
    ours_dense = [ours[0], ours[1][keep], *ours[2:-1], ours[-1][keep]]
    for a, r in zip(ours_dense, ref):
        assert rel(a, r) < 1e-5
    assert torch.equal(ours[1][2], h0[2]) and torch.equal(ours[-1][2], dht[2])


SEGMENT_SHAPES = {  # a few sequences x heads over many chunks: the forward's state pass in segments
    "T1100_K128": dict(B=1, T=1100, H=4, HK=4, K=128, V=128),  # segments of 8, 8 and 2 chunks, the last partial
    "T1000_gqa_K64": dict(B=2, T=1000, H=2, HK=1, K=64, V=64),
    "T1000_K37_V33": dict(B=1, T=1000, H=2, HK=2, K=37, V=33),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SEGMENT_SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_segmented_state_pass(kind, shape, dtype, monkeypatch):
    """``SEGMENTS`` forced: the forward's state pass walks segments from zero states, the output kernel adds the
    state entering each (at K = V = 128 on the table's ``o_seg_*`` options). Mild gates, a band of -20 steps in a
    gate per key dim: forward and gradients against
    fp64 with poisoned buffers, bitwise repeatable; o and the final state within the inputs' rounding of one
    segment's."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    combines = []
    real = gla_triton._fwd_h_segments
    monkeypatch.setattr(gla_triton, "_fwd_h_segments", lambda *a, **kw: combines.append(a[-2]) or real(*a, **kw))
    monkeypatch.setattr(gla_triton, "SEGMENTS", True)
    args = make(kind, **SEGMENT_SHAPES[shape], dtype=dtype, gate="mild")
    if kind == "vector":
        args[3][:, 300:310] = -20.0
    check_fwd_bwd(kind, args, dtype)
    assert combines and min(combines) > 1
    q, k, v, g, h0 = args[:5]
    seg = gla_triton.chunk_forward(q, k, v, g, kind, 0.125, h0)
    monkeypatch.setattr(gla_triton, "SEGMENTS", False)
    one = gla_triton.chunk_forward(q, k, v, g, kind, 0.125, h0)
    for name, a, b in zip(["o", "ht"], seg, one):
        assert rel(a, b) < TOL[dtype], f"{name}: {rel(a, b):.2e} from one segment's"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_segments_from_table(dtype, monkeypatch):
    """The tables' segments (sm90: ``h_seg_heads`` 128, at K = V = 64 from 2 segments of at least 32 chunks): 2
    sequences x heads over 64 chunks run as 2 segments in half precision, against fp64 with poisoned buffers,
    bitwise repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    segments = []
    real = gla_triton._fwd_h_segments
    monkeypatch.setattr(gla_triton, "_fwd_h_segments", lambda *a, **kw: segments.append(a[-2]) or real(*a, **kw))
    shape = dict(B=1, T=4096, H=2, HK=1, K=64, V=64)
    check_fwd_bwd("vector", make("vector", **shape, dtype=dtype, gate="mild"), dtype)
    if torch.cuda.get_device_capability() == (9, 0):
        assert segments == [2, 2], segments


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequence_no_drift(kind):
    """T = 65536 in one sequence (1024 chunks through the state pass), fp32, weak gates (logsigmoid(x + 2)): the
    output and the final state within 1e-5 of fp64, and the last 1024 steps as accurate as the whole."""
    from fla_compile.lowering.gla import triton_launch as gla_triton
    from fla_compile.lowering.gla.torch_path import gla_line_forward

    q, k, v, g, h0, _, _, _ = make(kind, 1, 65536, 2, 2, 64, 64, torch.float32, gate="weak")
    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 64**-0.5, h0)
    ro, rs = gla_line_forward(q.double(), k.double(), v.double(), None if g is None else g.double(), kind, 64**-0.5,
                              h0.double())  # fmt: skip
    assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5, (rel(o, ro), rel(ht, rs))
    assert rel(o[:, -1024:], ro[:, -1024:]) < 1e-5, rel(o[:, -1024:], ro[:, -1024:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", ["T300_K64", "T257_gqa_K128_V64", "T200_K128_wide"])
def test_factored_A(shape, dtype, monkeypatch):
    """``FACTORED_A`` (shipped on): the output kernel forms the A of the chunks whose gate spread allows one dot,
    the A kernel the others'. Mild gates (the factored form) with a band of -20 steps and one chunk of -5 (the A
    kernel's), packed: against fp64 with poisoned buffers, bitwise repeatable; the forward's o and kept A within
    the inputs' rounding of the A kernel's (``FACTORED_A`` off), the gradients of the sub-chunk form's
    (``FACTORED_BWD`` off)."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    sh = dict(SHAPES[shape], B=1)
    T = sh["T"]
    args = make("vector", **sh, dtype=dtype, gate="mild", cu=[0, 37, T - 70, T])
    g = args[3]
    g[:, 100:110] = -20.0
    g[:, 130:190:2, 0] = -5.0
    check_fwd_bwd("vector", args, dtype)
    q, k, v, g, h0, cu = args[:6]
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(gla_triton, "FACTORED_A", on)
        A = gla_triton.saved_A_like(q, v)
        runs[on] = (*gla_triton.chunk_forward(q, k, v, g, "vector", 0.125, h0, cu, A_out=A), A)
    for name, a, b in zip(["o", "ht", "A"], runs[True], runs[False]):
        assert rel(a, b) < TOL[dtype], f"{name}: {rel(a, b):.2e} from the A kernel's"
    do, dht = args[6:]
    grads = {}
    for on in (True, False):  # FACTORED_BWD: the intra-chunk backward, factored chunks by two dots
        monkeypatch.setattr(gla_triton, "FACTORED_BWD", on)
        grads[on] = gla_triton.chunk_backward(q, k, v, g, "vector", 0.125, h0, cu, do, dht, A=runs[True][2])
    for name, a, b in zip(["dq", "dk", "dv", "dg", "dh0"], grads[True], grads[False]):
        assert rel(a, b) < TOL[dtype], f"{name}: {rel(a, b):.2e} from the sub-chunk form's"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_strong_gates(kind, dtype):
    """-20 per step: nothing overflows, and every output (dg included) keeps its accuracy."""
    q, k, v, g, h0, cu, do, dht = make(kind, 1, 200, 2, 2, 64, 64, dtype)
    g = torch.full_like(g, -20.0)
    ours = run(q, k, v, g, kind, 0.125, h0, cu, do, dht)
    ref = reference(q, k, v, g, kind, 0.125, h0, cu, do, dht)
    for a, r in zip(ours, ref):
        assert torch.isfinite(a).all()
        assert rel(a, r) < TOL[dtype]


@pytest.mark.parametrize("dims", [(128, 128), (512, 272)], ids=["K128", "K512_V272"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_decode(kind, dtype, dims):
    """The decode kernel (the whole K in one block) against fp64, the state updated in place; up to K = 512."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    q, k, v, g, h0, cu, do, dht = make(kind, 64, 1, 4, 2, *dims, dtype, gate="mild")
    ref = reference(q, k, v, g, kind, 0.1, h0, cu, do, dht)
    state = h0.clone()
    o, ht = gla_triton.fused_recurrent(q, k, v, g, kind, 0.1, state, inplace_state=True)
    assert ht.data_ptr() == state.data_ptr()
    assert rel(o, ref[0]) < TOL[dtype] and rel(state, ref[1]) < TOL[dtype]


def test_decode_cuda_graph():
    from fla_compile.lowering.gla import triton_launch as gla_triton

    q, k, v, g, h0, cu, do, dht = make("scalar", 8, 1, 4, 4, 64, 64, torch.bfloat16, gate="mild")
    state = h0.clone()
    gla_triton.fused_recurrent(q, k, v, g, "scalar", 0.1, state.clone(), inplace_state=True)  # warm up, tune
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o, _ = gla_triton.fused_recurrent(q, k, v, g, "scalar", 0.1, state, inplace_state=True)
    graph.replay()
    torch.cuda.synchronize()
    ref = reference(q, k, v, g, "scalar", 0.1, h0, cu, do, dht)
    assert rel(o, ref[0]) < 5e-3 and rel(state, ref[1]) < 5e-3


@pytest.mark.parametrize("family", ["linear_attn", "retention", "simple_gla", "gla"])
def test_ops_on_cuda(family):
    import fla_compile.ops as ops

    kind = {"linear_attn": "none", "retention": "scalar", "simple_gla": "scalar", "gla": "vector"}[family]
    q, k, v, g, h0, cu, do, dht = make(kind, 2, 150, 4, 2, 64, 64, torch.float32, gate="mild")
    extra = {
        "linear_attn": (),
        "retention": (torch.tensor([-0.1, -0.3, -1.0, -2.0], device="cuda"),),
        "simple_gla": (g,),
        "gla": (g,),
    }[family]

    def grads(device):
        leaves = [x.detach().to(device).requires_grad_() for x in (q, k, v, *extra, h0)]
        o, ht = getattr(ops, family)(*leaves[:-1], initial_state=leaves[-1], output_final_state=True)
        torch.autograd.backward((o, ht), (do.to(device), dht.to(device)))
        return [o, ht, *[x.grad for x in leaves]]

    for a, b in zip(grads("cuda"), grads("cpu")):
        assert rel(a.cpu(), b) < 1e-5


def test_compile_fullgraph():
    import fla_compile.ops as ops
    from fla_compile.reference import gla as ref_gla

    q, k, v, g, h0, cu, do, dht = make("vector", 1, 128, 2, 2, 64, 64, torch.bfloat16, gate="mild")
    leaves = [x.detach().requires_grad_() for x in (q, k, v, g)]
    fn = torch.compile(lambda q, k, v, g: ops.gla(q, k, v, g)[0], fullgraph=True)
    o = fn(*leaves)
    o.backward(do)
    # against the fp64 loop on the same (bf16-rounded) inputs, forward and gradients
    r_leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v, g)]
    r, _ = ref_gla.gla(*r_leaves[:3], gk=r_leaves[3])
    r.backward(do.cpu().double())
    assert rel(o.cpu(), r) < TOL[torch.bfloat16]
    for a, b in zip(leaves, r_leaves):
        assert rel(a.grad.cpu(), b.grad) < TOL[torch.bfloat16]


def _count_A(monkeypatch):
    """Count launches of the vector gate's A kernel (gla_triton._gla_A)."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    calls = []
    real = gla_triton._gla_A

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(gla_triton, "_gla_A", counted)
    return calls


def _gla_grads(fn, q, k, v, g, h0, do, dht):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = fn(*leaves)
    torch.autograd.backward((o, ht), (do.to(o.dtype), dht.to(ht.dtype)))
    return [o, ht, *[x.grad for x in leaves]]


def _loop_reference(q, k, v, g, h0, do, dht):
    """Gradients of the fp64 time loop (fla_compile/reference/gla.py)."""
    from fla_compile.reference import gla as ref

    def loop(q, k, v, g, h0):
        return ref.gla(q, k, v, gk=g, scale=0.125, initial_state=h0, output_final_state=True)

    return _gla_grads(loop, *[x.double() for x in (q, k, v, g, h0, do, dht)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gla_backward_reuses_A(dtype, monkeypatch):
    """gla forward+backward through the op: one A kernel (the forward's; the backward reuses it), and the
    gradients of the fp64 loop; with a backward config of another BT, A is recomputed, results as good."""
    import fla_compile.ops as ops
    from fla_compile.lowering.common import autotune

    q, k, v, g, h0, cu, do, dht = make("vector", 2, 300, 4, 2, 64, 64, dtype, gate="mild")
    want = _loop_reference(q, k, v, g, h0, do, dht)

    def op(q, k, v, g, h0):
        return ops.gla(q, k, v, g, scale=0.125, initial_state=h0, output_final_state=True)

    names = ["o", "ht", "dq", "dk", "dv", "dg", "dh0"]
    _gla_grads(op, q, k, v, g, h0, do, dht)  # first call: any tuning (which runs A kernels) happens here
    calls = _count_A(monkeypatch)
    got = _gla_grads(op, q, k, v, g, h0, do, dht)
    torch.cuda.synchronize()
    assert len(calls) == 1, "the backward recomputed A"
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all() and rel(a, b) < TOL[dtype], f"{name}: relative error {rel(a, b):.2e}"

    # forward with BT = 64, backward with BT = 32 (as if tuning had happened in between): recomputed
    cfgs = iter([{"BT": 64, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}])
    fallback = {"BT": 32, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}
    monkeypatch.setattr(autotune, "get_config", lambda *a, **kw: next(cfgs, fallback))
    calls.clear()
    got = _gla_grads(op, q, k, v, g, h0, do, dht)
    torch.cuda.synchronize()
    assert len(calls) == 2
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all() and rel(a, b) < TOL[dtype], f"{name}: relative error {rel(a, b):.2e}"


def test_gla_compiled_backward_reuses_A(monkeypatch):
    """torch.compile(fullgraph=True) (Inductor) through the op: the compiled backward reuses A too."""
    import fla_compile.ops as ops

    q, k, v, g, h0, cu, do, dht = make("vector", 1, 256, 2, 2, 64, 64, torch.bfloat16, gate="mild")

    def op(q, k, v, g, h0):
        return ops.gla(q, k, v, g, scale=0.125, initial_state=h0, output_final_state=True)

    eager = _gla_grads(op, q, k, v, g, h0, do, dht)
    compiled = torch.compile(op, fullgraph=True)
    _gla_grads(compiled, q, k, v, g, h0, do, dht)  # compiles
    calls = _count_A(monkeypatch)
    got = _gla_grads(compiled, q, k, v, g, h0, do, dht)
    torch.cuda.synchronize()
    assert len(calls) == 1
    for a, b in zip(got, eager):
        assert torch.equal(a, b)
