"""Triton helpers both kernel lines share for the gates of a chunk (``gc``: the in-chunk cumsum G, fp32,
[TT, H] for a scalar gate, [TT, H, K] per key dim; for one decay per head, GATE 3, the decays [H] themselves; for
GATE 4, a scalar gate as given, [TT, H] log decays per step, whose in-chunk cumsum the kernels form)."""

from __future__ import annotations

import triton
import triton.language as tl

from .gates import SCALAR_GATE_IDS


@triton.constexpr_function
def scalar_gate_id(gate) -> bool:
    """Whether the kernels' gate id is a scalar gate in any of its forms (1, 3, 4: ``gates.SCALAR_GATE_IDS``); a
    constexpr inside a kernel, so a branch on it is chosen at compile time."""
    return gate in SCALAR_GATE_IDS


@triton.jit
def chunk_gate(gc, t0, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """``gc`` moved to the chunk that starts at step ``t0`` (int64), so that the chunk's gate loads take int32
    offsets of its local steps (0 .. BT - 1) from it: [TT, H, K] for GATE 2, [TT, H] for GATE 1 and 4. GATE 3's decays
    [H], and GATE 0's unused pointer, stay as they are."""
    g_c = gc
    if GATE == 2:
        g_c = gc + t0 * H * K
    if GATE == 1 or GATE == 4:
        g_c = gc + t0 * H
    return g_c


@triton.jit
def scalar_gate(gc, o_t, m_t, t0, i_h, H: tl.constexpr, GATE: tl.constexpr):
    """A scalar gate's in-chunk cumsum G at the steps ``o_t`` (0 where ``m_t`` is off) of the chunk that starts at
    step ``t0``. GATE 1 reads it from ``gc`` [TT, H]; GATE 3, one decay gamma per head and step
    (retention's), forms it as (t - t0 + 1) gamma from ``gc`` = the decays [H]: no cumsum pass and no [TT, H] gate;
    GATE 4 scans the chunk's log decays ``gc`` [TT, H] (``o_t`` must be the chunk's steps in order: t0 + arange)."""
    if GATE == 3:
        b_g = tl.where(m_t, (o_t - t0 + 1).to(tl.float32) * tl.load(gc + i_h), 0)
    elif GATE == 4:
        b_g = tl.cumsum(tl.load(gc + o_t * H + i_h, mask=m_t, other=0).to(tl.float32), axis=0)
        b_g = tl.where(m_t, b_g, 0)
    else:
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0)
    return b_g


@triton.jit
def scalar_gate_at(gc, b_g, o_t, t, t0, i_h, H: tl.constexpr, GATE: tl.constexpr):
    """:func:`scalar_gate` at one step ``t`` of the chunk (its last, in the state passes); ``b_g``, ``o_t``: that
    function's result and steps, from which GATE 4 picks the step (the same value, not a second sum)."""
    if GATE == 3:
        b_gt = (t - t0 + 1).to(tl.float32) * tl.load(gc + i_h)
    elif GATE == 4:
        b_gt = tl.sum(tl.where(o_t == t, b_g, 0), axis=0)
    else:
        b_gt = tl.load(gc + t * H + i_h)
    return b_gt


@triton.jit
def decay_rows_to_last_t(b_h, b_x, gc, o_t, m_t, t0, last, i_h, H: tl.constexpr, GATE: tl.constexpr):
    """:func:`decay_to_last_t`'s scalar-gate step with the update's other operand decayed instead of the keys: the
    chunk's [BT, *] rows x e^{G_last - G} (masked rows stay 0), for an update kᵀ x whose x is in registers anyway, so
    the keys reach the dot as loaded."""
    b_g = scalar_gate(gc, o_t, m_t, t0, i_h, H, GATE)
    b_gl = scalar_gate_at(gc, b_g, o_t, last, t0, i_h, H, GATE)
    return b_h * tl.exp(b_gl), b_x * tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]


@triton.jit
def scalar_gate_scores(b_o, b_A, b_g, m_A):
    """A scalar gate on a chunk's products: the rows of q h times e^G, the causal scores q kᵀ times e^(G_i - G_j)
    (exponents masked to 0 off ``m_A`` before ``exp``, so nothing overflows); ``b_g``: :func:`scalar_gate`."""
    return b_o * tl.exp(b_g)[:, None], b_A * tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], 0))


@triton.jit
def scalar_decay_to_last(b_h, b_kt, b_g, gc, o_t, m_t, t0, last, i_h, H: tl.constexpr, GATE: tl.constexpr):
    """:func:`decay_to_last_t`'s scalar-gate step, from the chunk's G already formed (``b_g``, :func:`scalar_gate`),
    so a kernel that also gates its scores with it reads and scans the gate once."""
    b_gl = scalar_gate_at(gc, b_g, o_t, last, t0, i_h, H, GATE)
    return b_h * tl.exp(b_gl), b_kt.to(tl.float32) * tl.exp(tl.where(m_t, b_gl - b_g, 0))[None, :]


