"""``common/dots.py``: the kernels' one matrix product, at each precision, against fp64 (interpreter on CPU; the
H200's tensor cores under ``-m gpu``)."""

import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language

from fla_compile.lowering.common.dots import _tf32_high, dot  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _split_kernel(x, hi, lo, N: tl.constexpr):
    o = tl.arange(0, N)
    b_x = tl.load(x + o)
    b_hi = _tf32_high(b_x)
    tl.store(hi + o, b_hi)
    tl.store(lo + o, b_x - b_hi)


@triton.jit
def _dot_kernel(a, b, c, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    o_m, o_n, o_k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    b_a = tl.load(a + o_m[:, None] * K + o_k[None, :])
    b_b = tl.load(b + o_k[:, None] * N + o_n[None, :])
    if ACC:  # accumulate onto the output's contents
        b_c = dot(b_a, b_b, tl.load(c + o_m[:, None] * N + o_n[None, :]), prec=PREC)
    else:
        b_c = dot(b_a, b_b, prec=PREC)
    tl.store(c + o_m[:, None] * N + o_n[None, :], b_c)


def test_tf32_split_is_exact():
    """x = hi + lo exactly, hi has its 13 low mantissa bits clear (exact in tf32), |lo| < 2^-10 |x|."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, generator=g) * torch.logspace(-30, 30, 256)
    x[:4] = torch.tensor([0.0, -0.0, 1.0, -3.0])
    x = x.to(DEV)
    hi, lo = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    _split_kernel[(1,)](x, hi, lo, 256)
    assert torch.equal(hi + lo, x)
    assert not (hi.view(torch.int32) & 0x1FFF).any()
    assert bool((lo.abs() <= x.abs() * 2.0**-10).all())


@pytest.mark.parametrize("acc", [False, True], ids=["new", "acc"])
@pytest.mark.parametrize("prec,tol", [("ieee", 1e-6), ("tf32x3", 2e-6), ("bf16x6", 1e-6), ("bf16x3", 6e-5)])
def test_dot_fp32_vs_fp64(prec, tol, acc):
    """fp32 operands: exact FMA loops, the three-tf32 split and the six bf16 parts' products within fp32's accuracy
    of the fp64 product, three bf16 products within ~2^-16 (one tf32 product is ~3e-4 off on tensor cores; the
    interpreter computes every product in fp32, so this checks the splits' algebra)."""
    g = torch.Generator().manual_seed(1)
    a, b, c0 = torch.randn(64, 32, generator=g), torch.randn(32, 64, generator=g), torch.randn(64, 64, generator=g)
    a, b = a.to(DEV), b.to(DEV)
    c = c0.clone().to(DEV) if acc else torch.full((64, 64), float("nan"), device=DEV)
    _dot_kernel[(1,)](a, b, c, 64, 64, 32, prec, acc)
    ref = a.double() @ b.double() + (c0.double().to(DEV) if acc else 0)
    err = ((c.double() - ref).norm() / ref.norm()).item()
    assert err < tol, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tf32x3_beats_tf32():
    """On tensor cores the splits are ~1e-7 off (six bf16 products too) where one tf32 product is ~3e-4 off: they
    buy fp32's accuracy; three bf16 products lie between. Onto a large accumulator as well (the bf16 forms add
    their small products apart)."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, 32, generator=g).cuda(), torch.randn(32, 64, generator=g).cuda()
    c0 = 30 * torch.randn(64, 64, generator=g).cuda()
    errs = {}
    for acc in (False, True):
        ref = a.double() @ b.double() + (c0.double() if acc else 0)
        for prec in ("tf32", "tf32x3", "bf16x6", "bf16x3"):
            c = c0.clone() if acc else torch.full((64, 64), float("nan"), device="cuda")
            _dot_kernel[(1,)](a, b, c, 64, 64, 32, prec, acc)
            errs[prec, acc] = ((c.double() - ref).norm() / ref.norm()).item()
    for acc in (False, True):
        assert errs["tf32x3", acc] < 2e-6 and errs["tf32", acc] > 10 * errs["tf32x3", acc], errs
        assert errs["bf16x6", acc] < 2e-6 and errs["bf16x3", acc] < 6e-5, errs
