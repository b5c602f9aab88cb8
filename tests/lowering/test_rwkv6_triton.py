"""rwkv6 through the GLA-line Triton kernels (``bonus=u``) at tiny sizes, against the float64 torch path.

On a CPU machine they run through the Triton interpreter (see conftest.py); on a GPU they run on it.
Forward, backward (dq, dk, dv, dw, dh0, du), final state, decoding, packed sequences, GQA, strong decays.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
if INTERPRET and type(triton.language.standard.cdiv).__name__ != "InterpretedFunction":
    pytest.skip(
        "triton was imported before TRITON_INTERPRET was set; see test_gla_triton_child.py", allow_module_level=True
    )
DEVICE = "cpu" if INTERPRET else "cuda"

from fla_compile.lowering.gla import triton_launch as gla_triton  # noqa: E402
from fla_compile.lowering.gla.torch_path import gla_line_forward  # noqa: E402
from tests.compare import rel  # noqa: E402

CFG = {"BT": 16, "BK": 16, "BV": 16, "num_warps": 4, "num_stages": 1}


@pytest.fixture(autouse=True)
def _poison():
    gla_triton.POISON = True
    yield
    gla_triton.POISON = False


def make(T, B=1, H=2, HK=2, K=16, V=16, cu=None, gate="mild", h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen)

    r, k, v = rnd(B, T, HK, K), rnd(B, T, HK, K), rnd(B, T, H, V)
    w = {"mild": F.logsigmoid(rnd(B, T, H, K) + 1), "strong": -20 * torch.rand(B, T, H, K, generator=gen)}[gate]
    u = rnd(H, K)
    N = B if cu is None else len(cu) - 1
    init = rnd(N, H, K, V) if h0 else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    return [x.to(DEVICE) if x is not None else None for x in (r, k, v, w, u, init, cu_t)]


def reference(r, k, v, w, u, scale, h0, cu, do=None, dht=None):
    leaves = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in (r, k, v, w, h0, u)]
    o, ht = gla_line_forward(*leaves[:4], "vector", scale, leaves[4], None if cu is None else cu.cpu(), bonus=leaves[5])
    if do is None:
        return o, ht
    wrt = [x for x in leaves if x is not None]
    return o, ht, torch.autograd.grad((o, ht), wrt, (do.cpu().double(), dht.cpu().double()))


CASES = {
    "T40_gqa": dict(T=40, H=2, HK=1),
    "varlen_no_h0": dict(T=37, cu=[0, 5, 22, 37], h0=False),
    "strong": dict(T=33, gate="strong"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward(case):
    r, k, v, w, u, h0, cu = make(**CASES[case])
    N = r.shape[0] if cu is None else cu.numel() - 1
    do = torch.randn_like(v)
    dht = torch.randn(N, v.shape[2], r.shape[3], v.shape[3], device=DEVICE)
    o, ht = gla_triton.chunk_forward(r, k, v, w, "vector", 0.3, h0, cu, config=CFG, bonus=u)
    dr, dk, dv, dw, dh0, du = gla_triton.chunk_backward(r, k, v, w, "vector", 0.3, h0, cu, do, dht, config=CFG, bonus=u)
    ro, rht, ref = reference(r, k, v, w, u, 0.3, h0, cu, do, dht)
    ours = [dr, dk, dv, dw] + ([dh0] if h0 is not None else []) + [du]
    for a in (o, ht, *ours):
        assert torch.isfinite(a).all()
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    for name, a, b in zip(["dr", "dk", "dv", "dw", "dh0" if h0 is not None else "du", "du"], ours, ref):
        assert a.shape == b.shape, name
        assert rel(a, b) < 1e-5, (name, rel(a, b))


def test_sub_chunks_and_saved_A():
    """Chunks of 2 sub-chunks (off-diagonal blocks by dots), 2 K tiles, packed; the backward reusing the
    forward's A (with the bonus on its diagonal)."""
    r, k, v, w, u, h0, cu = make(T=40, H=2, HK=1, K=20, V=8, cu=[0, 3, 40])
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    cfg = dict(CFG, BT=32)
    A = gla_triton.saved_A_like(r, v)
    o, ht = gla_triton.chunk_forward(r, k, v, w, "vector", 0.3, h0, cu, config=cfg, A_out=A, bonus=u)
    grads = gla_triton.chunk_backward(r, k, v, w, "vector", 0.3, h0, cu, do, dht, config=cfg, A=A, bonus=u)
    ro, rht, ref = reference(r, k, v, w, u, 0.3, h0, cu, do, dht)
    assert gla_triton.saved_A_valid(A, *v.shape[:3], 32, v.dtype, v.device)
    for a, b in zip((o, ht, *grads), (ro, rht, *ref)):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("BT", [16, 32, 64])
