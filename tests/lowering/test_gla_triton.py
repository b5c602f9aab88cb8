"""The GLA-line Triton kernels at tiny sizes, against the float64 torch chunked path.

On a CPU machine they run through the Triton interpreter (see conftest.py); on a GPU they run
on it. Forward, backward (dq, dk, dv, dg, dh0), final state, decoding, packed sequences, GQA.
"""

from __future__ import annotations

import os
import types

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
if INTERPRET and type(triton.language.standard.cdiv).__name__ != "InterpretedFunction":
    # another test module imported triton before conftest.py set TRITON_INTERPRET: Triton's own jit
    # helpers are then compiled-mode only; test_gla_triton_child.py runs this file in a fresh process
    pytest.skip(
        "triton was imported before TRITON_INTERPRET was set; see test_gla_triton_child.py", allow_module_level=True
    )
DEVICE = "cpu" if INTERPRET else "cuda"

from fla_compile.lowering.common import chunks, launch  # noqa: E402  (after the interpreter switch)
from fla_compile.lowering.gla import triton_kernels as kern  # noqa: E402
from fla_compile.lowering.gla import triton_launch as gla_triton  # noqa: E402
from fla_compile.lowering.gla.torch_path import gla_line_forward  # noqa: E402
from tests.compare import rel  # noqa: E402

CFG = {"BT": 16, "BK": 16, "BV": 16, "num_warps": 4, "num_stages": 1}
KINDS = ["none", "scalar", "vector"]


@pytest.fixture(autouse=True)
def _poison():
    gla_triton.POISON = True
    yield
    gla_triton.POISON = False


def test_interpreter_active():
    if INTERPRET:
        assert type(kern.chunk_fwd_o_kernel).__name__ == "InterpretedFunction"


def make(kind, T, B=1, H=2, HK=2, K=16, V=32, cu=None, gate="mild", h0=True, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen)

    q, k, v = rnd(B, T, HK, K), rnd(B, T, HK, K), rnd(B, T, H, V)
    g = None
    if kind != "none":
        shape = (B, T, H) if kind == "scalar" else (B, T, H, K)
        g = {
            "mild": F.logsigmoid(rnd(*shape) + 1),
            "strong": torch.full(shape, -20.0),
            "range": -5 * torch.rand(*shape, generator=gen),
        }[gate]
    N = B if cu is None else len(cu) - 1
    init = rnd(N, H, K, V) if h0 else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    out = [q.to(dtype), k.to(dtype), v.to(dtype), g, init, cu_t]
    return [x.to(DEVICE) if x is not None else None for x in out]


def reference(q, k, v, g, kind, scale, h0, cu, do=None, dht=None):
    leaves = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in (q, k, v, g, h0)]
    o, ht = gla_line_forward(*leaves[:4], kind, scale, leaves[4], None if cu is None else cu.cpu())
    if do is None:
        return o, ht
    wrt = [x for x in leaves if x is not None]
    grads = torch.autograd.grad((o, ht), wrt, (do.cpu().double(), dht.cpu().double()))
    return o, ht, grads


CASES = {
    "T17": dict(T=17),
    "T40_gqa": dict(T=40, H=2, HK=1),
    "K20_V24": dict(T=19, K=20, V=24),
    "B2_no_h0": dict(T=21, B=2, h0=False),
    "varlen": dict(T=37, cu=[0, 5, 22, 37]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_forward(kind, case):
    q, k, v, g, h0, cu = make(kind, **CASES[case])
    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=CFG)
    ro, rht = reference(q, k, v, g, kind, 0.3, h0, cu)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_backward(kind, case):
    q, k, v, g, h0, cu = make(kind, **CASES[case])
    do, dht = (
        torch.randn_like(v),
        torch.randn(
            cu.numel() - 1 if cu is not None else q.shape[0],
            *h0.shape[1:] if h0 is not None else (v.shape[2], q.shape[3], v.shape[3]),
        ),
    )
    dht = dht.to(DEVICE)
    grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht, config=CFG)
    *_, ref = reference(q, k, v, g, kind, 0.3, h0, cu, do, dht)
    ours = [x for x in grads if x is not None]
    assert len(ours) == len(ref)
    for name, a, b in zip(["dq", "dk", "dv", "dg" if g is not None else "dh0", "dh0"], ours, ref):
        assert a.shape == b.shape, name
        assert rel(a, b) < 1e-5, (name, rel(a, b))


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_three_tf32(kind, monkeypatch):
    """fp32 at "highest" with ``launch.FP32_HIGHEST = "tf32x3"`` (every product by three tf32 ones, see
    ``common/dots.py``): forward and gradients within fp32's tolerance of fp64, packed sequences, GQA."""
    from fla_compile.lowering.common import launch

    monkeypatch.setattr(launch, "FP32_HIGHEST", "tf32x3")
    monkeypatch.setattr(launch, "FP32_SPLIT_DIMS", (16, 32))  # the split at these small dims too
    monkeypatch.setattr(gla_triton, "FP32_SPLIT", True)
    q, k, v, g, h0, cu = make(kind, T=37, H=2, HK=1, cu=[0, 5, 22, 37])
    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=CFG)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    grads = [x for x in gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht, config=CFG) if x is not None]
    ro, rht, ref = reference(q, k, v, g, kind, 0.3, h0, cu, do, dht)
    errs = [rel(o, ro), rel(ht, rht)] + [rel(a, b) for a, b in zip(grads, ref)]
    assert len(grads) == len(ref) and max(errs) < 1e-5, errs


@pytest.mark.parametrize("cu", [None, [0, 3, 45], [0, 0, 33, 45]], ids=["batch", "packed", "packed-empty"])
def test_head_decay(cu, monkeypatch):
    """One decay per head broadcast over batch and steps (retention's, ``expand``-ed): the kernels form its in-chunk
    cumsum from the step (gate id 3, ``HEAD_DECAY``). Forward and gradients against fp64 and against the scalar-gate
    path (gate id 1, reading a cumsum), partial chunks, packed sequences, GQA."""
    q, k, v, _, h0, cu_t = make("scalar", T=45, B=1 if cu else 2, H=2, HK=1, cu=cu)
    B, T, H = v.shape[:3]
    g = torch.tensor([-0.1, -0.7], device=v.device).reshape(1, 1, H).expand(B, T, H)
    assert gla_triton._per_head(g)
    monkeypatch.setattr(gla_triton, "HEAD_DECAY", True)
    assert gla_triton._common(q, k, v, g, "scalar")[-1] == 3  # gate id 3 is what runs
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(gla_triton, "HEAD_DECAY", on)
        o, ht = gla_triton.chunk_forward(q, k, v, g, "scalar", 0.3, h0, cu_t, config=CFG)
        grads = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.3, h0, cu_t, do, dht, config=CFG)
        runs[on] = [o, ht, *grads]
    ro, rht, ref = reference(q, k, v, g.contiguous(), "scalar", 0.3, h0, cu_t, do, dht)
    for name, a, b, r in zip(["o", "ht", "dq", "dk", "dv", "dg", "dh0"], runs[True], runs[False], [ro, rht, *ref]):
        assert a.shape == b.shape, name
        assert rel(a, r) < 1e-5 and rel(a, b) < 1e-5, (name, rel(a, r), rel(a, b))


@pytest.mark.parametrize("head_decay", [True, False], ids=["gate-id-3", "gate-id-1"])
def test_scalar_gate_gradient_skipped(head_decay, monkeypatch):
    """``need_dgate=False`` (a decay that takes no gradient: RetNet's, Lightning's): the dq/dk kernel forms no gate
    gradient (``DG``), dg is None, and dq, dk, dv, dh0 match the run that forms it (on a GPU not bitwise: dk's sum
    is contracted into FMAs differently) and fp64."""
    monkeypatch.setattr(gla_triton, "HEAD_DECAY", head_decay)
    q, k, v, _, h0, cu = make("scalar", T=45, B=1, H=2, HK=1, cu=[0, 3, 45])
    B, T, H = v.shape[:3]
    g = torch.tensor([-0.1, -0.7], device=v.device).reshape(1, 1, H).expand(B, T, H)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    full = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.3, h0, cu, do, dht, config=CFG)
    part = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.3, h0, cu, do, dht, config=CFG, need_dgate=False)
    assert full[3] is not None and part[3] is None
    *_, ref = reference(q, k, v, g.contiguous(), "scalar", 0.3, h0, cu, do, dht)
    for name, a, b, r in zip(["dq", "dk", "dv", "dg", "dh0"], full, part, ref):
        if name != "dg":
            assert rel(b, a) < 1e-6 and rel(b, r) < 1e-5, (name, rel(b, a), rel(b, r))


