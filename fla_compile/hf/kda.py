"""Kimi Delta Attention (Kimi-Linear, Bailing-hybrid, GLM5-next) as the kda op.

transformers' torch fallbacks ``chunk_kimi_delta_attention`` (prefill) and
``recurrent_kimi_delta_attention`` (decode) take q, k, v [B, T, H, D], a per-channel log gate
g [B, T, H, K] (``-exp(A_log) softplus(f + dt_bias)``, or a safe-gate variant bounded below)
and beta [B, T, H]; with the flag they L2-normalize q and k (x / sqrt(sum x^2 + 1e-6), fp32),
scale q by K^-1/2 and compute, in fp32,

    S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T q_t

Both are bound to the ``kda`` op (decode: T=1 with the cached state as initial state), with
the same transformers-signature wrappers as the gated delta net; the conv1d is bound to ours.
"""

from __future__ import annotations

from .. import ops
from . import common
from .gated_delta import delta_functions, delta_probe
from .registry import Binding

chunk_kda, recurrent_kda = delta_functions(ops.kda)


def _probe_chunk(original, ours, device):
    return delta_probe(original, ours, device, T=70, HK=4, vector_gate=True)


def _probe_recurrent(original, ours, device):
    return delta_probe(original, ours, device, T=1, HK=4, vector_gate=True)


BINDING = Binding(
    kind="kda",
    path="kda op (prefill: chunked; decode T=1: same op on the cached state)",
    functions={
        "chunk_kimi_delta_attention": chunk_kda,
        "recurrent_kimi_delta_attention": recurrent_kda,
        "causal_conv1d_fn": common.causal_conv1d_fn,
        "causal_conv1d_update": common.causal_conv1d_update,
    },
    required=(("chunk_kimi_delta_attention",), ("recurrent_kimi_delta_attention",)),
    probes={
        "chunk_kimi_delta_attention": _probe_chunk,
        "recurrent_kimi_delta_attention": _probe_recurrent,
        "causal_conv1d_fn": common.conv_probe,
        "causal_conv1d_update": common.conv_update_probe,
    },
)
