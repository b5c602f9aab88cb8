"""The Triton softmax-gradient kernel of the fused cross entropy (``lowering.loss.triton_kernels``):
lse, row loss and the logits' gradient against float64 ``F.cross_entropy`` (interpreter, tiny: the
vocabulary loop runs several blocks, the last one masked), and the whole ``linear_cross_entropy`` with
the kernel forced on against the torch chunks. A ``gpu`` test compares both at a real size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla_compile.lowering.loss import torch_path
from fla_compile.ops import linear_cross_entropy
from tests.compare import rel

C, V, BV = 6, 300, 64  # 300 = 4 blocks of 64 + 44 masked


def _ref(z, bias, y, scale, eps):
    """float64 lse, row loss and d sum(scale * row loss) / d z."""
    zz = (z.double() + (bias.double() if bias is not None else 0)).requires_grad_()
    rows = F.cross_entropy(zz, y, reduction="none", label_smoothing=eps)
    (g,) = torch.autograd.grad((rows * scale.double()).sum(), zz)
    return zz.detach().logsumexp(-1), rows.detach(), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [0.0, 0.25])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_fp64(dtype, eps, bias):
    from fla_compile.lowering.loss.triton_kernels import ce_softmax_grad

    gen = torch.Generator().manual_seed(0)
    wide = torch.randn(C, V + 7, generator=gen) * 4  # a row stride that is not V
    z = wide[:, :V]
    b = torch.randn(V, generator=gen) if bias else None
    y = torch.randint(0, V, (C,), generator=gen)
    y[-1] = V - 1  # a target in the masked last block
    scale = torch.rand(C, generator=gen) + 0.5
    scale[1] = 0  # an ignored row
    dz = torch.full((C, V), float("nan"), dtype=dtype)
    lse, loss = ce_softmax_grad(z, b, y, scale, eps, dz, block_v=BV)
    r_lse, r_loss, r_dz = _ref(z, b, y, scale, eps)
    assert rel(lse, r_lse) <= 1e-6 and rel(loss, r_loss) <= 1e-6
    # one step of dz's dtype: the interpreter truncates fp32 to bf16 (a GPU rounds to nearest: half a step)
    ulp = {torch.float32: 2**-23, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    assert dz.dtype == dtype and not dz.isnan().any()
    # fp32 arithmetic (~1e-6 relative to the terms p, eps / V, 1 - eps at these logits: they cancel), then
    # one rounding to dz's dtype (fp16 subnormals below 6e-5: an absolute 2**-24)
    terms = r_lse.new_zeros(C, V).scatter_(1, y[:, None], 1 - eps) + eps / V
    terms = (terms + (z.double() + (b.double() if bias else 0) - r_lse[:, None]).exp()) * scale.double()[:, None]
    tiny = 2**-24 if dtype == torch.float16 else 1e-12
    assert ((dz.double() - r_dz).abs() <= ulp * r_dz.abs() + 2e-6 * terms + tiny).all()
    assert (dz[1] == 0).all()
    assert torch.equal(z, wide[:, :V])  # the logits are read, never written
    dz2 = torch.full_like(dz, float("nan"))
    lse2, loss2 = ce_softmax_grad(z, b, y, scale, eps, dz2, block_v=BV)
    assert torch.equal(dz, dz2) and torch.equal(lse, lse2) and torch.equal(loss, loss2)  # bitwise
    lse3, loss3 = ce_softmax_grad(z, b, y, None, eps, None, block_v=BV)  # forward only: pass 1 alone
    assert torch.equal(lse, lse3) and torch.equal(loss, loss3)


def test_kernel_minus_inf_logits():
    """Logits of -inf (a -inf bias: banned tokens) have probability 0, as in torch.logsumexp, even in
    a whole block of them."""
    from fla_compile.lowering.loss.triton_kernels import ce_softmax_grad

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(C, V, generator=gen)
    b = torch.zeros(V)
    b[: BV + 5] = -float("inf")  # the first block all -inf, and some of the second
    y = torch.randint(BV + 5, V, (C,), generator=gen)
    scale = torch.ones(C)
    dz = torch.full((C, V), float("nan"))
    lse, loss = ce_softmax_grad(z, b, y, scale, 0.0, dz, block_v=BV)
    r_lse, r_loss, r_dz = _ref(z, b, y, scale, 0.0)
    assert rel(lse, r_lse) <= 1e-6 and rel(loss, r_loss) <= 1e-6 and rel(dz, r_dz) <= 1e-6
    assert (dz[:, : BV + 5] == 0).all()


def test_switch(monkeypatch):
    w32, w64 = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64)
    monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", "auto")
    assert not torch_path.use_triton_softmax_grad(w32, "native")  # auto: CUDA half products only
    monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", True)
    assert torch_path.use_triton_softmax_grad(w32, "native")  # forced (under TRITON_INTERPRET=1 here)
    assert not torch_path.use_triton_softmax_grad(w64, "native")  # never fp64: the kernel is fp32
    monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", False)
    assert not torch_path.use_triton_softmax_grad(w32, "native")


def _loss_and_grads(h, w, b, y, reduction, eps, go):
    loss = linear_cross_entropy(h, w, y, b, reduction=reduction, label_smoothing=eps, chunk_size=4)
    leaves = [h, w] + ([b] if b is not None else [])
    return [loss, *torch.autograd.grad((loss * go).sum(), leaves)]


@pytest.mark.parametrize(
    "dtype,reduction,eps,bias,mode",
    [
        (torch.float32, "mean", 0.0, False, None),
        (torch.float32, "none", 0.2, True, None),
        (torch.float32, "sum", 0.1, True, None),
        (torch.bfloat16, "mean", 0.1, False, None),
        (torch.bfloat16, "mean", 0.1, True, "half"),
        (torch.float16, "none", 0.0, False, "half"),
    ],
)
def test_linear_cross_entropy_kernel_vs_torch(monkeypatch, dtype, reduction, eps, bias, mode):
    """Forward and backward (``none``: the recomputing backward) with the kernel forced on, against the
    torch chunks: 10 rows in chunks of 4 (the last chunk partial), ignored rows. ``mode`` "half" forces
    CUDA's half products on the CPU: the kernel then writes dz in the weight's dtype, cast by neither product."""
    from fla_compile.lowering.loss import triton_kernels

    if mode is not None:
        monkeypatch.setattr(torch_path, "gemm_mode", lambda w: mode)
        monkeypatch.setattr(torch_path.Gemm, "SLICE", 64)  # several slices of the weight's gradient
        dtypes = []
        real_mm = torch_path.Gemm.input_grad
        monkeypatch.setattr(torch_path.Gemm, "input_grad", lambda g, dz: dtypes.append(dz.dtype) or real_mm(g, dz))

    calls = []
    real = triton_kernels.ce_softmax_grad
    monkeypatch.setattr(triton_kernels, "ce_softmax_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(triton_kernels, "CONFIG", {**triton_kernels.CONFIG, "BLOCK_V": BV})
    gen = torch.Generator().manual_seed(2)
    n, hd, v = 10, 8, 150
    h = torch.randn(n, hd, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(v, hd, generator=gen).to(dtype).requires_grad_()
    b = torch.randn(v, generator=gen).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=gen)
    y[::3] = -100
    go = torch.randn(n if reduction == "none" else (), generator=gen)
    outs = {}
    for flag in (False, True):
        monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", flag)
        outs[flag] = _loss_and_grads(h, w, b, y, reduction, eps, go)
    assert len(calls) == (6 if reduction == "none" else 3)  # 3 chunks; "none" runs them again backward
    if mode is not None:  # the products take dz in the weight's dtype from either path
        assert set(dtypes) == {dtype}
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: the same fp32 dz, the products' rounding
    for a, r in zip(outs[True], outs[False]):
        assert a.dtype == r.dtype and a.shape == r.shape and rel(a, r) <= tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_gpu_kernel_vs_torch(monkeypatch, dtype, eps):
    """N=2048, vocab 32000, hidden 512 on CUDA: "auto" takes the kernel for half weights; kernel and
    torch chunks agree with each other and with fp32 logits (bias too, chunks of 512)."""
    gen = torch.Generator().manual_seed(3)
    n, hd, v = 2048, 512, 32000
    h = torch.randn(n, hd, generator=gen).to("cuda", dtype).requires_grad_()
    w = (torch.randn(v, hd, generator=gen) * hd**-0.5).to("cuda", dtype).requires_grad_()
    b = (torch.randn(v, generator=gen) * 0.1).to("cuda", dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen).cuda()
    y[: n // 8] = -100
    monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", "auto")
    assert torch_path.use_triton_softmax_grad(w, torch_path.gemm_mode(w))
    outs = {}
    for flag in (False, "auto"):
        monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", flag)
        loss = linear_cross_entropy(h, w, y, b, label_smoothing=eps, chunk_size=512)
        outs[flag] = [loss, *torch.autograd.grad(loss, [h, w, b])]
    again = linear_cross_entropy(h, w, y, b, label_smoothing=eps, chunk_size=512)
    assert torch.equal(again, outs["auto"][0])
    leaves = [x.detach().float().requires_grad_() for x in (h, w, b)]
    ref = F.cross_entropy(leaves[0] @ leaves[1].T + leaves[2], y, label_smoothing=eps)
    refs = [ref, *torch.autograd.grad(ref, leaves)]
    for a, t, r in zip(outs["auto"], outs[False], refs):
        assert rel(a, t) <= 1e-2 and rel(a, r) <= 1e-2 and rel(t, r) <= 1e-2
    assert rel(outs["auto"][0], refs[0]) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kl_kernel_matches_fp64(dtype, temperature):
    """Row KL(p_t || p_s) and d sum(scale * KL) / d zs, with a teacher -inf logit (p_t = 0: no term)."""
    from fla_compile.lowering.loss.triton_kernels import kl_softmax_grad

    gen = torch.Generator().manual_seed(4)
    zs = torch.randn(C, V, generator=gen) * 3
    zt = (zs + torch.randn(C, V, generator=gen)).contiguous()
    zt[0, :BV] = -float("inf")
    scale = torch.rand(C, generator=gen) + 0.5
    scale[2] = 0
    dz = torch.full((C, V), float("nan"), dtype=dtype)
    kl = kl_softmax_grad(zs, zt, temperature, scale, dz, block_v=BV)
    s = (zs.double() / temperature).requires_grad_()
    ls, lt = s.log_softmax(-1), (zt.double() / temperature).log_softmax(-1)
    r_kl = torch.where(lt.exp() > 0, lt.exp() * (lt - ls), 0).sum(-1)
    (g,) = torch.autograd.grad((r_kl * scale.double()).sum(), s)
    r_dz = g / temperature
    assert rel(kl, r_kl.detach()) <= 1e-5
    assert rel(dz, r_dz) <= (5e-6 if dtype == torch.float32 else 8e-3)  # p_s - p_t: they cancel and (dz[2] == 0).all()
    assert torch.equal(kl, kl_softmax_grad(zs, zt, temperature, None, None, block_v=BV))  # forward only


@pytest.mark.parametrize("reduction,labels", [("mean", True), ("none", False)])
def test_linear_kl_div_kernel_vs_torch(monkeypatch, reduction, labels):
    from fla_compile.lowering.loss import triton_kernels
    from fla_compile.ops import linear_kl_div

    calls = []
    real = triton_kernels.kl_softmax_grad
    monkeypatch.setattr(triton_kernels, "kl_softmax_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(triton_kernels, "CONFIG", {**triton_kernels.CONFIG, "BLOCK_V": BV})
    gen = torch.Generator().manual_seed(5)
    n, v = 10, 150
    hs = torch.randn(n, 8, generator=gen).requires_grad_()
    ws = torch.randn(v, 8, generator=gen).requires_grad_()
    ht, wt = torch.randn(n, 5, generator=gen), torch.randn(v, 5, generator=gen)
    y = torch.randint(0, v, (n,), generator=gen) if labels else None
    if labels:
        y[::3] = -100
    go = torch.randn(n if reduction == "none" else (), generator=gen)
    outs = {}
    for flag in (False, True):
        monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", flag)
        loss = linear_kl_div(hs, ws, ht, wt, y, temperature=1.5, reduction=reduction, chunk_size=4)
        outs[flag] = [loss, *torch.autograd.grad((loss * go).sum(), [hs, ws])]
    assert len(calls) == (6 if reduction == "none" else 3)
    for a, r in zip(outs[True], outs[False]):
        assert a.dtype == r.dtype and a.shape == r.shape and rel(a, r) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_kl_kernel_vs_torch(monkeypatch):
    """linear_kl_div at N=1024, vocab 32000, bf16: kernel ("auto") and torch chunks against fp32 logits."""
    from fla_compile.ops import linear_kl_div

    gen = torch.Generator().manual_seed(6)
    n, v = 1024, 32000
    hs = torch.randn(n, 512, generator=gen).to("cuda", torch.bfloat16).requires_grad_()
    ws = (torch.randn(v, 512, generator=gen) / 16).to("cuda", torch.bfloat16).requires_grad_()
    ht = torch.randn(n, 256, generator=gen).to("cuda", torch.bfloat16)
    wt = (torch.randn(v, 256, generator=gen) / 12).to("cuda", torch.bfloat16)
    outs = {}
    for flag in (False, "auto"):
        monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", flag)
        loss = linear_kl_div(hs, ws, ht, wt, temperature=2.0, chunk_size=256)
        outs[flag] = [loss, *torch.autograd.grad(loss, [hs, ws])]
    leaves = [hs.detach().float().requires_grad_(), ws.detach().float().requires_grad_()]
    ls = F.log_softmax(leaves[0] @ leaves[1].T / 2, -1)
    lt = F.log_softmax(ht.float() @ wt.float().T / 2, -1)
    ref = F.kl_div(ls, lt, log_target=True, reduction="sum") / n
    refs = [ref, *torch.autograd.grad(ref, leaves)]
    for a, t, r in zip(outs["auto"], outs[False], refs):
        assert rel(a, t) <= 1e-2 and rel(a, r) <= 1e-2 and rel(t, r) <= 1e-2


def test_bias_grad_exact_under_fp16_products(monkeypatch):
    """The bias's gradient sums dz's columns from fp32 dz: in fp16 its entries below 6e-8 (most of them
    here: p of widely spread logits) would flush to 0. CUDA's fp16 products forced on the CPU; the fp32
    db of the chunks against float64, entry by entry."""
    monkeypatch.setattr(torch_path, "gemm_mode", lambda w: "half")
    monkeypatch.setattr(torch_path.Gemm, "logits", lambda g, h: torch.mm(h.float(), g.w.float().t()))  # fp32, as CUDA's
    monkeypatch.setattr(torch_path, "TRITON_SOFTMAX_GRAD", True)
    gen = torch.Generator().manual_seed(7)
    n, hd, v = 8, 8, 200
    h = (torch.randn(n, hd, generator=gen) * 4).half()
    w = torch.randn(v, hd, generator=gen).half()
    b = torch.randn(v, generator=gen).half()
    y = torch.randint(0, v, (n,), generator=gen)
    _, _, _, db = torch_path.cross_entropy_forward(h, w, b, y, -100, 0.0, "sum", False, True, 4)
    bd = b.double().requires_grad_()
    (r,) = torch.autograd.grad(F.cross_entropy(h.double() @ w.double().T + bd, y, reduction="sum"), [bd])
    assert db.dtype == torch.float32 and (r.abs() < 6e-8).float().mean() > 0.3
    assert ((db.double() - r).abs() <= 1e-4 * r.abs() + 1e-30).all()
