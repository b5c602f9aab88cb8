"""Naive linear-attention code as people write it: the loop spellings the backend must recognise,
and near misses it must leave alone. Inputs are [B, T, H, D] unless a name says otherwise."""

import torch
import torch.nn.functional as F


def gla_fla_naive(q, k, v, gk):
    """flash-linear-attention's naive recurrent GLA: [B,H,T,D] inside, buffer write, broadcast-sum."""
    q, k, v, gk = map(lambda x: x.transpose(1, 2).float(), (q, k, v, gk))
    B, H, T, K, V = *q.shape, v.shape[-1]
    o = torch.zeros_like(v)
    scale = K**-0.5
    h = q.new_zeros(B, H, K, V, dtype=torch.float32)
    for i in range(T):
        q_i = q[:, :, i] * scale
        k_i = k[:, :, i]
        v_i = v[:, :, i]
        gk_i = gk[:, :, i].exp()
        kv_i = k_i[..., None] * v_i[..., None, :]
        h = h * gk_i[..., None] + kv_i
        o[:, :, i] = (q_i[..., None] * h).sum(-2)
    return o.transpose(1, 2), h


def retention_inplace_einsum(q, k, v):
    """In-place updates, a literal decay, einsum, outputs collected with torch.stack."""
    B, T, H, K = q.shape
    h = torch.zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h.mul_(0.9)
        h += torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def linear_matmul_cat(q, k, v):
    """matmul spelling, outputs concatenated along time."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h + k[:, t].unsqueeze(-1) @ v[:, t].unsqueeze(-2)
        outs.append((q[:, t].unsqueeze(-2) @ h).squeeze(-2).unsqueeze(1))
    return torch.cat(outs, dim=1)


def linear_outer_single_head(q, k, v):
    """One head, [T, D] inputs, torch.outer and a transposed read-out."""
    q, k, v = q[0, :, 0], k[0, :, 0], v[0, :, 0]
    h = torch.zeros(q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[0]):
        h = h + torch.outer(k[t], v[t])
        outs.append(h.T @ q[t])
    return torch.stack(outs)


def simple_gla_scalar_gate(q, k, v, g):
    """A scalar log-gate per head and step, exp inside the loop, select spelling."""
    B, T, H, K = q.shape
    g = g[..., 0]
    h = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.empty_like(v)
    for t in range(T):
        h = torch.exp(g.select(1, t))[..., None, None] * h + k.select(1, t)[..., None] * v.select(1, t)[..., None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q.select(1, t), h) * 0.5
    return o


def gla_sigmoid_gate(q, k, v, g):
    """A sigmoid gate per key dim made inside the loop."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        a = torch.sigmoid(g[:, t])
        h = a.unsqueeze(-1) * h + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        outs.append((q[:, t].unsqueeze(-1) * h).sum(-2))
    return torch.stack(outs, dim=1)


def gla_logsigmoid_outside(q, k, v, g):
    """Log-gates made outside the loop with logsigmoid, unbind spelling."""
    gk = F.logsigmoid(g)
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for q_t, k_t, v_t, g_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), gk.unbind(1)):
        h = h * g_t.exp()[..., None] + k_t[..., None] * v_t[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, h))
    return torch.stack(outs, 1)


def retention_per_head_gamma(q, k, v):
    """RetNet's per-head decays, powers of a constant made outside the loop."""
    B, T, H, K = q.shape
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32))
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = gamma[:, None, None] * h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, h))
    return torch.stack(outs, 1)


