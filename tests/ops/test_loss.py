"""The fused linear losses on the torch chunked path: forward and gradients against eager
``F.cross_entropy`` / ``F.kl_div`` of the materialized logits in float64, over several chunks."""

import math

import pytest
import torch
import torch.nn.functional as F

from fla_compile.lowering.loss import chunk_rows
from fla_compile.ops import linear_cross_entropy, linear_kl_div
from tests.compare import rel

N, HD, V = 13, 6, 11  # 13 rows in chunks of 4: three full chunks and one of a row


def _data(dtype, bias, gen, ignore=-100):
    h = torch.randn(N, HD, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(V, HD, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(V, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, V, (N,), generator=gen)
    y[::4] = ignore
    return h, w, b, y


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
def test_cross_entropy_matches_torch(dtype, tol, reduction, smoothing, bias):
    gen = torch.Generator().manual_seed(1)
    h, w, b, y = _data(dtype, bias, gen)
    loss = linear_cross_entropy(h, w, y, b, reduction=reduction, label_smoothing=smoothing, chunk_size=4)
    go = torch.randn(loss.shape, generator=gen, dtype=torch.float64)
    leaves = [h, w] + ([b] if bias else [])
    grads = torch.autograd.grad((loss.double() * go).sum(), leaves)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    logits = ref_leaves[0] @ ref_leaves[1].T + (ref_leaves[2] if bias else 0)
    ref = F.cross_entropy(logits, y, reduction=reduction, label_smoothing=smoothing)
    ref_grads = torch.autograd.grad((ref * go).sum(), ref_leaves)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel(loss, ref) <= tol
    for g, r, x in zip(grads, ref_grads, leaves):
        assert g.dtype == x.dtype and rel(g, r) <= tol


def test_cross_entropy_leading_dims_and_int32_labels():
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(2, 5, HD, generator=gen, dtype=torch.float64)
    w = torch.randn(V, HD, generator=gen, dtype=torch.float64)
    y = torch.randint(0, V, (2, 5), generator=gen, dtype=torch.int32)
    out = linear_cross_entropy(h, w, y, reduction="none", chunk_size=3)
    ref = F.cross_entropy((h @ w.T).reshape(-1, V), y.reshape(-1).long(), reduction="none").reshape(2, 5)
    assert out.shape == (2, 5) and rel(out, ref) <= 1e-12


def test_all_ignored_as_torch():
    """mean over no row: nan, as F.cross_entropy, with zero gradients; sum: 0."""
    gen = torch.Generator().manual_seed(3)
    h, w, _, _ = _data(torch.float64, False, gen)
    y = torch.full((N,), -100)
    loss = linear_cross_entropy(h, w, y, chunk_size=4)
    gh, gw = torch.autograd.grad(loss, [h, w])
    assert math.isnan(loss.item()) and gh.abs().sum() == 0 and gw.abs().sum() == 0
    assert linear_cross_entropy(h, w, y, reduction="sum").item() == 0


def test_ignore_index_inside_vocab():
    gen = torch.Generator().manual_seed(4)
    h, w, _, y = _data(torch.float64, False, gen, ignore=3)
    out = linear_cross_entropy(h, w, y, ignore_index=3, label_smoothing=0.1, chunk_size=5)
    ref = F.cross_entropy(h @ w.T, y, ignore_index=3, label_smoothing=0.1)
    assert rel(out, ref) <= 1e-12


def test_deterministic_and_chunk_independent():
    gen = torch.Generator().manual_seed(5)
    h, w, b, y = _data(torch.float32, True, gen)
    runs = []
    for chunk in (4, 4, 0):
        loss = linear_cross_entropy(h, w, y, b, label_smoothing=0.1, chunk_size=chunk)
        runs.append([loss, *torch.autograd.grad(loss, [h, w, b])])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))  # bitwise, same chunks
    assert all(rel(a, b.double()) <= 1e-5 for a, b in zip(runs[0], runs[2]))  # one chunk


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_gradcheck(reduction):
    gen = torch.Generator().manual_seed(6)
    h, w, b, y = _data(torch.float64, True, gen)

    def f(h, w, b):
        return linear_cross_entropy(h, w, y, b, reduction=reduction, label_smoothing=0.2, chunk_size=4)

    assert torch.autograd.gradcheck(f, (h, w, b))


def test_opcheck():
    gen = torch.Generator().manual_seed(7)
    h, w, b, y = _data(torch.float64, True, gen)
    op = torch.ops.fla_compile.linear_cross_entropy.default
    for red in ("mean", "none"):
        torch.library.opcheck(op, (h, w, b, y, -100, 0.1, red, True, True, 4))
    torch.library.opcheck(op, (h, w, None, y, -100, 0.0, "sum", True, False, 0))
    hs, ws = h.detach().requires_grad_(), w.detach().requires_grad_()
    ht, wt = torch.randn(N, 5, dtype=torch.float64), torch.randn(V, 5, dtype=torch.float64)
    kl = torch.ops.fla_compile.linear_kl_div.default
    for red in ("mean", "none"):
        torch.library.opcheck(kl, (hs, ws, ht, wt, y, -100, 2.0, red, True, True, 4))


def _kl_ref(hs, ws, ht, wt, y, temperature, reduction):
    ls = F.log_softmax(hs @ ws.T / temperature, -1)
    lt = F.log_softmax(ht @ wt.T / temperature, -1)
    rows = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)
    keep = (y != -100) if y is not None else torch.ones_like(rows, dtype=torch.bool)
    rows = torch.where(keep, rows, 0)
    return {"none": rows, "sum": rows.sum(), "mean": rows.sum() / keep.sum()}[reduction]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", [False, True])
