"""Recompiles with other sizes: Dynamo then traces batch, head, feature (and, outside a loop,
time) sizes as symbols. Every spelling must still be matched, pinned to the sizes of the call,
and equal to eager at each size; a later call at an earlier size reuses its graph."""

import pytest
import torch
import torch.nn.functional as F

from fla_compile.backend import REPORTS

from .patterns import spellings
from .patterns.test_chunked import reference_function
from .patterns.test_cumsum import einsum_bthd
from .patterns.test_normalized import parallel_elu_bthd_einsum
from .patterns.test_parallel import simple_gla_matmul

SIZES = [(2, 8, 2, 8), (3, 8, 4, 8), (1, 8, 3, 4), (2, 13, 2, 8)]  # B, T, H, D (short loops: each size traces T steps)


def _inputs(B, T, H, D, gate, seed):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, D, generator=gen) for _ in range(3)]
    if gate == "bthk":
        xs.append(F.logsigmoid(torch.randn(B, T, H, D, generator=gen)) / 4)
    elif gate == "bth":
        xs.append(F.logsigmoid(torch.randn(B, T, H, generator=gen)))
    return xs


def _hf_chunk_gated_delta_rule(q, k, v, g):
    fn = reference_function("qwen3_next", "torch_chunk_gated_delta_rule")
    beta = torch.sigmoid(q[..., 0])
    return fn(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]


CASES = [
    (spellings.gla_fla_naive, "bthk", "gla", "loop"),
    (spellings.retention_inplace_einsum, None, "retention", "loop"),
    (spellings.linear_matmul_cat, None, "linear_attn", "loop"),
    (simple_gla_matmul, "bth", "simple_gla", "parallel"),
    (einsum_bthd, None, "linear_attn", "cumsum"),
    # its causal mask is built from T = q.shape[1], an input of the graph once T is symbolic
    (parallel_elu_bthd_einsum, None, "normalized_linear_attn", "parallel"),
    (_hf_chunk_gated_delta_rule, "bth", "gated_delta_rule", "chunked"),
]


# every spelling without Inductor; with Inductor only the loops (the pinning does not depend on the
# spelling, and each Inductor case costs a cold compile per size)
PARAMS = [pytest.param(*c, False, id=f"aot_eager-{c[0].__name__}") for c in CASES] + [
    pytest.param(*c, True, id=f"inductor-{c[0].__name__}") for c in CASES if c[3] == "loop"
]


@pytest.mark.parametrize("fn,gate,family,spelling,inductor", PARAMS)
def test_recompiles_at_other_sizes_stay_matched(fn, gate, family, spelling, inductor):
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fla", options={"inductor": inductor})
    seen = len(REPORTS)
    for i, size in enumerate(SIZES + SIZES[1:2]):
        xs = _inputs(*size, gate, seed=i)
        ref = fn(*xs)
        out = compiled(*xs)
        out, ref = (out[0], ref[0]) if isinstance(ref, tuple) else (out, ref)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5, size
    reports = REPORTS[seen:]
    assert len(reports) == len(SIZES), [str(r) for r in reports]  # the repeated size recompiled nothing
    for r in reports:
        assert [(m.family, m.spelling) for m in r.matches] == [(family, spelling)], str(r)
    assert any("pinned" in n for r in reports for n in r.notes), [str(r) for r in reports]


def _flat_heads(q, k, v):
    """A loop whose per-step output folds batch and heads ([B*H, V], a size the step reads as a number)."""
    B, T, H, K = q.shape
    BH = B * H
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, :, None] * h).sum(-2).reshape(BH, -1))
    return torch.stack(outs, 1)


LOOPS = [c[:3] for c in CASES if c[3] == "loop"]


@pytest.mark.parametrize("fn,gate,family", LOOPS, ids=[c[0].__name__ for c in LOOPS])
def test_loop_takes_batch_and_heads_at_run_time(fn, gate, family):
    """Compiled with symbolic sizes, a rewritten loop serves other batch and head counts from one graph: its
    lowering reads them from its arguments. What it holds as numbers (the state's K and V; gla_fla_naive's
    K ** -0.5) is pinned: another D recompiles, and is right."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fla", dynamic=True, options={"inductor": False})
    seen = len(REPORTS)
    sizes = [(2, 5, 3, 8), (4, 5, 5, 8), (3, 5, 2, 8)] + ([(2, 5, 3, 4)] if fn is spellings.gla_fla_naive else [])
    for i, (B, T, H, D) in enumerate(sizes):
        xs = _inputs(B, T, H, D, gate, seed=i)
        ref, out = fn(*xs), compiled(*xs)
        out, ref = (out[0], ref[0]) if isinstance(ref, tuple) else (out, ref)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5, (B, H, D)
        assert len(REPORTS) - seen == (1 if D == 8 else 2), (B, H, D)  # one graph for B, H; D pinned
    r = REPORTS[seen]
    assert [(m.family, m.spelling) for m in r.matches] == [(family, "loop")], str(r)
    assert any("pinned for the loop" in n for n in r.notes) and not any("automatic" in n for n in r.notes), str(r)


def test_loop_pins_a_size_it_holds_as_a_number():
    """Near miss of the above: the step reshapes by B * H, a number in its graph; the loop is still matched, and
    another batch size recompiles (its graph was built for this one) rather than running wrong."""
    torch._dynamo.reset()
    compiled = torch.compile(_flat_heads, backend="fla", dynamic=True, options={"inductor": False})
    seen = len(REPORTS)
    for i, (B, H) in enumerate([(2, 3), (4, 5)]):
        xs = _inputs(B, 5, H, 8, None, seed=i)
        ref, out = _flat_heads(*xs), compiled(*xs)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5, (B, H)
    reports = REPORTS[seen:]
    assert len(reports) == 2 and all([m.family for m in r.matches] == ["linear_attn"] for r in reports), str(reports)
    assert any("reads as a number" in n for n in reports[0].notes), str(reports[0])
