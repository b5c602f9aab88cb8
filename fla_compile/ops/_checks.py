"""Input checks shared by the public op functions: say which argument and what was expected."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def fail(op: str, msg: str) -> None:
    raise ValueError(f"fla_compile.{op}: {msg}")


def check_qkv(op: str, q, k, v, cu_seqlens=None):
    """Check [B,T,H,D] q, k, v with GQA head groups; return (B, T, H, K, V)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            fail(op, f"{name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 4:
            fail(op, f"{name} must be [B, T, H, D] (4 dims), got shape {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            fail(op, f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
        if x.device != q.device:
            fail(op, f"{name} is on {x.device} but q is on {q.device}; all inputs must be on one device")
    if q.shape != k.shape:
        fail(op, f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    B, T, HK, K = q.shape
    if v.shape[:2] != (B, T):
        fail(op, f"v must be [B, T, H, V] with B={B}, T={T} as q, got {tuple(v.shape)}")
    H, V = v.shape[2], v.shape[3]
    if H % HK != 0:
        fail(op, f"v has {H} heads, which is not a multiple of the {HK} heads of q and k (GQA groups)")
    if cu_seqlens is not None:
        if B != 1:
            fail(op, f"with cu_seqlens, inputs must be packed into batch size 1, got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            fail(op, f"cu_seqlens must be a 1-D int32/int64 tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device != q.device:
            fail(op, f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
    return B, T, H, K, V


def check_gate(op: str, name: str, g, shape):
    if not isinstance(g, torch.Tensor):
        fail(op, f"{name} must be a tensor, got {type(g).__name__}")
    if tuple(g.shape) != tuple(shape):
        fail(op, f"{name} must have shape {tuple(shape)}, got {tuple(g.shape)}")
    if not g.is_floating_point():
        fail(op, f"{name} must be a float tensor (log-space gate), got {g.dtype}")


def check_state(op: str, initial_state, N, H, K, V, device):
    if initial_state is None:
        return
    if tuple(initial_state.shape) != (N, H, K, V):
        fail(op, f"initial_state must be [N, H, K, V] = {(N, H, K, V)}, got {tuple(initial_state.shape)}")
    if initial_state.device != device:
        fail(op, f"initial_state is on {initial_state.device} but q is on {device}")
    if not initial_state.is_floating_point():
        fail(op, f"initial_state must be a float tensor, got {initial_state.dtype}")
