"""The proofs' widening policy (``verify.NARROW``): rounding to a narrower float is not the structure.

On float64 probes a region runs with its narrowing float casts (``.to(q.dtype)``, ``.float()``) keeping their
input's value and its narrow float factories (``torch.arange(n, dtype=q.dtype)``) made in float64, so a
retention mask built in bf16 is proven as the gamma^(i-j) it spells. A cast or rounding that changes the math
(to an integer or bool, float8, ``torch.round``) runs as written, and a mask off by one power of gamma or
quantized to a different decay is still refused.
"""

import operator

import pytest
import torch
import torch.fx as fx

import fla_compile
from fla_compile import verify
from tests.compare import rel

from . import held_out_2 as ho

H, T, D = 2, 8, 8  # small: each compile proves one region


# ---------------------------------------------------------------- run_region: what is widened
def _region(body):
    """A one-input region ``body(x)`` traced as written (torch calls and methods, as Dynamo records them)."""
    return fx.symbolic_trace(body)


def _x():
    return verify.probe((3, 4), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "body",
    [
        lambda x: x.to(torch.bfloat16),
        lambda x: x.float().half(),
        lambda x: x.to(torch.float32).to(torch.bfloat16),
        lambda x: x.type(torch.float16),
        lambda x: x.to(dtype=torch.bfloat16),
        lambda x: torch.ops.aten._to_copy.default(x, dtype=torch.bfloat16),
        lambda x: torch.ops.aten.to.dtype(x, torch.float16),
    ],
    ids=["to-bf16", "float-half", "fp32-bf16", "type-fp16", "to-dtype-kwarg", "aten-to-copy", "aten-to-dtype"],
)
def test_narrowing_cast_keeps_the_value(body):
    x = _x()
    out = verify.run_region(_region(body), [x])[0]
    assert out.dtype == torch.float64 and torch.equal(out, x)
    assert verify.run_region(_region(body), [x], widen=False)[0].dtype != torch.float64  # as written: rounded


def test_widened_cast_is_a_copy():
    """The cast made a copy; the widened value is one too, so a region writing to it leaves its input alone."""

    def body(x):
        y = x.to(torch.bfloat16)
        y.mul_(2)
        return x + y

    x = _x()
    assert torch.equal(verify.run_region(_region(body), [x.clone()])[0], 3 * x)


def _factory_region(dtype, gamma=False, factory=torch.arange):
    """x * arange(4, dtype=dtype), or x * (1 - 2^(-9 - arange)): a factory node, as Dynamo records one
    (``symbolic_trace`` would fold it into a constant)."""
    g = fx.Graph()
    x = g.placeholder("x")
    n = g.call_function(factory, (4,), {"dtype": dtype})
    if gamma:
        n = g.call_function(
            operator.sub, (1, g.call_function(operator.pow, (2, g.call_function(operator.sub, (-9, n)))))
        )
    g.output(g.call_function(operator.mul, (x, n)))
    return fx.GraphModule(torch.nn.Module(), g)


def test_narrow_factory_is_made_in_float64():
    x = _x()
    out = verify.run_region(_factory_region(torch.bfloat16, gamma=True), [x])[0]  # 1 - 2^-9 is 1.0 in bf16
    assert torch.equal(out, x * (1 - 2 ** (-9 - torch.arange(4, dtype=torch.float64))))
    as_written = verify.run_region(_factory_region(torch.bfloat16, gamma=True), [x], widen=False)[0]
    assert torch.equal(as_written[:, 1:], x[:, 1:])


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool], ids=str)
def test_integer_factory_runs_as_written(dtype):
    x, gm = _x(), _factory_region(dtype, factory=torch.ones)
    made = next(n for n in gm.graph.nodes if n.target is torch.ones)
    out, kept = verify.run_region(gm, [x], keep=[made])
    assert kept[made].dtype == dtype and torch.equal(out, x)


@pytest.mark.parametrize(
    "body",
    [
        lambda x: x.to(torch.int64),
        lambda x: (x > 0).to(torch.float32) + x.to(torch.bool),
        lambda x: torch.round(x.float() * 4) / 4,
        lambda x: (x * 8).to(torch.int32).to(torch.bfloat16) / 8,
    ],
    ids=["to-int", "to-bool", "round", "int-then-bf16"],
)
def test_math_changing_casts_run_as_written(body):
    x = _x()
    assert torch.equal(verify.run_region(_region(body), [x])[0], body(x.clone()))


@pytest.mark.parametrize(
    "body, dtype",
    [(lambda x: x.to(torch.bfloat16), torch.float16), (lambda x: x.to(torch.float8_e4m3fn), torch.float64)],
    ids=["fp16-to-bf16", "to-float8"],
)
def test_non_widening_float_casts(body, dtype):
    """bf16 and fp16 (neither holds the other), and float8 (a quantization): run as written."""
    x = _x().to(dtype)
    out = verify.run_region(_region(body), [x])[0]
    assert out.dtype == body(x).dtype and torch.equal(out.double(), body(x).double())


# ---------------------------------------------------------------- end to end: torchscale's masks in bf16
def _gammas(h, dtype):
    return 1 - 2 ** (-5 - torch.arange(h, dtype=dtype))


