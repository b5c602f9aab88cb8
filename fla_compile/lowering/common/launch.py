"""Launch helpers of every line's Triton kernels: the dtypes they take, block sizes, dot precision."""

from __future__ import annotations

import contextvars
import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_SET = frozenset(DTYPES)  # a hashed lookup: ``in`` a tuple of dtypes costs ~0.5 us per tensor


def supported(max_head_dim: int, *tensors: torch.Tensor, max_fp32_head_dim: int | None = None) -> bool:
    """Whether a line's kernels take these inputs: every dtype in :data:`DTYPES` and every head dim (the
    last dim) at most ``max_head_dim`` (fp32 tensors: ``max_fp32_head_dim`` where given); otherwise (fp64, larger
    heads) the line uses its torch path. Asked on every op call (forward and backward): a plain loop, no generator."""
    fp32_limit = max_head_dim if max_fp32_head_dim is None else max_fp32_head_dim
    for x in tensors:
        if x.dtype not in _DTYPE_SET or x.shape[-1] > (fp32_limit if x.dtype == torch.float32 else max_head_dim):
            return False
    return True


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of ints, for grids on the host: ``triton.cdiv`` is a constexpr function in Triton
    3.9, microseconds per host call, and a small op's launches add up (a forward makes ~10 such calls)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The next power of two >= ``n`` (0 for 0), as ``triton.next_power_of_2`` without its call cost."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def pow2(n: int, lo: int = 16) -> int:
    """The block size that covers ``n``: its next power of two, at least ``lo``."""
    return max(lo, next_pow2(n))


# Head dims of at most NARROW_HEAD run the chunk lines' compiled kernels in masked blocks of NARROW_HEAD_BLOCK. With
# a block equal to a head dim of 32 (K = 64 x V = 32, K = 32 x V = 64; bf16, H200, Triton 3.6, 2026-12-04) the
# GPU tests of both lines got wrong dq, dk and o (rel. err 0.56-1.5 against fp64), dq not bitwise repeatable,
# and illegal memory accesses; compute-sanitizer's memcheck reported "Invalid __shared__ read" at the
# transposed-B wgmma of chunk_bwd_dv_kernel. The same cases in masked blocks of 64 (the path of V = 33) were
# clean under memcheck and equal fp64. Blocks of 16 or 32 inside a head dim of 64 or more (the tables' tiles,
# fill_sms) are the paths the GPU suite checks at 64 and 128. The interpreter keeps the exact blocks.
NARROW_HEAD = 32
NARROW_HEAD_BLOCK = 64