@pytest.mark.parametrize("kind", KINDS)
def test_heads_inner_launch_order(kind, monkeypatch):
    """The output, dv and dq/dk kernels in a 1-D grid with a chunk's heads side by side (``chunks.HEADS_INNER``): the
    same programs in another order, so the 3-D grid's outputs and gradients (packed, GQA, two V blocks, two K blocks
    interpreted: a scalar gate's dg comes in one column per K block). Bitwise where interpreted; compiled, the two
    orders are two builds (HEADS_INNER is a constexpr), and on the H200 the vector gate's dg of a head of 20 in a
    masked block of 64 differed in its last bits (1.9e-6; each order bitwise repeatable, memcheck clean), where a
    wrong program mapping differs by O(1)."""
    q, k, v, g, h0, cu = make(kind, T=45, H=2, HK=1, K=20, cu=[0, 3, 45])  # V = 32, K = 20 at blocks of 16
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    runs = {}
    for inner in (True, False):
        monkeypatch.setattr(chunks, "HEADS_INNER", inner)
        o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=CFG)
        grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht, config=CFG)
        runs[inner] = [o, ht, *[x for x in grads if x is not None]]
    assert all(torch.equal(a, b) if INTERPRET else rel(a, b) < 1e-6 for a, b in zip(runs[True], runs[False]))


def test_head_decay_only_for_a_broadcast_gate():
    """Near misses keep the scalar-gate path: a gate broadcast over the batch but not the steps, or a dense one."""
    per_step = torch.randn(1, 9, 2).expand(3, 9, 2)
    assert not gla_triton._per_head(per_step) and not gla_triton._per_head(torch.randn(3, 9, 2))
    assert gla_triton._per_head(torch.randn(2).reshape(1, 1, 2).expand(3, 9, 2))
    assert gla_triton._per_head(torch.randn(1, 1, 2))  # one step of one sequence: one value per head anyway


@pytest.mark.parametrize("BT", [32, 64])
def test_vector_gate_sub_chunks(BT):
    """gla with chunks of 2 or 4 sub-chunks: off-diagonal blocks by dots, partial chunks, 2 K tiles, packed."""
    q, k, v, g, h0, cu = make("vector", T=45, H=2, HK=1, K=20, V=16, cu=[0, 3, 45])
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    cfg = dict(CFG, BT=BT)
    o, ht = gla_triton.chunk_forward(q, k, v, g, "vector", 0.3, h0, cu, config=cfg)
    grads = gla_triton.chunk_backward(q, k, v, g, "vector", 0.3, h0, cu, do, dht, config=cfg)
    ro, rht, ref = reference(q, k, v, g, "vector", 0.3, h0, cu, do, dht)
    for a, b in zip((o, ht, *grads), (ro, rht, *ref)):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("BT", [32, 64])
def test_A_pairs_inner(BT):
    """``A_pairs_inner``: the A kernel's blocks of a chunk side by side in a flat grid, the same programs in another
    order, so bitwise the 3-D grid's A and output (rwkv6's bonus too; the backward recomputes A by the same
    launcher)."""
    q, k, v, g, h0, cu = make("vector", T=45, H=2, HK=1, K=20, V=16, cu=[0, 3, 45])
    u = torch.randn(2, 20, device=v.device)
    runs = {}
    for inner in (True, False):
        cfg = dict(CFG, BT=BT, A_pairs_inner=inner)
        for bonus in (None, u):
            A = gla_triton.saved_A_like(q, v)
            o, ht = gla_triton.chunk_forward(q, k, v, g, "vector", 0.3, h0, cu, config=cfg, A_out=A, bonus=bonus)
            runs.setdefault(inner, []).extend([o, ht, A])
    assert runs[True][2].abs().sum() > 0 and runs[True][5].abs().sum() > 0  # A was kept, both forms
    assert all(torch.equal(a, b) for a, b in zip(runs[True], runs[False]))


@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_gate_range_down_to_minus5(kind):
    q, k, v, g, h0, cu = make(kind, T=40, gate="range", seed=3)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht, config=CFG)
    *_, ref = reference(q, k, v, g, kind, 0.3, h0, cu, do, dht)
    for a, b in zip(grads, ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("BT", [16, 32, 64])
def test_factored_A(BT, monkeypatch):
    """``FACTORED_A``: the output kernel forms the A of the chunks whose gate spread allows one dot (the A kernel
    skips them) and reads the others' from the A kernel. Mild gates with a run of -20 steps across packed sequences
    (some chunks of each kind), K in two tiles: o, the final state and the A kept for the backward equal the A
    kernel's within fp32 rounding and fp64; the backward on the kept A equals fp64 and, with ``FACTORED_BWD`` (the
    intra-chunk backward factored the same way), the sub-chunk form's gradients within fp32 rounding."""
    q, k, v, g, h0, cu = make("vector", T=70, H=2, HK=1, K=20, V=16, cu=[0, 3, 41, 70])
    g[:, 20:30] = -20.0
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    cfg = dict(CFG, BT=BT)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(gla_triton, "FACTORED_A", on)
        A = gla_triton.saved_A_like(q, v)
        o, ht = gla_triton.chunk_forward(q, k, v, g, "vector", 0.3, h0, cu, config=cfg, A_out=A)
        runs[on] = (o, ht, A)
    assert runs[True][2].abs().sum() > 0
    for a, b in zip(runs[True], runs[False]):
        assert rel(a, b) < 1e-6
    ro, rht, ref = reference(q, k, v, g, "vector", 0.3, h0, cu, do, dht)
    assert rel(runs[True][0], ro) < 1e-5 and rel(runs[True][1], rht) < 1e-5
    bwd = {}
    for on in (True, False):  # FACTORED_BWD: the intra-chunk backward kernel's factored chunks
        monkeypatch.setattr(gla_triton, "FACTORED_BWD", on)
        bwd[on] = gla_triton.chunk_backward(q, k, v, g, "vector", 0.3, h0, cu, do, dht, config=cfg, A=runs[True][2])
    for a, b, r in zip(bwd[True], bwd[False], ref):
        assert rel(a, r) < 1e-5 and rel(a, b) < 1e-6


def test_factored_bwd_from_the_table(monkeypatch):
    """``FACTORED_BWD`` None (shipped): the table's ``intra_factored`` decides whether the intra backward kernel
    takes the chunks' gate spreads (and forms the factored chunks in one program); True / False override it. The
    forward's output kernel factors wherever ``FACTORED_A`` is on, whatever the table."""
    seen = []
    real_fitted = gla_triton.launch.fitted

    def fitted(kernel, grid, *args, **kw):
        name = gla_triton.launch._kernel_name(kernel)
        if name in ("chunk_gla_bwd_intra_kernel", "chunk_fwd_o_kernel"):
            seen.append((name, kw.get("FACTORED", kw.get("A_FACTORED", False))))
        return real_fitted(kernel, grid, *args, **kw)

    monkeypatch.setattr(gla_triton.launch, "fitted", fitted)
    q, k, v, g, h0, cu = make("vector", T=20)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    for switch, table, want in ((None, True, True), (None, False, False), (True, False, True), (False, True, False)):
        monkeypatch.setattr(gla_triton, "FACTORED_BWD", switch)
        cfg = dict(CFG, intra_factored=table)
        seen.clear()
        gla_triton.chunk_forward(q, k, v, g, "vector", 0.3, h0, cu, config=cfg)
        gla_triton.chunk_backward(q, k, v, g, "vector", 0.3, h0, cu, do, dht, config=cfg)
        assert seen == [("chunk_fwd_o_kernel", True), ("chunk_gla_bwd_intra_kernel", want)], (switch, table, seen)


@pytest.mark.parametrize(
    "kind, bonus, h0, scan",
    [("vector", False, True, False), ("vector", False, False, False), ("vector", True, True, False),
     ("scalar", False, True, False), ("scalar", False, False, True), ("none", False, True, False)],
)  # fmt: skip
def test_segmented_state_pass(kind, bonus, h0, scan, monkeypatch):
    """``SEGMENTS`` (dense inputs): the forward's state pass walks each sequence as segments from zero states, and
    the output kernel adds the state entering each segment. T = 70 in chunks of 16 as segments of 2, 2 and 1 chunks
    (the last one partial), K in two tiles; gla, rwkv6 (``bonus``), a scalar gate (``scan``: scanned in the kernels,
    gate id 4) and none, with and without an initial state: o and the final state equal one segment's within fp32
    rounding, and fp64."""
    q, k, v, g, init, _ = make(kind, T=70, B=2, H=2, HK=1, K=20, V=16, h0=h0)
    if kind == "vector":
        g[:, 20:30] = -20.0  # a chunk the output kernel cannot factor
    u = torch.randn(2, 20).to(DEVICE) if bonus else None
    launches = []
    real_fitted = gla_triton.launch.fitted

    def fitted(kernel, grid, *args, **kw):
        launches.append(gla_triton.launch._kernel_name(kernel))
        return real_fitted(kernel, grid, *args, **kw)

    monkeypatch.setattr(gla_triton.launch, "fitted", fitted)
    base = dict(CFG, fwd_scan=scan)
    cfg = dict(base, h_seg_heads=64, h_seg_chunks=2)
    assert gla_triton._segments(cfg, 2, 70, 2, 16, None, torch.bfloat16) == (3, 2)
    monkeypatch.setattr(gla_triton, "SEGMENTS", True)  # fp32 inputs: the tables never segment them
    seg = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, init, None, config=cfg, bonus=u)
    assert "segment_combine_kernel" in launches and ("chunk_cumsum_kernel" in launches) == (kind != "none" and not scan)
    launches.clear()
    monkeypatch.setattr(gla_triton, "SEGMENTS", None)
    one = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, init, None, config=base, bonus=u)
    assert "segment_combine_kernel" not in launches
    for a, b in zip(seg, one):
        assert rel(a, b) < 1e-5
    if not bonus:
        ro, rht = reference(q, k, v, g, kind, 0.3, init, None)
        assert rel(seg[0], ro) < 1e-5 and rel(seg[1], rht) < 1e-5


