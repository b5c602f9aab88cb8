"""The loop spelling: every spelling recognised and equal to eager (outputs and gradients);
every near miss left untouched with a reason."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from fla_compile.reference import delta as ref_delta
from fla_compile.reference import normalized as ref_normalized
from tests.compare import rel

from . import spellings as S

B, T, H, K, V = 2, 12, 2, 4, 5

POSITIVE = {
    "gla_fla_naive": "gla",
    "retention_inplace_einsum": "retention",
    "linear_matmul_cat": "linear_attn",
    "linear_outer_single_head": "linear_attn",
    "simple_gla_scalar_gate": "simple_gla",
    "gla_sigmoid_gate": "gla",
    "gla_logsigmoid_outside": "gla",
    "retention_per_head_gamma": "retention",
    "gla_initial_and_final_state": "gla",
    "linear_bhtd_layout": "linear_attn",
    "delta_rule_loop": "delta_rule",
    "gated_delta_rule_inplace": "gated_delta_rule",
    "kda_loop": "kda",
    "delta_householder": "delta_rule",
    "kda_diag_embed": "kda",
    "normalized_linear": "normalized_linear_attn",
    "normalized_linear_inplace": "normalized_linear_attn",
    "normalized_elu_in_loop": "normalized_linear_attn",
    "normalized_based_taylor": "normalized_linear_attn",
    "normalized_rebased": "normalized_linear_attn",
    "miss_value_gate": "mamba",  # a gate along the value axis (GSA's slot memory): each column is a selective scan
}
NEGATIVE = {
    "miss_nonlinear_in_state": "not linear in the state",
    "miss_decay_depends_on_state": "not linear in the state",
    "miss_reads_previous_state": "S_{t-1}",
    "miss_not_outer_product": "outer product",
    "miss_delta_prediction_after_update": "nor a delta rule",
    "miss_delta_without_beta": "nor a delta rule",
    "miss_state_clamped": "not linear in the state",
    "miss_output_clamped": "output is not linear in the state",
    "miss_householder_wrong_sign": "nor a delta rule",
    "miss_householder_twice": "nor a delta rule",
    "miss_diag_embed_not_exp": "not positive",
    "miss_normalized_decayed_state": "decays",
    "miss_normalized_other_key": "other keys",
    "miss_normalized_clamped": "not a division num / (den + eps)",
    "miss_normalized_eps_outside": "not a division num / (den + eps)",
    "miss_normalized_heads_swapped": "differs from the step",
}


def make_inputs(fn, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pool = dict(
        q=torch.randn(B, T, H, K, generator=gen),
        k=torch.randn(B, T, H, K, generator=gen),
        v=torch.randn(B, T, H, V, generator=gen),
        g=torch.randn(B, T, H, K, generator=gen),
        gk=F.logsigmoid(torch.randn(B, T, H, K, generator=gen)),
        h0=torch.randn(B, H, K, V, generator=gen),
        b=torch.randn(B, T, H, K, generator=gen),
    )
    return [pool[n].requires_grad_(requires_grad) for n in inspect.signature(fn).parameters]


# the math of the spellings whose in-place updates eager autograd refuses (even functionalized),
# as the fp64 reference loop of their family
MATH = {
    "gated_delta_rule_inplace": lambda q, k, v, g, b: ref_delta.gated_delta_rule(
        q, k, v, F.logsigmoid(g[..., 0]), torch.sigmoid(b[..., 0]), scale=1.0, output_final_state=True
    ),
    "normalized_linear_inplace": lambda q, k, v: (lambda o, st: (o, st[0]))(
        *ref_normalized.normalized_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, eps=0.0, output_final_state=True)
    ),
}


def reference(name, args, proj):
    """Outputs and input gradients of spelling ``name`` in fp64: eager autograd, or eager on the
    functionalized code where eager refuses its in-place updates, or the family's reference loop."""
    fn = getattr(S, name)
    xs = [a.detach().double().requires_grad_() for a in args]
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # buffers the spelling makes with torch.zeros(...)
    try:
        for attempt in (fn, torch.func.functionalize(fn), MATH.get(name)):
            if attempt is None:
                raise AssertionError(f"no fp64 reference gradient for {name}")
            try:
                out = as_tuple(attempt(*xs))
                grads = torch.autograd.grad(
                    sum((r * p.double()).sum() for r, p in zip(out, proj)), xs, allow_unused=True
                )
                return out, grads
            except (RuntimeError, NotImplementedError):
                continue
    finally:
        torch.set_default_dtype(dtype)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_loop_spelling_is_recognised_and_exact(name):
    fn = getattr(S, name)
    args = make_inputs(fn, requires_grad=True, seed=sorted(POSITIVE).index(name))
    out = as_tuple(torch.compile(fn, backend="fla", options={"inductor": False})(*args))
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == [POSITIVE[name]], str(report)
    assert report.matches[0].spelling == "loop"
    gen = torch.Generator().manual_seed(1)
    proj = [torch.randn(o.shape, generator=gen) for o in out]
    ref, ref_grads = reference(name, args, proj)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, proj)), args, allow_unused=True)
    for x, g, rg in zip(args, grads, ref_grads):
        assert (g is None) == (rg is None), "a gradient reaches one side only"
        if rg is not None:
            assert rel(g, rg) < 1e-5, (x.shape, rel(g, rg))


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_loop_spelling_in_bf16_through_jit(name):
    """Every loop spelling that runs as written in bf16 runs our op through ``@jit`` in bf16 (strict: it raises
    where it would run the function as written, as every bf16 call did before the jit's fp32 check), no further from
    fp64 than twice the function's own bf16 result (or 5e-2)."""
    fn = getattr(S, name)
    args = [a.bfloat16() for a in make_inputs(fn, seed=sorted(POSITIVE).index(name))]
    try:
        theirs = as_tuple(fn(*args))
    except RuntimeError as e:  # fp32 buffers mixed with bf16 inputs in a matmul: eager refuses it too
        pytest.skip(f"the spelling as written raises in bf16: {e}")
    ours = as_tuple(fla_compile.jit(fn, strict=True)(*args))
    ref, _ = reference(name, args, [torch.ones(o.shape) for o in theirs])
    for o, t, r in zip(ours, theirs, ref):
        assert o.dtype == t.dtype
        assert rel(o, r) <= max(2 * rel(t, r), 5e-2), (rel(o, r), rel(t, r))


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_near_miss_in_bf16_through_jit_runs_as_written(name):
    """The near misses through ``@jit`` in bf16: nothing of ours runs (the half-precision check admits no graph that
    no proof admitted), the function as written does, bitwise."""
    fn = getattr(S, name)
    args = [a.bfloat16() for a in make_inputs(fn)]
    try:
        ref = fn(*args)
    except RuntimeError as e:
        pytest.skip(f"the spelling as written raises in bf16: {e}")
    with pytest.warns(UserWarning, match="nothing matched"):
        out = fla_compile.jit(fn)(*args)
    assert all(torch.equal(o, r) for o, r in zip(as_tuple(out), as_tuple(ref)))


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_near_miss_is_left_untouched(name):
    fn = getattr(S, name)
    args = make_inputs(fn)
    ref = fn(*args)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    assert any(NEGATIVE[name] in m.reason for m in report.misses), str(report)
    assert torch.equal(out, ref) or rel(out, ref) < 1e-6