def interpreted() -> bool:
    """Whether Triton runs kernels through its interpreter (``TRITON_INTERPRET``): the CPU's test mode."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def head_block(n: int, cap: int | None = None) -> int:
    """The block of a head dim ``n`` (K or V) in the chunk lines' kernels: its next power of two, at most ``cap``;
    a head dim of at most :data:`NARROW_HEAD` takes one masked block of :data:`NARROW_HEAD_BLOCK` when compiled."""
    if n <= NARROW_HEAD and not interpreted():
        return NARROW_HEAD_BLOCK
    return pow2(n) if cap is None else min(cap, pow2(n))


# fp32 inputs at torch's "highest": "tf32x3" (three tf32 tensor-core products, lo·hi + hi·lo + hi·hi, near
# fp32's accuracy: ``common/dots.py``) or "ieee" (exact fp32 FMA loops on CUDA cores). "ieee" spills 18-55 KB
# per thread in the state passes and the backward kernels: on the H200 (2026-12-01, B=8 T=2048 H=16 D=128)
# gated_delta_rule's forward kernels took 43.1 ms with "ieee" and 2.37 ms with "tf32x3", 1.4e-6 from fp64.
FP32_HIGHEST = "tf32x3"
# The dots that split fp32 operands into parts (``common/dots.py``): the launchers keep the fences found for
# "tf32x3" (a state-gradient pass form that computed wrong, V blocks under 32) for each of them.
SPLIT_PRECS = ("tf32x3", "bf16x3", "bf16x6")
# The head dims (K and V) where "tf32x3" is checked on the H200: the delta line's and the GLA line's GPU tests at
# 64 and 128. At K = V = 16 (and K = 16, V = 8) it computed wrong outputs there (retention's and qwen3_next's
# fp32 GPU tests, rel. err 1.5-2.1, 2026-12-01; cause not found yet); other sizes take "ieee".
FP32_SPLIT_DIMS = (64, 128)


def prec(dtype, K: int, V: int, split: bool = True) -> str:
    """``tl.dot``'s input precision for operands of ``dtype`` in kernels of head dims ``K`` x ``V``. fp32 follows
    torch's ``torch.set_float32_matmul_precision``: "highest" (torch's default) :data:`FP32_HIGHEST` where K and V
    lie in :data:`FP32_SPLIT_DIMS` and the caller allows the split (``split``: a line's kernels checked with it on
    the H200), else "ieee"; "high" or "medium" tensor-core tf32 dots, as torch's own fp32 matmuls. Other dtypes:
    "tf32" (it only applies where a kernel feeds fp32 operands to a dot, e.g. fp32 intermediates of bf16 inputs)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        lo, hi = FP32_SPLIT_DIMS
        return FP32_HIGHEST if split and lo <= min(K, V) and max(K, V) <= hi else "ieee"
    return "tf32"


@functools.cache
def _sm_count(index) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device) -> int:
    """The streaming multiprocessors of a CUDA ``device`` (cached: the property query costs microseconds)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def fill_sms(
    device, programs: int, V: int, BV: int, K: int = 1, BK: int | None = None, lo: int = 16, per_sm: int = 1
) -> tuple:
    """(BK, BV) of a sequential state pass, halved (V first, then K where ``BK`` is given; down to ``lo``) while
    ``programs`` x blocks still fits the device's SMs (``per_sm`` programs each): each program walks every chunk in
    turn, so a grid under one wave (few sequences x heads) leaves SMs idle for the whole walk. Unchanged off CUDA;
    a head dim of at most :data:`NARROW_HEAD` keeps its block (:func:`head_block`)."""
    if device.type != "cuda":
        return BK, BV
    sms = sm_count(device) * per_sm
    lo_v = BV if V <= NARROW_HEAD else lo
    lo_k = BK if K <= NARROW_HEAD else lo
    while True:
        nk = 1 if BK is None else cdiv(K, BK)
        if BV > lo_v and programs * nk * cdiv(V, BV // 2) <= sms:
            BV //= 2
        elif BK is not None and BK > lo_k and programs * cdiv(K, BK // 2) * cdiv(V, BV) <= sms:
            BK //= 2
        else:
            return BK, BV


# Inside :func:`.ahead.compile_ahead`'s dry run (this thread's context): a list that counts the launches ``fitted``
# compiled instead of running (``JITFunction.warmup``); None otherwise
COMPILE_ONLY: contextvars.ContextVar[list | None] = contextvars.ContextVar("fla_compile_compile_only", default=None)


def launching(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``fitted`` launching, also inside a dry run (tuning runs and times kernels)."""
    token = COMPILE_ONLY.set(None)
    try:
        return fn(*args, **kwargs)
    finally:
        COMPILE_ONLY.reset(token)


_LOWERED: set = set()
# the stages a launch ran on after Triton refused more: (kernel id, warps, stages asked, the launch's scalars and
# tensor dtypes) -> stages. Only kernels in _SHRUNK (lowered at least once; id -> the kernel, kept alive so no id is
# reused) build a key, so a launch that fits pays one dict lookup; the next call of a lowered launch goes straight
# to what fitted, without Triton's refusal. Ids, not the kernels: whether a Triton build hashes its JIT functions
# is its own business
_FITTED: dict = {}
_SHRUNK: dict = {}
_FITTED_MAX = 4096  # distinct sizes keep their own entries (sequence lengths among the scalars): bounded