def test_segments_where(monkeypatch):
    """The segments a sequence (``_segments``): the smallest power of two that brings sequences x heads to the
    table's ``h_seg_heads``, segments of at least ``h_seg_chunks`` chunks (8), at least ``h_seg_min`` of them (2);
    none for packed sequences, fp32 inputs, a table without the option, or ``SEGMENTS`` False.
    ``SEGMENTS`` True: at ``SEG_HEADS`` whatever the table's ``h_seg_heads`` and ``h_seg_min``, from 2 segments, of
    the table's ``h_seg_chunks`` capped at ``SEG_CHUNKS``."""
    bf16, cfg = torch.bfloat16, {"h_seg_heads": 128}
    assert gla_triton._segments(cfg, 2, 8192, 16, 64, None, bf16) == (4, 32)
    assert gla_triton._segments(cfg, 1, 8192, 16, 64, None, bf16) == (8, 16)
    assert gla_triton._segments(cfg, 1, 2048, 16, 64, None, bf16) == (4, 8)  # 8 chunks a segment at least
    assert gla_triton._segments(cfg, 1, 1000, 16, 64, None, bf16) == (2, 8)  # 16 chunks, the last partial
    assert gla_triton._segments(cfg, 4, 2048, 16, 64, None, bf16) == (2, 16)
    four = dict(cfg, h_seg_min=4)
    assert gla_triton._segments(four, 4, 2048, 16, 64, None, bf16) == (1, 32)  # 2 segments: fewer than 4
    assert gla_triton._segments(four, 1, 1000, 16, 64, None, bf16) == (1, 16)
    assert gla_triton._segments(cfg, 8, 2048, 16, 64, None, bf16) == (1, 32)  # 128 already
    assert gla_triton._segments({}, 1, 8192, 16, 64, None, bf16) == (1, 128)
    assert gla_triton._segments(cfg, 1, 8192, 16, 64, torch.tensor([0, 8192]), bf16) == (1, 128)
    assert gla_triton._segments(cfg, 1, 8192, 16, 64, None, torch.float32) == (1, 128)
    monkeypatch.setattr(gla_triton, "SEGMENTS", False)
    assert gla_triton._segments(cfg, 1, 8192, 16, 64, None, bf16) == (1, 128)
    monkeypatch.setattr(gla_triton, "SEGMENTS", True)
    assert gla_triton._segments(four, 4, 2048, 16, 64, None, torch.float32) == (2, 16)
    assert gla_triton._segments({}, 1, 8192, 16, 64, None, bf16) == (8, 16)
    # forced segments take the table's least chunks a segment only up to SEG_CHUNKS (sm90's vector asks for 32)
    assert gla_triton._segments(dict(cfg, h_seg_chunks=32), 1, 1100, 4, 64, None, bf16) == (3, 8)


@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
def test_o_v_early(kind):
    """The table option ``o_v_early`` (the output kernel loads v's tile before its K loop) computes the same
    outputs, bitwise: only when the load is issued moves."""
    q, k, v, g, h0, cu = make(kind, T=40, H=2, K=20, cu=[0, 3, 40])
    outs = [gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=dict(CFG, o_v_early=e)) for e in (0, 1)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_factored_A_spread():
    """The cumsum kernel's gate spread per chunk and K tile (``gating.gate_range``) against torch: +inf for a tile
    with an infinite or NaN gate, so such a chunk is never factored."""
    q, k, v, g, h0, cu = make("vector", T=40, H=2, K=20, cu=[0, 3, 40])
    g[:, 10] = -70.0
    g[:, 25, 1, 3] = float("-inf")
    g[:, 33, 0, 5] = float("nan")
    cfg = dict(CFG, BT=16, cumsum_BK=16)
    _, info, _, NS, _ = chunks.chunk_meta(1, 40, cu, 16, q.device)
    gc, _, span = gla_triton._gate_cumsum(g, 2, info, NS, 2, 20, 16, q.device, cfg, spread=True)
    BK = launch.head_block(20, 16)  # two tiles of 16 interpreted; compiled, one masked block of 64
    assert span.shape == (NS, launch.cdiv(20, BK), 2)
    bounds = [(0, 3), (3, 19), (19, 35), (35, 40)]
    for s, (a, b) in enumerate(bounds):
        c = g[0, a:b].cumsum(0)
        for j, ks in enumerate(slice(i, min(i + BK, 20)) for i in range(0, 20, BK)):
            want = (c[:, :, ks].amax(0) - c[:, :, ks].amin(0)).amax(-1)
            got = span[s, j]
            for h in range(2):
                if torch.isfinite(want[h]):
                    assert torch.allclose(got[h], want[h], rtol=1e-6)
                else:
                    assert got[h] == float("inf")


SCAN_CASES = {**CASES, "packed-empty": dict(T=45, cu=[0, 0, 33, 45]), "strong": dict(T=33, gate="strong"),
              "range": dict(T=70, gate="range")}  # fmt: skip


WALK_CASES = {**CASES, "packed-empty": dict(T=45, cu=[0, 0, 33, 45]), "T70_V48": dict(T=70, K=32, V=48),
              "strong": dict(T=40, gate="strong")}  # fmt: skip


@pytest.mark.parametrize("case", list(WALK_CASES))
@pytest.mark.parametrize("gid", [0, 1, 2, 3, 4])
def test_forward_walk(gid, case, monkeypatch):
    """``FWD_WALK``: the forward in one pass (``chunk_fwd_walk_kernel``, the state in registers) equals fp64 and
    the two-pass form (state pass, then output kernel) within fp32 rounding; gate ids 0 (none), 1 (a cumsum kernel),
    2 (per key dim: the walk reads A from its kernel), 3 (one decay per head) and 4 (the kernels scan the gate); V
    split into blocks (V = 48 on blocks of 16); gates of -20 a step."""
    monkeypatch.setattr(gla_triton, "HEAD_DECAY", gid == 3)
    monkeypatch.setattr(gla_triton, "SCALAR_SCAN_IN_KERNELS", gid == 4)
    kind = {0: "none", 2: "vector"}.get(gid, "scalar")
    case = WALK_CASES[case]
    if kind == "none" and "gate" in case:
        pytest.skip("no gate")
    q, k, v, g, h0, cu = make(kind, **case)
    if gid == 3:
        B, T, H = v.shape[:3]
        g = torch.linspace(-0.05, -3.0, H, device=v.device).reshape(1, 1, H).expand(B, T, H)
    cfg = dict(CFG, walk_BV=16)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(gla_triton, "FWD_WALK", on)
        runs[on] = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=cfg)
    ro, rht = reference(q, k, v, None if g is None else g.contiguous(), kind, 0.3, h0, cu)
    for name, a, b, r in zip(["o", "ht"], runs[True], runs[False], [ro, rht]):
        assert torch.isfinite(a).all(), name
        assert rel(a, r) < 1e-5 and rel(a, b) < 1e-5, (name, rel(a, r), rel(a, b))


