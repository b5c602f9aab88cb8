"""Masked scores that are a polynomial of degree <= 2 in the raw scores r = q . k: ``tril(a0 + a1 r + a2 r^2)``.

Based's quadratic reference replaces exp(q . k / sqrt(d)) by its second-order Taylor polynomial, 1 + s + s^2 / 2,
masks it causally and divides by the row sums. That is normalized linear attention on feature maps, since
a0 + a1 q.k + a2 (q.k)^2 = phi_q(q) . phi_k(k) with

    phi_q(q) = [a0, a1 q, a2 vec(q q^T)],  phi_k(k) = [1, k, vec(k k^T)]      (feature dim 1 + d + d^2)

The coefficients ride on the q side, so any real a0, a1, a2 factor without a square root. ``fit`` reads the
coefficients from numbers: the sub-region from the raw scores to the masked ones runs on signed probes along rays
(0, +-X, 2X, and a second draw Y); it must be an elementwise polynomial of degree <= 2 there, with coefficients
that are zero above the diagonal and one constant each on and below it. exp (softmax-like), a cubic term, a
non-causal mask or a polynomial applied after the mask (its constant survives above the diagonal) fail here with
the reason. ``feature_maps`` builds phi_q and phi_k as a small graph that the rewrite inlines into the user's
graph (so Inductor fuses the maps); the proof of the whole region against the op is ``normalized``'s.

Only a polynomial bounded away from zero is taken (its least value at least :data:`FLOOR` of a0): the maps
compute q . k again as d^2 products, which cancel where q . k is near 0, and a normalizer that can vanish there
turns that into a large error the code's own scores do not have. Such a region is left as written with the reason.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..ir import Layout, out_batch
from ..numerics import rel_err
from ..rewrite import to_canon
from ..verify import TOL, NearMiss, run_region
from . import _region as R
from ._graph import infer_values, value_of

ZERO = 1e-12  # below this fraction of the largest: a term the code does not have (float64 fit noise is ~1e-16)
# the polynomial's least value over all s, as a fraction of a0 = p(0), below which it is left as written: Based's
# 1 + s + s^2 / 2 never goes under 1 / 2, so its normalizer grows by at least 1 / 2 a key; (q . k)^2 reaches 0, and
# at a row whose scores lie near 0 the op's normalizer, a dot of d^2 products with cancellation in fp32, was 1e-4
# off where the code's own (q . k)^2 was 1e-7 off (Triton path, fp32, H200 and the interpreter, forty-third session)
FLOOR = 0.1


def _region(cand) -> fx.GraphModule | None:
    """The sub-graph from the raw scores to the masked scores, same shape, reading nothing else at run time."""
    if cand.raw_eq is not None or R.shape_of(cand.scores) != R.shape_of(cand.masked):
        return None
    try:
        return R.extract(cand.masked, [cand.scores])[0]
    except NearMiss:
        return None


def _canon(x: torch.Tensor, cand) -> torch.Tensor:
    """A [.., T, T] coefficient in the masked scores' layout as [N, T, S]."""
    c = R.contraction(cand.out)
    labels = c.la if c.a is cand.masked else c.lb
    batch, bsizes = out_batch(cand.out_layout, R.shape_of(cand.out))
    return to_canon(x, Layout(labels, cand.t, cand.s), batch, bsizes)[0].transpose(0, 1)


