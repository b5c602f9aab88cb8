"""Naive elementwise scans (hgrn) as people write them: the loop spellings the backend must recognise,
and near misses it must leave alone. [B, T, D] inputs: x, a log-gate g, gate logits z, a decay a in [0, 1).
Apart from ``spellings.py`` because their inputs are not q, k, v (``tests/test_explain_agrees.py`` lists
that module's every function)."""

import torch
import torch.nn.functional as F


def hgrn_exp_loop(x, g):
    """h = exp(g_t) * h + x_t, the states collected with torch.stack."""
    h = x.new_zeros(x.shape[0], x.shape[-1])
    outs = []
    for t in range(x.shape[1]):
        h = torch.exp(g[:, t]) * h + x[:, t]
        outs.append(h)
    return torch.stack(outs, 1)


def hgrn_probability_decay(x, z):
    """HGRN's gate as a probability: h = a h + (1 - a) x with a = sigmoid(z_t), the gate log(a)."""
    h = x.new_zeros(x.shape[0], x.shape[-1])
    o = torch.empty_like(x)
    for t in range(x.shape[1]):
        a = torch.sigmoid(z[:, t])
        h = a * h + (1 - a) * x[:, t]
        o[:, t] = h
    return o


def hgrn_fla_naive(x, g, h0):
    """flash-linear-attention's naive recurrent HGRN: fp32 casts, a zero state plus the initial one
    added in place, a buffer write, the final state returned."""
    dtype = x.dtype
    x, g = x.float(), g.float()
    B, T, D = x.shape
    h = torch.zeros(B, D, dtype=torch.float, device=x.device)
    o = torch.zeros_like(x)
    h += h0
    for i in range(T):
        h = g[:, i].exp() * h + x[:, i]
        o[:, i] = h
    return o.to(dtype), h


def hgrn_decay_value_heads(x, a):
    """A decay given as a plain value over [B, T, H, D] (heads kept), state [B, H, D], unbind spelling."""
    x, a = x.unflatten(-1, (2, -1)), a.unflatten(-1, (2, -1))
    h = x.new_zeros(x.shape[0], *x.shape[2:])
    outs = []
    for x_t, a_t in zip(x.unbind(1), a.unbind(1)):
        h = a_t * h + x_t
        outs.append(h)
    return torch.stack(outs, 1).flatten(-2)


def miss_scan_relu(x, g):
    """A relu on the state: not linear in it."""
    h = x.new_zeros(x.shape[0], x.shape[-1])
    outs = []
    for t in range(x.shape[1]):
        h = torch.relu(torch.exp(g[:, t]) * h + x[:, t])
        outs.append(h)
    return torch.stack(outs, 1)


def miss_scan_decay_depends_on_state(x, g):
    """The decay computed from the state: not linear in it."""
    h = x.new_zeros(x.shape[0], x.shape[-1])
    outs = []
    for t in range(x.shape[1]):
        h = torch.sigmoid(h + g[:, t]) * h + x[:, t]
        outs.append(h)
    return torch.stack(outs, 1)


def miss_scan_mixes_channels(x, g):
    """A decay that mixes channels (the state rolled by one): linear, but not elementwise."""
    h = x.new_zeros(x.shape[0], x.shape[-1])
    outs = []
    for t in range(x.shape[1]):
        h = torch.exp(g[:, t]) * h.roll(1, -1) + x[:, t]
        outs.append(h)
    return torch.stack(outs, 1)


# --- Mamba's selective scan: u, dt [B, D, T] (the mamba_ssm layout), A [D, N], B, C [B, N, T] -----------


def mamba_selective_scan_ref(u, dt, A, B, C, D, gate_z, bias):
    """mamba_ssm's ``selective_scan_ref`` written out: softplus(dt + bias), the decay exp(dt A) and the input
    dt B u made for the whole sequence before the loop, y_t = h_t C_t, then the skip D u and the z gate."""
    dt = F.softplus(dt + bias[..., None])
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", dt, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = deltaA[:, :, i] * h + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(gate_z), h


def mamba_discretized_in_loop(u, dt, A, B, C):
    """The step discretizes itself: exp(dt_t A) and dt_t u_t B_t made inside the loop, read out by a matmul."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        dt_i = F.softplus(dt[:, :, i])
        h = torch.exp(dt_i[..., None] * A) * h + (dt_i * u[:, :, i])[..., None] * B[:, None, :, i]
        ys.append((h @ C[:, :, i, None])[..., 0])
    return torch.stack(ys, dim=-1)


def miss_mamba_dt_depends_on_state(u, dt, A, B, C):
    """The step size reads the state: the decay exp(dt(h) A) is not linear in h."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        dt_i = F.softplus(dt[:, :, i] + h.mean(-1))
        h = torch.exp(dt_i[..., None] * A) * h + (dt_i * u[:, :, i])[..., None] * B[:, None, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    return torch.stack(ys, dim=-1)


def mamba_rates_change_over_time(u, dt, At, B, C):
    """Mamba-like, but the rates A are read per step (At [D, N, T]): not Mamba's time-invariant A, so not the
    mamba op; still an elementwise scan with a read-out (hgrn)."""
    h = u.new_zeros(u.shape[0], u.shape[1], At.shape[1])
    ys = []
    for i in range(u.shape[2]):
        dt_i = F.softplus(dt[:, :, i])
        h = torch.exp(dt_i[..., None] * At[:, :, i]) * h + (dt_i * u[:, :, i])[..., None] * B[:, None, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    return torch.stack(ys, dim=-1)