def test_factored_A(BT, monkeypatch):
    """``FACTORED_A_BONUS`` (on by default): rwkv6's output kernel forms the A of the chunks whose gate spread (0
    counted: the exclusive cumsum's first row is the reference) allows one dot, the bonus on its diagonal, and the
    A kernel the others'. Mild decays with a band of strong ones, packed, K in two tiles: o, the final state and the
    kept A equal the A kernel's within fp32 rounding and fp64; the backward on that A equals fp64."""
    r, k, v, w, u, h0, cu = make(T=70, H=2, HK=1, K=20, V=8, cu=[0, 3, 41, 70])
    w[:, 20:30] = -20.0
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    cfg = dict(CFG, BT=BT)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(gla_triton, "FACTORED_A_BONUS", on)
        A = gla_triton.saved_A_like(r, v)
        o, ht = gla_triton.chunk_forward(r, k, v, w, "vector", 0.3, h0, cu, config=cfg, A_out=A, bonus=u)
        runs[on] = (o, ht, A)
    assert runs[True][2].abs().sum() > 0
    for a, b in zip(runs[True], runs[False]):
        assert rel(a, b) < 1e-6, rel(a, b)
    ro, rht, ref = reference(r, k, v, w, u, 0.3, h0, cu, do, dht)
    assert rel(runs[True][0], ro) < 1e-5 and rel(runs[True][1], rht) < 1e-5
    grads = gla_triton.chunk_backward(r, k, v, w, "vector", 0.3, h0, cu, do, dht, config=cfg, A=runs[True][2],
                                      bonus=u)  # fmt: skip
    for a, b in zip(grads, ref):
        assert rel(a, b) < 1e-5


def test_decode():
    r, k, v, w, u, h0, _ = make(T=5, B=2, H=2, HK=1)
    o, ht = gla_triton.fused_recurrent(r, k, v, w, "vector", 0.3, h0, config={"BV": 8}, bonus=u)
    ro, rht = reference(r, k, v, w, u, 0.3, h0, None)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    r, k, v, w, u, h0, cu = make(T=12, cu=[0, 1, 4, 12])
    o, ht = gla_triton.forward(r, k, v, w, "vector", 0.3, h0, cu, bonus=u)  # T <= 64: fused recurrent
    ro, rht = reference(r, k, v, w, u, 0.3, h0, cu)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5


def test_op_uses_kernels(monkeypatch):
    """The op's forward (fused recurrent for T <= 64, chunked above) and backward through the kernels
    (FLA_COMPILE_TRITON=interpret) match the torch path, du and dh0 included."""
    import fla_compile.ops as ops

    if not INTERPRET:
        pytest.skip("interpreter wiring test")
    r, k, v, w, u, h0, _ = make(T=70, H=2, HK=1)

    def run():
        leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u, h0)]
        o, ht = ops.rwkv6(*leaves[:-1], initial_state=leaves[-1], output_final_state=True)
        (o.square().sum() + ht.square().sum()).backward()
        return [o, ht, *[x.grad for x in leaves]]

    ref = run()
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    ours = run()
    for a, b in zip(ours, ref):
        assert rel(a, b) < 1e-5
