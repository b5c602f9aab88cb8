"""Torch chunked implementation of the delta-rule line (delta_rule, gated_delta_rule, kda).

The CPU path of the ops and the reference of the Triton kernels; memory linear in T.

WY/UT form. In a chunk of C steps let G_i be the in-chunk cumsum of the log-gate (per key
dim for kda, per head for gated_delta_rule, 0 for delta_rule), and S_0 the state entering
the chunk. Unrolling S_i = (I - b_i k_i k_i^T) diag(e^{g_i}) S_{i-1} + b_i k_i v_i^T gives

    S_i = e^{G_i} S_0 + sum_{j<=i} (e^{G_i - G_j} k_j) u_j^T
    u   = (I + diag(b) A)^{-1} (b v - b e^{G} k S_0) = U - W S_0
    A_ij = sum_d k_i[d] k_j[d] e^{G_i[d] - G_j[d]}  for j < i (strictly lower)

so a chunk is a unit lower triangular solve for U = T (b v) and W = T (b e^G k), then
    o_i = scale (e^{G_i} q_i)^T S_0 + sum_{j<=i} M_ij u_j,  M_ij = scale q_i . (e^{G_i-G_j} k_j)
    S_C = e^{G_C} S_0 + (e^{G_C - G} k)^T u.
Every exponent taken is G_i - G_j with i >= j, G_i or G_C - G_j: non-positive for decaying
gates, so nothing overflows however strong the gate (kda gates of -20 per step included).
"""

from __future__ import annotations

import torch

from ..common.gates import GATE_NONE, GATE_SCALAR, GATE_VECTOR
from ..gla.torch_path import _chunk, _pad_time, expand_heads


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def chunk_delta_dense(q, k, v, beta, gate, gate_kind, scale, initial_state, chunk_size=None):
    """One batch of equal-length sequences, heads expanded. q,k: [B,T,H,K], v: [B,T,H,V], beta [B,T,H].

    gate: None, [B,T,H] (scalar) or [B,T,H,K] (vector), log space. Returns o [B,T,H,V] and the
    final state [B,H,K,V], both in the compute dtype (fp32, or fp64 for fp64 inputs).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    C = chunk_size or (16 if gate_kind == GATE_VECTOR else 64)
    C = max(1, min(C, T))
    N = (T + C - 1) // C
    Tp = N * C
    # padded steps have k = 0, b = 0, g = 0: they leave the state unchanged
    q, k, v = (_pad_time(x.to(cdt), Tp) for x in (q, k, v))
    qc, kc, vc = _chunk(q * scale, C), _chunk(k, C), _chunk(v, C)  # [B,H,N,C,D]
    bc = _chunk(_pad_time(beta.to(cdt), Tp), C)[..., None]  # [B,H,N,C,1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = causal.tril(-1)

    if gate_kind == GATE_NONE:
        A = (kc @ kc.transpose(-1, -2)).masked_fill(~strict, 0)
        M = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0)
        G = None
    else:
        G = _chunk(_pad_time(gate.to(cdt), Tp), C).cumsum(3)  # [B,H,N,C] or [B,H,N,C,K]
        if gate_kind == GATE_SCALAR:
            E = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
            A = (kc @ kc.transpose(-1, -2)) * E.masked_fill(~strict, 0)
            M = (qc @ kc.transpose(-1, -2)) * E
            G = G[..., None]
        else:
            E = (G[..., :, None, :] - G[..., None, :, :]).masked_fill(~causal[..., None], float("-inf")).exp()
            A = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", kc, kc, E).masked_fill(~strict, 0)
            M = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", qc, kc, E)

    L = torch.eye(C, dtype=cdt, device=q.device) + bc * A  # unit lower triangular
    kb = kc * bc if G is None else kc * bc * G.exp()
    U = torch.linalg.solve_triangular(L, vc * bc, upper=False, unitriangular=True)
    W = torch.linalg.solve_triangular(L, kb, upper=False, unitriangular=True)
    if G is None:
        q_in, k_in, last = qc, kc, None
    else:
        G_last = G[..., -1:, :]  # [B,H,N,1,K or 1]
        q_in, k_in, last = qc * G.exp(), kc * (G_last - G).exp(), G_last.exp().squeeze(3)

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(cdt)
    outs = []
    for n in range(N):
        u = U[:, :, n] - W[:, :, n] @ S  # [B,H,C,V]
        outs.append(q_in[:, :, n] @ S + M[:, :, n] @ u)
        S = S if last is None else S * last[:, :, n, :, None]
        S = S + k_in[:, :, n].transpose(-1, -2) @ u
    o = torch.stack(outs, 2).movedim(1, 3).reshape(B, Tp, H, V)[:, :T]
    return o, S


def delta_line_forward(
    q, k, v, beta, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, use_qk_l2norm=False, chunk_size=None
):
    """Forward of any delta-line family. Returns (o in v's dtype, final state fp32 (fp64) [N,H,K,V])."""
    H = v.shape[2]
    if use_qk_l2norm:
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        q, k = l2norm(q.to(cdt)), l2norm(k.to(cdt))
    q, k = expand_heads(q, H), expand_heads(k, H)
    if cu_seqlens is None:
        o, S = chunk_delta_dense(q, k, v, beta, gate, gate_kind, scale, initial_state, chunk_size)
    else:
        bounds = cu_seqlens.tolist()
        outs, states = [], []
        for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = None if initial_state is None else initial_state[n : n + 1]
            g = None if gate is None else gate[:, s:e]
            if e == s:  # an empty sequence keeps its state
                dt = torch.float64 if q.dtype == torch.float64 else torch.float32
                K, V = q.shape[-1], v.shape[-1]
                states.append(q.new_zeros(1, H, K, V, dtype=dt) if h0 is None else h0.to(dt))
                continue
            o, S = chunk_delta_dense(q[:, s:e], k[:, s:e], v[:, s:e], beta[:, s:e], g, gate_kind, scale, h0, chunk_size)
            outs.append(o)
            states.append(S)
        o = torch.cat(outs, 1) if outs else v.new_zeros(v.shape)
        S = torch.cat(states, 0)
    return o.to(v.dtype), S.float() if S.dtype != torch.float64 else S