def fit(cand) -> tuple[float, float, float] | None:
    """(a0, a1, a2) of masked = tril(a0 + a1 r + a2 r^2), r the raw scores; None where the masked scores are no
    such region or are linear in r (the parallel matcher's reason stands); NearMiss with the reason otherwise."""
    sub = _region(cand)
    if sub is None:
        return None
    gen = torch.Generator().manual_seed(20261201)
    shape, device = R.shape_of(cand.scores), value_of(cand.scores).device

    def draw():  # |x| in [0.5, 1.5], either sign: divisions by x stay well conditioned
        x = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
        return (x * torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()).to(device)

    def f(x):
        out = run_region(sub, [x], keep=())[0]
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise NearMiss("the masked scores are not an elementwise function of q k^T")
        return out.double()

    X, Y = draw(), draw()
    f0, fx_, fmx = f(torch.zeros_like(X)), f(X), f(-X)
    c0, c1, c2 = f0, (fx_ - fmx) / (2 * X), ((fx_ + fmx) / 2 - f0) / (X * X)
    for Z in (2 * X, Y):  # along another point of the ray, and along another ray
        if not rel_err(c0 + c1 * Z + c2 * Z * Z, f(Z)) <= TOL:
            raise NearMiss(
                "the masked scores are neither linear nor a polynomial of degree <= 2 in q . k (a cubic or higher "
                "term, or another nonlinearity of the scores)"
            )
    cs = [_canon(c, cand) for c in (c0, c1, c2)]
    big = max(c.abs().max().item() for c in cs)
    zero = [c.abs().max().item() <= ZERO * big for c in cs]
    if zero[0] and zero[2]:
        return None  # linear in q . k: the parallel matcher's reason stands
    if zero[1] and zero[2]:
        raise NearMiss("the masked scores do not depend on q . k")
    T = cs[0].shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool, device=cs[0].device).triu(1)
    if any((c[..., upper].abs() > ZERO * big).any() for c in cs):
        why = (
            "its constant term survives above the diagonal (the mask applied before the polynomial)"
            if all((c[..., upper].abs() <= ZERO * big).all() for c in cs[1:])
            else "scores above the diagonal are kept"
        )
        raise NearMiss(f"the masked scores are a polynomial of q . k, but not causal: {why}")
    coefs = []
    for c, z in zip(cs, zero):
        a = 0.0 if z else c[..., 0, 0].flatten()[0].item()
        if not z and not rel_err(c[..., ~upper], torch.full_like(c[..., ~upper], a)) <= TOL:
            raise NearMiss(
                "the masked scores are a polynomial of q . k whose coefficients vary with the position (a decay or "
                "a mask other than causal 0 / 1)"
            )
        coefs.append(float(f"{a:.14g}"))  # 0.125, not 0.12499999999999997: the proof checks the rounded one
    a0, a1, a2 = coefs
    floor = a0 - a1 * a1 / (4 * a2) if a2 > 0 else -float("inf")  # the polynomial's least value over all s
    if not (a0 > 0 and floor >= FLOOR * a0):
        raise NearMiss(
            f"the masked scores are the polynomial {a0:g} + {a1:g} s + {a2:g} s^2 of s = q . k, whose least value "
            f"({floor:.3g}) is not at least {FLOOR:g} of its value at s = 0: rows of scores near its zero have a "
            "normalizer near zero, where the op's feature maps (q . k computed as d^2 products) lose digits the "
            "code's scores keep"
        )
    return tuple(coefs)


def feature_maps(cand, coefs: tuple) -> fx.GraphModule:
    """(q, k) -> (phi_q, phi_k), each in its own layout with the feature dim grown to the polynomial's terms:
    phi_q(q) . phi_k(k) = a0 + a1 q.k + a2 (q.k)^2 (absent terms left out)."""
    g = fx.Graph()
    call = g.call_function

    def scaled(y, a):
        return y if a == 1.0 else call(operator.mul, (y, a))

    q, k = g.placeholder("q"), g.placeholder("k")
    outs = []
    for x, lay, scales in ((q, cand.layouts[0], coefs), (k, cand.layouts[1], (1.0, 1.0, 1.0))):
        f = lay.labels.index(lay.feat)
        parts = []
        if coefs[0]:
            parts.append(call(torch.full_like, (call(torch.narrow, (x, f, 0, 1)), scales[0])))
        if coefs[1]:
            parts.append(scaled(x, scales[1]))
        if coefs[2]:
            outer = call(operator.mul, (call(torch.unsqueeze, (x, f + 1)), call(torch.unsqueeze, (x, f))))
            parts.append(scaled(call(torch.flatten, (outer, f, f + 1)), scales[2]))
        outs.append(call(torch.cat, (parts, f)))
    g.output(tuple(outs))
    return fx.GraphModule(torch.nn.Module(), g)


def insert(maps: fx.GraphModule, q: fx.Node, k: fx.Node, before: fx.Node) -> tuple[fx.Node, fx.Node]:
    """Inline ``maps`` on ``q`` and ``k`` into their graph before ``before``, with fake values: (phi_q, phi_k)."""
    graph = before.graph
    places = maps.graph.find_nodes(op="placeholder")
    env = dict(zip(places, (q, k)))
    made = []
    with graph.inserting_before(before):
        for n in maps.graph.nodes:
            if n.op == "call_function":
                env[n] = graph.node_copy(n, lambda a: env[a])
                if "stack_trace" in before.meta:  # the report's source line of the maps: the division's
                    env[n].meta["stack_trace"] = before.meta["stack_trace"]
                made.append(env[n])
    infer_values(made)
    out = maps.graph.find_nodes(op="output")[0].args[0]
    return env[out[0]], env[out[1]]
