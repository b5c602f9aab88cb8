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

GATE_NONE, GATE_SCALAR, GATE_VECTOR = "none", "scalar", "vector"


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


def chunk_gla_dense(q, k, v, gate, gate_kind, scale, initial_state, chunk_size=None):
    """One batch of equal-length sequences. q,k: [B,T,H,K] (heads already expanded), v: [B,T,H,V].

    gate: None, [B,T,H] (scalar) or [B,T,H,K] (vector), log space. Returns o [B,T,H,V] in the
    compute dtype and the final state [B,H,K,V].
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    SUB = 4  # vector gates: exact [c, c, K] decays only inside sub-chunks of 4 steps (cheapest on CPU)
    C = chunk_size or 64
    C = max(1, min(C, T))
    if gate_kind == GATE_VECTOR:
        C = -(-C // SUB) * SUB if C > SUB else C
    N = (T + C - 1) // C
    Tp = N * C
    q, k, v = (_pad_time(x.to(cdt), Tp) for x in (q, k, v))
    qc, kc, vc = _chunk(q, C), _chunk(k, C), _chunk(v, C)  # [B,H,N,C,D]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    if gate_kind == GATE_NONE:
        A = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0)
        q_in, k_in, last = qc, kc, None
    else:
        b = _chunk(_pad_time(gate.to(cdt), Tp), C).cumsum(3)  # [B,H,N,C] or [B,H,N,C,K]
        if gate_kind == GATE_SCALAR:
            diff = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
            A = (qc @ kc.transpose(-1, -2)) * diff.exp()
            b = b[..., None]
        else:
            A = _vector_gate_scores(qc, kc, b, min(SUB, C))
        b_last = b[..., -1:, :]  # [B,H,N,1,K or 1]
        q_in = qc * b.exp()
        k_in = kc * (b_last - b).exp()
        last = b_last.exp().squeeze(3)  # [B,H,N,K or 1]

    o = A @ vc  # [B,H,N,C,V]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(cdt)
    inter = []
    for n in range(N):
        inter.append(q_in[:, :, n] @ S)
        S = S if last is None else S * last[:, :, n, :, None]
        S = S + k_in[:, :, n].transpose(-1, -2) @ vc[:, :, n]
    o = (o + torch.stack(inter, 2)) * scale
    o = o.movedim(1, 3).reshape(B, Tp, H, V)[:, :T]
    return o, S


def _vector_gate_scores(q, k, b, c):
    """A[i, j] = sum_k q_ik k_jk exp(b_ik - b_jk) for j <= i inside a chunk, with per-key log-gates.

    Inside sub-chunks of c steps the decays are formed exactly ([c, c, K]); between
    sub-chunks both factors are taken relative to the last step r of the earlier sub-chunk,
    exp(b_i - b_r) and exp(b_r - b_j), each <= 1, so nothing overflows.
    """
    *lead, C, K = q.shape
    ns = C // c
    qs, ks, bs = (x.reshape(*lead, ns, c, K) for x in (q, k, b))
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = (bs[..., :, None, :] - bs[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
    diag = (qs[..., :, None, :] * ks[..., None, :, :] * diff.exp()).sum(-1)  # [..., ns, c, c]
    blocks = [[None] * ns for _ in range(ns)]
    for i in range(ns):
        blocks[i][i] = diag[..., i, :, :]
    for j in range(ns - 1):
        r = (j + 1) * c
        b_r = b[..., r - 1 : r, :]
        k_j = k[..., r - c : r, :] * (b_r - b[..., r - c : r, :]).exp()
        q_after = q[..., r:, :] * (b[..., r:, :] - b_r).exp()
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


def gla_line_forward(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None):
    """Forward of any GLA-line family. Returns (o in v's dtype, final state fp32 [N,H,K,V])."""
    H = v.shape[2]
    q, k = expand_heads(q, H), expand_heads(k, H)
    if cu_seqlens is None:
        o, S = chunk_gla_dense(q, k, v, gate, gate_kind, scale, initial_state)
        return o.to(v.dtype), S.float() if S.dtype != torch.float64 else S
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[n : n + 1]
        if e == s:  # an empty sequence: no output, the state passes through
            K, V = q.shape[-1], v.shape[-1]
            states.append(
                v.new_zeros(1, H, K, V, dtype=torch.float64 if v.dtype == torch.float64 else torch.float32)
                if h0 is None
                else h0.to(torch.float64 if v.dtype == torch.float64 else torch.float32)
            )
            continue
        g = None if gate is None else gate[:, s:e]
        o, S = chunk_gla_dense(q[:, s:e], k[:, s:e], v[:, s:e], g, gate_kind, scale, h0)
        outs.append(o)
        states.append(S)
    o = torch.cat(outs, 1).to(v.dtype)
    S = torch.cat(states, 0)
    return o, S.float() if S.dtype != torch.float64 else S
