"""A held-out set of realistic spellings (issue 14), for measuring, not for tuning matchers to: what
researchers write, and the references flash-linear-attention 0.6.0, transformers and Mamba2 ship, re-typed
(no einops). Inputs are [B, T, H, D]: q, k, v; ``g`` per-key log-gates [B, T, H, D]; ``gs`` per-head
log-gates [B, T, H]; ``b`` a write strength in (0, 1) [B, T, H]. ``CASES`` pairs each function with the family
the backend should find (None: a look-alike that must be left as written). ``benchmarks/recognition.py``
prints the fraction recognized; nothing here is imported by a matcher."""

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- parallel forms


def linear_parallel_tril(q, k, v):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return ((q @ k.transpose(-1, -2)).tril() @ v).transpose(1, 2)


def retention_parallel_powers(q, k, v):
    """RetNet's parallel form: a per-head gamma^(n-m) mask from arange, einsum."""
    B, T, H, K = q.shape
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device))
    n = torch.arange(T, device=q.device)
    diff = n[:, None] - n[None, :]
    D = gamma[:, None, None] ** diff.clamp(min=0) * (diff >= 0)
    s = torch.einsum("bthk,bshk->bhts", q, k) * K**-0.5 * D
    return torch.einsum("bhts,bshv->bthv", s, v)


def simple_gla_fla_naive_parallel(q, k, v, gs):
    """flash-linear-attention's naive_parallel_simple_gla (rearrange written as transpose)."""
    q, k, v, g = (x.transpose(1, 2).float() for x in (q, k, v, gs))
    scale = q.shape[-1] ** -0.5
    A = q @ k.transpose(-1, -2) * scale
    g = g.cumsum(-1)
    D = (g.unsqueeze(-1) - g.unsqueeze(-2)).tril().exp().tril()
    return ((A * D) @ v).transpose(1, 2)


def gla_pairwise_sum(q, k, v, g):
    """GLA's parallel form with per-key decays, pairwise over a [B, H, T, T, K] tensor, then tril."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    A = (q[:, :, :, None] * k[:, :, None] * torch.exp(G[:, :, :, None] - G[:, :, None])).sum(-1)
    return (A.tril() @ v).transpose(1, 2)


def gla_pairwise_einsum(q, k, v, g):
    """The same as one three-operand einsum over [B, T, S, H, K] decays, masked by a multiply."""
    T, K = q.shape[1], q.shape[-1]
    G = g.cumsum(1)
    D = torch.exp(G[:, :, None] - G[:, None, :]) * torch.ones(T, T, device=q.device).tril()[None, :, :, None, None]
    A = torch.einsum("bthk,bshk,btshk->bhts", q, k, D) * K**-0.5
    return torch.einsum("bhts,bshv->bthv", A, v)


def gla_pairwise_masked_exp(q, k, v, g):
    """The safe spelling: the log-decay masked to -inf above the diagonal before exp."""
    T = q.shape[1]
    G = g.transpose(1, 2).cumsum(2)  # [B, H, T, K]
    diff = G.unsqueeze(3) - G.unsqueeze(2)  # [B, H, T, S, K]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    diff = diff.masked_fill(~causal[:, :, None], float("-inf"))
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    A = (qh.unsqueeze(3) * kh.unsqueeze(2) * diff.exp()).sum(-1)
    return (A @ v.transpose(1, 2)).transpose(1, 2)


def gla_factored_masked_fill(q, k, v, g):
    """(q e^G)(k e^-G)^T, exp(-G) * k order, masked_fill with a triu mask."""
    T = q.shape[1]
    G = torch.cumsum(g, dim=1)
    s = torch.einsum("bthk,bshk->bhts", q * torch.exp(G), torch.exp(-G) * k)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), 0.0)
    return torch.einsum("bhts,bshv->bthv", s, v)


def ssd_parallel_segsum(q, k, v, gs):
    """Mamba2's quadratic (SSD) form: L = exp(segsum(A)), y = einsum(C, B, L, x) in one call (q=C, k=B, v=x)."""
    a = gs.transpose(1, 2)  # [B, H, T]
    T = a.shape[-1]
    x = a[..., None].repeat(1, 1, 1, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device), -1), 0)
    seg = torch.cumsum(x, dim=-2).masked_fill(
        ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)), -torch.inf
    )
    return torch.einsum("bthn,bshn,bhts,bshp->bthp", q, k, torch.exp(seg), v)