def test_forward_walk_where(monkeypatch):
    """The walk runs where the table asks for it and its programs fill their waves (``WALK_PER_SM`` an SM) to the
    table's ``walk_fill``, for half-precision inputs at K <= 128; ``FWD_WALK`` forces either form (K > 128 never
    walks)."""
    cuda, cpu, bf16 = torch.device("cuda", 0), torch.device("cpu"), torch.bfloat16
    cfg = {"fwd_walk": True, "walk_BV": 64}  # walk_fill 0.7 by default; waves of 264 programs at 132 SMs
    assert gla_triton.FWD_WALK is None and gla_triton.WALK_PER_SM == 2
    monkeypatch.setattr(gla_triton.launch, "sm_count", lambda device: 132)
    assert gla_triton._walk(cfg, 8, 16, 128, 128, 1, cuda, bf16)  # 256 programs: 0.97 of a wave
    assert gla_triton._walk(cfg, 6, 16, 128, 128, 1, cuda, bf16)  # 192: 0.73
    assert not gla_triton._walk(cfg, 5, 16, 128, 128, 1, cuda, bf16)  # 160: 0.61
    assert not gla_triton._walk(cfg, 9, 16, 128, 128, 1, cuda, bf16)  # 288: two waves, 0.55
    assert gla_triton._walk(cfg, 12, 16, 128, 128, 1, cuda, bf16)  # 384: 0.73
    assert gla_triton._walk(dict(cfg, walk_fill=0.45), 4, 16, 128, 128, 0, cuda, bf16)  # 128: 0.48
    assert not gla_triton._walk(dict(cfg, walk_fill=0.45), 3, 16, 128, 128, 0, cuda, bf16)  # 96: 0.36
    assert not gla_triton._walk(cfg, 8, 16, 128, 128, 1, cuda, torch.float32)  # measured in half precision only
    assert not gla_triton._walk({}, 8, 16, 128, 128, 1, cuda, bf16)  # not asked for
    assert not gla_triton._walk(cfg, 8, 16, 256, 128, 1, cuda, bf16)  # K > 128
    assert gla_triton._walk(cfg, 8, 16, 128, 128, 2, cuda, bf16)  # a gate per key dim, where its table asks
    assert not gla_triton._walk(cfg, 8, 16, 128, 128, 0, cpu, bf16)
    monkeypatch.setattr(gla_triton, "FWD_WALK", True)
    assert gla_triton._walk({}, 1, 1, 64, 64, 0, cpu, bf16) and not gla_triton._walk({}, 1, 1, 256, 64, 0, cpu, bf16)
    monkeypatch.setattr(gla_triton, "FWD_WALK", False)
    assert not gla_triton._walk(cfg, 8, 16, 128, 128, 1, cuda, bf16)


def _count_cumsum_launches(monkeypatch) -> list:
    """A list that records the grid of every launch of the gate cumsum kernel from now on (the launches still run)."""
    launched = []
    real = gla_triton.kern.chunk_cumsum_kernel

    class Counted:
        def __getitem__(self, grid):
            launched.append(grid)
            return real[grid]

    monkeypatch.setattr(gla_triton.kern, "chunk_cumsum_kernel", Counted())
    return launched


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scalar_scan_in_kernels(case, monkeypatch):
    """``SCALAR_SCAN_IN_KERNELS``: a scalar gate goes to the chunk kernels as given (gate id 4), each scanning its
    chunk's log decays; no cumsum kernel runs. Forward and backward equal fp64 as closely as the cumsum kernel's form,
    and differ from that form by fp32 rounding only (the scans group the sums their own way)."""
    q, k, v, g, h0, cu = make("scalar", **SCAN_CASES[case])
    N = cu.numel() - 1 if cu is not None else q.shape[0]
    do = torch.randn_like(v)
    dht = torch.randn(N, v.shape[2], q.shape[3], v.shape[3]).to(DEVICE)
    cfg = dict(CFG, BT=64) if case == "strong" else CFG
    launched = _count_cumsum_launches(monkeypatch)
    runs = {}
    for on in (False, True):
        monkeypatch.setattr(gla_triton, "SCALAR_SCAN_IN_KERNELS", on)
        del launched[:]
        o, ht = gla_triton.chunk_forward(q, k, v, g, "scalar", 0.3, h0, cu, config=cfg)
        grads = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.3, h0, cu, do, dht, config=cfg)
        assert len(launched) == (0 if on else 2)
        runs[on] = [o, ht, *[x for x in grads if x is not None]]
    ro, rht, ref = reference(q, k, v, g, "scalar", 0.3, h0, cu, do, dht)
    names = ["o", "ht", "dq", "dk", "dv", "dg", "dh0"][: len(runs[True])]
    for name, a, b, r in zip(names, runs[True], runs[False], [ro, rht, *ref]):
        assert torch.isfinite(a).all(), name
        assert rel(a, r) < 1e-5, (name, rel(a, r))
        assert rel(a, b) < 1e-6, (name, rel(a, b))


@pytest.mark.parametrize("gid", [1, 3, 4])
def test_state_pass_decay_rows(gid, monkeypatch):
    """``h_decay_rows`` (scalar gates, FLA's order): the forward state pass decays v's rows instead of the keys'
    columns. Forward and final state against fp64 and within rounding of the keys' decay; packed, with an empty
    sequence and a partial chunk; gate ids 1 (a cumsum kernel), 3 (one decay per head) and 4 (the kernels scan the
    gate); whole K in one program and in blocks."""
    monkeypatch.setattr(gla_triton, "HEAD_DECAY", gid == 3)
    monkeypatch.setattr(gla_triton, "SCALAR_SCAN_IN_KERNELS", gid == 4)
    q, k, v, g, h0, cu = make("scalar", T=45, B=1, H=2, HK=1, K=32, cu=[0, 0, 3, 45])
    if gid == 3:
        B, T, H = v.shape[:3]
        g = torch.tensor([-0.1, -3.0], device=v.device).reshape(1, 1, H).expand(B, T, H)
    ro, rht = reference(q, k, v, g.contiguous(), "scalar", 0.3, h0, cu)
    for bk in (32, 16):  # K blocks of 16 at least: a GPU's smallest dot
        cfg = dict(CFG, BK=bk)
        runs = {on: gla_triton.chunk_forward(q, k, v, g, "scalar", 0.3, h0, cu, config=dict(cfg, h_decay_rows=on))
                for on in (True, False)}  # fmt: skip
        for name, a, b, r in zip(["o", "ht"], runs[True], runs[False], [ro, rht]):
            assert rel(a, r) < 1e-5 and rel(a, b) < 1e-5, (name, bk, rel(a, r), rel(a, b))