def gla_initial_and_final_state(q, k, v, g, h0):
    """An initial state passed in, the final state returned, a state stored transposed [V, K]."""
    B, T, H, K = q.shape
    h = h0.transpose(-1, -2).clone()
    outs = []
    for t in range(T):
        h = h * g[:, t].exp()[..., None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        outs.append((h * q[:, t, :, None, :]).sum(-1))
    return torch.stack(outs, 1), h.transpose(-1, -2)


def linear_bhtd_layout(q, k, v):
    """[B, H, T, D] inputs indexed on dim 2, a slice kept as [B, H, 1, D]."""
    q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    B, H, T, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.zeros_like(v)
    for t in range(T):
        k_t, v_t = k[:, :, t : t + 1], v[:, :, t : t + 1]
        h = h + k_t.transpose(-1, -2) @ v_t
        o[:, :, t : t + 1] = q[:, :, t : t + 1] @ h
    return o


# --- near misses: these must be left untouched ---------------------------------------


def miss_nonlinear_in_state(q, k, v):
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = torch.tanh(h + k[:, t, :, :, None] * v[:, t, :, None, :])
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def miss_decay_depends_on_state(q, k, v):
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        decay = torch.sigmoid(h.mean((-1, -2), keepdim=True))
        h = decay * h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def miss_reads_previous_state(q, k, v):
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
        h = 0.9 * h + k[:, t, :, :, None] * v[:, t, :, None, :]
    return torch.stack(outs, 1)


def miss_value_gate(q, k, v):
    """A gate along the value axis (once a near miss, now GSA's slot memory: a selective scan per value column)."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h * torch.sigmoid(v[:, t, :, None, :]) + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def miss_not_outer_product(q, k, v):
    """The update adds k k^T-like terms of the wrong shape: not a k v^T write."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h + (k[:, t, :, :, None] * v[:, t, :, None, :]) ** 2
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


# --- the delta line ---------------------------------------------------------------------


def delta_rule_loop(q, k, v, b):
    """Prediction S^T k subtracted from v, scaled by beta, outer product added; keys normalized in the loop."""
    B, T, H, K = q.shape
    beta = torch.sigmoid(b[..., 0])
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        k_t = F.normalize(k[:, t], dim=-1)
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S)
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, beta[:, t, :, None] * (v[:, t] - pred))
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def gated_delta_rule_inplace(q, k, v, g, b):
    """Qwen3-Next's recurrent form: decay, prediction, in-place update, written into a buffer."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.zeros_like(v)
    for t in range(T):
        S *= F.logsigmoid(g[:, t, :, 0]).exp()[..., None, None]
        kv_mem = (S * k[:, t, :, :, None]).sum(-2)
        delta = (v[:, t] - kv_mem) * torch.sigmoid(b[:, t, :, :1])
        S += k[:, t, :, :, None] * delta[:, :, None, :]
        o[:, t] = (S * q[:, t, :, :, None]).sum(-2)
    return o, S


def kda_loop(q, k, v, g, b):
    """Kimi's per-key-dim decay before the delta update."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = S * F.logsigmoid(g[:, t]).exp()[..., None]
        k_t = k[:, t] / k[:, t].norm(dim=-1, keepdim=True)
        S = (
            S
            + torch.sigmoid(b[:, t, :, 0])[..., None, None]
            * k_t[..., None]
            * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, S))[..., None, :]
        )
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, S))
    return torch.stack(outs, 1)


def miss_delta_prediction_after_update(q, k, v, b):
    """The prediction read from the state after the write: not the delta rule."""
    B, T, H, K = q.shape
    beta = torch.sigmoid(b[..., 0])
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        k_t = F.normalize(k[:, t], dim=-1)
        S1 = S + torch.einsum("bhk,bhv->bhkv", k_t, beta[:, t, :, None] * v[:, t])
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S1)
        S = S1 - torch.einsum("bhk,bhv->bhkv", k_t, beta[:, t, :, None] * pred)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def miss_delta_without_beta(q, k, v):
    """No write strength: left alone."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        k_t = F.normalize(k[:, t], dim=-1)
        S = S + k_t[..., None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, S))[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def miss_state_clamped(q, k, v):
    """A state clamped to [-20, 20]: linear at unit-sized probes, not once the state grows."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = (h + k[:, t, :, :, None] * v[:, t, :, None, :]).clamp(-20, 20)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def miss_output_clamped(q, k, v):
    """Linear attention whose read-out saturates at 20 (tanh-like), beyond unit-sized probes."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h).clamp(-20, 20))
    return torch.stack(outs, 1)


def normalized_linear(q, k, v):
    """Linear attention with its normalizer carried in the loop (sigmoid features): o_t = S_t^T q_t / (z_t^T q_t)."""
    q, k = q.sigmoid(), k.sigmoid()
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        den = torch.einsum("bhk,bhk->bh", q[:, t], z)[..., None]
        outs.append(num / den)
    return torch.stack(outs, 1)


def normalized_linear_inplace(q, k, v):
    """The same with in-place updates, a buffer write and the final state returned (elu + 1 features)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    norm = q.new_zeros(B, H, K)
    o = torch.empty_like(v)
    for t in range(T):
        S += torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        norm += k[:, t]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S) / (q[:, t] * norm).sum(-1, keepdim=True)
    return o, S


