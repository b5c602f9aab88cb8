"""MiniMax lightning attention as retention (a fixed decay per head).

``MiniMaxLightningAttention.forward`` runs its recurrence inline: block by block in prefill
(``query_decay`` / ``key_decay`` / ``diagonal_decay`` buffers), token by token once a state is
cached. Both compute, per head h with slope s_h (``slope_rate``),

    S_t = exp(-s_h) S_{t-1} + k_t v_t^T,     o_t = S_t^T q_t     (no 1/sqrt(d) scale)

which is ``retention`` with log-decay -s_h and scale 1. There is no function to swap, so the
binding is a forward that keeps the layer's projections, padding mask, norm and output gate
and calls the op once, with the cached state (``get_linear_cache``) as initial state.
"""

from __future__ import annotations

import copy

import torch

from .. import ops
from ..numerics import rel_err
from . import common
from .registry import Binding


def lightning_forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
    """Drop-in for ``MiniMaxLightningAttention.forward``: returns (output, state [B, H, D, D]).

    Called through an adapter with the installed transformers' signature of that forward
    (``signature.adapt``): ``cache`` is whatever that version names the cache argument
    (``past_key_value``, ``past_key_values``, ``cache``); rotary embeddings and positions are
    not used by lightning attention.
    """
    B, T, _ = hidden_states.shape
    H, D = self.num_attention_heads, self.head_dim
    qkv = self.act_fn(self.qkv_proj(hidden_states))
    if attention_mask is not None and attention_mask.dim() == 2:  # padding tokens write nothing
        qkv = (qkv * attention_mask[:, -T:, None]).to(qkv.dtype)
    q, k, v = torch.split(qkv.reshape(B, T, H, 3 * D), D, dim=3)

    state = None
    if cache is not None:
        state = cache.get_linear_cache(self.layer_idx)
        state = state if isinstance(state, torch.Tensor) else None
    decay = -self.slope_rate.reshape(H).float()
    o, state = ops.retention(
        *common.dense(q, k, v),
        decay,
        scale=1.0,
        initial_state=state,
        output_final_state=True,
        cu_seqlens=common.packed_cu_seqlens(kwargs),
    )

    o = self.norm(o.reshape(B, T, H * D))
    o = torch.sigmoid(self.output_gate(hidden_states)) * o
    o = self.out_proj(o)
    if cache is not None:
        cache.set_linear_cache(self.layer_idx, state)
    return o, state


class _ProbeCache:
    """The two methods of MiniMaxCache the layer uses."""

    def __init__(self):
        self.states = {}

    def get_linear_cache(self, layer_idx):
        return self.states.get(layer_idx)

    def set_linear_cache(self, layer_idx, state):
        self.states[layer_idx] = state


def refresh_fp32(twin) -> None:
    """Recompute the decay tables of an fp32 copy of the layer in fp32 from ``slope_rate``.

    In a bf16 model the layer's ``query_decay`` / ``key_decay`` / ``diagonal_decay`` buffers are
    bf16 roundings of exp(-slope * n), no longer consistent with one recurrence (about 1e-3 off
    each other); an fp32 copy of the layer computes the math they stand for.
    """
    if hasattr(twin, "decay_factors"):  # on CPU: older transformers build the ranges there
        tables = twin.decay_factors(twin.slope_rate.float().cpu())
        twin.query_decay, twin.key_decay, twin.diagonal_decay = (t.to(twin.slope_rate.device) for t in tables)


def fp32_twin(module):
    """An fp32 copy of the layer (decay tables recomputed in fp32, see ``refresh_fp32``)."""
    twin = copy.deepcopy(module).float()
    refresh_fp32(twin)
    return twin


def probe_decode(module, ours, device) -> float:
    """Prefill + two cached decode steps through the layer, original vs ours (fp32 copy)."""
    twin = fp32_twin(module)
    gen = common.generator(device)
    x = common.randn(gen, 2, 11, module.qkv_proj.in_features, device=device)
    outs = []
    for fwd in (type(module).forward, ours):
        cache = _ProbeCache()
        ys = [fwd(twin, x[:, :9], None, None, cache)[0]]
        for t in (9, 10):
            ys.append(fwd(twin, x[:, t : t + 1], None, None, cache)[0])
        outs.append((torch.cat(ys, 1), cache.states[twin.layer_idx]))
    return rel_err(outs[1], outs[0])


BINDING = Binding(
    kind="lightning",
    path="retention op (prefill and cached decode, decay -slope_rate per head)",
    forward=lightning_forward,
    # parameters some transformers version gives the forward that lightning attention does not use
    ignore={"forward": ("position_embeddings", "position_ids", "cache_position", "output_attentions", "use_cache")},
    probes={"forward": probe_decode},
    probe_args=lambda x: (x, None, None),
    twin=fp32_twin,
    refresh=refresh_fp32,
)