@pytest.mark.parametrize("kind,gid", [("scalar", 1), ("scalar", 3), ("scalar", 4), ("vector", 2), ("none", 0)])
def test_state_pass_full_chunks(kind, gid, monkeypatch):
    """Where every chunk has BT rows (no cu_seqlens, T a multiple of BT) the forward and backward state passes run
    unmasked (``chunks.FULL_CHUNKS``, ``chunks.state_chunk_rows``): bitwise the masked passes' outputs and gradients,
    against fp64 too; a partial last chunk, packed sequences or a gate per key dim (measured slower) keep the masks."""
    monkeypatch.setattr(gla_triton, "HEAD_DECAY", gid == 3)
    monkeypatch.setattr(gla_triton, "SCALAR_SCAN_IN_KERNELS", gid == 4)
    seen = []
    real_fitted = gla_triton.launch.fitted

    def fitted(kernel, grid, *args, **kw):
        if gla_triton.launch._kernel_name(kernel) in ("chunk_fwd_h_kernel", "chunk_bwd_dh_kernel"):
            seen.append(kw["FULL_CHUNKS"])
        return real_fitted(kernel, grid, *args, **kw)

    monkeypatch.setattr(gla_triton.launch, "fitted", fitted)
    for T, cu, full in ((32, None, True), (31, None, False), (32, [0, 16, 32], False)):
        q, k, v, g, h0, cu_t = make(kind, T=T, cu=cu)
        if gid == 3:
            g = torch.tensor([-0.1, -3.0], device=v.device).reshape(1, 1, 2).expand(*v.shape[:2], 2).contiguous()
        do, dht = torch.randn_like(v), torch.randn_like(h0)
        runs = {}
        for on in (True, False) if full else (True,):  # not full: the switch on launches what off would (seen)
            monkeypatch.setattr(chunks, "FULL_CHUNKS", on)
            seen.clear()
            o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu_t, config=CFG)
            grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu_t, do, dht, config=CFG)
            assert len(seen) == 3 and all(f == (full and on and gid != 2) for f in seen), (T, cu, on, seen)  # h, h, dh
            runs[on] = [o, ht, *[x for x in grads if x is not None]]
        if full:
            assert all(torch.equal(a, b) for a, b in zip(runs[True], runs[False])), (kind, gid, T, cu)
        ro, rht = reference(q, k, v, g, kind, 0.3, h0, cu_t)
        assert rel(runs[True][0], ro) < 1e-5 and rel(runs[True][1], rht) < 1e-5


def test_state_pass_fill_options(monkeypatch):
    """A state pass whose blocks ``fill_sms`` halved (few sequences x heads) takes ``<kernel>_fill_<option>`` launch
    options; at its configured blocks it keeps ``<kernel>_<option>``. Same results either way."""
    q, k, v, g, h0, cu = make("none", T=40)
    cfg = dict(CFG, BV=32, h_stages=2, h_fill_stages=4, dh_fill_warps=2)
    seen = {}
    real_fitted = gla_triton.launch.fitted

    def fitted(kernel, grid, *args, **kw):
        seen[gla_triton.launch._kernel_name(kernel)] = (kw.get("num_warps"), kw.get("num_stages"))
        return real_fitted(kernel, grid, *args, **kw)

    monkeypatch.setattr(gla_triton.launch, "fitted", fitted)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    outs = {}
    for halve in (False, True):
        if halve:  # as on a GPU with more SMs than programs
            monkeypatch.setattr(gla_triton.launch, "fill_sms", lambda dev, n, V, BV, K, BK, lo, per_sm: (BK, BV // 2))
        o, ht = gla_triton.chunk_forward(q, k, v, None, "none", 0.3, h0, cu, config=cfg)
        grads = gla_triton.chunk_backward(q, k, v, None, "none", 0.3, h0, cu, do, dht, config=cfg)
        outs[halve] = [o, ht, *[x for x in grads if x is not None]]
        h_opts, dh_opts = seen["chunk_fwd_h_kernel"], seen["chunk_bwd_dh_kernel"]
        assert h_opts[1] == (4 if halve else 2)
        assert dh_opts[0] == (2 if halve else cfg["num_warps"])
    for a, b in zip(outs[True], outs[False]):
        assert rel(a, b) < 1e-6


def test_option_lookup_order():
    """``_option``: a filled pass reads ``<kernel>_fill_head_<name>`` (one decay per head), then
    ``<kernel>_fill_<name>``; else ``<kernel>_head_<name>`` (one decay per head), then ``<kernel>_<name>``."""
    cfg = {"h_warps": 4, "h_head_warps": 2, "h_fill_warps": 8, "h_stages": 3, "h_fill_head_stages": 4}
    opt = gla_triton._option
    assert [opt(cfg, "h", "warps", 1, gid, filled) for gid in (1, 3) for filled in (False, True)] == [4, 8, 2, 8]
    assert [opt(cfg, "h", "stages", 1, gid, filled) for gid in (1, 3) for filled in (False, True)] == [3, 3, 3, 4]
    assert opt(cfg, "dh", "warps", 1, 3, True) == 1


def test_tile_lookup_order():
    """A kernel's K / V blocks are read as its options are: one decay per head (gate id 3) reads
    ``<kernel>_head_BK`` first, other gates never do (a sweep's ``dqk_head_BK`` variant once timed nothing)."""
    cfg = dict(CFG, dqk_BK=64, dqk_head_BK=128, dqk_head_BV=32)
    assert gla_triton._tile(cfg, "dqk", 256, 512, 3) == (128, 32)
    assert gla_triton._tile(cfg, "dqk", 256, 512, 2) == (64, cfg["BV"])
    # capped at the head dims' powers of two; compiled, a head of 16 takes a masked block of 64 (launch.head_block)
    assert gla_triton._tile(cfg, "dqk", 64, 16, 3) == (64, launch.head_block(16, 32))


def _benchmarks_importable():
    """benchmarks/ on sys.path (once), for the sweep helpers these tests check."""
    import pathlib
    import sys

    path = str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)


def test_sweep_merges_a_kernels_best_variants():
    """``sweep_gla_kernels.merges``: the pairs of a kernel's three best single variants, then all three; not a merge
    that sets one option two ways, nor one equal to a single variant."""
    _benchmarks_importable()
    import sweep_gla_kernels as sweep

    inner, k128, bv64 = {"dqk_heads_inner": True}, {"dqk_BK": 128, "dqk_stages": 2}, {"dqk_BV": 64, "dqk_stages": 2}
    assert sweep.merges([inner, k128, bv64]) == [{**inner, **k128}, {**inner, **bv64}, {**k128, **bv64},
                                                  {**inner, **k128, **bv64}]  # fmt: skip
    three = {"dqk_stages": 3}
    assert sweep.merges([k128, three, inner]) == [{**k128, **inner}, {**three, **inner}]  # stages 2 and 3: no merge
    assert sweep.merges([inner]) == [] and sweep.merges([inner, {"dqk_heads_inner": True}]) == []
    assert len(sweep.merges([inner, k128, bv64, three])) == 4  # the best three only


def test_sweep_times_singles_then_merges(monkeypatch, capsys):
    """``sweep_gla_kernels.sweep``'s control flow with its timing and launch recording stood in: a variant launching
    as the shipped config is skipped, the winners of a kernel are merged and the merge is kept where it is faster; a
    merge the budget cuts is said, not dropped in silence."""
    _benchmarks_importable()
    import sweep_gla_kernels as sweep

    singles = [("dqk", {"dqk_heads_inner": True}), ("dqk", {"dqk_BK": 128}), ("dqk", {"dqk_warps": 4}),
               ("dv", {"dv_warps": 8})]  # fmt: skip
    cost = {"dqk_heads_inner": -0.1, "dqk_BK": -0.05}  # dqk_warps 4 is the shipped value: it launches as shipped
    base = {"dqk_warps": 4}

    def ms(kind, xs, cfg, iters=3):
        return dict.fromkeys(sweep.NAMES, 0.0) | {"dqk": 1.0 + sum(cost.get(n, 0) for n in cfg)}

    monkeypatch.setattr(sweep, "variants", lambda kind, shipped: singles)
    monkeypatch.setattr(sweep, "kernel_ms", ms)
    monkeypatch.setattr(sweep, "launch_forms", lambda kind, xs, cfg: sorted(cfg.items()))
    rows, best = sweep.sweep("scalar", None, base, ms("scalar", None, base), "", float("inf"))
    assert [what for what, _, _ in rows] == ["dqk", "dqk", "dv", "dqk merged"]
    assert best["dqk"] == (pytest.approx(0.85), {"dqk_heads_inner": True, "dqk_BK": 128})
    assert best["dv"] == (0.0, {})  # no gain: not a win

    clock = iter(range(100))  # one tick a look at the clock: the deadline passes after the singles
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    rows, best = sweep.sweep("scalar", None, base, ms("scalar", None, base), "", 3.5)
    assert [what for what, _, _ in rows] == ["dqk", "dqk", "dv"]
    assert best["dqk"] == (pytest.approx(0.9), {"dqk_heads_inner": True})
    assert "budget reached before the merge dqk" in capsys.readouterr().out  # a cut merge is said, not silent


def test_sweep_skips_variants_that_launch_as_shipped():
    """``benchmarks/sweep_gla_kernels.launch_forms``: what a fwd+bwd would launch under a config, nothing run. A
    block option of one decay per head changes retention's dq/dk launch and not simple_gla's; an option at its
    shipped value changes nothing (the sweep skips both)."""
    _benchmarks_importable()
    import sweep_gla_kernels as sweep

    B, T, H, K, V = 1, 40, 2, 64, 64  # heads of 64: a head of 32 takes one block of 64 whatever the option
    q, k, v = (torch.randn(B, T, H, d) for d in (K, K, V))
    h0, do, dht = torch.randn(B, H, K, V), torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    gates = {"head": torch.tensor([-0.1, -0.5]).reshape(1, 1, H).expand(B, T, H), "scalar": -torch.rand(B, T, H)}
    for kind, g in gates.items():
        xs = (q, k, v, g, h0, do, dht)
        shipped = sweep.launch_forms(kind, xs, CFG)
        names = [f[0] for f in shipped]
        assert "chunk_bwd_dqk_kernel" in names and "chunk_fwd_h_kernel" in names
        assert sweep.launch_forms(kind, xs, dict(CFG, dqk_head_BK=CFG["BK"])) == shipped
        changed = sweep.launch_forms(kind, xs, dict(CFG, dqk_head_BK=2 * CFG["BK"]))
        assert (changed != shipped) == (kind == "head")


def test_output_kernel_option_forms(monkeypatch):
    """The output kernel's options for rwkv6 (``bonus``: ``o_bonus_<name>``) and for fp32 inputs (``o_fp32_<name>``,
    before all) come before ``o_<name>``: launch options, the K / V blocks and ``v_early``. Each launch takes its
    form's."""
    cfg = dict(CFG, o_BK=16, o_maxnreg=80, o_stages=4, o_bonus_BK=32, o_bonus_maxnreg=128, o_bonus_v_early=True,
               o_fp32_maxnreg=168, o_fp32_BV=32)  # fmt: skip
    assert gla_triton._tile(cfg, "o", 64, 64) == (16, 16) and gla_triton._tile(cfg, "o", 64, 64, bonus=True) == (32, 16)
    assert gla_triton._tile(cfg, "o", 64, 64, bonus=True, fp32=True) == (32, 32)
    assert gla_triton._opts(cfg, "o", 2) == {"num_warps": 4, "num_stages": 4, "maxnreg": 80}
    assert gla_triton._opts(cfg, "o", 2, bonus=True) == {"num_warps": 4, "num_stages": 4, "maxnreg": 128}
    assert gla_triton._opts(cfg, "o", 2, bonus=True, fp32=True)["maxnreg"] == 168
    assert not gla_triton._option(cfg, "o", "v_early", False, 2) and gla_triton._option(cfg, "o", "v_early", 0, 2,
                                                                                           bonus=True)  # fmt: skip
    seen, real_fitted = {}, gla_triton.launch.fitted

    def fitted(kernel, grid, *args, **kw):
        if gla_triton.launch._kernel_name(kernel) == "chunk_fwd_o_kernel":
            seen.update(BK=args[14], BV=args[15], V_EARLY=kw.get("V_EARLY", False), cap=kw.get("maxnreg"))
        return real_fitted(kernel, grid, *args, **kw)

    monkeypatch.setattr(gla_triton.launch, "fitted", fitted)
    for dtype, bonus, want in (
        (torch.float16, False, dict(BK=16, BV=16, V_EARLY=False, cap=80)),
        (torch.float16, True, dict(BK=32, BV=16, V_EARLY=True, cap=128)),
        (torch.float32, False, dict(BK=16, BV=32, V_EARLY=False, cap=168)),
        (torch.float32, True, dict(BK=32, BV=32, V_EARLY=True, cap=168)),
    ):
        q, k, v, g, h0, cu = make("vector", T=20, K=64, V=64, dtype=dtype)  # heads of 32 take blocks of 64
        u = torch.randn(2, 64).to(DEVICE) if bonus else None
        gla_triton.chunk_forward(q, k, v, g, "vector", 0.3, h0, cu, config=cfg, bonus=u)
        assert seen == want, (dtype, bonus, seen)


def test_scalar_scan_per_pass_from_the_config(monkeypatch):
    """``SCALAR_SCAN_IN_KERNELS`` None (shipped): the config decides per pass. ``fwd_scan`` alone: the forward runs
    no cumsum kernel, the backward its one; the results equal the cumsum form's within fp32 rounding."""
    q, k, v, g, h0, cu = make("scalar", **SCAN_CASES["varlen"])
    do = torch.randn_like(v)
    dht = torch.randn(cu.numel() - 1, v.shape[2], q.shape[3], v.shape[3]).to(DEVICE)
    launched = _count_cumsum_launches(monkeypatch)
    monkeypatch.setattr(gla_triton, "SCALAR_SCAN_IN_KERNELS", None)
    runs = []
    for cfg in (CFG, dict(CFG, fwd_scan=True)):
        del launched[:]
        o, ht = gla_triton.chunk_forward(q, k, v, g, "scalar", 0.3, h0, cu, config=cfg)
        in_fwd = len(launched)
        grads = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.3, h0, cu, do, dht, config=cfg)
        runs.append((in_fwd, len(launched) - in_fwd, [o, ht, *[x for x in grads if x is not None]]))
    assert [r[:2] for r in runs] == [(1, 1), (0, 1)]
    for a, b in zip(runs[1][2], runs[0][2]):
        assert rel(a, b) < 1e-6