def test_strict_raises_with_the_reason():
    args = make_inputs(S.miss_nonlinear_in_state)
    with pytest.raises(Exception, match="not linear in the state"):
        torch.compile(S.miss_nonlinear_in_state, backend="fla", options={"strict": True, "inductor": False})(*args)


def test_internal_error_leaves_the_loop_as_written(monkeypatch):
    """A bug of ours while analysing a loop must not fail the user's compile: the loop runs as
    written and the report says what happened."""
    from fla_compile import passes

    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr(passes, "classify_loop", broken)
    args = make_inputs(S.linear_matmul_cat)
    out = torch.compile(S.linear_matmul_cat, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert not report.matches and "internal error" in report.misses[0].reason, str(report)
    assert rel(out, S.linear_matmul_cat(*args)) < 1e-6


def test_unknown_option_is_refused():
    args = make_inputs(S.linear_matmul_cat)
    with pytest.raises(Exception, match="unknown options"):
        torch.compile(S.linear_matmul_cat, backend="fla", options={"verfy": False})(*args)


def test_inductor_compiles_the_rest(monkeypatch):
    """A rest with compute (here a silu after the loop) goes to Inductor; a rest that is only
    layout around our op runs as is, with a note (Inductor would generate nothing for it)."""
    import torch._inductor.compile_fx as cfx

    calls = []
    real = cfx.compile_fx
    monkeypatch.setattr(cfx, "compile_fx", lambda *a, **k: calls.append(1) or real(*a, **k))

    def with_silu(q, k, v, gk):
        o, h = S.gla_fla_naive(q, k, v, gk)
        return F.silu(o), h

    args = make_inputs(S.gla_fla_naive)
    for fn, inductor in [(with_silu, True), (S.gla_fla_naive, False)]:
        torch._dynamo.reset()
        calls.clear()
        ref = fn(*args)
        out = torch.compile(fn, backend="fla")(*args)
        report = fla_compile.last_report()
        assert [m.family for m in report.matches] == ["gla"]
        assert bool(calls) == inductor
        assert any("without Inductor" in n for n in report.notes) == (not inductor)
        for o, r in zip(out, ref):
            assert rel(o, r) < 1e-5


def test_module_with_parameters():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 3 * 8)
            self.gate = torch.nn.Linear(8, 8)

        def forward(self, x):
            Bx, Tx, _ = x.shape
            q, k, v = self.qkv(x).view(Bx, Tx, 3, 2, 4).unbind(2)
            g = F.logsigmoid(self.gate(x)).view(Bx, Tx, 2, 4)
            h = x.new_zeros(Bx, 2, 4, 4)
            outs = []
            for t in range(Tx):
                h = h * g[:, t, :, :, None].exp() + k[:, t, :, :, None] * v[:, t, :, None, :]
                outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * 0.5, h))
            return torch.stack(outs, 1).flatten(2)

    torch.manual_seed(0)  # the Linear layers' initial weights
    layer = Layer()
    x = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1))
    ref = layer(x)
    ref.sum().backward()
    ref_grad = layer.qkv.weight.grad.clone()
    layer.zero_grad()
    out = torch.compile(layer, backend="fla", options={"inductor": False})(x)
    assert [m.family for m in fla_compile.last_report().matches] == ["gla"]
    assert rel(out, ref) < 1e-5
    out.sum().backward()
    assert rel(layer.qkv.weight.grad, ref_grad) < 1e-5