def test_kl_div_matches_torch(dtype, tol, reduction, labels):
    gen = torch.Generator().manual_seed(8)
    hs, ws, _, y = _data(dtype, False, gen)
    ht = torch.randn(N, 5, generator=gen, dtype=torch.float64).to(dtype)
    wt = torch.randn(V, 5, generator=gen, dtype=torch.float64).to(dtype)
    y = y if labels else None
    loss = linear_kl_div(hs, ws, ht, wt, y, temperature=1.5, reduction=reduction, chunk_size=4)
    go = torch.randn(loss.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((loss.double() * go).sum(), [hs, ws])
    leaves = [hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()]
    ref = _kl_ref(*leaves, ht.double(), wt.double(), y, 1.5, reduction)
    ref_grads = torch.autograd.grad((ref * go).sum(), leaves)
    assert rel(loss, ref) <= tol
    for g, r in zip(grads, ref_grads):
        assert rel(g, r) <= tol


def test_kl_div_gradcheck():
    gen = torch.Generator().manual_seed(9)
    hs, ws, _, y = _data(torch.float64, False, gen)
    ht, wt = (
        torch.randn(N, 5, generator=gen, dtype=torch.float64),
        torch.randn(V, 5, generator=gen, dtype=torch.float64),
    )
    for red in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda a, b, red=red: linear_kl_div(a, b, ht, wt, y, temperature=0.7, reduction=red, chunk_size=4), (hs, ws)
        )


def test_chunk_rows():
    assert chunk_rows(16384, 151936) == 1024  # 1024 rows of fp32 logits: 622 MB
    assert chunk_rows(100, 151936) == 100 and chunk_rows(10, 7, chunk_size=4) == 4


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda h, w, y: linear_cross_entropy(h, w[:, :3], y), "hidden must end in the hidden size 3"),
        (lambda h, w, y: linear_cross_entropy(h, w, y[:5]), "labels must have the hidden states' leading shape"),
        (lambda h, w, y: linear_cross_entropy(h, w, y.float()), "labels must be an int64"),
        (lambda h, w, y: linear_cross_entropy(h, w, y, reduction="avg"), "reduction must be one of"),
        (lambda h, w, y: linear_cross_entropy(h, w, y, label_smoothing=2.0), "label_smoothing must be"),
        (lambda h, w, y: linear_cross_entropy(h, w, y, torch.zeros(3)), r"bias must be \[vocab\]"),
        (lambda h, w, y: linear_cross_entropy(h, w, y.clamp(0) + V), r"labels\[0\] = 11 is outside \[0, 11\)"),
        (lambda h, w, y: linear_kl_div(h, w, h, w, temperature=0), "temperature must be a number > 0"),
        (lambda h, w, y: linear_kl_div(h, w, h, w.requires_grad_()), "gradients reach the student only"),
    ],
)
def test_bad_input(call, match):
    gen = torch.Generator().manual_seed(10)
    h, w, _, y = _data(torch.float32, False, gen)
    with pytest.raises(ValueError, match=match):
        call(h.detach(), w.detach(), y)


@pytest.mark.parametrize("mode", ["half", "upcast"])
def test_gemm_modes_accumulate_in_fp32(mode):
    """The half-input product paths (CUDA's "half" fallback forced here on the CPU, small slices)."""
    from fla_compile.lowering.loss.torch_path import Gemm

    gen = torch.Generator().manual_seed(11)
    w = torch.randn(V, HD, generator=gen).bfloat16()
    h = torch.randn(5, HD, generator=gen).bfloat16()
    dz = torch.randn(5, V, generator=gen)
    gemm = Gemm(w)
    gemm.mode, gemm.SLICE = mode, 4
    gemm.w = w.float() if mode == "upcast" else w
    dw = torch.ones(V, HD)
    gemm.add_weight_grad(dw, dz, h)
    assert gemm.logits(h).dtype == torch.float32 and dw.dtype == torch.float32
    assert rel(gemm.logits(h), h.double() @ w.double().T) <= 1e-2
    if mode == "half":  # dz and each chunk's product rounded to bf16, summed in fp32
        assert rel(dw, 1 + dz.bfloat16().double().T @ h.double()) <= 5e-3
    else:
        assert rel(dw, 1 + dz.double().T @ h.double()) <= 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_matches_fp64(dtype):
    """On CUDA: the gemm mode in use (out_dtype where torch has it), loss and gradients against fp64."""
    from fla_compile.lowering.loss import gemm_mode

    gen = torch.Generator().manual_seed(12)
    n, hd, v = 300, 64, 5000
    h = torch.randn(n, hd, generator=gen).to("cuda", dtype).requires_grad_()
    w = (torch.randn(v, hd, generator=gen) / 8).to("cuda", dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen).cuda()
    y[::7] = -100
    assert gemm_mode(w) in ("out_dtype", "half")
    print("gemm mode", gemm_mode(w))
    loss = linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=64)
    gh, gw = torch.autograd.grad(loss, [h, w])
    hd_, wd = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(hd_ @ wd.T, y, label_smoothing=0.1)
    rh, rw = torch.autograd.grad(ref, [hd_, wd])
    assert rel(loss, ref) <= 1e-3 and rel(gh, rh) <= 2e-2 and rel(gw, rw) <= 2e-2