@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_strong_gates_no_overflow(kind):
    """-20 per step: in-chunk cumsums reach -640, nothing may overflow to inf or NaN."""
    q, k, v, g, h0, cu = make(kind, T=33, gate="strong")
    cfg = dict(CFG, BT=64)
    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=cfg)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht, config=cfg)
    ro, rht, ref = reference(q, k, v, g, kind, 0.3, h0, cu, do, dht)
    for x in (o, ht, *grads):
        assert torch.isfinite(x).all()
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    for a, b in zip(grads, ref):  # dg too: chunk-local, with no cancellation of large terms
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_decode(kind):
    q, k, v, g, h0, cu = make(kind, T=5, B=2, H=2, HK=1)
    o, ht = gla_triton.fused_recurrent(q, k, v, g, kind, 0.3, h0, config={"BV": 16})
    ro, rht = reference(q, k, v, g, kind, 0.3, h0, cu)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    state = h0.clone()
    o2, ht2 = gla_triton.fused_recurrent(q, k, v, g, kind, 0.3, state, inplace_state=True, config={"BV": 8})
    assert ht2.data_ptr() == state.data_ptr()
    # another V block: bitwise under the interpreter; a GPU may reduce over K in another tree for another tile width
    assert (torch.equal(o2, o) if INTERPRET else rel(o2, o) < 1e-6) and rel(state, rht) < 1e-5


@pytest.mark.parametrize("cu_lens", [None, [0, 3, 3, 9]], ids=["dense", "varlen"])
def test_decode_head_decay(cu_lens):
    """Retention's decays, one per head ``expand``-ed over batch and steps, decode as gate id 3 (read once, no copy
    of the gate): bitwise the same as the same gate made contiguous (gate id 1), and equal to the reference."""
    q, k, v, g, h0, cu = make("scalar", T=9, B=1 if cu_lens else 2, H=2, HK=1, cu=cu_lens)
    B, T, H = g.shape
    decay = torch.tensor([-0.1, -0.7], device=g.device)
    g_head = decay.view(1, 1, H).expand(B, T, H)
    assert gla_triton._common(q, k, v, g_head, "scalar")[-1] == 3
    o, ht = gla_triton.fused_recurrent(q, k, v, g_head, "scalar", 0.3, h0, cu_seqlens=cu, config={"BV": 16})
    o1, ht1 = gla_triton.fused_recurrent(
        q, k, v, g_head.contiguous(), "scalar", 0.3, h0, cu_seqlens=cu, config={"BV": 16}
    )
    assert torch.equal(o, o1) and torch.equal(ht, ht1)
    ro, rht = reference(q, k, v, g_head.contiguous(), "scalar", 0.3, h0, cu)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5


