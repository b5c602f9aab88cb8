"""SSD, Mamba2's chunked scan (Mamba2, Bamba, FalconH1, NemotronH, GraniteMoeHybrid, Zamba2) as simple_gla.

transformers' torch fallback (``mamba2_chunk_scan``, same API as mamba_ssm's
``mamba_chunk_scan_combined``) computes, per head h with state h_t [P, N]:

    dt_t = clamp(softplus(dt_t + dt_bias), dt_limit)
    h_t  = exp(A_h dt_t) h_{t-1} + (dt_t x_t) B_t^T,     y_t = h_t C_t + D_h x_t

which is ``simple_gla`` with q = C, k = B (n_groups heads, GQA), v = dt x, log-gate g = A dt,
scale 1 and state S = h^T [N, P]. Decoding (``mamba2_selective_state_update``, T=1, state
updated in place) runs the same op with the cached state as initial state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..numerics import rel_err
from . import common
from .registry import Binding


def _discretize(dt, dt_bias, dt_softplus, dt_limit):
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or hi != float("inf"):
        dt = dt.clamp(min=lo, max=hi)
    return dt


def chunk_scan(
    hidden_states,
    dt,
    A,
    B,
    C,
    chunk_size=None,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    cu_seqlens=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    **kwargs,
):
    """x [B, T, H, P], dt [B, T, H], A [H], B/C [B, T, G, N], D [H], initial_states [B, H, P, N]."""
    x = hidden_states
    dt = _discretize(dt, dt_bias, dt_softplus, dt_limit)  # [B, T, H] fp32
    g = A.float() * dt
    v = (x.float() * dt[..., None]).to(x.dtype)
    h0 = None if initial_states is None else initial_states.transpose(-1, -2).contiguous()
    cu = common.packed_cu_seqlens({**kwargs, "seq_idx": seq_idx}, cu_seqlens)
    o, ht = ops.simple_gla(
        *common.dense(C.to(x.dtype), B.to(x.dtype), v, g),
        scale=1.0,
        initial_state=h0,
        output_final_state=return_final_states,
        cu_seqlens=cu,
    )
    if D is not None:  # D [H] (or [H, P])
        o = o + (D.float().reshape(D.shape[0], -1) * x.float()).to(o.dtype)
    if z is not None:
        o = o * F.silu(z.to(o.dtype))
    if return_final_states:
        return o, ht.transpose(-1, -2)
    return o


def _untie(t, dims: int):
    """mamba_ssm passes per-head values broadcast over P (and N); keep one per head."""
    while t is not None and t.dim() > dims:
        t = t[..., 0]
    return t


def selective_state_update(
    state, hidden_states, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, **kwargs
):
    """One decode step. state [B, H, P, N] (updated in place), x [B, H, P], dt [B, H(, P)], A [H(, P, N)],
    B/C [B, G, N], D / dt_bias [H(, P)], z [B, H, P]. Returns y [B, H, P]."""
    x = hidden_states
    dt = _discretize(_untie(dt, 2), _untie(dt_bias, 1), dt_softplus, kwargs.get("dt_limit", (0.0, float("inf"))))
    g = (_untie(A, 1).float() * dt)[:, None]  # [B, 1, H]
    v = (x.float() * dt[..., None]).to(x.dtype)[:, None]  # [B, 1, H, P]
    o, ht = ops.simple_gla(
        *common.dense(C[:, None].to(x.dtype), B[:, None].to(x.dtype), v, g),
        scale=1.0,
        initial_state=state.transpose(-1, -2).contiguous(),
        output_final_state=True,
    )
    state.copy_(ht.transpose(-1, -2).to(state.dtype))
    o = o[:, 0]
    if D is not None:
        o = o + (_untie(D, 1).float()[:, None] * x.float()).to(o.dtype)
    if z is not None:
        o = o * F.silu(z.to(o.dtype))
    return o.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# probes: ours against the layer's own function, fp32, small random sizes
# ---------------------------------------------------------------------------------------------


def _scan_inputs(gen, device, Bsz, T, H=4, P=6, G=2, N=5):
    r = common.randn
    return dict(
        hidden_states=r(gen, Bsz, T, H, P, device=device),
        dt=r(gen, Bsz, T, H, device=device),
        A=-torch.exp(r(gen, H, device=device)),
        B=r(gen, Bsz, T, G, N, device=device),
        C=r(gen, Bsz, T, G, N, device=device),
        D=r(gen, H, device=device),
        dt_bias=r(gen, H, device=device),
    )


def probe_chunk_scan(original, ours, device) -> float:
    gen = common.generator(device)
    inp = _scan_inputs(gen, device, 2, 21)
    h0 = common.randn(gen, 2, 4, 6, 5, device=device, scale=0.5)
    errs = []
    for limit in ((0.0, float("inf")), (1e-3, 0.5)):
        kw = dict(chunk_size=8, dt_softplus=True, dt_limit=limit, return_final_states=True, initial_states=h0)
        errs.append(rel_err(ours(**inp, **kw), original(**inp, **kw)))
    if not common.accepts(ours, "seq_idx"):
        return max(errs)
    # packed: two sequences in one row, against the layer's function run on each
    inp = _scan_inputs(gen, device, 1, 21)
    kw = dict(chunk_size=8, dt_softplus=True)
    bounds = ((0, 8), (8, 21))
    ref = torch.cat([original(**{k: _rows(v, s, e) for k, v in inp.items()}, **kw) for s, e in bounds], 1)
    seq_idx = torch.tensor([[0] * 8 + [1] * 13], device=device, dtype=torch.int32)
    errs.append(rel_err(ours(**inp, **kw, seq_idx=seq_idx), ref))
    return max(errs)


def _rows(t, s, e):
    return t[:, s:e] if t.dim() >= 3 else t


def probe_state_update(original, ours, device) -> float:
    gen = common.generator(device)
    r = common.randn
    Bsz, H, P, G, N = 3, 4, 6, 2, 5
    x, z = r(gen, Bsz, H, P, device=device), r(gen, Bsz, H, P, device=device)
    dt = r(gen, Bsz, H, device=device)[..., None].expand(-1, -1, P)
    A = (-torch.exp(r(gen, H, device=device)))[:, None, None].expand(-1, P, N)
    B, C = r(gen, Bsz, G, N, device=device), r(gen, Bsz, G, N, device=device)
    D = r(gen, H, device=device)[:, None].expand(-1, P)
    dt_bias = r(gen, H, device=device)[:, None].expand(-1, P)
    state = r(gen, Bsz, H, P, N, device=device)
    return common.state_update_err(original, ours, state, (x, dt, A, B, C, D), z, dt_bias)


BINDING = Binding(
    kind="ssd",
    path="simple_gla op (prefill: chunked; decode T=1: same op on the cached state)",
    functions={
        "mamba2_chunk_scan": chunk_scan,
        "mamba2_selective_state_update": selective_state_update,
        "mamba2_split_conv1d_scan_combined": common.no_fused_path,
        "causal_conv1d_fn": common.causal_conv1d_fn,
        "causal_conv1d_update": common.causal_conv1d_update,
    },
    required=(("mamba2_chunk_scan",), ("mamba2_selective_state_update",)),
    probes={
        "mamba2_chunk_scan": probe_chunk_scan,
        "mamba2_selective_state_update": probe_state_update,
        "causal_conv1d_fn": common.conv_probe,
        "causal_conv1d_update": common.conv_update_probe,
    },
)