def normalized_elu_in_loop(q, k, v):
    """Katharopoulos et al.'s recurrent form: elu + 1 inside the loop, a scale on q, + eps, [B, H, T, D] buffers."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    B, H, T, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    o = torch.zeros_like(v)
    for t in range(T):
        q_t, k_t = (F.elu(q[:, :, t]) + 1) * K**-0.5, F.elu(k[:, :, t]) + 1
        S = S + k_t.unsqueeze(-1) @ v[:, :, t].unsqueeze(-2)
        z = z + k_t
        o[:, :, t] = (q_t.unsqueeze(-2) @ S).squeeze(-2) / ((q_t * z).sum(-1, keepdim=True) + 1e-6)
    return o.transpose(1, 2)


def normalized_based_taylor(q, k, v):
    """Based's recurrent view: Taylor features (1 + D + D^2 of them) made before the loop, the reciprocal multiplied."""

    def taylor(x):
        """Based's feature map, the 2nd-order Taylor expansion of exp(q . k / sqrt(D)): [1, x / D^1/4, x x^T / sqrt(2D)]."""
        D = x.shape[-1]
        x2 = (x[..., :, None] * x[..., None, :]).flatten(-2) / 2**0.5
        return torch.cat([torch.ones_like(x[..., :1]), x / D**0.25, x2 / D**0.5], -1)

    q, k = taylor(q), taylor(k)
    B, T, H, F_ = q.shape
    S = q.new_zeros(B, H, F_, v.shape[-1])
    z = q.new_zeros(B, H, F_)
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(1), k.unbind(1), v.unbind(1)):
        S = S + torch.einsum("bhf,bhv->bhfv", k_t, v_t)
        z = z + k_t
        outs.append(
            torch.einsum("bhf,bhfv->bhv", q_t, S) * (1 / (torch.einsum("bhf,bhf->bh", q_t, z) + 1e-6))[..., None]
        )
    return torch.stack(outs, 1)


def normalized_rebased(q, k, v, g, b):
    """Rebased's learnable squared map (gamma * layer_norm(x) + beta)^2 (gamma, beta from g and b: they get gradients)."""
    gamma, beta = 1 + 0.1 * g[0, 0, 0], 0.1 * b[0, 0, 0]
    q = (gamma * F.layer_norm(q, q.shape[-1:]) + beta) ** 2
    k = (gamma * F.layer_norm(k, k.shape[-1:]) + beta) ** 2
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append((q[:, t, :, :, None] * S).sum(-2) / ((q[:, t] * z).sum(-1)[..., None] + 1e-3))
    return torch.stack(outs, 1)


def miss_normalized_decayed_state(q, k, v):
    """A decayed state beside a plain running normalizer: not normalized linear attention (the loop says so)."""
    q, k = q.sigmoid(), k.sigmoid()
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    outs = []
    for t in range(T):
        S = 0.9 * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / (q[:, t] * z).sum(-1, keepdim=True))
    return torch.stack(outs, 1)