def test_decode_varlen_dispatch():
    q, k, v, g, h0, cu = make("vector", T=12, cu=[0, 1, 4, 12])
    o, ht = gla_triton.forward(q, k, v, g, "vector", 0.3, h0, cu)  # T <= 64: the fused recurrent kernel
    ro, rht = reference(q, k, v, g, "vector", 0.3, h0, cu)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    if INTERPRET and dtype == torch.bfloat16:
        pytest.skip("the Triton 3.9 interpreter computes tl.dot of bf16 blocks wrongly (numpy has no bf16)")
    q, k, v, g, h0, cu = make("vector", T=24, dtype=dtype)
    o, ht = gla_triton.chunk_forward(q, k, v, g, "vector", 0.3, h0, cu, config=CFG)
    ro, rht = reference(q, k, v, g, "vector", 0.3, h0, cu)
    assert o.dtype == dtype and rel(o, ro) < 1e-2 and rel(ht, rht) < 1e-2


@pytest.mark.parametrize("HK", [2, 1], ids=["heads", "gqa"])
def test_final_dqk_vector(HK, monkeypatch):
    """A gate per key dim with half inputs: the intra kernel writes dq, dk in the inputs' dtype
    (``FINAL_DQK_VECTOR``), bitwise the fp32 sums of the switch's off setting cast after, and within half's accuracy
    of fp64; with GQA (a group sum after) the sums stay fp32 and both settings agree bitwise."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 dots are wrong
    q, k, v, g, h0, cu = make("vector", T=40, H=2, HK=HK, cu=[0, 0, 7, 40], dtype=dtype)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(gla_triton, "FINAL_DQK_VECTOR", on)
        runs[on] = gla_triton.chunk_backward(q, k, v, g, "vector", 0.3, h0, cu, do, dht, config=CFG)
    for a, b in zip(runs[True], runs[False]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert runs[True][0].dtype == runs[True][1].dtype == dtype
    *_, ref = reference(q, k, v, g, "vector", 0.3, h0, cu, do, dht)
    assert rel(runs[True][0], ref[0]) < 1e-2 and rel(runs[True][1], ref[1]) < 1e-2


def test_deterministic():
    q, k, v, g, h0, cu = make("vector", T=40, H=2, HK=1)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    a = gla_triton.chunk_backward(q, k, v, g, "vector", 0.3, h0, cu, do, dht, config=CFG)
    b = gla_triton.chunk_backward(q, k, v, g, "vector", 0.3, h0, cu, do, dht, config=CFG)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_varlen_empty_sequence():
    """An empty packed sequence passes its initial state through and does not disturb the others."""
    q, k, v, g, h0, cu = make("scalar", T=37, cu=[0, 5, 5, 37])
    o, ht = gla_triton.chunk_forward(q, k, v, g, "scalar", 0.3, h0, cu, config=CFG)
    keep = torch.tensor([0, 2])
    cu2 = torch.tensor([0, 5, 37], dtype=torch.int32)
    o2, ht2 = gla_triton.chunk_forward(q, k, v, g, "scalar", 0.3, h0[keep].contiguous(), cu2, config=CFG)
    assert torch.equal(o, o2) and torch.equal(ht[keep], ht2) and torch.equal(ht[1], h0[1])
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    dq, dk, dv, dg, dh0 = gla_triton.chunk_backward(q, k, v, g, "scalar", 0.3, h0, cu, do, dht, config=CFG)
    assert torch.equal(dh0[1], dht[1])
    *_, ref = reference(q, k, v, g, "scalar", 0.3, h0, cu, do, dht)
    for a, b in zip((dq, dk, dv, dg, dh0), ref):
        assert rel(a.cpu(), b) < 1e-5


def test_chunk_meta_varlen():
    cu = torch.tensor([0, 5, 5, 40, 41], dtype=torch.int32)
    _, info, chunk_off, NS, N = chunks.chunk_meta(1, 41, cu, 16, "cpu")
    assert N == 4 and NS == 41 // 16 + 4 and chunk_off.tolist() == [0, 1, 1, 4, 5]
    # (sequence, chunk, bos, eos): the bounds in the slot's row; a padding slot (-1) carries the first sequence's
    assert info.tolist()[:5] == [[0, 0, 0, 5], [2, 0, 5, 40], [2, 1, 5, 40], [2, 2, 5, 40], [3, 0, 40, 41]]
    assert all(n == -1 and (bos, eos) == (0, 5) for n, _, bos, eos in info.tolist()[5:])


def test_chunk_meta_dense():
    cu, info, chunk_off, NS, N = chunks.chunk_meta(2, 40, None, 16, "cpu")
    assert (N, NS) == (2, 6) and cu.tolist() == [0, 40, 80] and chunk_off.tolist() == [0, 3, 6]
    assert info.tolist() == [
        [0, 0, 0, 40],
        [0, 1, 0, 40],
        [0, 2, 0, 40],
        [1, 0, 40, 80],
        [1, 1, 40, 80],
        [1, 2, 40, 80],
    ]


@pytest.mark.parametrize("bad", [[0, 5, 42], [1, 5, 41], [0, 30, 20, 41]], ids=["past_end", "not_from_0", "decreasing"])
def test_chunk_meta_refuses_bad_offsets(bad):
    """Offsets past the tokens (or not from 0, or decreasing) would make the kernels read and write out of bounds:
    refused on the host where the check is free (a CPU tensor), naming the argument and what was expected."""
    with pytest.raises(ValueError, match=r"cu_seqlens: expected non-decreasing offsets from 0 to at most B\*T = 41"):
        chunks.chunk_meta(1, 41, torch.tensor(bad, dtype=torch.int32), 16, "cpu")


@pytest.mark.parametrize(
    "family,fixed_gate",
    [("linear_attn", False), ("retention", False), ("simple_gla", False), ("gla", False),
     ("retention", True), ("simple_gla", True)],
    ids=["linear_attn", "retention", "simple_gla", "gla", "retention-fixed-decay", "simple_gla-fixed-gate"],
)  # fmt: skip
@pytest.mark.parametrize("T", [9, 70], ids=["decode", "chunked"])
def test_ops_use_kernels(family, fixed_gate, T, monkeypatch):
    """The ops' forward (fused recurrent for T <= 64, else chunked) and backward through the kernels
    (FLA_COMPILE_TRITON=interpret) match the torch path. A fixed gate takes no gradient (``need_dgate`` False: the
    dq/dk kernel forms no dg) and its grad stays None."""
    import fla_compile.ops as ops
    from fla_compile.lowering import gla_triton_enabled

    if not INTERPRET:
        pytest.skip("interpreter wiring test")
    q, k, v, g, h0, cu = make("vector" if family == "gla" else "scalar", T=T, H=2, HK=1)
    args = {"linear_attn": (), "retention": (torch.tensor([-0.1, -0.7]),), "simple_gla": (g,), "gla": (g,)}[family]
    learned = args if not fixed_gate else ()

    def run():
        leaves = [x.clone().requires_grad_() for x in (q, k, v, *learned, h0)]
        gates = args if fixed_gate else leaves[3:-1]
        o, ht = getattr(ops, family)(*leaves[:3], *gates, initial_state=leaves[-1], output_final_state=True)
        (o.square().sum() + ht.square().sum()).backward()
        if fixed_gate:
            assert all(x.grad is None for x in args)
        return [o, ht, *[x.grad for x in leaves]]

    ref = run()
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    assert gla_triton_enabled(q, k, v)
    ours = run()
    for a, b in zip(ours, ref):
        assert rel(a, b) < 1e-5


PROD_CFG = {"BT": 64, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}  # the untuned default of every table


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_production_tiles(kind):
    """The default tile config (BT = BK = BV = 64) and the default decode block (BV = 32) at K = V = 64,
    T = 2 chunks and a partial one, forward, backward and decoding, against the fp64 reference loop."""
    from fla_compile.reference import gla as loop

    q, k, v, g, h0, cu = make(kind, T=150, H=2, HK=1, K=64, V=64)
    gen = torch.Generator().manual_seed(7)
    do, dht = (torch.randn(x.shape, generator=gen).to(DEVICE) for x in (v, h0))
    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu, config=PROD_CFG)
    grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht, config=PROD_CFG)
    od, htd = gla_triton.fused_recurrent(q[:, :5], k[:, :5], v[:, :5], None if g is None else g[:, :5], kind, 0.3, h0,
                                         config={"BV": 32})  # fmt: skip

    leaves = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in (q, k, v, g, h0)]
    gates = {"none": {}, "scalar": {"g": leaves[3]}, "vector": {"gk": leaves[3]}}[kind]
    ro, rht = loop.gla(*leaves[:3], **gates, scale=0.3, initial_state=leaves[4], output_final_state=True)
    wrt = [x for x in leaves if x is not None]
    ref = torch.autograd.grad((ro, rht), wrt, (do.cpu().double(), dht.cpu().double()))
    dgates = {} if kind == "none" else {"g" if kind == "scalar" else "gk": leaves[3][:, :5]}
    rod, rhtd = loop.gla(*(x[:, :5] for x in leaves[:3]), **dgates, scale=0.3, initial_state=leaves[4],
                         output_final_state=True)  # fmt: skip
    assert rel(o.cpu(), ro) < 1e-5 and rel(ht.cpu(), rht) < 1e-5
    assert rel(od.cpu(), rod) < 1e-5 and rel(htd.cpu(), rhtd) < 1e-5
    ours = [x for x in grads if x is not None]
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert rel(a.cpu(), b) < 1e-5


def test_state_tile_fills_the_sms(monkeypatch):
    """``FILL_SMS``: the state passes' blocks halve (V first, then K, down to 32) while the grid still fits the SMs."""
    from fla_compile.lowering.common import launch

    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    cfg = {"BK": 64, "BV": 64, "h_BV": 128}
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(gla_triton, "FILL_SMS", False)
    assert gla_triton._state_tile(cfg, "h", 16, 128, 128, cuda) == (64, 128, False)  # off: the config's
    monkeypatch.setattr(gla_triton, "FILL_SMS", True)
    assert gla_triton._state_tile(cfg, "h", 16, 128, 128, cuda) == (64, 32, True)  # 32 -> 128 programs, not 256
    assert gla_triton._state_tile(cfg, "h", 4, 128, 128, cuda) == (32, 32, True)  # then K: 64 programs
    assert gla_triton._state_tile(cfg, "dh", 128, 128, 128, cuda) == (64, 64, False)  # 256 programs already: kept
    assert gla_triton._state_tile(cfg, "h", 4, 128, 128, torch.device("cpu")) == (64, 128, False)  # the interpreter
    # h_fill_per_sm 2: halved while two programs an SM fit (32 sequence-heads: 256 programs at V blocks of 32)
    two = dict(cfg, h_fill_per_sm=2)
    assert gla_triton._state_tile(two, "h", 32, 128, 128, cuda) == (64, 32, True)
    assert gla_triton._state_tile(cfg, "h", 32, 128, 128, cuda) == (64, 64, True)
    assert gla_triton._state_tile(two, "h", 8, 128, 128, cuda) == (32, 32, True)  # then K: 256 programs
    assert gla_triton._state_tile(two, "dh", 32, 128, 128, cuda) == (64, 64, False)  # the other pass: its own option
    assert gla_triton._state_tile(two, "h", 128, 128, 128, cuda) == (64, 128, False)  # full grids: kept
    # one decay per head (gid 3) reads h_head_fill_per_sm first
    head_one = dict(two, h_head_fill_per_sm=1)
    assert gla_triton._state_tile(head_one, "h", 32, 128, 128, cuda, gid=3) == (64, 64, True)
    assert gla_triton._state_tile(head_one, "h", 32, 128, 128, cuda, gid=1) == (64, 32, True)


