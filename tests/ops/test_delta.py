"""The delta-line ops on CPU: torch chunked path vs the reference loops, autograd, checks, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fla_compile.ops as ops
from fla_compile.reference import delta as ref
from tests.compare import rel

FAMILIES = ["delta_rule", "gated_delta_rule", "kda"]


def make(family, B=2, T=37, HK=2, H=4, K=12, V=10, dtype=torch.float64, gate="weak", beta="uniform", seed=0):
    """Inputs of one family: keys unit-norm (the stable regime the models run in)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, HK, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T, HK, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    b = torch.rand(B, T, H, generator=gen, dtype=dtype)
    # beta in (0, 2): DeltaNet's negative-eigenvalue range (I - b k kᵀ has eigenvalue 1 - b down to -1)
    b = {"uniform": b, "zero": b * 1e-4, "one": 1 - b * 1e-4, "wide": 2 * b, "two": 2 - b * 1e-4}[beta]
    lo = {"weak": 0.05, "strong": 20.0}[gate]
    g = None
    if family == "gated_delta_rule":
        g = -torch.rand(B, T, H, generator=gen, dtype=dtype) * lo
    elif family == "kda":
        g = -torch.rand(B, T, H, K, generator=gen, dtype=dtype) * lo
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    return q, k, v, g, b, h0


def call_op(family, q, k, v, g, b, **kw):
    if family == "delta_rule":
        return ops.delta_rule(q, k, v, b, **kw)
    return getattr(ops, family)(q, k, v, g, b, **kw)


def call_ref(family, q, k, v, g, b, scale=None, initial_state=None, output_final_state=False, l2=False):
    gates = {"gated_delta_rule": dict(g=g), "kda": dict(gk=g)}.get(family, {})
    return ref.delta_loop(q, k, v, b, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state, use_qk_l2norm=l2, **gates)  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    "gate,beta,T",
    [
        ("weak", "uniform", 37),
        ("strong", "uniform", 70),
        ("weak", "zero", 37),
        ("weak", "one", 65),
        ("weak", "one", 1),
        ("weak", "wide", 70),
        ("weak", "two", 65),
    ],
    ids=["weak", "strong", "beta0", "beta1", "T1", "beta0to2", "beta2"],
)
def test_forward_matches_reference(family, dtype, gate, beta, T):
    q, k, v, g, b, h0 = make(family, T=T, dtype=dtype, gate=gate, beta=beta)
    o, ht = call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True)
    ro, rs = call_ref(family, q.double(), k.double(), v.double(), None if g is None else g.double(), b.double(),
                      initial_state=h0.double(), output_final_state=True)  # fmt: skip
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert o.dtype == dtype and o.shape == v.shape
    assert ht.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel(o, ro) < tol and rel(ht, rs) < tol


@pytest.mark.parametrize("family", FAMILIES)
def test_l2norm_scale_no_initial_state(family):
    q, k, v, g, b, _ = make(family, HK=1, H=2)
    k = k * 3  # unnormalized keys, normalized in the op
    o, ht = call_op(family, q, k, v, g, b, scale=0.7, output_final_state=True, use_qk_l2norm_in_kernel=True)
    ro, rs = call_ref(family, q, k, v, g, b, scale=0.7, output_final_state=True, l2=True)
    assert rel(o, ro) < 1e-12 and rel(ht, rs) < 1e-12
    o2, ht2 = call_op(family, q, k, v, g, b, scale=0.7)
    assert ht2 is None


def test_kda_per_dim_gate_minus_20_no_overflow():
    q, k, v, g, b, h0 = make("kda", T=64, dtype=torch.float32, gate="strong")
    g = torch.full_like(g, -20.0)
    g[..., ::2] = -1e-3  # half the dims keep everything, half forget at once
    o, ht = ops.kda(q, k, v, g, b, initial_state=h0, output_final_state=True)
    ro, rs = call_ref("kda", q.double(), k.double(), v.double(), g.double(), b.double(),
                      initial_state=h0.double(), output_final_state=True)  # fmt: skip
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_cu_seqlens(family):
    lens = [5, 0, 33, 17]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v, g, b, h0 = make(family, B=1, T=sum(lens))
    h0 = torch.randn(len(lens), *h0.shape[1:], dtype=h0.dtype)
    o, ht = call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        gn = None if g is None else g[:, s:e]
        ro, rs = call_ref(family, q[:, s:e], k[:, s:e], v[:, s:e], gn, b[:, s:e],
                          initial_state=h0[n : n + 1], output_final_state=True)  # fmt: skip
        if e > s:
            assert rel(o[:, s:e], ro) < 1e-12
        assert rel(ht[n : n + 1], rs) < 1e-12


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("l2", [False, True], ids=["raw", "l2norm"])
def test_gradcheck(family, l2):
    q, k, v, g, b, h0 = make(family, B=1, T=7, HK=1, H=2, K=4, V=3)
    args = [x.requires_grad_() for x in (q, k, v, b, h0)] + ([] if g is None else [g.requires_grad_()])

    def fn(q, k, v, b, h0, g=None):
        return call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)

    assert torch.autograd.gradcheck(fn, tuple(args))


