"""Loops carrying several states (gated slot attention, GSA/ABC): each state split off as its own recurrence in
dependency order, the nonlinear code between them (a softmax over slots) left in the graph; equal to eager in
outputs and gradients. States that feed each other, or a state updated nonlinearly, are left as written."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, K, V, M = 2, 6, 2, 4, 5, 3


def gsa_one_loop(q, k, v, s, g):
    """GSA as a researcher writes it: one loop, a key memory [K, M] gated per slot, a softmax over slots, a
    value memory [M, V] read with the softmax as its query."""
    b, n, h, d = q.shape
    hk = q.new_zeros(b, h, d, s.shape[-1])
    hv = q.new_zeros(b, h, s.shape[-1], v.shape[-1])
    outs = []
    for t in range(n):
        a = g[:, t].exp()
        hk = hk * a[..., None, :] + k[:, t, :, :, None] * s[:, t, :, None, :]
        ok = torch.einsum("bhk,bhkm->bhm", q[:, t] * d**-0.5, hk).softmax(-1)
        hv = hv * a[..., :, None] + s[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhm,bhmv->bhv", ok, hv))
    return torch.stack(outs, 1)


def gsa_buffer(q, k, v, s, g):
    """GSA in one loop with broadcast-and-sum read-outs, the output written into a buffer."""
    b, n, h, d = q.shape
    hk = q.new_zeros(b, h, d, s.shape[-1])
    hv = q.new_zeros(b, h, s.shape[-1], v.shape[-1])
    o = q.new_zeros(b, n, h, v.shape[-1])
    for t in range(n):
        gt = g[:, t].exp()
        hk = hk * gt[..., None, :] + k[:, t, ..., None] * s[:, t, :, None, :]
        p = torch.softmax((q[:, t, ..., None] * hk).sum(-2), dim=-1)
        hv = hv * gt[..., :, None] + s[:, t, ..., None] * v[:, t, :, None, :]
        o[:, t] = (p[..., None] * hv).sum(-2)
    return o


def gsa_states(q, k, v, s, g, hk0, hv0):
    """GSA in one loop from given memories, returning the final ones too; the key memory stored [M, K]."""
    hk, hv = hk0.transpose(-1, -2), hv0
    outs = []
    for t in range(q.shape[1]):
        a = g[:, t].exp()
        hk = a[..., :, None] * hk + s[:, t, :, :, None] * k[:, t, :, None, :]
        ok = (hk @ q[:, t, :, :, None]).squeeze(-1).softmax(-1)
        hv = a[..., :, None] * hv + s[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((ok[..., None, :] @ hv).squeeze(-2))
    return torch.stack(outs, 1), hk, hv


def gsa_two_loops(q, k, v, s, g, hk0, hv0):
    """GSA in the shape of flash-linear-attention's naive recurrence, in our words: [B, H, T, D] tensors, a key
    loop writing its read-outs into a buffer, the softmax over all steps at once, then a value loop; initial
    states in, final states out."""
    q, k, v, s, g = (x.transpose(1, 2) for x in (q, k, v, s, g))
    hk, hv = hk0.clone(), hv0.clone()
    scores = torch.zeros(B, H, T, M)
    for i in range(T):
        hk = hk * g[:, :, i].exp()[..., None, :] + k[:, :, i, :, None] * s[:, :, i, None, :]
        scores[:, :, i] = (q[:, :, i, :, None] * K**-0.5 * hk).sum(-2)
    p = scores.softmax(-1)
    out = torch.zeros(B, H, T, V)
    for i in range(T):
        hv = hv * g[:, :, i].exp()[..., :, None] + s[:, :, i, :, None] * v[:, :, i, None, :]
        out[:, :, i] = (p[:, :, i, :, None] * hv).sum(-2)
    return out.transpose(1, 2), hk, hv


def two_gla_summed(q, k, v, s, g):
    """Two independent gla memories whose read-outs are summed: both split off, the sum stays."""
    h1 = q.new_zeros(B, H, K, V)
    h2 = q.new_zeros(B, H, M, V)
    outs = []
    for t in range(q.shape[1]):
        h1 = h1 * torch.sigmoid(k[:, t])[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        h2 = h2 * g[:, t].exp()[..., None] + s[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h1) + torch.einsum("bhm,bhmv->bhv", s[:, t], h2))
    return torch.stack(outs, 1)


def two_outputs(q, k, v):
    """A numerator and a (decayed) normalizer, each a state of its own with an output of its own."""
    S = q.new_zeros(B, H, K, V)
    z = q.new_zeros(B, H, K)
    nums, dens = [], []
    for t in range(q.shape[1]):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z * 0.9 + k[:, t]
        nums.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        dens.append((q[:, t] * z).sum(-1))
    return torch.stack(nums, 1), torch.stack(dens, 1)


def miss_cycle(q, k, v, s, g):
    """Each memory's update reads the other's read-out of the previous step: a cycle, not a chain."""
    hk = q.new_zeros(B, H, K, M)
    hv = q.new_zeros(B, H, M, V)
    ov = q.new_zeros(B, H, V)
    outs = []
    for t in range(q.shape[1]):
        a = g[:, t].exp()
        hk = hk * a[..., None, :] + (k[:, t] + ov[..., :K])[..., :, None] * s[:, t, :, None, :]
        ok = torch.einsum("bhk,bhkm->bhm", q[:, t], hk).softmax(-1)
        hv = hv * a[..., :, None] + s[:, t, :, :, None] * v[:, t, :, None, :]
        ov = torch.einsum("bhm,bhmv->bhv", ok, hv)
        outs.append(ov)
    return torch.stack(outs, 1)


def miss_tanh_key_memory(q, k, v, s, g):
    """The key memory is squashed by tanh: not a recurrence, and the value memory reads it."""
    hk = q.new_zeros(B, H, K, M)
    hv = q.new_zeros(B, H, M, V)
    outs = []
    for t in range(q.shape[1]):
        a = g[:, t].exp()
        hk = torch.tanh(hk * a[..., None, :] + k[:, t, :, :, None] * s[:, t, :, None, :])
        ok = torch.einsum("bhk,bhkm->bhm", q[:, t], hk).softmax(-1)
        hv = hv * a[..., :, None] + s[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhm,bhmv->bhv", ok, hv))
    return torch.stack(outs, 1)


def miss_tanh_value_memory(q, k, v, s, g):
    """The value memory is squashed by tanh: the key memory is split off, the value memory stays as written."""
    hk = q.new_zeros(B, H, K, M)
    hv = q.new_zeros(B, H, M, V)
    outs = []
    for t in range(q.shape[1]):
        a = g[:, t].exp()
        hk = hk * a[..., None, :] + k[:, t, :, :, None] * s[:, t, :, None, :]
        ok = torch.einsum("bhk,bhkm->bhm", q[:, t], hk).softmax(-1)
        hv = torch.tanh(hv * a[..., :, None] + s[:, t, :, :, None] * v[:, t, :, None, :])
        outs.append(torch.einsum("bhm,bhmv->bhv", ok, hv))
    return torch.stack(outs, 1)


def inputs(fn, requires_grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pool = dict(
        q=torch.randn(B, T, H, K, generator=gen),
        k=torch.randn(B, T, H, K, generator=gen),
        v=torch.randn(B, T, H, V, generator=gen),
        s=torch.randn(B, T, H, M, generator=gen),
        g=F.logsigmoid(torch.randn(B, T, H, M, generator=gen)),
        hk0=torch.randn(B, H, K, M, generator=gen),
        hv0=torch.randn(B, H, M, V, generator=gen),
    )
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return [pool[n].requires_grad_(requires_grad) for n in names]


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_exact(fn, out, args):
    """Outputs and every input gradient against eager in float64."""
    xs = [a.detach().double().requires_grad_() for a in args]
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # buffers the function makes with torch.zeros(...)
    try:
        ref = as_tuple(fn(*xs))
    finally:
        torch.set_default_dtype(dtype)
    gen = torch.Generator().manual_seed(1)
    proj = [torch.randn(o.shape, generator=gen) for o in out]
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5, rel(o, r)
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, proj)), args)
    ref_grads = torch.autograd.grad(sum((r * p.double()).sum() for r, p in zip(ref, proj)), xs)
    for x, g, rg in zip(args, grads, ref_grads):
        assert rel(g, rg) < 1e-5, (x.shape, rel(g, rg))


CASES = {
    "gsa_one_loop": ["mamba", "gla"],
    "gsa_two_loops": ["mamba", "gla"],
    "gsa_states": ["mamba", "gla"],
    "gsa_buffer": ["mamba", "gla"],
    "two_gla_summed": ["gla", "gla"],
    "two_outputs": ["linear_attn", "hgrn"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_several_states_split_and_exact(name):
    fn = globals()[name]
    args = inputs(fn)
    out = as_tuple(torch.compile(fn, backend="fla", options={"inductor": False})(*args))
    report = fla_compile.last_report()
    assert sorted(m.family for m in report.matches) == sorted(CASES[name]), str(report)
    assert not report.misses and all(not m.kept for m in report.matches), str(report)
    check_exact(fn, out, args)


@pytest.mark.parametrize("name", ["gsa_one_loop", "two_gla_summed", "two_outputs"])
def test_no_step_is_left_in_the_graph(name):
    """Every state is an op call; the code between and after them (the softmax, a sum) runs over the whole
    sequence at once, not unrolled."""
    from fla_compile import passes

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(passes.run(gm, passes.Options(inductor=False))[0])
        return graphs[-1]

    fn = globals()[name]
    torch.compile(fn, backend=backend)(*inputs(fn, requires_grad=False))
    calls = [n for n in graphs[0].graph.nodes if n.op in ("call_function", "call_method")]
    assert len(calls) <= 10, graphs[0].code  # two op calls, their results, layout


@pytest.mark.parametrize("name", ["gsa_one_loop", "two_gla_summed", "two_outputs"])
def test_with_jit(name):
    fn = globals()[name]
    args = inputs(fn)
    jitted = fla_compile.jit(fn)
    out = as_tuple(jitted(*args))
    report = jitted.explain(*args)
    assert sorted(m.family for m in report.matches) == sorted(CASES[name]), str(report)
    assert not any("JitError" in n for n in report.notes), str(report)
    check_exact(fn, out, args)


MISSES = {
    "miss_cycle": ["its step reads another state"],
    "miss_tanh_key_memory": ["not linear in the state", "its step reads another state"],
}


@pytest.mark.parametrize("name", sorted(MISSES))
def test_states_that_cannot_be_split_are_left_as_written(name):
    fn = globals()[name]
    args = inputs(fn, requires_grad=False)
    ref = fn(*args)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    (miss,) = [m for m in report.misses if "states" in m.reason]
    assert all(w in miss.reason for w in MISSES[name]), str(report)
    assert rel(out, ref) < 1e-6


def test_a_nonlinear_second_state_stays_as_written():
    fn = miss_tanh_value_memory
    args = inputs(fn)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == ["mamba"], str(report)  # the key memory alone
    assert any("not linear in the state" in m.reason for m in report.misses), str(report)
    check_exact(fn, (out,), args)


def test_gsa_jit_in_half_precision():
    """GSA's two states through ``@jit`` in bf16: the first state's read-out (rounded to bf16 by its lowering, as the
    function rounds it) feeds the second; the jit's fp32 check widens those casts (``rewrite.widened``), else it
    finds the rounding and runs the function as written."""
    gen = torch.Generator().manual_seed(0)
    b, n, h, d, m = 2, 40, 2, 16, 16
    xs = [torch.randn(b, n, h, d, generator=gen) for _ in range(3)]
    xs += [torch.randn(b, n, h, m, generator=gen), F.logsigmoid(torch.randn(b, n, h, m, generator=gen))]
    args = [x.to(torch.bfloat16) for x in xs]
    out = fla_compile.jit(gsa_one_loop, strict=True)(*args)  # strict: raises if it would run as written
    exact = gsa_one_loop(*[x.double() for x in args])
    ours, theirs = (rel(x, exact) for x in (out, gsa_one_loop(*args)))
    assert ours < 1e-2 and ours <= theirs, (ours, theirs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gsa_on_cuda(dtype):
    """GSA at a model's sizes through the Triton kernels (the key memory: mamba's selective walk, N = K = 64)."""
    gen = torch.Generator().manual_seed(0)
    b, n, h, d, m = 2, 256, 2, 64, 64
    xs = [torch.randn(b, n, h, d, generator=gen) for _ in range(3)]
    xs += [torch.randn(b, n, h, m, generator=gen), F.logsigmoid(torch.randn(b, n, h, m, generator=gen))]
    args = [x.cuda().to(dtype).requires_grad_() for x in xs]
    fn = fla_compile.jit(gsa_one_loop, strict=True)  # strict: raises if it would run as written (bf16 did)
    out = fn(*args)
    assert [m.family for m in fn.explain(*args).matches] == ["mamba", "gla"]
    ref_args = [x.detach().double().requires_grad_() for x in args]
    ref = gsa_one_loop(*ref_args)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert rel(out, ref) < tol, rel(out, ref)
    proj = torch.randn(out.shape, generator=gen).cuda()
    grads = torch.autograd.grad((out * proj.to(dtype)).sum(), args)
    ref_grads = torch.autograd.grad((ref * proj.double()).sum(), ref_args)
    for g, rg in zip(grads, ref_grads):
        assert rel(g, rg) < tol, rel(g, rg)


def test_below_the_crossover_the_loop_stays_as_written():
    """The cost table keeps the first state as written: nothing is split (a half-split loop gains nothing)."""
    from fla_compile import costs

    table = [{"device": "*", "family": "mamba", "spelling": "loop", "min_work": 10**9}]
    args = inputs(gsa_one_loop, requires_grad=False)
    with costs.use(table):
        out = torch.compile(gsa_one_loop, backend="fla", options={"inductor": False, "costs": True})(*args)
    report = fla_compile.last_report()
    assert [(m.family, bool(m.kept)) for m in report.matches] == [("mamba", True)], str(report)
    assert rel(out, gsa_one_loop(*args)) < 1e-6
