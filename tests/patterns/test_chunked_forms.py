"""Chunked forms compiled as the function itself (issue 14): a state carried over a loop over chunks plus
an intra-chunk masked form, recognised by structure and proof, not by name. flash-linear-attention's naive
chunk references (simple_gla, the delta rule's WY form), RetNet's chunkwise retention, MiniMax's lightning
attention in blocks, Mamba2's ssd_minimal and GLA in chunks (the re-typed versions of ``held_out.py``), equal
to eager in outputs and gradients. Look-alikes whose chunks do not compose into one recurrence are not
matched as a whole (their intra-chunk pieces may be: outputs stay as written)."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

from .held_out import (
    _segsum,
    delta_fla_naive_chunkwise,
    gla_chunked_pairwise,
    lightning_attention_blocks,
    miss_chunk_simple_gla_no_state_decay,
    miss_retention_chunkwise_wrong_state_decay,
    retention_chunkwise,
    simple_gla_fla_naive_chunk,
    ssd_minimal,
)

B, T, H, D = 1, 16, 2, 8


def ssd_wrong_state_decay(q, k, v, gs, block_len=8):
    """ssd_minimal whose chunk states decay twice as fast as the diagonal blocks: no one recurrence."""
    X, A, Bm, Cm = v, gs, k, q
    b, T_, h = A.shape
    X, A, Bm, Cm = (x.reshape(b, T_ // block_len, block_len, *x.shape[2:]) for x in (X, A, Bm, Cm))
    A = A.permute(0, 3, 1, 2)
    A_cumsum = torch.cumsum(A, dim=-1)
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cm, Bm, torch.exp(_segsum(A)), X)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bm, torch.exp(2 * (A_cumsum[:, :, :, -1:] - A_cumsum)), X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cm, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, T_, h, -1)


def retention_wrong_state_decay_4(q, k, v):
    """Four chunks: with two, the wrong decay of the last state is never read (the function is retention)."""
    return miss_retention_chunkwise_wrong_state_decay(q, k, v, chunk_size=4)


def simple_gla_no_state_decay_4(q, k, v, gs):
    return miss_chunk_simple_gla_no_state_decay(q, k, v, gs, chunk_size=4)


def ssd_wrong_state_decay_4(q, k, v, gs):
    return ssd_wrong_state_decay(q, k, v, gs, block_len=4)


def inputs(fn, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = {
        "q": lambda: torch.randn(B, T, H, D, generator=gen),
        "k": lambda: torch.randn(B, T, H, D, generator=gen),
        "v": lambda: torch.randn(B, T, H, D, generator=gen),
        "g": lambda: F.logsigmoid(torch.randn(B, T, H, D, generator=gen)) * 0.3,
        "gs": lambda: F.logsigmoid(torch.randn(B, T, H, generator=gen)),
        "b": lambda: torch.rand(B, T, H, generator=gen),
    }
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return [make[n]().requires_grad_() for n in names if n in make]


def run(fn):
    torch._dynamo.reset()
    xs = inputs(fn)
    ref = fn(*xs)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*xs)
    ref, out = (ref if isinstance(ref, tuple) else (ref,)), (out if isinstance(out, tuple) else (out,))
    return xs, ref, out, fla_compile.last_report()


@pytest.mark.parametrize(
    "fn,family",
    [
        (simple_gla_fla_naive_chunk, "simple_gla"),
        (delta_fla_naive_chunkwise, "delta_rule"),
        (retention_chunkwise, "retention"),
        (lightning_attention_blocks, "retention"),
        (ssd_minimal, "simple_gla"),
        (gla_chunked_pairwise, "gla"),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_chunked_form_is_recognised(fn, family):
    xs, ref, out, report = run(fn)
    assert [(m.family, m.spelling) for m in report.matches] == [(family, "chunked")], str(report)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    gen = torch.Generator().manual_seed(1)
    proj = [torch.randn(r.shape, generator=gen) for r in ref]
    g_ref = torch.autograd.grad(sum((r * p).sum() for r, p in zip(ref, proj)), xs)
    g_out = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, proj)), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize(
    "fn",
    [retention_wrong_state_decay_4, simple_gla_no_state_decay_4, ssd_wrong_state_decay_4],
    ids=lambda f: f.__name__,
)
def test_chunked_lookalikes_are_not_matched_whole(fn):
    xs, ref, out, report = run(fn)
    assert not [m for m in report.matches if m.spelling == "chunked"], str(report)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