@triton.jit
def chunk_log_decay(gc, o_t, m_t, last, i_h, H: tl.constexpr, K: tl.constexpr, o_k, m_k, GATE: tl.constexpr):
    """The log of a chunk's whole decay for each key dim ``o_k`` (fp32 [BK]): G at its last step ``last`` (a scalar
    gate's for every key dim; 0 without a gate), from the chunk's gate as :func:`decay_to_last_t` reads it (``o_t``
    the chunk's local steps, ``gc`` moved to its start). What a segmented state pass sums from the segment's start
    (``chunk_fwd_h_kernel``'s ``STORE_DCUM``)."""
    b_d = (o_k * 0).to(tl.float32)
    if GATE == 2:
        b_d += tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0)
    if scalar_gate_id(GATE):
        b_d += scalar_gate_at(gc, scalar_gate(gc, o_t, m_t, 0, i_h, H, GATE), o_t, last, 0, i_h, H, GATE)
    return b_d


@triton.jit
def decay_to_last_t(
    b_h, b_kt, gc, o_t, m_t, t0, last, i_h, H: tl.constexpr, K: tl.constexpr, o_k, m_k, GATE: tl.constexpr
):
    """A state pass's step over one chunk: the carried state [BK, BV] decayed by e^{G_last}, and the chunk's keys
    (loaded transposed, [BK, BT]) decayed to its last step, kᵀ e^{G_last - G} (every exponent <= 0 for decaying
    gates; masked rows stay 0). Without a gate (GATE 0) both come back unchanged."""
    if scalar_gate_id(GATE):
        b_h, b_kt = scalar_decay_to_last(b_h, b_kt, scalar_gate(gc, o_t, m_t, t0, i_h, H, GATE), gc, o_t, m_t, t0,
                                         last, i_h, H, GATE)  # fmt: skip
    if GATE == 2:
        m_kt = m_k[:, None] & m_t[None, :]
        b_gt = tl.load(gc + (o_t * H + i_h)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_gl = tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0)
        b_h *= tl.exp(b_gl)[:, None]
        b_kt = b_kt.to(tl.float32) * tl.exp(tl.where(m_t[None, :], b_gl[:, None] - b_gt, 0))
    return b_h, b_kt


# The largest |b_i - b_r| (gate cumsums of one key dim) for which scores are formed in factored form,
# (q e^(b_i - b_r)) (k e^(b_r - b_j))^T: e^(+-60) and the products of two such factors are normal fp32 / bf16
# numbers, so nothing overflows or flushes to zero.
SPAN = tl.constexpr(60.0)
# the same for fp16 operands (factors cast to the inputs' dtype): e^8 times an input stays far below fp16's largest
# number (65504 ~ e^11.1), e^-8 above its smallest normal one (~ e^-9.7)
SPAN16 = tl.constexpr(8.0)


@triton.jit
def gate_range(b_c, m, WITH_ZERO: tl.constexpr = False):
    """The largest spread max_i b_ik - min_i b_ik over one key dim k of a chunk's gate cumsums ``b_c`` [BT, BK], rows
    off ``m`` left out (a column with none: -inf): +inf where any cumsum is infinite or NaN (counted apart: a GPU's
    max may skip NaNs), so a chunk with such a gate is never factored. ``WITH_ZERO``: 0 counts as a cumsum of every
    key dim too (rwkv6: the exclusive cumsum's first row, its reference)."""
    hi = tl.max(tl.where(m, b_c, float("-inf")), axis=0)
    lo = tl.min(tl.where(m, b_c, float("inf")), axis=0)
    if WITH_ZERO:
        hi = tl.maximum(hi, 0.0)
        lo = tl.minimum(lo, 0.0)
    bad = tl.max(tl.where(m & ((b_c != b_c) | (tl.abs(b_c) == float("inf"))), 1, 0))
    return tl.where(bad > 0, float("inf"), tl.max(hi - lo, axis=0))


@triton.jit
def chunk_factored(spread, i_s, i_h, H: tl.constexpr, NKS: tl.constexpr, HALF16: tl.constexpr):
    """Whether chunk slot ``i_s`` of head ``i_h`` takes its whole [BT, BT] score block in one factored dot, with the
    chunk's first row as every pair's reference: its gate spread (``spread`` [NS, NKS, H], one entry per K block of
    the cumsum kernel, :func:`gate_range`) is within :data:`SPAN` (:data:`SPAN16` for fp16 operands, ``HALF16``).
    The kernels that read it all decide alike, so a chunk's scores come from exactly one of them."""
    s = tl.load(spread + (i_s * NKS) * H + i_h)
    for i in tl.static_range(1, NKS):
        s = tl.maximum(s, tl.load(spread + (i_s * NKS + i) * H + i_h))
    lim = SPAN
    if HALF16:
        lim = SPAN16
    return s <= lim