# Options the CPU cannot exercise: each decides on the GPU's SMs (``fill_sms`` halves a state pass's blocks only on
# CUDA; the walk and the segments go by waves of SMs; forced segments cap ``h_seg_chunks`` at SEG_CHUNKS), so a
# stub cannot tell whether a launcher reads them
GPU_DECIDED = ("_fill_", "fill_per_sm", "fwd_walk", "walk_fill", "h_seg_min", "h_seg_heads", "h_seg_chunks")


def _other_value(name, value):
    """A different valid value of a launch option: whether a launcher reads it shows as a changed launch."""
    if isinstance(value, bool):
        return not value
    if name.endswith("warps"):
        return value * 2 if value < 8 else value // 2
    if name.endswith("stages"):
        return value + 1 if value < 4 else value - 1
    if name.endswith("maxnreg"):
        return value - 32
    if name.endswith(("_BK", "_BV")):
        return value // 2
    raise AssertionError(f"no other value known for {name} = {value!r}: teach _other_value")


def _table_option_cases():
    import json
    import pathlib

    path = pathlib.Path(gla_triton.__file__).parents[1] / "common" / "configs" / "sm90.json"
    table = json.loads(path.read_text())
    by_dims = table["by_dims"]
    # the first candidates as shipped, at K = V = 128 without that entry (dims "first"); not their shared blocks and
    # launch options, which every candidate must hold and the first one's kernels override with their own
    shared = ("BT", "BK", "BV", "num_warps", "num_stages")
    cases = [("first", 128, 128, kind, name) for kind, cands in table["chunk"].items() if not kind.startswith("_")
             for name in cands[0] if name not in shared and not any(s in name for s in GPU_DECIDED)]  # fmt: skip
    for dims, entry in by_dims.items():
        if dims.startswith("_"):
            continue
        K, V = (int(x) for x in dims[1:].split("V"))
        for kind, options in entry.get("chunk", {}).items():
            cases += [(dims, K, V, kind, name) for name in options if not any(s in name for s in GPU_DECIDED)]
    return cases


@pytest.mark.parametrize("dims,K,V,kind,name", _table_option_cases())
def test_every_table_option_is_read(dims, K, V, kind, name, monkeypatch):
    """Every GLA-line option of sm90's chunk table (the first candidates, the ``by_dims`` entries at their head
    dims) is read by a launcher: set to another value, a launch changes. An option nobody reads (a ``dqk_head_BK``
    before ``_tile`` read the ``_head_`` forms) would ship as a measured win that never runs. Launches recorded,
    none run (``benchmarks/launch_forms.py``). Forms are forced where an option needs them: rwkv6 for ``_bonus_``,
    fp32 inputs for ``_fp32_``, retention for ``_head_``, the walk for ``walk_*``, segments (and a sequence long
    enough for two) for ``_seg_``."""
    _benchmarks_importable()
    from launch_forms import launch_forms

    from fla_compile.lowering.common import autotune

    table = autotune.candidates("chunk", kind, "sm90", *((K, V) if dims != "first" else ()))[0]
    other = dict(table, **{name: _other_value(name, table[name])})
    T = 80
    if "walk_" in name:
        monkeypatch.setattr(gla_triton, "FWD_WALK", True)
    if "_seg_" in name:
        monkeypatch.setattr(gla_triton, "SEGMENTS", True)
        T = 2 * gla_triton.SEG_CHUNKS * table["BT"] + 16
    dtype = torch.float32 if "_fp32_" in name else torch.bfloat16
    B, H = 1, 2
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v, do = torch.randn(B, T, H, V, dtype=dtype), torch.randn(B, T, H, V, dtype=dtype)
    h0, dht = torch.randn(B, H, K, V), torch.randn(B, H, K, V)
    gates = {
        "vector": [("vector", F.logsigmoid(torch.randn(B, T, H, K)) / 16, None)],
        "scalar": [("scalar", F.logsigmoid(torch.randn(B, T, H)) / 16, None),
                   ("scalar", torch.tensor([-0.1, -0.5]).reshape(1, 1, H).expand(B, T, H), None)],  # retention
        "none": [("none", None, None)],
    }[kind]  # fmt: skip
    if "_bonus_" in name:
        gates = [("vector", gates[0][1], torch.randn(H, K))]
    elif "_head_" in name:
        gates = gates[1:]

    def forms(cfg):
        def step():
            for kind_, g, u in gates:
                gla_triton.chunk_forward(q, k, v, g, kind_, 0.1, h0, None, config=cfg, bonus=u)
                gla_triton.chunk_backward(q, k, v, g, kind_, 0.1, h0, None, do, dht, config=cfg, bonus=u)

        return launch_forms(step)

    assert forms(table) != forms(other), f"{dims} {kind}: no launch reads {name} (= {table[name]!r})"
