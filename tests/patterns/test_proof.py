"""Near misses that only the numeric proof stops, one group per spelling.

Each function below passes everything structural (it is re-rolled, its masked form or prefix
sum is bound, its chunked function is a candidate) and its classification reads a family from
the numbers of one probe, yet it computes something else. Only the proof on fresh inputs
(``verify.prove_loop``, ``verify.prove_region``, the chunked pass's ``_prove``) refuses it.

``test_the_proof_stops_it`` checks that the code is left as written (or, for a normalizer, left
beside the proven numerator) and equal to eager. ``test_without_the_proof_it_is_miscompiled``
replaces every proof by one that always succeeds and checks that each case is then rewritten
into a wrong answer: so each case really tests the proof, not something before it.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from fla_compile import passes, verify
from fla_compile.patterns import _region, chunked
from tests.compare import rel

B, T, H, K, V = 2, 6, 2, 4, 4


# --- loop: the classifier reads the read-out scale from one probe of the step's inputs --------


def loop_readout_over_global_key_norm(q, k, v, g):
    """A GLA whose read-out is divided by the norm of the whole key slice k_t (over batch and
    heads, where a per-head norm was meant): a constant factor at any one probe, which changes
    with the inputs."""
    h = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        h = h * F.logsigmoid(g[:, t]).exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h) / k[:, t].norm())
    return torch.stack(outs, 1)


def loop_output_temperature_of_the_batch(q, k, v, g):
    """Linear attention whose output is scaled by a temperature taken from the whole batch's gates."""
    h = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        h = h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h) * torch.sigmoid(g[:, t].mean()))
    return torch.stack(outs, 1)


def loop_delta_readout_over_global_value_scale(q, k, v, g):
    """Qwen3-Next's recurrent gated delta rule, in place, with the read-out divided by the
    largest |v_t| of the whole batch."""
    S = q.new_zeros(B, H, K, V)
    o = torch.zeros_like(v)
    for t in range(T):
        S *= F.logsigmoid(g[:, t, :, 0]).exp()[..., None, None]
        kv_mem = (S * k[:, t, :, :, None]).sum(-2)
        delta = (v[:, t] - kv_mem) * torch.sigmoid(g[:, t, :, 1:2])
        S += k[:, t, :, :, None] * delta[:, :, None, :]
        o[:, t] = (S * q[:, t, :, :, None]).sum(-2) / v[:, t].abs().max()
    return o


# --- parallel: the mask is bound to a decay, which the proof checks over the whole form --------


def _bhtd(*xs):
    return [x.transpose(1, 2) for x in xs]


def parallel_gate_one_step_late(q, k, v, g):
    """SSD's exp(c_i - c_j) (log-gates g [B, T, H]) from an exclusive cumsum: every gate applied one step late."""
    c = (torch.cumsum(g, 1) - g).transpose(1, 2)
    L = torch.exp(c[..., :, None] - c[..., None, :]).tril()
    q, k, v = _bhtd(q, k, v)
    return ((q @ k.transpose(-1, -2)) * L) @ v


def parallel_decay_wrong_sign_in_one_head(q, k, v, g):
    """exp(c_i - c_j) with the log-gates' sign flipped in the second head (a growth, not a decay)."""
    c = torch.cumsum(g, 1).transpose(1, 2) * torch.tensor([1.0, -1.0])[:, None]
    L = torch.exp(c[..., :, None] - c[..., None, :]).tril()
    q, k, v = _bhtd(q, k, v)
    return ((q @ k.transpose(-1, -2)) * L) @ v


def parallel_diagonal_scaled_twice(q, k, v, g):
    """A causal mask whose diagonal is counted twice (tril + eye)."""
    L = torch.tril(torch.ones(T, T)) + torch.eye(T)
    q, k, v = _bhtd(q, k, v)
    return ((q @ k.transpose(-1, -2)) * L) @ v


