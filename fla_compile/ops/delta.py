"""The delta-rule ops: delta_rule, gated_delta_rule, kda.

Public functions take [B, T, H, D] inputs (GQA: q and k may have fewer heads than v), beta
[B, T, H], log-space gates, an optional initial state [N, H, K, V] and packed ``cu_seqlens``,
and ``use_qk_l2norm_in_kernel`` as transformers' functions take it. They return
``(o, final_state)`` with ``final_state`` None unless asked for. Underneath each is one
``torch.ops.fla_compile.<family>`` custom op whose schema ends in ``bool use_qk_l2norm``.
"""

from __future__ import annotations

from ..lowering import FAMILIES, delta_saved_X
from ._checks import check_gate, check_qkv, check_scale, check_state
from ._docs import documented
from ._library import OpSpec, call, recompute_backward, register

FLAGS = ("use_qk_l2norm",)
_DELTA_RULE, _GATED_DELTA_RULE, _KDA = (FAMILIES[f] for f in ("delta_rule", "gated_delta_rule", "kda"))


def _delta_rule_fwd(q, k, v, beta, *, scale, initial_state, cu_seqlens, use_qk_l2norm, saved=(None,)):
    return _DELTA_RULE.forward(
        q, k, v, beta, None, _DELTA_RULE.gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm, X_out=saved[0]
    )


def _gated_delta_rule_fwd(q, k, v, g, beta, *, scale, initial_state, cu_seqlens, use_qk_l2norm, saved=(None,)):
    kind = _GATED_DELTA_RULE.gate_kind
    return _GATED_DELTA_RULE.forward(
        q, k, v, beta, g, kind, scale, initial_state, cu_seqlens, use_qk_l2norm, X_out=saved[0]
    )


def _kda_fwd(q, k, v, gk, beta, *, scale, initial_state, cu_seqlens, use_qk_l2norm, saved=(None,)):
    return _KDA.forward(
        q, k, v, beta, gk, _KDA.gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm, X_out=saved[0]
    )


def _saved_X(q, k, v, *gates, initial_state, cu_seqlens, use_qk_l2norm):
    """The delta ops keep the forward's WY inverses for the backward (see ``lowering.delta_saved_X``)."""
    beta, gate = gates[-1], (gates[0] if len(gates) == 2 else None)
    return (delta_saved_X(q, k, v, beta, gate, initial_state),)


_delta_rule_torch_bwd = recompute_backward(_delta_rule_fwd)
_gated_delta_rule_torch_bwd = recompute_backward(_gated_delta_rule_fwd)
_kda_torch_bwd = recompute_backward(_kda_fwd)


def _delta_rule_bwd(q, k, v, beta, **kw):
    return _DELTA_RULE.backward(_delta_rule_torch_bwd, q, k, v, beta, None, _DELTA_RULE.gate_kind, **kw)


def _gated_delta_rule_bwd(q, k, v, g, beta, **kw):
    return _GATED_DELTA_RULE.backward(_gated_delta_rule_torch_bwd, q, k, v, beta, g, _GATED_DELTA_RULE.gate_kind, **kw)


def _kda_bwd(q, k, v, gk, beta, **kw):
    return _KDA.backward(_kda_torch_bwd, q, k, v, beta, gk, _KDA.gate_kind, **kw)


_KEEP = dict(saved=("X",), saved_like=_saved_X)
SPECS = [
    OpSpec("delta_rule", ("beta",), _delta_rule_fwd, _delta_rule_bwd, "S = (I - b k k^T) S + b k v^T", FLAGS, **_KEEP),
    OpSpec(
        "gated_delta_rule",
        ("g", "beta"),
        _gated_delta_rule_fwd,
        _gated_delta_rule_bwd,
        "S = exp(g_t) (I - b k k^T) S + b k v^T",
        FLAGS,
        **_KEEP,
    ),
    OpSpec("kda", ("gk", "beta"), _kda_fwd, _kda_bwd, "S = (I - b k k^T) diag(exp(gk_t)) S + b k v^T", FLAGS, **_KEEP),
]
for _spec in SPECS:
    register(_spec)


def _prepare(op, q, k, v, beta, scale, initial_state, cu_seqlens):
    B, T, H, K, V = check_qkv(op, q, k, v, cu_seqlens)
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    check_state(op, initial_state, N, H, K, V, q.device)
    check_gate(op, "beta", beta, (B, T, H), q)
    return B, T, H, K, V, check_scale(op, scale, K)


def _result(o, ht, output_final_state):
    return o, (ht if output_final_state else None)


def _documented(summary: str, gate: str = ""):
    return documented(
        summary,
        gate,
        before=("beta: [B, T, H] write strength per step and head of v; in q's dtype or float32.",),
        after=("use_qk_l2norm_in_kernel: L2-normalize q and k over K first (x * rsqrt(sum x^2 + 1e-6), fp32).",),
        scale_note=" (applied after the optional L2 norm)",
    )


@_documented("Delta rule: o_t = scale * S_t^T q_t with S_t = (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T.")
def delta_rule(
    q, k, v, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
):  # fmt: skip
    *_, scale = _prepare("delta_rule", q, k, v, beta, scale, initial_state, cu_seqlens)
    o, ht, *_ = call("delta_rule", q, k, v, beta, scale, initial_state, cu_seqlens, bool(use_qk_l2norm_in_kernel))
    return _result(o, ht, output_final_state)


@_documented(
    "Gated delta rule (the gated delta net of Qwen3-Next / Qwen3.5): "
    "S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, o_t = scale * S_t^T q_t.",
    "g: [B, T, H] log-space gate per step and head of v; in q's dtype or float32.",
)
def gated_delta_rule(
    q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
):  # fmt: skip
    B, T, H, K, V, scale = _prepare("gated_delta_rule", q, k, v, beta, scale, initial_state, cu_seqlens)
    check_gate("gated_delta_rule", "g", g, (B, T, H), q)
    o, ht, *_ = call(
        "gated_delta_rule", q, k, v, g, beta, scale, initial_state, cu_seqlens, bool(use_qk_l2norm_in_kernel)
    )
    return _result(o, ht, output_final_state)


@_documented(
    "Kimi Delta Attention (Kimi-Linear): S_t = (I - b_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + b_t k_t v_t^T, "
    "o_t = scale * S_t^T q_t.",
    "g: [B, T, H, K] log-space gate per step, head of v and key dim; in q's dtype or float32.",
)
def kda(
    q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
):  # fmt: skip
    B, T, H, K, V, scale = _prepare("kda", q, k, v, beta, scale, initial_state, cu_seqlens)
    check_gate("kda", "g", g, (B, T, H, K), q)
    o, ht, *_ = call("kda", q, k, v, g, beta, scale, initial_state, cu_seqlens, bool(use_qk_l2norm_in_kernel))
    return _result(o, ht, output_final_state)