# ---------------------------------------------------------------- loops


def gla_gqa_repeat_interleave_bhtd(q, k, v, g):
    """GQA inside the step, [B, H, T, D] layout: k, v, g have half q's heads, repeated each step."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k[:, :, ::2], v[:, :, ::2], g[:, :, ::2]))
    B, H, T, K = q.shape
    rep = H // k.shape[1]
    S = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.zeros(B, H, T, v.shape[-1], device=q.device)
    for t in range(T):
        k_t = k[:, :, t].repeat_interleave(rep, dim=1)
        v_t = v[:, :, t].repeat_interleave(rep, dim=1)
        g_t = g[:, :, t].repeat_interleave(rep, dim=1)
        S = S * g_t.exp().unsqueeze(-1) + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        o[:, :, t] = (q[:, :, t].unsqueeze(-1) * S).sum(-2)
    return o.transpose(1, 2)


def gated_delta_gqa_expand(q, k, v, gs, b):
    """The gated delta rule with k, v, gate and beta expanded from half the heads in the step."""
    k, v, gs, b = k[:, :, ::2], v[:, :, ::2], gs[:, :, ::2], b[:, :, ::2]
    B, T, H, K = q.shape
    HK = k.shape[2]
    k = F.normalize(k, dim=-1)
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        k_t = k[:, t, :, None].expand(B, HK, H // HK, K).reshape(B, H, K)
        v_t = v[:, t, :, None].expand(B, HK, H // HK, v.shape[-1]).reshape(B, H, -1)
        g_t = gs[:, t, :, None].expand(B, HK, H // HK).reshape(B, H)
        b_t = b[:, t, :, None].expand(B, HK, H // HK).reshape(B, H)
        S = S * g_t.exp()[..., None, None]
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S)
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * (v_t - pred))
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def gla_vmap_heads(q, k, v, g):
    """A one-head step (state [K, V]) mapped over batch and heads with torch.func.vmap."""

    def step(S, q_t, k_t, v_t, g_t):
        S = S * g_t.exp()[:, None] + torch.outer(k_t, v_t)
        return S, S.T @ q_t

    step_bh = torch.func.vmap(torch.func.vmap(step))
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S, o = step_bh(S, q[:, t], k[:, t], v[:, t], g[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def delta_vmap_batch(q, k, v, b):
    """A delta-rule step over [H, K, V] mapped over the batch with torch.vmap."""

    def step(S, q_t, k_t, v_t, b_t):
        k_t = F.normalize(k_t, dim=-1)
        pred = torch.einsum("hk,hkv->hv", k_t, S)
        S = S + torch.einsum("hk,hv->hkv", k_t, b_t[:, None] * (v_t - pred))
        return S, torch.einsum("hk,hkv->hv", q_t, S)

    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S, o = torch.vmap(step)(S, q[:, t], k[:, t], v[:, t], b[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def delta_fla_recurrence(q, k, v, b):
    """flash-linear-attention's delta_rule_recurrence ([B, H, T, D] inside, clones, a buffer write)."""
    q, k, v, beta = (x.transpose(1, 2).float() for x in (q, F.normalize(k, dim=-1), v, b))
    bsz, h, L, d_k = q.shape
    o = torch.zeros_like(v)
    S = torch.zeros(bsz, h, d_k, v.shape[-1], device=q.device).to(v)
    q = q * d_k**-0.5
    beta = beta[..., None]
    for i in range(L):
        _k, _q, _v = k[:, :, i], q[:, :, i], v[:, :, i].clone()
        _v = _v - (S.clone() * _k[..., None]).sum(-2)
        _v = _v * beta[:, :, i]
        S = S.clone() + _k.unsqueeze(-1) * _v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", _q, S)
    return o.transpose(1, 2), S


# ---------------------------------------------------------------- chunked forms