@pytest.mark.parametrize("family", ["gated_delta_rule", "kda"])
def test_gradcheck_varlen(family):
    q, k, v, g, b, _ = make(family, B=1, T=9, HK=1, H=1, K=3, V=2)
    h0 = torch.randn(2, 1, 3, 2, dtype=torch.float64)
    cu = torch.tensor([0, 4, 9])
    args = tuple(x.requires_grad_() for x in (q, k, v, g, b, h0))

    def fn(q, k, v, g, b, h0):
        return call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True, cu_seqlens=cu)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("beta", ["uniform", "two"], ids=["beta01", "beta2"])
def test_gradients_across_chunks(family, dtype, beta):
    """Every input's gradient through the torch chunked path, over T = 3 chunks and a partial one
    (64 steps a chunk, 16 for kda), against the fp64 loop; beta in (0, 1) and near 2."""
    C = 16 if family == "kda" else 64
    q, k, v, g, b, h0 = make(family, B=1, T=3 * C + 5, HK=1, H=2, K=8, V=6, dtype=dtype, beta=beta)
    leaves = [x.requires_grad_() for x in (q, k, v, g, b, h0) if x is not None]
    o, ht = call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True)
    gen = torch.Generator().manual_seed(1)
    do, dht = (
        torch.randn(o.shape, generator=gen, dtype=torch.float64),
        torch.randn(ht.shape, generator=gen, dtype=torch.float64),
    )
    torch.autograd.backward((o, ht), (do.to(o.dtype), dht.to(ht.dtype)))
    r_leaves = [x.detach().double().requires_grad_() for x in leaves]
    rq, rk, rv, *rest = r_leaves
    rg, rb, rh0 = rest if g is not None else (None, *rest)
    ro, rs = call_ref(family, rq, rk, rv, rg, rb, initial_state=rh0, output_final_state=True)
    torch.autograd.backward((ro, rs), (do, dht))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel(o, ro) < tol and rel(ht, rs) < tol
    for x, r in zip(leaves, r_leaves):
        assert rel(x.grad, r.grad) < tol, rel(x.grad, r.grad)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(beta=a["beta"][..., :1]), r"beta must have shape \[B, T, H\]"),
        (lambda a: a.update(beta=a["beta"].long()), "beta must be a float tensor"),
        (lambda a: a.update(g=a["g"][..., 0]), r"g must have shape"),
        (lambda a: a.update(q=a["q"][0]), r"q must be \[B, T, H, D\]"),
        (lambda a: a.update(k=a["k"][:, :, :, :3]), "q and k must have the same shape"),
        (lambda a: a.update(v=a["v"][:, :, :3]), "not a multiple of the 2 heads"),
        (lambda a: a.update(q=a["q"].int(), k=a["k"].int()), "q must be float32"),
        (lambda a: a.update(initial_state=a["initial_state"][:1]), "initial_state must be"),
    ],
    ids=["beta_shape", "beta_dtype", "gate_shape", "q_dims", "k_shape", "gqa", "q_dtype", "h0_shape"],
)
def test_clear_errors(mutate, match):
    q, k, v, g, b, h0 = make("kda")
    a = dict(q=q, k=k, v=v, g=g, beta=b, initial_state=h0)
    mutate(a)
    with pytest.raises(ValueError, match=match):
        ops.kda(**a)


def test_cu_seqlens_needs_batch_one():
    q, k, v, g, b, _ = make("gated_delta_rule")
    with pytest.raises(ValueError, match="batch size 1"):
        ops.gated_delta_rule(q, k, v, g, b, cu_seqlens=torch.tensor([0, 5, 37]))


