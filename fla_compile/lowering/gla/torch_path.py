"""Torch chunked implementation of the GLA line (linear_attn, retention, simple_gla, gla).

The CPU path of the ops and the reference of the Triton kernels. Memory is linear in T:
the sequence is cut into chunks of C steps; inside a chunk the output is a masked
quadratic form, across chunks a K x V state is carried.

Gates stay in fp32 log space. With b_i the in-chunk cumsum of the log-gate, every
exponent we take is a difference b_i - b_j with i >= j (or b_last - b_j, or b_i - b_first),
which is <= 0 for decaying gates: nothing can overflow however strong the gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.gates import GATE_NONE, GATE_SCALAR, GATE_VECTOR


def _chunk(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, ...] (T a multiple of C) -> [B, H, N, C, ...]."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // C, C, H, *x.shape[3:])
    return x.movedim(3, 1)


def _pad_time(x: torch.Tensor, Tp: int) -> torch.Tensor:
    T = x.shape[1]
    if T == Tp:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, Tp - T]
    return F.pad(x, pad)


def _chunk_view(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, ...] (T a multiple of C) -> a chunk-major view [N, B, H, C, ...] (no copy)."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // C, C, H, *x.shape[3:])
    return x.permute(1, 0, 3, 2, *range(4, x.dim()))


class _Ops:
    """Elementwise ops that return chunk-major contiguous results.

    Without autograd (the op's forward) they write through ``out=`` and in place, fusing the
    layout change into the op and saving passes; when the backward recomputes through autograd
    they are the plain out-of-place ops (autograd refuses ``out=`` and in-place updates there).
    """

    def __init__(self, grad: bool, cdt):
        self.grad, self.cdt = grad, cdt

    def new(self, fn, x, y):
        """fn(x, y) (elementwise; y broadcasts to x) as a fresh contiguous ``cdt`` tensor."""
        if self.grad:
            return fn(x, y).to(self.cdt).contiguous()
        return fn(x, y, out=torch.empty(x.shape, dtype=self.cdt, device=x.device))

    def copy(self, x):
        return (
            x.to(self.cdt).contiguous() if self.grad else torch.empty(x.shape, dtype=self.cdt, device=x.device).copy_(x)
        )

    def mul_(self, x, y):
        return x * y if self.grad else x.mul_(y)

    def exp_(self, x):
        """exp of a temporary of ours (in place without autograd)."""
        return x.exp() if self.grad else x.exp_()

    def tril_(self, x, diagonal=0):
        return x.tril(diagonal) if self.grad else x.tril_(diagonal)


def chunk_gla_dense(q, k, v, gate, gate_kind, scale, initial_state, chunk_size=None, bonus=None):
    """One batch of equal-length sequences. q,k: [B,T,H,K] (heads already expanded), v: [B,T,H,V].

    gate: None, [B,T,H] (scalar) or [B,T,H,K] (vector), log space. Returns o [B,T,H,V] in the
    compute dtype and the final state [B,H,K,V].

    bonus (rwkv6, vector gate only): u [H, K]. The output then reads the state before each step: q is
    gated by the exclusive cumsum b - g (b_{i-1}), the scores are strictly causal, and the diagonal is
    the bonus q_i . (u k_i).

    Chunk-major layout [N, B, H, C, D], so that everything but the K x V state scan is one
    batched matmul over all chunks (scores, k^T v, q @ S) and the state entering chunk n is one
    contiguous slice. The layout change is fused into the first elementwise op of each input.
    Every branch below yields the unscaled masked scores A, the decayed queries q_in and the keys
    k_in as they enter the state (k e^{b_last - b}); the scale is applied once, in the last baddbmm.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    SUB = 4  # pairwise vector-gate scores: [c, c, K] decays only inside sub-chunks of 4 steps
    C = chunk_size or 64
    C = max(1, min(C, T))
    if gate_kind == GATE_VECTOR:
        C = -(-C // SUB) * SUB if C > SUB else C
    N = (T + C - 1) // C
    Tp = N * C
    ops = _Ops(
        torch.is_grad_enabled()
        and any(x is not None and x.requires_grad for x in (q, k, v, gate, initial_state, bonus)),
        cdt,
    )
    diag = -1 if bonus is not None else 0  # rwkv6: strictly causal scores, the diagonal is the bonus
    qv, kv_, vv = (_chunk_view(_pad_time(x, Tp), C) for x in (q, k, v))  # views [N,B,H,C,D]
    vc = ops.copy(vv)
    last = None  # [N,B,H,K or 1]: the decay of each chunk as a whole, e^{b_last}
    if gate_kind == GATE_NONE:
        q_in, k_in = ops.copy(qv), ops.copy(kv_)
        A = ops.tril_(q_in @ k_in.mT)
    else:
        g_pad = _pad_time(gate, Tp).to(cdt)
        b_nat = _in_chunk_cumsum(g_pad, C)  # [B,Tp,H(,K)] log decay inside each chunk
        if gate_kind == GATE_SCALAR:
            b_nat = b_nat[..., None]
        bq_nat = _shift_in_chunk(b_nat, C) if bonus is not None else None  # rwkv6: q reads the state before its step
        if _can_factor(b_nat):  # (bq's values are b's shifted by one step, and 0: within the same span)
            # every factor is a normal number (see FACTOR_SPAN): the factored scores are exact
            if bq_nat is not None:
                q_in = qv.to(cdt) * _chunk_view(bq_nat, C).exp()
            eb = _chunk_view(ops.exp_(b_nat), C)  # exp over the contiguous layout, read chunk-major below
            if bq_nat is None:
                q_in = ops.new(torch.mul, qv, eb)
            if ops.grad:  # k e^{-b} (not k / e^{b}: its gradient, k / e^{2b}, overflows)
                k_in = kv_ * torch.exp(-_chunk_view(b_nat, C))
            else:
                k_in = ops.new(torch.div, kv_, eb)
            A = ops.tril_(q_in @ k_in.mT, diag)
            last = eb[..., -1, :]
            k_in = ops.mul_(k_in, last[..., None, :])  # k e^{b_last - b}: what enters the state
        else:
            b = _chunk_view(b_nat, C).contiguous()
            qc, kc = ops.copy(qv), ops.copy(kv_)
            if gate_kind == GATE_SCALAR:
                causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril_()
                bs = b[..., 0]
                diff = (bs[..., :, None] - bs[..., None, :]).masked_fill(~causal, float("-inf"))
                A = (qc @ kc.mT) * diff.exp()
            else:
                bq = None if bq_nat is None else _chunk_view(bq_nat, C).contiguous()
                A = _vector_gate_scores(qc, kc, b, min(SUB, C), bq)
            q_in = qc * (b if bq_nat is None else _chunk_view(bq_nat, C)).exp()
            k_in = kc * (b[..., -1:, :] - b).exp()
            last = b[..., -1, :].exp()
    if bonus is not None:  # the diagonal: q_i . (u k_i), not gated
        u = bonus.to(cdt)[:, None, :]  # [H, 1, K]
        d = (qv.to(cdt) * kv_.to(cdt) * u).sum(-1)  # [N,B,H,C]
        if ops.grad:
            A = A + torch.diag_embed(d)
        else:
            A.diagonal(dim1=-2, dim2=-1).add_(d)

    decay = None if last is None else last[..., None].unbind(0)  # [B,H,K or 1,1] per chunk
    # states[n]: the state entering chunk n; states[N]: the final state
    if ops.grad:  # autograd: a list of states, stacked
        kv = k_in.mT @ vc  # [N,B,H,K,V]: each chunk's own contribution to the state
        states = [kv.new_zeros(kv.shape[1:]) if initial_state is None else initial_state.to(cdt)]
        for n, kv_n in enumerate(kv.unbind(0)):
            states.append(kv_n + (states[n] if decay is None else states[n] * decay[n]))
        S, states = states[N], torch.stack(states[:N])
    else:  # each chunk's contribution written into slot n + 1 of the states, then one fused op per chunk
        buf = torch.empty(N + 1, B, H, K, V, dtype=cdt, device=q.device)
        torch.matmul(k_in.mT, vc, out=buf[1:])
        if initial_state is None:
            buf[0].zero_()
        else:
            buf[0].copy_(initial_state)
        out = buf.unbind(0)
        for n in range(N):
            if decay is None:
                out[n + 1].add_(out[n])
            else:
                out[n + 1].addcmul_(out[n], decay[n])
        S, states = buf[N].clone(), buf[:N]  # the clone lets the buffer go
    M = N * B * H  # intra-chunk + the carried state, in one baddbmm that also applies the scale
    o = (A @ vc).view(M, C, V)
    o = (o.baddbmm if ops.grad else o.baddbmm_)(q_in.reshape(M, C, K), states.view(M, K, V), beta=scale, alpha=scale)
    o = o.view(N, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, Tp, H, V)[:, :T]
    return o, S


def _in_chunk_cumsum(g: torch.Tensor, C: int) -> torch.Tensor:
    """Cumsum of [B, Tp, H(, K)] over time restarting every C steps, as one matmul with a
    lower-triangular matrix of ones (torch's cumsum over a strided dim is 3x slower on CPU)."""
    B, Tp = g.shape[:2]
    tril = torch.ones(C, C, dtype=g.dtype, device=g.device).tril_()
    return (tril @ g.reshape(B, Tp // C, C, -1)).view(g.shape)


def _shift_in_chunk(b: torch.Tensor, C: int) -> torch.Tensor:
    """The exclusive in-chunk cumsum from the inclusive one [B, Tp, H, K]: b_{i-1}, and 0 at each chunk's
    first step. A shift, not b - g: then bq_i - b_{i-1} is exactly 0 (b - g would leave the rounding of
    b, eps |b|, in the exponent of the nearest and largest term)."""
    B, Tp = b.shape[:2]
    x = b.reshape(B, Tp // C, C, -1)
    return F.pad(x[:, :, :-1], (0, 0, 1, 0)).view(b.shape)


# Largest in-chunk log decay |b| for which the factored scores (q e^{b_i}) . (k e^{-b_j}) (scalar
# and per-key gates) keep every factor a normal number: e^{-60} and e^{60} lie far inside fp32's
# range, so the factored form is as exact as the pairwise one.
FACTOR_SPAN = {torch.float32: 60.0, torch.float64: 600.0}


def _can_factor(b: torch.Tensor) -> bool:
    """Whether the factored scores are exact here: every in-chunk log decay b within
    +-FACTOR_SPAN (checked on CPU only: the check syncs)."""
    if b.device.type != "cpu" or b.numel() == 0:
        return False
    lo, hi = (float(x) for x in torch.aminmax(b.detach()))
    return -FACTOR_SPAN[b.dtype] <= lo and hi <= FACTOR_SPAN[b.dtype]


def _vector_gate_scores(q, k, b, c, bq=None):
    """A[i, j] = sum_k q_ik k_jk exp(b_ik - b_jk) for j <= i inside a chunk, with per-key log-gates.

    Inside sub-chunks of c steps the decays are formed exactly ([c, c, K]); between
    sub-chunks both factors are taken relative to the last step r of the earlier sub-chunk,
    exp(b_i - b_r) and exp(b_r - b_j), each <= 1, so nothing overflows.

    With ``bq`` (rwkv6: the exclusive cumsum, b_{i-1}) q is gated by bq instead and only j < i
    is kept; bq_i - b_j (j < i) and bq_i - b_r (i > r) are <= 0 as well.
    """
    *lead, C, K = q.shape
    ns = C // c
    strict = bq is not None
    bq = b if bq is None else bq
    qs, ks, bs, bqs = (x.reshape(*lead, ns, c, K) for x in (q, k, b, bq))
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
    diff = (bqs[..., :, None, :] - bs[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
    diag = (qs[..., :, None, :] * ks[..., None, :, :] * diff.exp()).sum(-1)  # [..., ns, c, c]
    blocks = [[None] * ns for _ in range(ns)]
    for i in range(ns):
        blocks[i][i] = diag[..., i, :, :]
    for j in range(ns - 1):
        r = (j + 1) * c
        b_r = b[..., r - 1 : r, :]
        k_j = k[..., r - c : r, :] * (b_r - b[..., r - c : r, :]).exp()
        q_after = q[..., r:, :] * (bq[..., r:, :] - b_r).exp()
        off = q_after @ k_j.transpose(-1, -2)  # [..., C - r, c]
        for i in range(j + 1, ns):
            blocks[i][j] = off[..., (i - j - 1) * c : (i - j) * c, :]
    zero = q.new_zeros(*lead, c, c)
    return torch.cat([torch.cat([x if x is not None else zero for x in row], -1) for row in blocks], -2)


def expand_heads(x: torch.Tensor, H: int) -> torch.Tensor:
    """GQA: repeat q/k heads so that head h of v reads head h // (H // HK)."""
    if x.shape[2] == H:
        return x
    return x.repeat_interleave(H // x.shape[2], dim=2)


def gla_line_forward(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, bonus=None):
    """Forward of any GLA-line family. Returns (o in v's dtype, final state fp32 [N,H,K,V]).

    ``bonus`` (rwkv6): u [H, K]; see :func:`chunk_gla_dense`."""
    H = v.shape[2]
    q, k = expand_heads(q, H), expand_heads(k, H)
    if cu_seqlens is None:
        o, S = chunk_gla_dense(q, k, v, gate, gate_kind, scale, initial_state, bonus=bonus)
        return o.to(v.dtype), S.float() if S.dtype != torch.float64 else S
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[n : n + 1]
        if e == s:  # an empty sequence: no output, the state passes through
            sdt = torch.float64 if v.dtype == torch.float64 else torch.float32
            states.append(v.new_zeros(1, H, q.shape[-1], v.shape[-1], dtype=sdt) if h0 is None else h0.to(sdt))
            continue
        g = None if gate is None else gate[:, s:e]
        o, S = chunk_gla_dense(q[:, s:e], k[:, s:e], v[:, s:e], g, gate_kind, scale, h0, bonus=bonus)
        outs.append(o)
        states.append(S)
    o = torch.cat(outs, 1).to(v.dtype)
    S = torch.cat(states, 0)
    return o, S.float() if S.dtype != torch.float64 else S
