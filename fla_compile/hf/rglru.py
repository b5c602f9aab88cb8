"""RecurrentGemma's RG-LRU (Griffin / Hawk recurrent block) as the elementwise ``hgrn`` scan.

``RecurrentGemmaRglru.forward`` computes its gates in torch and hands the recurrence to its
``_rnn_scan`` method, a Python loop over time (T=1 once a state is cached):

    h_t = (a_t * ~reset_t) h_{t-1} + x_t      (per channel; reset where position_ids == 0)

which is ``hgrn`` with the decay given as a value, a reset being a decay of 0 (log-gate -inf,
exact). ``ops.hgrn.hgrn_decay`` takes it so, and differentiates a through dh_t h_{t-1}, finite where a
is 0. The method is swapped on the instance; the gates, the sqrt-bounded input normalization, the
conv and the block's cache bookkeeping stay transformers' own.
"""

from __future__ import annotations

import torch

from ..numerics import rel_err
from ..ops.hgrn import hgrn_decay
from . import common
from .registry import Binding


def rnn_scan(hidden_states, recurrent_gate, reset, recurrent_states=None, acc_dtype=torch.float32):
    """x [B, T, W], a [B, T, W] in [0, 1], reset [B, T, 1] bool, state [B, W] fp32 or None ->
    (h [B, T, W] in x's dtype, final state [B, W] fp32). Accumulates in fp32 (``acc_dtype``'s default)."""
    a = (recurrent_gate * ~reset).float().expand(hidden_states.shape)
    h0 = None if recurrent_states is None else recurrent_states.to(device=hidden_states.device, dtype=torch.float32)
    return hgrn_decay(hidden_states.contiguous(), a.contiguous(), h0)


# ---------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------


def probe_scan(original, ours, device) -> float:
    """Prefill (with and without a state, resets mid-sequence) and single steps, against the layer's method."""
    gen = common.generator(device)
    B, T, W = 2, 11, 8
    x = common.randn(gen, B, T, W, device=device)
    a = torch.sigmoid(common.randn(gen, B, T, W, device=device))
    reset = torch.zeros(B, T, 1, dtype=torch.bool, device=device)
    reset[:, 0], reset[1, 6] = True, True
    h0 = common.randn(gen, B, W, device=device)
    errs = []
    for state in (None, h0):
        errs.append(rel_err(ours(x, a, reset, state), original(x, a, reset, state)))
        step = (x[:, :1], a[:, 3:4], reset[:, 3:4], state)
        errs.append(rel_err(ours(*step), original(*step)))
    return max(errs)


def fp32_twin(module):
    """An fp32 copy of the layer with no cached state (the layer probe runs it twice from scratch)."""
    twin = common.fp32_copy(module)
    twin.recurrent_states = None
    return twin


def probe_args(x):
    """(activations, position_ids): positions from 0 in each row (a reset at t=0) and a second
    document in row 1 from t=5, so the reset path runs and a stale state cannot leak in."""
    B, T, _ = x.shape
    pos = torch.arange(T, device=x.device).expand(B, T).clone()
    pos[1, 5:] -= 5
    return (x, pos)


def width(module) -> int:
    return module.recurrent_param.shape[0]


BINDING = Binding(
    kind="rglru",
    path="hgrn op (prefill and cached decode; decay a_t, 0 at a reset)",
    functions={"_rnn_scan": rnn_scan},
    required=(("_rnn_scan",),),
    probes={"_rnn_scan": probe_scan},
    probe_args=probe_args,
    twin=fp32_twin,
    width=width,
)
