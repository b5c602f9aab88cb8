"""GPU tests of rwkv6 on the GLA-line Triton kernels at real sizes (marked ``gpu``, skipped without CUDA).

Through the op (``fla_compile.ops.rwkv6``: chunked forward for T > 64, the fused recurrent kernel for
decoding, the chunked backward), against the float64 reference loop: o, the final state and every
gradient (dr, dk, dv, dw, du, dh0); relative error < 1e-5 for fp32 inputs, < 5e-3 for bf16; decays from
mild to strong; buffers poisoned with NaN first; two runs bitwise identical.
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

TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3}


@pytest.fixture(autouse=True)
def _poison():
    from fla_compile.lowering.gla import triton_launch as gla_triton

    gla_triton.POISON = True
    yield
    gla_triton.POISON = False


def make(B, T, H, HK, K, V, dtype, decay, cu=None, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen)

    r, k, v = rnd(B, T, HK, K), rnd(B, T, HK, K), rnd(B, T, H, V)
    w = -5 * torch.rand(B, T, H, K, generator=gen) if decay == "range" else F.logsigmoid(rnd(B, T, H, K) + 2)
    u = rnd(H, K)
    N = B if cu is None else len(cu) - 1
    h0, dht = rnd(N, H, K, V), rnd(N, H, K, V)
    do = rnd(B, T, H, V)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    return [r.to(dtype), k.to(dtype), v.to(dtype), w, u, h0, cu_t, do.to(dtype), dht]


def reference(r, k, v, w, u, h0, cu, do, dht, scale):
    from fla_compile.reference.rwkv6 import rwkv6

    leaves = [x.detach().cpu().double().requires_grad_() for x in (r, k, v, w, u, h0)]
    if cu is None:
        o, ht = rwkv6(*leaves[:5], scale, leaves[5], True)
    else:
        bounds = cu.tolist()
        outs, states = [], []
        for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            o_n, h_n = rwkv6(*(x[:, s:e] for x in leaves[:4]), leaves[4], scale, leaves[5][n : n + 1], True)
            outs.append(o_n)
            states.append(h_n)
        o, ht = torch.cat(outs, 1), torch.cat(states, 0)
    grads = torch.autograd.grad((o, ht), leaves, (do.cpu().double(), dht.cpu().double()))
    return [o, ht, *grads]


def run(r, k, v, w, u, h0, cu, do, dht, scale):
    from fla_compile import ops

    leaves = [x.cuda().detach().requires_grad_() for x in (r, k, v, w, u, h0)]
    o, ht = ops.rwkv6(
        *leaves[:5], scale=scale, initial_state=leaves[5], output_final_state=True,
        cu_seqlens=None if cu is None else cu.cuda(),
    )  # fmt: skip
    torch.autograd.backward((o, ht), (do.cuda(), dht.cuda()))
    torch.cuda.synchronize()
    return [o, ht, *[x.grad for x in leaves]]


SHAPES = {
    "T300_K64": dict(B=2, T=300, H=4, HK=4, K=64, V=64),
    "T257_gqa_K128_V64": dict(B=1, T=257, H=4, HK=2, K=128, V=64),
    "T130_K64_V128": dict(B=1, T=130, H=2, HK=2, K=64, V=128),
    "decode_T40": dict(B=3, T=40, H=2, HK=2, K=64, V=64),
    "T150_gqa_K256_V512": dict(B=1, T=150, H=2, HK=1, K=256, V=512),  # past 256 (the GLA line's MAX_HEAD_DIM: 512)
    "T150_K256_V256": dict(B=1, T=150, H=2, HK=2, K=256, V=256),  # sm90's K256V256 options
}
NAMES = ["o", "ht", "dr", "dk", "dv", "dw", "du", "dh0"]


@pytest.mark.parametrize("decay", ["mild", "range"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_against_fp64_reference(shape, dtype, decay):
    xs = make(**SHAPES[shape], dtype=dtype, decay=decay)
    ref = reference(*xs, scale=0.1)
    ours = run(*xs, scale=0.1)
    for name, a, b in zip(NAMES, ours, ref):
        assert a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < TOL[dtype], (name, rel(a, b))
    again = run(*xs, scale=0.1)
    assert all(torch.equal(a, b) for a, b in zip(ours, again)), "not bitwise deterministic"


def test_packed_sequences():
    xs = make(B=1, T=400, H=2, HK=2, K=64, V=64, dtype=torch.bfloat16, decay="range", cu=[0, 7, 7, 200, 400])
    for name, a, b in zip(NAMES, run(*xs, scale=0.1), reference(*xs, scale=0.1)):
        assert rel(a, b) < TOL[torch.bfloat16], (name, rel(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", ["T300_K64", "T257_gqa_K128_V64"])
def test_factored_A(shape, dtype, monkeypatch):
    """``FACTORED_A_BONUS`` on (the default; forced, so the test holds if the default moves): the output kernel forms the A of rwkv6's factored chunks, the bonus on
    its diagonal. Mild decays with a band of -20 steps (the A kernel's chunks), packed, through the op: every output
    and gradient against fp64, bitwise repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "FACTORED_A_BONUS", True)
    sh = dict(SHAPES[shape], B=1)
    xs = make(**sh, dtype=dtype, decay="mild", cu=[0, 37, sh["T"] - 70, sh["T"]])
    xs[3][:, 100:110] = -20.0
    ref = reference(*xs, scale=0.1)
    ours, again = run(*xs, scale=0.1), run(*xs, scale=0.1)
    for name, a, b, c in zip(NAMES, ours, again, ref):
        assert torch.isfinite(a).all() and torch.equal(a, b), name
        assert rel(a, c) < TOL[dtype], (name, rel(a, c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_segmented_state_pass(dtype, monkeypatch):
    """``SEGMENTS`` forced: rwkv6's forward state pass in segments (the output kernel adds the state entering each,
    under q's exclusive gate), through the op: every output and gradient against fp64, bitwise repeatable."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    monkeypatch.setattr(gla_triton, "SEGMENTS", True)
    xs = make(B=1, T=1100, H=4, HK=4, K=64, V=64, dtype=dtype, decay="mild")
    ref = reference(*xs, scale=0.1)
    ours, again = run(*xs, scale=0.1), run(*xs, scale=0.1)
    for name, a, b, c in zip(NAMES, ours, again, ref):
        assert torch.isfinite(a).all() and torch.equal(a, b), name
        assert rel(a, c) < TOL[dtype], (name, rel(a, c))


def test_against_fla_chunk_rwkv6():
    """Where flash-linear-attention is installed: our forward and gradients agree with its chunk_rwkv6."""
    fla = pytest.importorskip("fla.ops.rwkv6")
    r, k, v, w, u, h0, _, do, dht = make(B=2, T=512, H=4, HK=4, K=64, V=64, dtype=torch.bfloat16, decay="mild")
    ours = run(r, k, v, w, u, h0, None, do, dht, scale=0.1)
    leaves = [x.cuda().detach().requires_grad_() for x in (r, k, v, w, u, h0)]
    o, ht = fla.chunk_rwkv6(*leaves[:5], scale=0.1, initial_state=leaves[5], output_final_state=True)
    torch.autograd.backward((o, ht), (do.cuda(), dht.cuda()))
    theirs = [o, ht, *[x.grad for x in leaves]]
    ref = reference(r, k, v, w, u, h0, None, do, dht, scale=0.1)
    for name, a, b, c in zip(NAMES, ours, theirs, ref):
        assert rel(a, c) <= max(2 * rel(b, c), 5e-3), (name, rel(a, c), rel(b, c))