@pytest.mark.parametrize("family", FAMILIES)
def test_opcheck(family):
    q, k, v, g, b, h0 = make(family, B=1, T=9, HK=1, H=2, K=4, V=3, dtype=torch.float32)
    gates = (b,) if g is None else (g, b)
    op = getattr(torch.ops.fla_compile, family)
    for x in (q, k, v, *gates, h0):
        x.requires_grad_()
    torch.library.opcheck(op, (q, k, v, *gates, 0.5, h0, None, False))
    torch.library.opcheck(op, (q, k, v, *gates, 0.5, None, None, True))
    cu = torch.tensor([0, 4, 9])
    h0v = torch.randn(2, 2, 4, 3, requires_grad=True)
    torch.library.opcheck(op, (q, k, v, *gates, 0.5, h0v, cu, False))


@pytest.mark.parametrize("family", FAMILIES)
def test_compile_fullgraph(family):
    q, k, v, g, b, h0 = make(family, B=1, T=20, dtype=torch.float32)
    leaves = [x for x in (q, k, v, g, b, h0) if x is not None]

    def fn(q, k, v, g, b, h0):
        o, ht = call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True,
                        use_qk_l2norm_in_kernel=True)  # fmt: skip
        return o.sum() + ht.square().sum()

    cfn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    grads = []
    for f in (fn, cfn):
        xs = [x.clone().requires_grad_() for x in leaves]
        it = iter(xs)
        a = [next(it) if x is not None else None for x in (q, k, v, g, b, h0)]
        f(*a).backward()
        grads.append([x.grad for x in xs])
    for ge, gc in zip(*grads):
        assert rel(gc, ge) < 1e-6


def _tf_fn(module, name):
    mod = pytest.importorskip(f"transformers.models.{module}.modeling_{module}")
    return getattr(mod, name)


def test_matches_transformers_qwen3_next():
    fn = _tf_fn("qwen3_next", "torch_recurrent_gated_delta_rule")
    q, k, v, g, b, h0 = make("gated_delta_rule", dtype=torch.float32)
    ro, rs = fn(q, k * 2, v, g, b, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, ht = ops.gated_delta_rule(q, k * 2, v, g, b, initial_state=h0, output_final_state=True,
                                 use_qk_l2norm_in_kernel=True)  # fmt: skip
    assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5


def test_matches_transformers_kimi_linear():
    fn = _tf_fn("kimi_linear", "recurrent_kimi_delta_attention")
    q, k, v, g, b, h0 = make("kda", HK=4, dtype=torch.float32)
    ro, rs = fn(q, k * 2, v, g, b, h0, True, use_qk_l2norm_in_kernel=True)
    o, ht = ops.kda(q, k * 2, v, g, b, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_path_gradients_across_chunks_cuda(family):
    """The torch chunked path itself on CUDA (called directly, whatever the dispatcher picks), fp32,
    T = 3 chunks and a partial one, every gradient against the fp64 loop on the CPU."""
    from fla_compile.lowering.delta.torch_path import delta_line_forward

    C = 16 if family == "kda" else 64
    q, k, v, g, b, h0 = make(family, B=2, T=3 * C + 5, HK=1, H=2, K=32, V=32, dtype=torch.float32)
    kind = {"delta_rule": "none", "gated_delta_rule": "scalar", "kda": "vector"}[family]
    cpu = [x for x in (q, k, v, b, g, h0) if x is not None]
    leaves = [x.detach().cuda().requires_grad_() for x in cpu]
    lq, lk, lv, lb, *rest = leaves
    lg, lh0 = rest if g is not None else (None, *rest)
    o, ht = delta_line_forward(lq, lk, lv, lb, lg, kind, q.shape[-1] ** -0.5, lh0)
    gen = torch.Generator().manual_seed(1)
    do, dht = (
        torch.randn(o.shape, generator=gen, dtype=torch.float64),
        torch.randn(ht.shape, generator=gen, dtype=torch.float64),
    )
    torch.autograd.backward((o, ht), (do.float().cuda(), dht.float().cuda()))
    r_leaves = [x.detach().double().requires_grad_() for x in cpu]
    rq, rk, rv, rb, *rest = r_leaves
    rg, rh0 = rest if g is not None else (None, *rest)
    ro, rs = call_ref(family, rq, rk, rv, rg, rb, initial_state=rh0, output_final_state=True)
    torch.autograd.backward((ro, rs), (do, dht))
    assert rel(o.cpu(), ro) < 1e-5 and rel(ht.cpu(), rs) < 1e-5
    for x, r in zip(leaves, r_leaves):
        assert rel(x.grad.cpu(), r.grad) < 1e-5