def _fit_key(kernel, warps: int, num_stages: int, args: tuple, kwargs: dict):
    """``fitted``'s memo key: what decides a config's shared memory (constexprs, dtypes, warps, stages); None where
    an argument cannot be hashed (no memo then)."""
    scalars = tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args)
    named = tuple(
        (n, a.dtype if isinstance(a, torch.Tensor) else a) for n, a in sorted(kwargs.items()) if n != "num_warps"
    )
    key = (id(kernel), warps, num_stages, scalars, named)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def out_of_resources() -> type:
    """Triton's ``OutOfResources``, imported when asked: in an ``except`` clause it is evaluated only once
    something was raised, so a launch imports nothing."""
    from triton.runtime.errors import OutOfResources

    return OutOfResources


def _kernel_name(kernel) -> str:
    return getattr(getattr(kernel, "fn", kernel), "__name__", repr(kernel))


def fitted(kernel, grid, *args, num_stages: int, avoid=(), **kwargs):
    """``kernel[grid](*args, num_stages=..., **kwargs)``, with ``num_stages`` lowered (down to 1) while Triton finds
    the kernel's shared memory over the device's: the arch tables are tuned at bf16, and fp32 tiles take twice the
    bytes (kda's dh pass at K = 128 in fp32 with two stages: 234 KB of the H200's 227). Triton refuses such a
    config before anything runs, so retrying is safe; the first lowering per kernel and count is logged, and the
    stages that fitted are remembered per launch form (``_FITTED``): later calls start there, not at Triton's refusal.

    ``avoid``: (num_warps, num_stages) forms known to compute wrong results for this launch (a miscompile of the
    Triton build, which no error announces). Such a form, asked for or reached by lowering the stages, runs on half
    the warps instead (fewer warps take no more shared memory).

    Inside :func:`.ahead.compile_ahead`'s dry run (:data:`COMPILE_ONLY` set in this thread's context) it runs
    nothing: it submits the compile of the form it would launch (``warmup``) and returns None."""
    warps = kwargs.get("num_warps", 4)
    asked = (warps, num_stages)  # the memo's key: what the caller asked, before any lowering or avoiding
    key = _fit_key(kernel, *asked, args, kwargs) if _SHRUNK and id(kernel) in _SHRUNK else None
    if key is not None:
        num_stages = _FITTED.get(key, num_stages)
    while True:
        while (warps, num_stages) in avoid and warps > 1:
            warps //= 2
            name = _kernel_name(kernel)
            if (name, "avoid", num_stages) not in _LOWERED:
                _LOWERED.add((name, "avoid", num_stages))
                log.info("%s: %d stages on %d warps, a form that computes wrong results here; on %d warps",
                         name, num_stages, 2 * warps, warps)  # fmt: skip
        if avoid:
            kwargs["num_warps"] = warps
        dry = COMPILE_ONLY.get()
        if dry is not None:  # compile only (on a thread, under Triton's async compile mode): nothing runs
            kernel.warmup(*args, grid=grid, num_stages=num_stages, **kwargs)
            dry.append(_kernel_name(kernel))
            return None
        try:
            return kernel[grid](*args, num_stages=num_stages, **kwargs)
        except out_of_resources() as e:  # evaluated only when something was raised: no import per launch
            if e.name != "shared memory" or num_stages <= 1:
                raise
            num_stages -= 1
            _SHRUNK[id(kernel)] = kernel
            key = key or _fit_key(kernel, *asked, args, kwargs)
            if key is not None:
                if len(_FITTED) >= _FITTED_MAX:
                    _FITTED.clear()
                _FITTED[key] = num_stages
            name = _kernel_name(kernel)
            if (name, num_stages) not in _LOWERED:
                _LOWERED.add((name, num_stages))
                log.info("%s: %s; retrying with num_stages=%d", name, e, num_stages)
