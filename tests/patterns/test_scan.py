"""The elementwise scan (hgrn) in loops: the spellings recognised and equal to eager (outputs and
gradients), near misses left untouched with a reason; FLA's naive form, transformers' RecurrentGemma
scan (resets included) and a module."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

from . import scan_spellings as S

B, T, D, N = 2, 12, 6, 4

POSITIVE = [
    "hgrn_exp_loop",
    "hgrn_probability_decay",
    "hgrn_fla_naive",
    "hgrn_decay_value_heads",
    "mamba_selective_scan_ref",
    "mamba_discretized_in_loop",
    "mamba_rates_change_over_time",
]
NEGATIVE = {
    "miss_mamba_dt_depends_on_state": "not linear in the state",
    "miss_scan_relu": "not linear in the state",
    "miss_scan_decay_depends_on_state": "not linear in the state",
    "miss_scan_mixes_channels": "not an elementwise decay",
}


def make_inputs(fn, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pool = dict(
        x=torch.randn(B, T, D, generator=gen),
        g=F.logsigmoid(torch.randn(B, T, D, generator=gen)),
        z=torch.randn(B, T, D, generator=gen),
        a=torch.rand(B, T, D, generator=gen),
        h0=torch.randn(B, D, generator=gen),
        # Mamba: u, dt [B, D, T], A [D, N] (negative), B, C [B, N, T], D [D], gate_z [B, D, T], dt's bias [D]
        u=torch.randn(B, D, T, generator=gen),
        dt=torch.randn(B, D, T, generator=gen) - 1,
        A=-torch.rand(D, N, generator=gen) * 2,
        At=-torch.rand(D, N, T, generator=gen) * 2,
        B=torch.randn(B, N, T, generator=gen),
        C=torch.randn(B, N, T, generator=gen),
        D=torch.randn(D, generator=gen),
        gate_z=torch.randn(B, D, T, generator=gen),
        bias=torch.randn(D, generator=gen) * 0.1,
    )
    return [pool[n].requires_grad_(requires_grad) for n in inspect.signature(fn).parameters]


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_compiled(fn, args, family="hgrn"):
    """Compiled with the backend: one hgrn match; outputs and gradients equal eager fp64's."""
    out = as_tuple(torch.compile(fn, backend="fla", options={"inductor": False})(*args))
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == [family], str(report)
    gen = torch.Generator().manual_seed(1)
    proj = [torch.randn(o.shape, generator=gen) for o in out]
    xs = [a.detach().double().requires_grad_(a.requires_grad) for a in args]
    ref = as_tuple(fn(*xs))
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    wrt = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, proj)), wrt)
    ref_grads = torch.autograd.grad(
        sum((r * p.double()).sum() for r, p in zip(ref, proj)), [x for x in xs if x.requires_grad]
    )
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and rel(g, rg) < 1e-5
    return report


# the others are hgrn; selective_scan_ref's producers made before the loop are pulled into the step (patterns/pull.py)
FAMILY = {"mamba_discretized_in_loop": "mamba", "mamba_selective_scan_ref": "mamba"}


@pytest.mark.parametrize("name", POSITIVE)
def test_scan_spelling_is_recognised_and_exact(name):
    fn = getattr(S, name)
    check_compiled(fn, make_inputs(fn, requires_grad=True, seed=POSITIVE.index(name)), FAMILY.get(name, "hgrn"))


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_scan_near_miss_is_left_untouched(name):
    fn = getattr(S, name)
    args = make_inputs(fn)
    ref = fn(*args)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    assert any(NEGATIVE[name] in m.reason for m in report.misses), str(report)
    assert torch.equal(out, ref) or rel(out, ref) < 1e-6


def test_recurrent_gemma_scan_with_resets():
    """transformers' RG-LRU scan (``RecurrentGemmaRglru._rnn_scan``), a reset at each sequence's first
    position: the decay is 0 there (log -inf), which the lowering takes exactly, gradients included."""
    rg = pytest.importorskip("transformers.models.recurrent_gemma.modeling_recurrent_gemma")
    layer = rg.RecurrentGemmaRglru(rg.RecurrentGemmaConfig(hidden_size=D, lru_width=D, num_attention_heads=2))

    def scan(x, a, reset):
        return layer._rnn_scan(x, a, reset, None)

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, D, generator=gen, requires_grad=True)
    a = torch.rand(B, T, D, generator=gen).requires_grad_()
    reset = torch.zeros(B, T, 1, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, 7] = True
    out = torch.compile(scan, backend="fla", options={"inductor": False})(x, a, reset)
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == ["hgrn"], str(report)
    xs, as_ = x.detach().double().requires_grad_(), a.detach().double().requires_grad_()
    ref = layer._rnn_scan(xs, as_, reset, None, acc_dtype=torch.float64)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    proj = torch.randn(out[0].shape, generator=gen)
    grads = torch.autograd.grad((out[0] * proj).sum() + out[1].sum(), (x, a))
    ref_grads = torch.autograd.grad((ref[0] * proj.double()).sum() + ref[1].sum(), (xs, as_))
    for g, rg_ in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and rel(g, rg_) < 1e-5