def miss_normalized_other_key(q, k, v):
    """The normalizer sums other keys (exp k) than the state's (sigmoid k), in place."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    norm = q.new_zeros(B, H, K)
    o = torch.empty_like(v)
    for t in range(T):
        S += torch.einsum("bhk,bhv->bhkv", k[:, t].sigmoid(), v[:, t])
        norm += k[:, t].exp()
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t].sigmoid(), S) / (q[:, t].sigmoid() * norm).sum(-1, keepdim=True)
    return o


def miss_normalized_clamped(q, k, v):
    """The normalizer clamped from below instead of + eps: another function where q . z is small."""
    q, k = q.sigmoid(), k.sigmoid()
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / (q[:, t] * z).sum(-1, keepdim=True).clamp(min=0.5))
    return torch.stack(outs, 1)


def miss_normalized_heads_swapped(q, k, v):
    """The normalizer read by the other head's query: only the proof tells it from the op."""
    q, k = q.sigmoid(), k.sigmoid()
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / ((q[:, t].flip(1) * z).sum(-1, keepdim=True) + 1e-6))
    return torch.stack(outs, 1)


def miss_normalized_eps_outside(q, k, v):
    """eps added after the division, num / den + eps: not the op's num / (den + eps)."""
    q, k = q.sigmoid(), k.sigmoid()
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    z = q.new_zeros(B, H, K)
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / (q[:, t] * z).sum(-1, keepdim=True) + 1e-2)
    return torch.stack(outs, 1)


def delta_householder(q, k, v, b):
    """The delta rule with its transition written as an explicit Householder matrix, (I - b k k^T) @ S."""
    B, T, H, K = q.shape
    beta = torch.sigmoid(b[..., 0])
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(K, device=q.device)
    outs = []
    for t in range(T):
        k_t = F.normalize(k[:, t], dim=-1)
        b_t = beta[:, t, :, None, None]
        A = eye - b_t * k_t[..., :, None] * k_t[..., None, :]
        S = A @ S + b_t * k_t[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def kda_diag_embed(q, k, v, g, b):
    """KDA with its transition built as a matrix: (I - b k k^T) @ diag_embed(exp(g)), then @ S."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(K, device=q.device)
    outs = []
    for t in range(T):
        D = torch.diag_embed(F.logsigmoid(g[:, t]).exp())
        k_t = F.normalize(k[:, t], dim=-1)
        b_t = torch.sigmoid(b[:, t, :, 0])[..., None, None]
        A = (eye - b_t * k_t[..., :, None] * k_t[..., None, :]) @ D
        S = A @ S + b_t * k_t[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def miss_householder_wrong_sign(q, k, v, b):
    """(I + b k k^T) @ S: the sign of the projection flipped, not a delta rule."""
    B, T, H, K = q.shape
    beta = torch.sigmoid(b[..., 0])
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(K, device=q.device)
    outs = []
    for t in range(T):
        k_t = F.normalize(k[:, t], dim=-1)
        b_t = beta[:, t, :, None, None]
        S = (eye + b_t * k_t[..., :, None] * k_t[..., None, :]) @ S + b_t * k_t[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def miss_householder_twice(q, k, v, b):
    """The Householder matrix applied twice, (I - b k k^T)^2 S: the write strength is not b."""
    B, T, H, K = q.shape
    beta = torch.sigmoid(b[..., 0])
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(K, device=q.device)
    outs = []
    for t in range(T):
        k_t = F.normalize(k[:, t], dim=-1)
        b_t = beta[:, t, :, None, None]
        A = eye - b_t * k_t[..., :, None] * k_t[..., None, :]
        S = A @ (A @ S) + b_t * k_t[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def miss_diag_embed_not_exp(q, k, v, g, b):
    """diag_embed of the log-gate itself (not exponentiated): a negative 'decay', not KDA."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(K, device=q.device)
    outs = []
    for t in range(T):
        D = torch.diag_embed(F.logsigmoid(g[:, t]))
        k_t = F.normalize(k[:, t], dim=-1)
        b_t = torch.sigmoid(b[:, t, :, 0])[..., None, None]
        A = (eye - b_t * k_t[..., :, None] * k_t[..., None, :]) @ D
        S = A @ S + b_t * k_t[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)
