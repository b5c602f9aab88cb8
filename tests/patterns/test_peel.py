"""A loop whose first step is written apart (``patterns/peel.py``): ``h = x[:, 0]``, then ``h = a_t h + x_t``.
Rewritten only where step 0 is the general step on a zero state; every look-alike left as written."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile

B, T, D = 2, 6, 8


def peel_none(x, g):
    a = torch.sigmoid(g)
    h, ys = None, []
    for t in range(x.shape[1]):
        h = x[:, t] if h is None else a[:, t] * h + x[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


def peel_if_t0(x, g):
    a = torch.exp(F.logsigmoid(g))
    ys = []
    for t in range(x.shape[1]):
        if t == 0:
            h = x[:, 0]
        else:
            h = a[:, t] * h + x[:, t]
        ys.append(h)
    return torch.stack(ys, dim=1)


def peel_range_from_1(x, g):
    """The loop from 1 after ``h = x[:, 0]``, the final state returned too."""
    a = torch.sigmoid(g)
    h = x[:, 0]
    ys = [h]
    for t in range(1, x.shape[1]):
        h = a[:, t] * h + x[:, t]
        ys.append(h)
    return torch.stack(ys, 1), h


def miss_peel_scaled(x, g):
    """Step 0 is 2 x_0, not the general step on a zero state (x_0)."""
    a = torch.sigmoid(g)
    h, ys = 2 * x[:, 0], []
    ys.append(h)
    for t in range(1, x.shape[1]):
        h = a[:, t] * h + x[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


def miss_peel_other_output(x, g):
    """Step 0 is the general one but its output is not: y_0 = h_0 + 1, y_t = h_t."""
    a = torch.sigmoid(g)
    h = x[:, 0]
    ys = [h + 1]
    for t in range(1, x.shape[1]):
        h = a[:, t] * h + x[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


def miss_peel_nonlinear(x, g):
    """Step 0 is the general step on zeros (tanh(x_0)), but the step is not linear in the state."""
    a = torch.sigmoid(g)
    h, ys = None, []
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t]) if h is None else torch.tanh(a[:, t] * h + x[:, t])
        ys.append(h)
    return torch.stack(ys, 1)


def _inputs(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(B, T, D, generator=gen).requires_grad_(requires_grad) for _ in range(2)]


def _run(fn, args):
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False, "costs": False})(*args)
    return out, fla_compile.last_report()


def _flat(x):
    return list(x) if isinstance(x, tuple) else [x]


@pytest.mark.parametrize("fn", [peel_none, peel_if_t0, peel_range_from_1])
def test_peeled_first_step_rewritten(fn):
    args = _inputs(requires_grad=True)
    out, report = _run(fn, args)
    assert [m.family for m in report.matches] == ["hgrn"], report
    ref = fn(*args)
    for o, r in zip(_flat(out), _flat(ref)):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    w = [torch.randn_like(r) for r in _flat(ref)]
    go = torch.autograd.grad(sum((o * p).sum() for o, p in zip(_flat(out), w)), args)
    gr = torch.autograd.grad(sum((r * p).sum() for r, p in zip(_flat(ref), w)), args)
    for a, b in zip(go, gr):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "fn, why",
    [
        (miss_peel_scaled, "not the loop's step on a zero state"),
        (miss_peel_other_output, "not the loop's step on a zero state"),
        (miss_peel_nonlinear, "not linear in the state"),
    ],
)
def test_peeled_look_alike_left_as_written(fn, why):
    args = _inputs()
    out, report = _run(fn, args)
    assert not report.matches, report
    assert any(why in m.reason for m in report.misses), report.misses
    torch.testing.assert_close(out, fn(*args), rtol=0, atol=0)


def test_undo_leaves_the_graph_as_written():
    """Step 0 proven (tanh(x_0) is the step on zeros) but the loop not rewritten: the synthesized step goes."""
    from fla_compile import passes
    from fla_compile.patterns._graph import to_ssa
    from fla_compile.report import Report

    seen = []

    def backend(gm, example_inputs):
        g, _ = to_ssa(gm)
        before = str(g)
        passes.loop_pass(g, passes.Options(), Report())
        g.lint()
        seen.append((str(g) == before, any(n.meta.get("fla_peeled") for n in g.nodes)))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(miss_peel_nonlinear, backend=backend)(*_inputs())
    assert seen == [(True, False)]