def plain_decay(q, k, v, a):
    """The decay arrives as values (already exp'd outside): lowered through its log."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h * a[:, t, :, :, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def test_plain_decay_checked_at_run_time():
    """Proven on positive probes; a zero decay at run time (which the ops cannot take) stops loudly."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for D in (K, K, V))
    a = torch.rand(B, T, H, K, generator=gen) * 0.5 + 0.4
    fn = torch.compile(plain_decay, backend="fla", options={"inductor": False})
    out = fn(q, k, v, a)
    assert [m.family for m in fla_compile.last_report().matches] == ["gla"]
    assert rel(out, plain_decay(q, k, v, a)) < 1e-5
    a[0, 3, 0, 1] = 0.0  # eager computes this; our ops cannot
    with pytest.raises(RuntimeError, match="holds a value <= 0"):
        fn(q, k, v, a)


def test_near_misses_are_said_once_per_region():
    """Dynamo unrolls the loop, so a construct of its body that a whole-sequence matcher looks at
    (here a matmul, for the parallel form) is found once per step: the report says it once, with
    the number of steps, and the loop's own near miss once."""
    fn = S.miss_diag_embed_not_exp
    args = make_inputs(fn)
    torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    keys = [(m.spelling, m.source, m.reason) for m in report.misses]
    assert len(keys) == len(set(keys)), str(report)
    by_spelling = {m.spelling: m for m in report.misses}
    assert by_spelling["loop"].count == 1 and "not positive" in by_spelling["loop"].reason, str(report)
    assert by_spelling["parallel"].count == T, str(report)
    assert f"({T} times: once per unrolled step" in str(report)
    assert len(str(report).splitlines()) == 1 + len(report.misses), str(report)


def test_merged_keeps_order_and_adds_counts():
    from fla_compile.report import Miss, Report

    a, b = Miss("parallel", "no causal mask", "x.py:3"), Miss("loop", "not linear", "x.py:3")
    report = Report(misses=[a, b, a, a])
    report.extend(Report(misses=[Miss("parallel", "no causal mask", "x.py:3", count=2), b]))
    assert [(m.spelling, m.count) for m in report.misses] == [("parallel", 5), ("loop", 2)]
    assert report.near_misses == report.misses


def test_identity_of_a_symbolic_size():
    """torch.eye(K) where Dynamo traced K as a symbol is still the constant identity: the delta
    rule's Householder spelling matches, and another K recompiles (sizes pinned) and stays exact."""
    from fla_compile import backend

    fn = S.delta_householder
    compiled = torch.compile(fn, backend="fla", options={"inductor": False}, dynamic=True)
    backend.REPORTS.clear()
    for Kd in (4, 6):
        gen = torch.Generator().manual_seed(Kd)
        q, k = (torch.randn(B, T, H, Kd, generator=gen) for _ in range(2))
        v, b = torch.randn(B, T, H, V, generator=gen), torch.randn(B, T, H, 1, generator=gen)
        assert rel(compiled(q, k, v, b), fn(q, k, v, b)) < 1e-5
    assert [[m.family for m in r.matches] for r in backend.REPORTS] == [["delta_rule"], ["delta_rule"]]
    assert any("pinned" in n for n in backend.REPORTS[0].notes), str(backend.REPORTS[0])