def parallel_decay_off_at_one_distance(q, k, v, g):
    """gamma^(i-j) with one distance off by 0.01: a causal decay table that no gamma produces."""
    i = torch.arange(T, dtype=torch.float32)
    d = (i[:, None] - i[None, :]).clamp(min=0)
    L = torch.tril(0.9**d + 0.01 * (d == 3).float())
    q, k, v = _bhtd(q, k, v)
    return ((q @ k.transpose(-1, -2)) * L) @ v


# --- cumsum: a normalizer whose roots are q and k, but not the numerator's q and k ------------


def cumsum_normalizer_heads_swapped(q, k, v, g):
    q, k = q.sigmoid(), k.sigmoid()
    S = (k[..., :, None] * v[..., None, :]).cumsum(1)
    num = (q[..., :, None] * S).sum(-2)
    den = (q * k[:, :, [1, 0]].cumsum(1)).sum(-1, keepdim=True)
    return num / den


def cumsum_normalizer_keys_permuted(q, k, v, g):
    q, k = q.sigmoid(), k.sigmoid()
    S = torch.cumsum(torch.einsum("bthk,bthv->bthkv", k, v), dim=1)
    num = torch.einsum("bthk,bthkv->bthv", q, S)
    den = torch.einsum("bthk,bthk->bth", q, torch.cumsum(k[..., [1, 0, 2, 3]], dim=1))
    return num / (den[..., None] + 1e-6)


def cumsum_normalizer_q_one_step_late(q, k, v, g):
    q, k = q.sigmoid(), k.sigmoid()
    S = torch.cumsum(torch.einsum("bthk,bthv->bthkv", k, v), dim=1)
    num = torch.einsum("bthk,bthkv->bthv", q, S)
    late = [0] + list(range(T - 1))
    den = torch.einsum("bthk,bthk->bth", q[:, late], torch.cumsum(k, dim=1))
    return num / (den[..., None] + 1e-6)


# --- chunked: a chunked simple GLA written out, once right and once with a late gate ----------

C = 4  # chunk size; T = 3 chunks


def chunk_simple_gla(q, k, v, g, late=False):
    """A torch chunked simple GLA (log-gates g [B, T, H]), carrying the state across chunks."""
    Bq, Tq, Hq, Kq = q.shape
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    S = q.new_zeros(Bq, Hq, Kq, v.shape[-1])
    outs = []
    mask = torch.ones(C, C, dtype=torch.bool).tril()
    for i in range(0, Tq, C):
        qc, kc, vc, gc = q[:, :, i : i + C], k[:, :, i : i + C], v[:, :, i : i + C], g[:, :, i : i + C]
        c = gc.cumsum(-1)
        if late:
            c = c - gc
        inter = (qc * c.exp()[..., None]) @ S
        A = (qc @ kc.transpose(-1, -2)) * (c[..., :, None] - c[..., None, :]).masked_fill(~mask, -torch.inf).exp()
        outs.append(inter + A @ vc)
        S = S * c[..., -1, None, None].exp() + (kc * (c[..., -1:] - c).exp()[..., None]).transpose(-1, -2) @ vc
    return torch.cat(outs, 2).transpose(1, 2), S


def chunked_right(q, k, v, g):
    return chunk_simple_gla(q, k, v, g[..., 0])


def chunked_gate_one_step_late(q, k, v, g):
    return chunk_simple_gla(q, k, v, g[..., 0], late=True)


@dataclasses.dataclass(frozen=True)
class Case:
    fn: object
    spelling: str
    kept: tuple = ()  # families still matched (a proven numerator beside a refused normalizer)
    reason: str = "differs"
    T: int = T
    scalar_gate: bool = False  # log-gates [B, T, H] rather than [B, T, H, K]

    def __repr__(self):
        return self.fn.__name__


CASES = [
    Case(loop_readout_over_global_key_norm, "loop"),
    Case(loop_output_temperature_of_the_batch, "loop"),
    Case(loop_delta_readout_over_global_value_scale, "loop"),
    Case(parallel_gate_one_step_late, "parallel", scalar_gate=True),
    Case(parallel_decay_wrong_sign_in_one_head, "parallel", scalar_gate=True),
    Case(parallel_diagonal_scaled_twice, "parallel"),
    Case(parallel_decay_off_at_one_distance, "parallel"),
    Case(cumsum_normalizer_heads_swapped, "cumsum", kept=("linear_attn",), reason=""),
    Case(cumsum_normalizer_keys_permuted, "cumsum", kept=("linear_attn",), reason=""),
    Case(cumsum_normalizer_q_one_step_late, "cumsum", kept=("linear_attn",), reason=""),
    Case(chunked_gate_one_step_late, "chunked", reason="no family op reproduces", T=3 * C),
]


