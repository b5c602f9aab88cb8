"""``strict=True`` on hybrid models: softmax attention is reported as "not a recurrence" and never
raises; a near miss (the structure of a recurrence that could not be proven) still raises."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from fla_compile.report import Grade
from tests.compare import rel

from .patterns import spellings as S
from .patterns import test_cumsum as TC
from .patterns import test_normalized as TN
from .patterns import test_parallel as TP

C, H = 16, 2


class SoftmaxAttention(torch.nn.Module):
    """The softmax layer of a hybrid model: eager (scores, additive causal mask, softmax, dropout)
    as in transformers' ``eager_attention_forward``, or ``F.scaled_dot_product_attention``."""

    def __init__(self, sdpa: bool):
        super().__init__()
        self.sdpa = sdpa
        self.qkv = torch.nn.Linear(C, 3 * C)
        self.o = torch.nn.Linear(C, C)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-1, -2) * (C // H) ** -0.5
            mask = torch.full((T, T), float("-inf"), device=x.device).triu(1)
            p = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
            o = F.dropout(p, p=0.0, training=self.training) @ v
        return self.o(o.transpose(1, 2).reshape(B, T, C))


class NaiveGLA(torch.nn.Module):
    """The linear-attention layer: a naive time loop (or, with ``nonlinear``, a near miss: tanh of the state)."""

    def __init__(self, nonlinear: bool = False):
        super().__init__()
        self.nonlinear = nonlinear
        self.qkv = torch.nn.Linear(C, 3 * C)
        self.gate = torch.nn.Linear(C, C)
        self.o = torch.nn.Linear(C, C)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, H, C // H).unbind(2)
        g = F.logsigmoid(self.gate(x)).view(B, T, H, C // H)
        h = x.new_zeros(B, H, C // H, C // H)
        outs = []
        for t in range(T):
            h = h * g[:, t, :, :, None].exp() + k[:, t, :, :, None] * v[:, t, :, None, :]
            h = torch.tanh(h) if self.nonlinear else h
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
        return self.o(torch.stack(outs, 1).flatten(2))


class Hybrid(torch.nn.Module):
    def __init__(self, sdpa: bool, nonlinear: bool = False):
        super().__init__()
        self.attn, self.linear = SoftmaxAttention(sdpa), NaiveGLA(nonlinear)

    def forward(self, x):
        x = x + self.attn(F.layer_norm(x, (C,)))
        return x + self.linear(F.layer_norm(x, (C,)))


@pytest.mark.parametrize("sdpa", [False, True], ids=["eager_softmax", "sdpa"])
def test_hybrid_compiles_under_strict(sdpa):
    torch._dynamo.reset()
    model = Hybrid(sdpa).eval()
    x = torch.randn(2, 10, C)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="fla", options={"strict": True, "inductor": False})(x)
    report = fla_compile.last_report()
    assert [(m.family, m.spelling) for m in report.matches] == [("gla", "loop")], str(report)
    assert not report.near_misses, str(report)
    (miss,) = report.misses
    assert miss.grade == Grade.NOT_A_RECURRENCE and not miss.near_miss
    assert "softmax attention: not a linear recurrence" in miss.reason, str(report)
    assert "[not a recurrence]" in str(report) and "1 not a recurrence" in str(report)
    assert rel(out, ref) < 1e-5


def test_hybrid_near_miss_still_raises_under_strict():
    torch._dynamo.reset()
    model = Hybrid(sdpa=False, nonlinear=True).eval()
    with pytest.raises(Exception, match=r"\[near miss\] loop.*not linear in the state"):
        torch.compile(model, backend="fla", options={"strict": True, "inductor": False})(torch.randn(2, 10, C))


def _loop_inputs():
    return [torch.randn(2, 8, 2, 4) for _ in range(3)]


NEAR_MISSES = [
    (S.miss_nonlinear_in_state, _loop_inputs, "not linear in the state"),
    (S.miss_reads_previous_state, _loop_inputs, r"S_\{t-1\}"),
    (TP.anti_causal, TP.inputs, "anti-causal"),
    (TP.random_mask_inside, TP.inputs, "random"),
    (TP.exp_scores, TP.inputs, None),  # softmax-style: not a recurrence, no error
    (TC.cumsum_key_dim, TC.inputs, "key dim"),
]


@pytest.mark.parametrize("fn,make,reason", NEAR_MISSES, ids=[m[0].__name__ for m in NEAR_MISSES])
def test_strict_raises_on_near_misses_only(fn, make, reason):
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fla", options={"strict": True, "inductor": False})
    xs = [x.detach() for x in make()]
    if reason is None:
        compiled(*xs)
        assert [m.grade for m in fla_compile.last_report().misses] == [Grade.NOT_A_RECURRENCE]
        return
    with pytest.raises(Exception, match=reason):
        compiled(*xs)


def test_flex_attention_is_reported_not_a_recurrence():
    """Reported at the user's line; and its inlined internals (vmap levels) are never run on
    probes: a probe failing half-way through them left functorch's state broken for Inductor
    and AOT after us."""
    from torch.nn.attention.flex_attention import flex_attention

    def causal(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx >= kv_idx, score, -float("inf"))

    def attend(q, k, v):
        return flex_attention(q, k, v, score_mod=causal)

    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 32, 8) for _ in range(3))
    out = torch.compile(attend, backend="fla", options={"strict": True, "inductor": False})(q, k, v)
    misses = fla_compile.last_report().misses
    assert [(m.grade, "flex_attention" in m.reason) for m in misses] == [(Grade.NOT_A_RECURRENCE, True)], misses
    assert "test_strict.py" in misses[0].source and "flex_attention(q, k, v" in misses[0].source, misses[0].source
    assert torch.allclose(out, attend(q, k, v), atol=1e-5)


@pytest.mark.parametrize("fn", [TN.parallel_elu_bhtd, TN.parallel_elu_bthd_einsum], ids=lambda f: f.__name__)
def test_a_normalized_form_kept_as_written_does_not_raise(fn, monkeypatch):
    """Proven and kept as written (below the shipped cost table's crossover), its numerator is no near miss of
    the parallel pass: strict compiles it."""
    monkeypatch.setenv("FLA_COMPILE_COSTS", "")  # the suite turns the choice off; the package's table here
    monkeypatch.setenv("FLA_COMPILE_CACHE_DIR", "/nonexistent-fla-compile-cache")  # not this machine's table
    torch._dynamo.reset()
    xs = TN.inputs(fn)
    out = torch.compile(fn, backend="fla", options={"inductor": False, "strict": True})(*xs)
    report = fla_compile.last_report()
    assert [(m.family, bool(m.kept)) for m in report.matches] == [("normalized_linear_attn", True)], str(report)
    assert not report.misses, str(report)
    assert rel(out, fn(*xs)) < 1e-6
