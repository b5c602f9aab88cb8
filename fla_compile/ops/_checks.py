"""Input checks shared by the public op functions: say which argument and what was expected.

Every message starts with ``fla_compile.<op>: `` and names the argument. Shapes, dtypes and devices
are checked on every call (free: no data is read). The values of ``cu_seqlens`` are read once on the
host (one small device-to-host copy on CUDA) in eager calls only: not while Dynamo or export traces
the call (``torch.compiler.is_compiling()``: a host read would break the graph), not during CUDA-graph
capture, and not on fake or meta tensors. The custom op itself (what a compiled graph calls) checks
them again whenever they are a plain CPU tensor, where its torch path reads them anyway; on CUDA inside
a compiled graph they are not read (that would add a host sync to the kernels' path).
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def fail(op: str, msg: str) -> None:
    raise ValueError(f"fla_compile.{op}: {msg}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_qkv(op: str, q, k, v, cu_seqlens=None):
    """Check [B,T,H,D] q, k, v of one dtype with GQA head groups (and ``cu_seqlens``); return (B, T, H, K, V)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            fail(op, f"{name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 4:
            fail(op, f"{name} must be [B, T, H, D] (4 dims), got shape {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            fail(op, f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
        if x.device != q.device:
            fail(op, f"{name} is on {x.device} but q is on {q.device}; all inputs must be on one device")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            fail(
                op,
                f"q is {_name(q.dtype)} but {name} is {_name(x.dtype)}: q, k and v must have one dtype "
                f"(cast them first; the op computes in fp32, or fp64 for float64 inputs)",
            )
    if q.shape != k.shape:
        fail(op, f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    B, T, HK, K = q.shape
    if v.shape[:2] != (B, T):
        fail(op, f"v must be [B, T, H, V] with B={B}, T={T} as q, got {tuple(v.shape)}")
    H, V = v.shape[2], v.shape[3]
    if HK == 0 or K == 0:
        fail(op, f"q and k need at least one head and a head dim of at least 1, got shape {tuple(q.shape)}")
    if H == 0 or V == 0:
        fail(op, f"v needs at least one head and a head dim of at least 1, got shape {tuple(v.shape)}")
    if H % HK != 0:
        fail(op, f"v has {H} heads, which is not a multiple of the {HK} heads of q and k (GQA groups)")
    if cu_seqlens is not None:
        check_cu_seqlens(op, cu_seqlens, B, T, q.device)
    return B, T, H, K, V


def check_cu_seqlens(op: str, cu_seqlens, B: int, T: int, device, read_values: bool | None = None) -> None:
    """Packed offsets: a 1-D int tensor [0, ..., T], non-decreasing (sequences of length 0 are allowed).

    ``read_values`` None: read them when the call is eager (see the module's docstring)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        fail(op, f"cu_seqlens must be a tensor of offsets [0, ..., T], got {type(cu_seqlens).__name__}")
    if B != 1:
        fail(op, f"with cu_seqlens, inputs must be packed into batch size 1, got B={B}")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        fail(op, f"cu_seqlens must be a 1-D int32/int64 tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    if cu_seqlens.shape[0] < 2:
        fail(op, f"cu_seqlens must hold at least two offsets [0, ..., T] (one sequence), got {cu_seqlens.shape[0]}")
    if cu_seqlens.device != device:
        fail(op, f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")
    if read_values is None:
        read_values = values_readable(cu_seqlens)
    if not read_values:
        return
    cu = cu_seqlens.tolist()
    shown = str(cu) if len(cu) <= 12 else f"[{', '.join(map(str, cu[:6]))}, ..., {', '.join(map(str, cu[-3:]))}]"
    if cu[0] != 0:
        fail(op, f"cu_seqlens must start at 0, got {shown}")
    drop = next((i for i in range(1, len(cu)) if cu[i] < cu[i - 1]), None)
    if drop is not None:
        fail(
            op,
            f"cu_seqlens must be non-decreasing (a sequence of length 0 is allowed, a negative length is not), "
            f"got {shown}: offset {drop} ({cu[drop]}) is below offset {drop - 1} ({cu[drop - 1]})",
        )
    if cu[-1] != T:
        fail(op, f"cu_seqlens must end at T = {T} (the packed length of q, k and v), got {shown}")


def values_readable(x: torch.Tensor) -> bool:
    """Whether reading ``x``'s values on the host is allowed and cheap here: an eager call on a plain tensor."""
    if type(x) is not torch.Tensor or x.device.type == "meta" or torch.compiler.is_compiling():
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def check_gate(op: str, name: str, g, shape, q) -> None:
    """A log-space gate (or beta) of ``shape`` ([B, T, H] or [B, T, H, K], H = heads of v), on q's
    device, in q's dtype or float32."""
    layout = f"[B, T, H{', K' if len(shape) == 4 else ''}] = {tuple(shape)} (H = heads of v)"
    if not isinstance(g, torch.Tensor):
        fail(op, f"{name} must be a tensor {layout}, got {type(g).__name__}")
    if tuple(g.shape) != tuple(shape):
        fail(op, f"{name} must have shape {layout}, got {tuple(g.shape)}")
    if not g.is_floating_point():
        fail(op, f"{name} must be a float tensor, got {g.dtype}")
    if g.dtype not in (q.dtype, torch.float32):
        fail(op, f"{name} is {_name(g.dtype)} but q is {_name(q.dtype)}: {name} must be {_name(q.dtype)} or float32")
    if g.device != q.device:
        fail(op, f"{name} is on {g.device} but q is on {q.device}")


def check_state(op: str, initial_state, N, H, K, V, device) -> None:
    if initial_state is None:
        return
    if not isinstance(initial_state, torch.Tensor):
        fail(op, f"initial_state must be a tensor [N, H, K, V] or None, got {type(initial_state).__name__}")
    if tuple(initial_state.shape) != (N, H, K, V):
        fail(op, f"initial_state must be [N, H, K, V] = {(N, H, K, V)}, got {tuple(initial_state.shape)}")
    if initial_state.device != device:
        fail(op, f"initial_state is on {initial_state.device} but q is on {device}")
    if not initial_state.is_floating_point():
        fail(op, f"initial_state must be a float tensor, got {initial_state.dtype}")


def check_scale(op: str, scale, K: int) -> float:
    """The scale as a float: K ** -0.5 when None, else a finite real number."""
    if scale is None:
        return K**-0.5
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and scale.is_floating_point():
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        fail(op, f"scale must be a finite number or None (K ** -0.5), got {scale!r}")
    return float(scale)
