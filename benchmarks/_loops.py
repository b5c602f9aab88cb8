"""The naive loops the CPU benchmarks compile: flash-linear-attention's recurrent GLA spelling."""

import torch


def naive_gla(q, k, v, gk):
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


def inputs(B, T, H, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g) for _ in range(3))
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, D, generator=g)) / 16
    return q, k, v, gk
