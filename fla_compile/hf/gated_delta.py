"""Gated delta net (Qwen3-Next, Qwen3.5 dense and MoE, OLMo-hybrid, Qwen4-exp) as gated_delta_rule.

transformers' torch fallbacks ``torch_chunk_gated_delta_rule`` (prefill) and
``torch_recurrent_gated_delta_rule`` (decode) take q, k [B, T, HK, K], v [B, T, H, V] (value
heads serve H // HK consecutive heads: our GQA convention), g = -exp(A_log) softplus(a + dt_bias)
[B, T, H] in log space, beta = sigmoid(b) [B, T, H]; with the flag they L2-normalize q and k
(x rsqrt(sum x^2 + 1e-6), fp32), scale q by K^-1/2 and compute, in fp32,

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T q_t

returning o in q's dtype and S_T [B, H, K, V] fp32 when asked. Both names are bound to the
``gated_delta_rule`` op (decode: T=1 with the cached state as initial state). The layer's
causal conv1d is bound to ours, which keeps packed sequences apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..numerics import rel_err
from . import common
from .registry import Binding


def delta_functions(op):
    """The (chunk, recurrent) pair of transformers-signature functions that run ``op``."""

    def chunk(
        query,
        key,
        value,
        g,
        beta,
        chunk_size=64,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        cu_seqlens=None,
        **kwargs,
    ):
        return op(
            *common.dense(query, key, value, g, beta),
            scale=query.shape[-1] ** -0.5,
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=common.packed_cu_seqlens(kwargs, cu_seqlens),
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        )

    def recurrent(
        query,
        key,
        value,
        g,
        beta,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        cu_seqlens=None,
        **kwargs,
    ):
        return chunk(
            query,
            key,
            value,
            g,
            beta,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens,
            **kwargs,
        )

    chunk.__name__ = chunk.__qualname__ = f"chunk_{op.__name__}"
    recurrent.__name__ = recurrent.__qualname__ = f"recurrent_{op.__name__}"
    return chunk, recurrent


chunk_gated_delta_rule, recurrent_gated_delta_rule = delta_functions(ops.gated_delta_rule)


# ---------------------------------------------------------------------------------------------
# probes: ours against the layer's own function, fp32, small random sizes
# ---------------------------------------------------------------------------------------------


def delta_inputs(gen, device, B, T, HK, H, K, V, vector_gate):
    r = common.randn
    g_shape = (B, T, H, K) if vector_gate else (B, T, H)
    return dict(
        query=r(gen, B, T, HK, K, device=device),
        key=r(gen, B, T, HK, K, device=device),
        value=r(gen, B, T, H, V, device=device),
        g=-F.softplus(r(gen, *g_shape, device=device)) * 0.5,
        beta=torch.sigmoid(r(gen, B, T, H, device=device)),
    )


def delta_probe(original, ours, device, *, T, HK, vector_gate) -> float:
    """Dense with an initial state (L2 norm in the kernel, and pre-normalized keys without it),
    and, for T > 1, two packed sequences against the layer's function run on each.

    GQA (HK < H heads of q and k) is probed where the layer's function takes it; older
    transformers repeat the heads in the forward instead, and get an H-head probe."""
    if HK < 4:
        try:
            return _delta_probe(original, ours, device, T=T, HK=HK, vector_gate=vector_gate)
        except RuntimeError:
            pass
    return _delta_probe(original, ours, device, T=T, HK=4, vector_gate=vector_gate)


def _delta_probe(original, ours, device, *, T, HK, vector_gate) -> float:
    gen = common.generator(device)
    H, K, V = 4, 16, 8
    inp = delta_inputs(gen, device, 2, T, HK, H, K, V, vector_gate)
    h0 = common.randn(gen, 2, H, K, V, device=device, scale=0.1)
    kw = dict(initial_state=h0, output_final_state=True)
    errs = [
        rel_err(ours(**inp, **kw, use_qk_l2norm_in_kernel=True), original(**inp, **kw, use_qk_l2norm_in_kernel=True))
    ]
    unit = {**inp, "query": F.normalize(inp["query"], dim=-1), "key": F.normalize(inp["key"], dim=-1)}
    errs.append(rel_err(ours(**unit, **kw), original(**unit, **kw)))
    if T > 1 and common.accepts(ours, "cu_seqlens"):
        inp = delta_inputs(gen, device, 1, T, HK, H, K, V, vector_gate)
        cut = T // 3
        kw = dict(use_qk_l2norm_in_kernel=True, output_final_state=True)
        parts = [original(**{n: x[:, s:e] for n, x in inp.items()}, **kw) for s, e in ((0, cut), (cut, T))]
        ref = (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0))
        cu = torch.tensor([0, cut, T], device=device, dtype=torch.int32)
        errs.append(rel_err(ours(**inp, **kw, cu_seqlens=cu), ref))
    return max(errs)


def _probe_chunk(original, ours, device):
    return delta_probe(original, ours, device, T=70, HK=2, vector_gate=False)


def _probe_recurrent(original, ours, device):
    return delta_probe(original, ours, device, T=1, HK=2, vector_gate=False)


BINDING = Binding(
    kind="gated_delta",
    path="gated_delta_rule op (prefill: chunked; decode T=1: same op on the cached state)",
    functions={
        "torch_chunk_gated_delta_rule": chunk_gated_delta_rule,
        "torch_recurrent_gated_delta_rule": recurrent_gated_delta_rule,
        # older transformers hold them as instance attributes
        "chunk_gated_delta_rule": chunk_gated_delta_rule,
        "recurrent_gated_delta_rule": recurrent_gated_delta_rule,
        "causal_conv1d_fn": common.causal_conv1d_fn,
        "causal_conv1d_update": common.causal_conv1d_update,
    },
    required=(
        ("torch_chunk_gated_delta_rule", "chunk_gated_delta_rule"),
        ("torch_recurrent_gated_delta_rule", "recurrent_gated_delta_rule"),
    ),
    probes={
        "torch_chunk_gated_delta_rule": _probe_chunk,
        "torch_recurrent_gated_delta_rule": _probe_recurrent,
        "chunk_gated_delta_rule": _probe_chunk,
        "recurrent_gated_delta_rule": _probe_recurrent,
        "causal_conv1d_fn": common.conv_probe,
        "causal_conv1d_update": common.conv_update_probe,
    },
)