def simple_gla_fla_naive_chunk(q, k, v, gs, chunk_size=8):
    """flash-linear-attention's naive_chunk_simple_gla, re-typed without einops."""
    q, k, v, g = (x.transpose(1, 2).float() for x in (q, k, v, gs))
    scale = q.shape[-1] ** -0.5
    B, H, T, K = q.shape
    V, C = v.shape[-1], chunk_size
    q = q * scale
    q, k, v = (x.reshape(B, H, T // C, C, x.shape[-1]) for x in (q, k, v))
    decay = g.reshape(B, H, T // C, C).cumsum(-1)
    L_mask = ((decay.unsqueeze(-1) - decay.unsqueeze(-2)).tril().exp().float()).tril()
    S = k.new_zeros(B, H, K, V)
    o = torch.zeros_like(v)
    for i in range(T // C):
        q_i, k_i, v_i = q[:, :, i], k[:, :, i], v[:, :, i]
        attn = q_i @ k_i.transpose(-1, -2) * L_mask[:, :, i]
        o_inter = (q_i * decay[:, :, i, :, None].exp()) @ S
        o[:, :, i] = o_inter + attn @ v_i
        S = (
            S * decay[:, :, i, -1, None, None].exp()
            + (k_i * (decay[:, :, i, -1, None] - decay[:, :, i]).exp()[..., None]).transpose(-1, -2) @ v_i
        )
    return o.reshape(B, H, T, V).transpose(1, 2), S


def delta_fla_naive_chunkwise(q, k, v, b, chunk_size=8):
    """flash-linear-attention's delta_rule_chunkwise: the WY form, (I + tril(b K K^T, -1))^-1 by a
    forward-substitution loop, then a loop over chunks carrying S."""
    q, k, v, beta = (x.transpose(1, 2) for x in (q, F.normalize(k, dim=-1), v, b))
    bsz, h, L, d_k = q.shape
    C = chunk_size
    q = q * d_k**-0.5
    v = v * beta[..., None]
    k_beta = k * beta[..., None]
    mask = torch.triu(torch.ones(C, C, dtype=torch.bool, device=q.device), diagonal=0)
    q, k, v, k_beta = (x.reshape(bsz, h, L // C, C, x.shape[-1]) for x in (q, k, v, k_beta))
    attn = -(k_beta @ k.transpose(-1, -2)).masked_fill(mask, 0)
    for i in range(1, C):
        attn[..., i, :i] = attn[..., i, :i] + (attn[..., i, :, None].clone() * attn[..., :, :i].clone()).sum(-2)
    attn = attn + torch.eye(C, dtype=torch.float, device=q.device)
    u, w = attn @ v, attn @ k_beta
    S = k.new_zeros(bsz, h, d_k, v.shape[-1])
    o = torch.zeros_like(v)
    mask = torch.triu(torch.ones(C, C, dtype=torch.bool, device=q.device), diagonal=1)
    for i in range(L // C):
        q_i, k_i = q[:, :, i], k[:, :, i]
        attn = (q_i @ k_i.transpose(-1, -2)).masked_fill_(mask, 0)
        u_i = u[:, :, i] - w[:, :, i] @ S
        o[:, :, i] = q_i @ S + attn @ u_i
        S = S + k_i.transpose(-1, -2) @ u_i
    return o.reshape(bsz, h, L, -1).transpose(1, 2), S


def retention_chunkwise(q, k, v, chunk_size=8):
    """RetNet's chunkwise form: gamma^(i-j) inside a chunk, a state decayed by gamma^C between chunks."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    B, H, T, K = q.shape
    C = chunk_size
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device))
    idx = torch.arange(C, device=q.device)
    d = idx[:, None] - idx[None, :]
    inner = gamma[:, None, None] ** d.clamp(min=0) * (d >= 0)  # [H, C, C]
    q_dec = gamma[:, None] ** (idx + 1)  # [H, C]
    k_dec = gamma[:, None] ** (C - 1 - idx)
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for n in range(T // C):
        qc, kc, vc = (x[:, :, n * C : (n + 1) * C] for x in (q, k, v))
        outs.append((qc @ kc.transpose(-1, -2) * inner) @ vc + (qc * q_dec[..., None]) @ S)
        S = gamma[:, None, None] ** C * S + (kc * k_dec[..., None]).transpose(-1, -2) @ vc
    return torch.cat(outs, 2).transpose(1, 2)


def lightning_attention_blocks(q, k, v, block_size=8):
    """MiniMax's lightning attention as a function: per-head slopes, query/key/diagonal decays, blocks."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    B, H, T, D = q.shape
    base = 1 / (2 ** (8 / H))
    slope = (base ** (torch.arange(H, device=q.device) + 1))[:, None, None]
    r = torch.arange(block_size, device=q.device) + 1
    q_decay = torch.exp(-slope * r[:, None])
    k_decay = torch.exp(-slope * (block_size - r[:, None]))
    diag = slope * (r[:, None] - r[None, :])[None, None]
    diag = torch.exp(torch.where(diag >= 0, -diag, float("-inf")))
    kv = torch.zeros(B, H, D, v.shape[-1], device=q.device)
    outs = []
    for i in range((T + block_size - 1) // block_size):
        s, e = i * block_size, min((i + 1) * block_size, T)
        n = e - s  # the last block may be shorter: MiniMax slices the decays to it
        qi, ki, vi = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e]
        intra = torch.matmul(torch.matmul(qi, ki.transpose(-1, -2)) * diag[:, :, :n, :n], vi)
        inter = torch.matmul(qi * q_decay[:, :n], kv)
        outs.append(intra + inter)
        kv = kv * torch.exp(-slope * n) + torch.matmul((ki * k_decay[:, -n:]).transpose(-1, -2), vi)
    return torch.cat(outs, 2).transpose(1, 2)


def _segsum(x):
    T = x.size(-1)
    x = x[..., None].repeat(*([1] * x.dim()), T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1), 0)
    x_segsum = torch.cumsum(x, dim=-2)
    return x_segsum.masked_fill(
        ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0), -torch.inf
    )


def ssd_minimal(q, k, v, gs, block_len=8):
    """Mamba2's ssd_minimal_discrete (X=v, A=gs, B=k, C=q), re-typed without einops."""
    X, A, Bm, Cm = v, gs, k, q
    b, T, h = A.shape
    c = T // block_len
    X, A, Bm, Cm = (x.reshape(b, c, block_len, *x.shape[2:]) for x in (X, A, Bm, Cm))
    A = A.permute(0, 3, 1, 2)  # b h c l
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(_segsum(A))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cm, Bm, L, X)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bm, decay_states, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cm, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, T, h, -1), final_state


def gla_chunked_pairwise(q, k, v, g, chunk_size=8):
    """GLA in chunks: exact pairwise per-key decays inside a chunk, a per-key decayed state between chunks."""
    B, T, H, K = q.shape
    C = chunk_size
    q, k, v, g = (x.transpose(1, 2).reshape(B, H, T // C, C, -1) for x in (q, k, v, g))
    G = g.cumsum(3)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for n in range(T // C):
        qc, kc, vc, Gc = q[:, :, n], k[:, :, n], v[:, :, n], G[:, :, n]
        dec = (Gc[:, :, :, None] - Gc[:, :, None]).masked_fill(~causal[..., None], float("-inf")).exp()
        A = (qc[:, :, :, None] * kc[:, :, None] * dec).sum(-1)
        outs.append(A @ vc + (qc * Gc.exp()) @ S)
        S = S * Gc[:, :, -1, :, None].exp() + (kc * (Gc[:, :, -1:] - Gc).exp()).transpose(-1, -2) @ vc
    return torch.cat(outs, 2).transpose(1, 2)


# ---------------------------------------------------------------- look-alikes: left as written


def miss_pairwise_sum_of_cumsums(q, k, v, g):
    """exp(G_i + G_j), not a difference: no decay between steps."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    A = (q[:, :, :, None] * k[:, :, None] * torch.exp(G[:, :, :, None] + G[:, :, None])).sum(-1)
    return (A.tril() @ v).transpose(1, 2)


def miss_pairwise_anticausal(q, k, v, g):
    """The pairwise per-key form masked with triu: anti-causal."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    A = (q[:, :, :, None] * k[:, :, None] * torch.exp(G[:, :, None] - G[:, :, :, None])).sum(-1)
    return (A.triu() @ v).transpose(1, 2)


def miss_pairwise_softmax(q, k, v, g):
    """Pairwise decayed scores through a softmax (forgetting attention): not a recurrence."""
    T = q.shape[1]
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    A = (q[:, :, :, None] * k[:, :, None] * torch.exp(G[:, :, :, None] - G[:, :, None])).sum(-1)
    A = A.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf")).softmax(-1)
    return (A @ v).transpose(1, 2)


def miss_vmap_tanh_state(q, k, v, g):
    """A vmapped step whose state passes through tanh."""

    def step(S, q_t, k_t, v_t, g_t):
        S = torch.tanh(S * g_t.exp()[:, None] + torch.outer(k_t, v_t))
        return S, S.T @ q_t

    step_bh = torch.func.vmap(torch.func.vmap(step))
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S, o = step_bh(S, q[:, t], k[:, t], v[:, t], g[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def miss_retention_chunkwise_wrong_state_decay(q, k, v, chunk_size=8):
    """Chunkwise retention whose state decays by gamma^(C-1) between chunks: not one recurrence."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    B, H, T, K = q.shape
    C = chunk_size
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device))
    idx = torch.arange(C, device=q.device)
    d = idx[:, None] - idx[None, :]
    inner = gamma[:, None, None] ** d.clamp(min=0) * (d >= 0)
    q_dec = gamma[:, None] ** (idx + 1)
    k_dec = gamma[:, None] ** (C - 1 - idx)
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for n in range(T // C):
        qc, kc, vc = (x[:, :, n * C : (n + 1) * C] for x in (q, k, v))
        outs.append((qc @ kc.transpose(-1, -2) * inner) @ vc + (qc * q_dec[..., None]) @ S)
        S = gamma[:, None, None] ** (C - 1) * S + (kc * k_dec[..., None]).transpose(-1, -2) @ vc
    return torch.cat(outs, 2).transpose(1, 2)


def miss_chunk_simple_gla_no_state_decay(q, k, v, gs, chunk_size=8):
    """naive_chunk_simple_gla with the state never decayed between chunks."""
    q, k, v, g = (x.transpose(1, 2).float() for x in (q, k, v, gs))
    B, H, T, K = q.shape
    C = chunk_size
    q, k, v = (x.reshape(B, H, T // C, C, x.shape[-1]) for x in (q, k, v))
    decay = g.reshape(B, H, T // C, C).cumsum(-1)
    L_mask = ((decay.unsqueeze(-1) - decay.unsqueeze(-2)).tril().exp()).tril()
    S = k.new_zeros(B, H, K, v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(T // C):
        q_i, k_i, v_i = q[:, :, i], k[:, :, i], v[:, :, i]
        o[:, :, i] = (q_i * decay[:, :, i, :, None].exp()) @ S + (q_i @ k_i.transpose(-1, -2) * L_mask[:, :, i]) @ v_i
        S = S + (k_i * (decay[:, :, i, -1, None] - decay[:, :, i]).exp()[..., None]).transpose(-1, -2) @ v_i
    return o.reshape(B, H, T, -1).transpose(1, 2), S


def miss_ssd_positive_decay(q, k, v, gs, block_len=8):
    """ssd_minimal with the exp of the negated segsum inside blocks (a growth): inconsistent with the states."""
    X, A, Bm, Cm = v, gs, k, q
    b, T, h = A.shape
    c = T // block_len
    X, A, Bm, Cm = (x.reshape(b, c, block_len, *x.shape[2:]) for x in (X, A, Bm, Cm))
    A = A.permute(0, 3, 1, 2)
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(-_segsum(A).clamp(min=-30)).tril()
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cm, Bm, L, X)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bm, decay_states, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cm, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, T, h, -1)


# (function, the family the backend should find; None: must be left as written)
CASES = [
    (linear_parallel_tril, "linear_attn"),
    (retention_parallel_powers, "retention"),
    (simple_gla_fla_naive_parallel, "simple_gla"),
    (gla_pairwise_sum, "gla"),
    (gla_pairwise_einsum, "gla"),
    (gla_pairwise_masked_exp, "gla"),
    (gla_factored_masked_fill, "gla"),
    (ssd_parallel_segsum, "simple_gla"),
    (gla_gqa_repeat_interleave_bhtd, "gla"),
    (gated_delta_gqa_expand, "gated_delta_rule"),
    (gla_vmap_heads, "gla"),
    (delta_vmap_batch, "delta_rule"),
    (delta_fla_recurrence, "delta_rule"),
    (simple_gla_fla_naive_chunk, "simple_gla"),
    (delta_fla_naive_chunkwise, "delta_rule"),
    (retention_chunkwise, "retention"),
    (lightning_attention_blocks, "retention"),
    (ssd_minimal, "simple_gla"),
    (gla_chunked_pairwise, "gla"),
    (miss_pairwise_sum_of_cumsums, None),
    (miss_pairwise_anticausal, None),
    (miss_pairwise_softmax, None),
    (miss_vmap_tanh_state, None),
    (miss_retention_chunkwise_wrong_state_decay, None),
    (miss_chunk_simple_gla_no_state_decay, None),
    (miss_ssd_positive_decay, None),
]


# ---------------------------------------------------------------- a second held-out set (written after the
# first was fixed, measured once before any change for it)


def gla_pairwise_where(q, k, v, g):
    """Pairwise per-key decays masked by torch.where, a three-operand einsum in [B, H, T, K]."""
    T = q.shape[1]
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(-2)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[..., None]
    D = torch.where(causal, torch.exp(G[..., :, None, :] - G[..., None, :, :]), 0.0)
    return (torch.einsum("bhtk,bhsk,bhtsk->bhts", q, k, D) @ v).transpose(1, 2)


def gla_pairwise_scaled_after_sum(q, k, v, g):
    """Heads folded, the scale applied after the sum over keys, tril, matmul."""
    B, T, H, K = q.shape
    q, k, v, g = (x.transpose(1, 2).reshape(B * H, T, -1) for x in (q, k, v, g))
    G = g.cumsum(1)
    A = (q.unsqueeze(2) * k.unsqueeze(1) * (G.unsqueeze(2) - G.unsqueeze(1)).exp()).sum(-1) * K**-0.5
    return (A.tril() @ v).reshape(B, H, T, -1).transpose(1, 2)


def retention_parallel_exp_log(q, k, v):
    """Retention's mask as exp(log(gamma) * (n - m)) masked_fill to 0 above the diagonal."""
    B, T, H, K = q.shape
    log_gamma = torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device)))
    n = torch.arange(T, dtype=torch.float32, device=q.device)
    D = torch.exp(log_gamma[:, None, None] * (n[:, None] - n[None, :]))
    D = D.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), 0)
    s = torch.einsum("bthk,bshk->bhts", q, k) * D
    return torch.einsum("bhts,bshv->bthv", s, v)


def linear_attn_chunked(q, k, v, chunk_size=8):
    """Causal linear attention in chunks: tril inside, a running sum of k^T v between chunks."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    S = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    outs = []
    for n in range(q.shape[2] // chunk_size):
        sl = slice(n * chunk_size, (n + 1) * chunk_size)
        qc, kc, vc = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        outs.append((qc @ kc.transpose(-1, -2)).tril() @ vc + qc @ S)
        S = S + kc.transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2).transpose(1, 2)


def simple_gla_chunked_split(q, k, v, gs, chunk_size=8):
    """simple_gla in chunks walked with zip(split(...)): decays relative to each chunk's start."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[-1], v.shape[-1])
    outs = []
    for qc, kc, vc, gc in zip(*(x.split(chunk_size, dim=1) for x in (q, k, v, gs))):
        b = gc.cumsum(1)  # [B, C, H]
        M = (b[:, :, None] - b[:, None]).permute(0, 3, 1, 2)  # [B, H, C, C]
        M = M.masked_fill(
            ~torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril(), -torch.inf
        ).exp()
        intra = torch.einsum("bthk,bshk,bhts,bshv->bthv", qc, kc, M, vc)
        inter = torch.einsum("bthk,bhkv->bthv", qc * b.exp()[..., None], S)
        outs.append(intra + inter)
        last = b[:, -1]  # [B, H]
        S = S * last.exp()[..., None, None] + torch.einsum(
            "bshk,bshv->bhkv", kc * (last[:, None] - b).exp()[..., None], vc
        )
    return torch.cat(outs, 1)


def gla_chunked_factored(q, k, v, g, chunk_size=8):
    """GLA in chunks with the factored intra-chunk form (q e^b)(k e^-b)^T, b relative to the chunk start."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    for i in range(0, T, chunk_size):
        qc, kc, vc, gc = (x[:, i : i + chunk_size].transpose(1, 2) for x in (q, k, v, g))
        b = gc.cumsum(2)
        A = ((qc * b.exp()) @ (kc * (-b).exp()).transpose(-1, -2)).masked_fill(~causal, 0)
        outs.append(A @ vc + (qc * b.exp()) @ S)
        S = S * b[:, :, -1, :, None].exp() + (kc * (b[:, :, -1:] - b).exp()).transpose(-1, -2) @ vc
    return torch.cat(outs, 2).transpose(1, 2)


def lightning_ragged_last_block(q, k, v):
    """Lightning attention with a block size that does not divide T (the last block shorter)."""
    return lightning_attention_blocks(q, k, v, block_size=12)


def retention_loop_vmap_batch(q, k, v):
    """A retention step over [H, K, V] vmapped over the batch, a per-head gamma from arange."""
    B, T, H, K = q.shape
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device))

    def step(S, q_t, k_t, v_t):
        S = gamma[:, None, None] * S + k_t[:, :, None] * v_t[:, None, :]
        return S, torch.einsum("hk,hkv->hv", q_t, S)

    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S, o = torch.vmap(step)(S, q[:, t], k[:, t], v[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def gla_loop_vmapped_over_heads(q, k, v, g):
    """A whole-sequence loop for one head ([B, T, D] inputs) vmapped over the head dim 2."""

    def one_head(q, k, v, g):
        S = q.new_zeros(q.shape[0], q.shape[-1], v.shape[-1])
        outs = []
        for t in range(q.shape[1]):
            S = S * g[:, t].exp()[..., None] + k[:, t, :, None] * v[:, t, None, :]
            outs.append(torch.einsum("bk,bkv->bv", q[:, t], S))
        return torch.stack(outs, 1)

    return torch.vmap(one_head, in_dims=2, out_dims=2)(q, k, v, g)


def miss_chunked_inter_reads_k(q, k, v, chunk_size=8):
    """Chunked linear attention whose inter-chunk term reads k instead of q: no recurrence."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    S = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    outs = []
    for n in range(q.shape[2] // chunk_size):
        sl = slice(n * chunk_size, (n + 1) * chunk_size)
        qc, kc, vc = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        outs.append((qc @ kc.transpose(-1, -2)).tril() @ vc + kc @ S)
        S = S + kc.transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2).transpose(1, 2)


def miss_pairwise_q_k_same_step(q, k, v, g):
    """q_t k_t (both at t) times the pairwise decay: not scores between steps."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    A = ((q * k)[:, :, :, None] * torch.exp(G[:, :, :, None] - G[:, :, None])).sum(-1)
    return (A.tril() @ v).transpose(1, 2)


def miss_vmap_relu_readout(q, k, v, g):
    """A vmapped GLA step whose read-out passes through relu."""

    def step(S, q_t, k_t, v_t, g_t):
        S = S * g_t.exp()[:, None] + torch.outer(k_t, v_t)
        return S, torch.relu(S.T @ q_t)

    f = torch.func.vmap(torch.func.vmap(step))
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S, o = f(S, q[:, t], k[:, t], v[:, t], g[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


CASES_2 = [
    (gla_pairwise_where, "gla"),
    (gla_pairwise_scaled_after_sum, "gla"),
    (retention_parallel_exp_log, "retention"),
    (linear_attn_chunked, "linear_attn"),
    (simple_gla_chunked_split, "simple_gla"),
    (gla_chunked_factored, "gla"),
    (lightning_ragged_last_block, "retention"),
    (retention_loop_vmap_batch, "retention"),
    (gla_loop_vmapped_over_heads, "gla"),
    (miss_chunked_inter_reads_k, None),
    (miss_pairwise_q_k_same_step, None),
    (miss_vmap_relu_readout, None),
]