class MiniHGRN(torch.nn.Module):
    """An HGRN-style token mixer: projections, a forget gate with a lower bound, the scan in a loop over
    [B, T, H, D] with a state [B, H, D], an output gate."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.proj = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, u):
        i, f, g = self.proj(u).unflatten(-1, (3, self.heads, -1)).unbind(2)
        lower = 0.1
        forget = lower + (1 - lower) * torch.sigmoid(f)
        x = F.silu(i) * (1 - forget)
        h = u.new_zeros(u.shape[0], *x.shape[2:])
        outs = []
        for t in range(u.shape[1]):
            h = forget[:, t] * h + x[:, t]
            outs.append(h)
        o = torch.stack(outs, 1) * torch.sigmoid(g)
        return self.out(o.flatten(-2))


def test_module():
    torch.manual_seed(0)
    model = MiniHGRN()
    u = torch.randn(B, T, 8)
    ref = model(u)
    compiled = torch.compile(model, backend="fla", options={"inductor": False})
    out = compiled(u)
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == ["hgrn"], str(report)
    assert rel(out, ref) < 1e-5
    out.square().sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref.square().sum().backward()
    for g, r in zip(got, (p.grad for p in model.parameters())):
        assert rel(g, r) < 1e-4


@pytest.mark.parametrize("name", ["hgrn_fla_naive", "mamba_discretized_in_loop", "miss_scan_mixes_channels"])
def test_explain_says_what_the_backend_does(name):
    """explain and the backend name the same match (or miss), and the op runs once for the whole loop."""
    from tests.test_explain_agrees import check_agree

    fn = getattr(S, name)
    report = check_agree(fn, make_inputs(fn))
    assert [m.family for m in report.rewritten] == ([FAMILY.get(name, "hgrn")] if name in POSITIVE else [])


def test_jit_runs_the_scan_at_any_length():
    """@jit traces the naive HGRN loop at probe lengths and runs the op at the call's length."""
    fn = fla_compile.jit(S.hgrn_fla_naive)
    x, g, h0 = make_inputs(S.hgrn_fla_naive)
    assert [m.family for m in fn.explain(x, g, h0).matches] == ["hgrn"]
    for T_ in (5, 70):
        gen = torch.Generator().manual_seed(T_)
        x, z, h0 = torch.randn(B, T_, D, generator=gen), torch.randn(B, T_, D, generator=gen), torch.randn(B, D)
        out, ref = fn(x, F.logsigmoid(z), h0), S.hgrn_fla_naive(x, F.logsigmoid(z), h0)
        for o, r in zip(out, ref):
            assert rel(o, r) < 1e-5


def test_transformers_mamba_selective_scan():
    """transformers' ``mamba_selective_scan`` (Mamba's torch path: dt bias and softplus, the discretization
    before the loop, the matmul read-out, D skip, z gate): its loop runs as the mamba op. Its input term is
    written (dt B) x, so no value of the step is u = dt x: the op's u is the role beta (dt as that term reads it)
    times v (x). It ran as one hgrn scan over D x N with a read-out before (held_out_3's Jamba spelling)."""
    mm = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    if not hasattr(mm, "mamba_selective_scan"):
        pytest.skip("this transformers has no mamba_selective_scan")

    def scan(u, dt, A, B, C, D, gate_z, bias):
        return mm.mamba_selective_scan(u, dt, A, B, C, D, gate_z, bias, delta_softplus=True, return_last_state=True)

    args = make_inputs(S.mamba_selective_scan_ref, requires_grad=True, seed=11)
    report = check_compiled(scan, args, family="mamba")
    assert report.matches[0].op == "fla_compile.mamba"


def test_jit_time_dim_of_channels_first_scans():
    """Mamba's reference takes [B, D, T]: ``@jit`` cuts dim 1 by default, the capture fails, and the report says
    which dim it cut and to pass ``time_dim``; with ``time_dim=2`` (or -1) the op runs, in fp32 and bf16."""
    fn = S.mamba_selective_scan_ref
    args = make_inputs(fn)
    with pytest.raises(Exception, match=r"cut dim 1 .*pass jit\(fn, time_dim=\.\.\.\)"):
        fla_compile.jit(fn, strict=True)(*args)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        xs = [a.to(dtype) for a in args]
        for time_dim in (2, -1):
            out = fla_compile.jit(fn, strict=True, time_dim=time_dim)(*xs)
            assert rel(out, fn(*[a.double() for a in xs])) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", POSITIVE)
def test_scan_spelling_through_jit(name, dtype):
    """Every scan spelling through ``@jit`` (strict: raises where it would run as written), Mamba's [B, D, T] with
    ``time_dim=2``. A decay passed as a probability (``hgrn_decay_value_heads``) failed the jit's randn probes at
    the op's run-time check of its log; the probes now keep each argument's sign."""
    fn = getattr(S, name)
    args = [a.to(dtype) for a in make_inputs(fn)]
    out = as_tuple(fla_compile.jit(fn, strict=True, time_dim=2 if name.startswith("mamba") else 1)(*args))
    ref = as_tuple(fn(*[a.double() for a in args]))
    for o, r in zip(out, ref):
        assert rel(o, r) < (1e-5 if dtype == torch.float32 else 2e-2)
