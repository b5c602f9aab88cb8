"""Mamba's selective scan (S6: Mamba, FalconMamba, Jamba's Mamba layers) as the ``mamba`` op.

transformers' torch fallback (``mamba_selective_scan``, same API as mamba_ssm's
``selective_scan_fn``) walks the sequence token by token in Python; per channel d and state n:

    dt_t = softplus(dt_t + dt_bias)
    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n],
    y_t[d] = sum_n C_t[n] h_t[d, n] + D[d] x_t[d],  times silu(z_t[d])

which is ``ops.mamba`` (one group of B, C shared by every channel). Decoding
(``mamba_selective_state_update``, T=1, state updated in place) runs the same op with the cached
state as initial state. transformers' layout is channels before time ([B, D, T]); the op's is
[B, T, D]. The layers' conv, projections, dt / B / C norms (FalconMamba, Jamba) and cache stay
transformers' own; only the scan and the conv functions are swapped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..numerics import rel_err
from . import common
from .registry import Binding


def _discretize(dt, dt_bias, dt_softplus):
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    return F.softplus(dt) if dt_softplus else dt


def selective_scan(
    hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, **kwargs
):
    """x, dt, z [B, D, T], A [D, N], B/C [B, N, T], D / delta_bias [D] -> y [B, D, T] fp32 (and state [B, D, N]).

    fp32 out, like the fallback (its D skip is fp32); the discretization is fp32 throughout.
    """
    x = hidden_states.transpose(1, 2)  # [B, T, D]
    dt = _discretize(dt.transpose(1, 2), delta_bias, delta_softplus)
    y, ht = ops.mamba(
        *common.dense(x, dt, A.float(), B.transpose(1, 2), C.transpose(1, 2)),
        D=None if D is None else D.float(),
        z=None if z is None else z.transpose(1, 2),
        output_final_state=return_last_state,
    )
    y = y.transpose(1, 2)
    return (y, ht) if return_last_state else y


def selective_state_update(
    state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs
):
    """One decode step. state [B, D, N] (updated in place), x / dt / z [B, D], A [D, N], B/C [B, N]. Returns [B, D]."""
    x = hidden_states
    dt = _discretize(dt, dt_bias, dt_softplus)
    y, ht = ops.mamba(
        *common.dense(x[:, None], dt[:, None], A.float(), B[:, None], C[:, None]),
        D=None if D is None else D.float(),
        z=None if z is None else z[:, None],
        initial_state=state.float(),
        output_final_state=True,
    )
    state.copy_(ht.to(state.dtype))
    return y[:, 0].to(x.dtype)


# ---------------------------------------------------------------------------------------------
# probes: ours against the layer's own function, fp32, small random sizes
# ---------------------------------------------------------------------------------------------


def _inputs(gen, device, Bsz=2, Dm=6, T=13, N=4):
    r = common.randn
    return dict(
        hidden_states=r(gen, Bsz, Dm, T, device=device),
        dt=r(gen, Bsz, Dm, T, device=device),
        A=-torch.exp(r(gen, Dm, N, device=device)),
        B=r(gen, Bsz, N, T, device=device),
        C=r(gen, Bsz, N, T, device=device),
    )


def probe_scan(original, ours, device) -> float:
    """With and without D / z / the bias, with and without the final state."""
    gen = common.generator(device)
    inp = _inputs(gen, device)
    Dm, T = inp["A"].shape[0], inp["dt"].shape[-1]
    full = dict(
        D=common.randn(gen, Dm, device=device),
        z=common.randn(gen, 2, Dm, T, device=device),
        delta_bias=common.randn(gen, Dm, device=device),
        delta_softplus=True,
    )
    errs = []
    for kw in (full, dict(delta_softplus=True), {}):
        for last in (True, False):
            errs.append(
                rel_err(ours(**inp, **kw, return_last_state=last), original(**inp, **kw, return_last_state=last))
            )
    return max(errs)


def probe_state_update(original, ours, device) -> float:
    gen = common.generator(device)
    r = common.randn
    Bsz, Dm, N = 3, 6, 4
    x, dt, z = (r(gen, Bsz, Dm, device=device) for _ in range(3))
    A = -torch.exp(r(gen, Dm, N, device=device))
    B, C = r(gen, Bsz, N, device=device), r(gen, Bsz, N, device=device)
    D, dt_bias = r(gen, Dm, device=device), r(gen, Dm, device=device)
    state = r(gen, Bsz, Dm, N, device=device)
    return common.state_update_err(original, ours, state, (x, dt, A, B, C, D), z, dt_bias)


BINDING = Binding(
    kind="mamba",
    path="mamba op (prefill: selective scan; decode T=1: same op on the cached state)",
    functions={
        "mamba_selective_scan": selective_scan,
        "mamba_selective_state_update": selective_state_update,
        "mamba_inner_fn": common.no_fused_path,
        "causal_conv1d_fn": common.causal_conv1d_fn,
        "causal_conv1d_update": common.causal_conv1d_update,
    },
    required=(("mamba_selective_scan",), ("mamba_selective_state_update",)),
    probes={
        "mamba_selective_scan": probe_scan,
        "mamba_selective_state_update": probe_state_update,
        "causal_conv1d_fn": common.conv_probe,
        "causal_conv1d_update": common.conv_update_probe,
    },
    # which of transformers' torch scans runs (a loop, mambapy's pscan, associative_scan): same math
    ignore={"mamba_selective_scan": ("use_mambapy", "use_associative_scan")},
)