def inputs(case, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Tc = case.T
    q, k, v = (torch.randn(B, Tc, H, K, generator=gen) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, Tc, H, *(() if case.scalar_gate else (K,)), generator=gen))
    return [x.requires_grad_() for x in (q, k, v, g)]


def run(case, seed=0):
    """(compiled outputs, eager outputs, inputs, report)."""
    torch._dynamo.reset()
    xs = inputs(case, seed)
    ref = case.fn(*xs)
    out = torch.compile(case.fn, backend="fla", options={"inductor": False})(*xs)
    report = fla_compile.last_report()
    as_tuple = lambda x: x if isinstance(x, tuple) else (x,)  # noqa: E731
    return as_tuple(out), as_tuple(ref), xs, report


@pytest.fixture(autouse=True)
def _reset():
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_the_proof_stops_it(case):
    out, ref, xs, report = run(case)
    assert [m.family for m in report.matches] == list(case.kept), str(report)
    fused = any("normalizer is fused" in n for n in report.notes)
    assert not fused, str(report)
    if case.reason:
        assert any(m.spelling == case.spelling and case.reason in m.reason for m in report.misses), str(report)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    proj = [torch.randn(r.shape, generator=torch.Generator().manual_seed(3)) for r in ref]
    try:
        g_ref = torch.autograd.grad(sum((r * p).sum() for r, p in zip(ref, proj)), xs, allow_unused=True)
    except RuntimeError:  # eager autograd refuses the in-place spelling; the outputs were compared
        return
    g_out = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, proj)), xs, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        if b is not None:
            assert rel(a, b) < 1e-5


def stub_proofs(monkeypatch):
    """Replace every proof by one that always succeeds (the bindings are still made as usual)."""

    def region(gm, args, recs, *_, **__):
        return recs[0], 0.0

    def function(gm, inputs, outputs, roles, gen):
        # bind the outputs by shape, scale 1, no l2norm: what the pass would rewrite unproven
        o, ht = chunked._op(roles, chunked._probe(inputs, roles, gen), False, 1.0)
        shapes = [tuple(chunked.value_of(n).shape) for n in outputs]
        o_idx = shapes.index(tuple(o.shape))
        s_idx = next((i for i, s in enumerate(shapes) if s == tuple(ht.shape) and i != o_idx), None)
        return False, 1.0, o_idx, s_idx, 0.0

    monkeypatch.setattr(passes, "prove_loop", lambda *a, **k: 0.0)
    monkeypatch.setattr(verify, "prove_region", region)
    monkeypatch.setattr(_region, "prove_region", region)
    monkeypatch.setattr(chunked, "_prove", function)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_without_the_proof_it_is_miscompiled(case, monkeypatch):
    """The meta-test: with the proofs stubbed, each case above is rewritten and comes out wrong,
    so ``test_the_proof_stops_it`` fails for it; the proof is what stops each one."""
    stub_proofs(monkeypatch)
    with torch.no_grad():
        out, ref, _, report = run(case)
    assert [m.spelling for m in report.matches if m.family not in case.kept] or any(
        "normalizer is fused" in n for n in report.notes
    ), str(report)
    assert max(rel(o, r) for o, r in zip(out, ref)) > 1e-3
    with pytest.raises(AssertionError):
        test_the_proof_stops_it(case)


def test_the_right_chunked_function_is_matched():
    """The chunked case's control: the same function without the late gate is proven and rewritten."""
    case = Case(chunked_right, "chunked", T=3 * C)
    out, ref, xs, report = run(case)
    assert [(m.family, m.spelling) for m in report.matches] == [("simple_gla", "chunked")], str(report)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