def _masked(q, k, v, mask):
    return ((q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5) * mask) @ v


def retention_mask_in_q_dtype(q, k, v):
    """torchscale's parallel retention, [B, H, T, D]: the decay mask gamma^(n-m) built in q's dtype."""
    gamma = _gammas(q.shape[1], q.dtype)
    idx = torch.arange(q.shape[2], dtype=q.dtype)
    diff = idx[:, None] - idx[None, :]
    return _masked(q, k, v, torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), torch.zeros_like(diff)))


def retention_mask_off_by_one(q, k, v):
    """gamma^(n-m+1): one power of gamma too many, a different factor per head (not one scale)."""
    gamma = _gammas(q.shape[1], q.dtype)
    idx = torch.arange(q.shape[2], dtype=q.dtype)
    diff = idx[:, None] - idx[None, :]
    mask = torch.where(diff >= 0, gamma[:, None, None] ** (diff.clamp(min=0) + 1), torch.zeros_like(diff))
    return _masked(q, k, v, mask)


def retention_mask_off_by_one_below_diagonal(q, k, v):
    """1 on the diagonal, gamma^(n-m+1) below it: read as gamma^2 at one step apart, not geometric."""
    gamma = _gammas(q.shape[1], q.dtype)
    idx = torch.arange(q.shape[2], dtype=q.dtype)
    diff = idx[:, None] - idx[None, :]
    mask = torch.where(diff > 0, gamma[:, None, None] ** (diff.clamp(min=0) + 1), (diff == 0).to(q.dtype))
    return _masked(q, k, v, mask)


def retention_mask_quantized(q, k, v):
    """The decay mask rounded to quarters by arithmetic: a staircase, not gamma^(n-m)."""
    gamma = 1 - 2 ** (-2 - torch.arange(q.shape[1], dtype=torch.float32))  # 0.75, 0.875: steps within T
    idx = torch.arange(q.shape[2], dtype=torch.float32)
    diff = idx[:, None] - idx[None, :]
    mask = torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), torch.zeros_like(diff))
    return _masked(q, k, v, (torch.round(mask * 4) / 4).to(q.dtype))


def retention_mask_cast_to_int(q, k, v):
    """The decay mask scaled by 8 and cast to an integer (truncated), then scaled back: a staircase."""
    gamma = 1 - 2 ** (-2 - torch.arange(q.shape[1], dtype=torch.float32))
    idx = torch.arange(q.shape[2], dtype=torch.float32)
    diff = idx[:, None] - idx[None, :]
    mask = torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), torch.zeros_like(diff))
    return _masked(q, k, v, (mask * 8).to(torch.int32).to(q.dtype) / 8)


def _inputs(dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, H, T, D, generator=gen).to(dtype) for _ in range(3)]


def _compiled(fn, args):
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    return out, fla_compile.last_report()


@pytest.mark.parametrize(
    "fn", [retention_mask_in_q_dtype, ho.ret_parallel_fla_exp2, ho.ret_chunkwise_torchscale], ids=lambda f: f.__name__
)
def test_bf16_mask_is_retention(fn):
    """Recognized in bf16 as in fp32, and as close to a float64 run as eager bf16 is."""
    args = _inputs()
    out, report = _compiled(fn, args)
    assert [m.family for m in report.matches] == ["retention"], str(report)
    truth, eager = fn(*(x.double() for x in args)), fn(*args)
    assert out.dtype == torch.bfloat16
    assert rel(out, truth) <= max(1e-2, 2 * rel(eager, truth))


NEAR_MISSES = {  # the look-alike -> what refuses it
    retention_mask_off_by_one: "not one constant scale",
    retention_mask_off_by_one_below_diagonal: "differs from the region",  # the proof
    retention_mask_quantized: "differs from the region",
    retention_mask_cast_to_int: "differs from the region",
}


@pytest.mark.parametrize("fn", list(NEAR_MISSES), ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_different_decay_is_refused(fn, dtype):
    args = _inputs(dtype)
    out, report = _compiled(fn, args)
    assert report.matches == [], str(report)
    assert any(NEAR_MISSES[fn] in m.reason for m in report.misses), str(report)
    assert torch.equal(out, fn(*args))


def test_widening_a_narrow_mask_is_said(caplog):
    """Not silent: a mask built in bf16 (positions by arange) is computed exactly by the op; a warning says so,
    once per source line. In fp32 nothing is said."""
    from fla_compile import verify

    def said():
        return [r.getMessage() for r in caplog.records if "compute them exactly" in r.getMessage()]

    verify._SAID.clear()
    with caplog.at_level("WARNING", logger="fla_compile"):
        _compiled(retention_mask_in_q_dtype, _inputs(torch.float32))
        assert said() == []
        _compiled(retention_mask_in_q_dtype, _inputs())
        first = said()
        # the positions (and the heads' arange of the gammas), each line once
        assert any("idx = torch.arange" in s and "integers by arange in torch.bfloat16" in s for s in first), first
        assert len(first) == len(set(first)) == 2, first
        _compiled(retention_mask_in_q_dtype, _inputs(seed=1))
        assert said() == first
