"""Launchers of the delta-line Triton kernels: chunked forward and backward, fused recurrent decoding.

Inputs follow the ops: q, k [B, T, HK, K], v [B, T, H, V], beta [B, T, H], gate None /
[B, T, H] / [B, T, H, K] in log space, initial state [N, H, K, V], ``cu_seqlens`` [N + 1]
(B == 1). A dense batch runs as B packed sequences of length T, so one code path covers
both; the chunk metadata of packed sequences is built with torch ops on the device (no
``.item()``, no host sync). The optional L2 norm of q and k runs here in fp32 torch ops
(its backward is written out below); the decode kernel fuses it.

Forward (:func:`forward_parts`, kernels in :mod:`.triton_wy` plus the GLA line's cumsum, factored A and
output kernels): k kᵀ, the blockwise WY solve, W and U, the sequential state pass, the chunk-parallel output.
Backward (:func:`backward_parts`, :mod:`.triton_wy_bwd` plus the GLA line's dv, dqk and intra kernels): the
forward's parts again (its X reused when the op kept it), dv_local, the reverse state pass, dq/dk through
the output, the WY backward and the k kᵀ pairs (one kernel without a per-key-dim gate). Deterministic: no atomics; GQA gradients are summed over
head groups with torch. Launch options: the per-arch tables' "delta" section (see ``_DEFAULTS``).
"""

from __future__ import annotations

import functools

import torch

from ...numerics import HALF
from ..common import launch
from ..common.chunks import chunk_grid, chunk_meta, dense_cu, full_chunks
from ..common.gates import (
    GATE_IDS,
    GATE_NONE,
    GATE_NONE_ID,
    GATE_SCALAR,
    GATE_SCALAR_ID,
    GATE_VECTOR,
    GATE_VECTOR_ID,
    scalar_dg_per_step,
)
from ..gla import triton_intra as gla_intra
from ..gla import triton_kernels as gla_kern
from . import triton_decode as kd
from . import triton_l2norm as kl
from . import triton_wy as kw
from . import triton_wy_bwd as kwb

DECODE_MAX_T = 16
# q's and k's head dim: the decode kernel, the solve and kda's A kernel hold the whole K in one block (256: Gated
# DeltaNet's published heads, checked against fp64 on the H200, thirty-third session); v's is tiled by every kernel.
# fp32 inputs keep 128 for both: past it their products run as exact fp32 dots (`launch.FP32_SPLIT_DIMS`),
# correct on the H200 at K 256 x V 512 but not timed against the torch path's cuBLAS products.
MAX_HEAD_DIM = 256
MAX_VALUE_DIM = 512
MAX_HEAD_DIM_FP32 = 128


def supported(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernels take these inputs; otherwise (fp64, K over 256, V over 512, fp32 heads over 128) use
    the torch path."""
    fp32 = MAX_HEAD_DIM_FP32
    return launch.supported(MAX_HEAD_DIM, q, max_fp32_head_dim=fp32) and launch.supported(
        MAX_VALUE_DIM, v, max_fp32_head_dim=fp32
    )


def _l2norm_fwd(x):
    x = x.float()
    r = torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)
    return x * r, r


def _l2norm_bwd(y, r, dy):
    """y = x * rsqrt(|x|^2 + eps): dx = r (dy - y (y . dy))."""
    return r * (dy - y * (y * dy).sum(-1, keepdim=True))


def _l2norm_rows(D: int) -> tuple[int, int]:
    """(BR, BD): rows per program (about 4096 elements a program) and the padded head dim."""
    BD = launch.pow2(D)
    return max(1, min(64, 4096 // BD)), BD


def _l2norm_qk_fwd(q, k, dtype):
    """q, k [..., D] (the same shape) normalized in ``dtype`` by one launch, and what the backward of the norm
    takes: (qn, kn, (q, rq, k, rk)) with q, k dense and rq, rk their fp32 rsqrt [...]."""
    q, k = q.contiguous(), k.contiguous()
    D = q.shape[-1]
    N = q.numel() // D
    qn, kn = (torch.empty(x.shape, device=x.device, dtype=dtype) for x in (q, k))
    rq, rk = (torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32) for x in (q, k))
    if N:
        BR, BD = _l2norm_rows(D)
        launch.fitted(
            kl.l2norm_qk_fwd_kernel, (launch.cdiv(N, BR), 2), q, k, qn, kn, rq, rk, N, D, BR, BD,
            **_opts("l2norm", q.device),
        )  # fmt: skip
    return qn, kn, (q, rq, k, rk)


def _l2norm_qk_bwd(q, rq, k, rk, dqn, dkn):
    """The gradients of q, k (in their dtypes) from those of their norms (fp32), by one launch."""
    dqn, dkn = dqn.float().contiguous(), dkn.float().contiguous()
    D = q.shape[-1]
    N = q.numel() // D
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    if N:
        BR, BD = _l2norm_rows(D)
        launch.fitted(
            kl.l2norm_qk_bwd_kernel, (launch.cdiv(N, BR), 2), q, k, rq, rk, dqn, dkn, dq, dk, N, D, BR, BD,
            **_opts("l2norm", q.device),
        )  # fmt: skip
    return dq, dk


def _prepare(q, k, v, beta, gate, use_qk_l2norm):
    """Dense inputs, q and k L2-normalized where asked; ``norms`` is what the backward of that norm needs:
    (q, rq, k, rk) with FUSED_L2NORM (q, k as given, contiguous), else (qn, rq, kn, rk) (fp32)."""
    qn = kn = rq = rk = None
    if use_qk_l2norm and FUSED_L2NORM:
        qn, kn, norms = _l2norm_qk_fwd(q, k, v.dtype)
        return qn, kn, v.contiguous(), beta.contiguous(), None if gate is None else gate.contiguous(), norms
    if use_qk_l2norm:
        qn, rq = _l2norm_fwd(q)
        kn, rk = _l2norm_fwd(k)
        q, k = qn, kn
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    gate = None if gate is None else gate.contiguous()
    return q, k, v, beta, gate, (qn, rq, kn, rk)


# Launch options of the staged kernels come from the GLA line's per-arch tables (``common/configs/<arch>.json``,
# section "delta": kernel -> [num_warps, num_stages], and the V blocks BV_h, BV_dh, BV_o of the state passes and
# the output); these defaults stand in for an arch without one. sm90's were measured on the H200 with
# benchmarks/sweep_delta.py, which times other options through OVERRIDES.
_DEFAULTS = {
    "cumsum": (4, 3),
    "kkt": (4, 3),
    "A": (4, 3),
    "wy": (4, 3),
    "solve": (2, 1),
    "wu": (4, 2),
    "h": (4, 2),
    "o": (4, 2),
    "dv_local": (4, 2),
    "dh": (8, 2),
    "dqk": (4, 2),
    "intra": (4, 3),
    "rc": (4, 3),
    "wy_bwd": (8, 2),  # kda's WY backward (the pairs by "pair_vec"); no gate or a scalar one: "wy_pair"
    "pair_vec": (4, 2),
    "BV_h": 64,
    "BV_dh": 64,
    "BV_o": 64,
    "h_fill": (4, 2),  # the state passes' options where ``fill_sms`` halved their V block (``_state_opts``)
    "dh_fill": (8, 2),
    "dh_fill_vector": (8, 2),  # kda's (its state-gradient pass loses on 4 warps: RESULTS, fifteenth session)
    # a state pass's own options for a gate per key (kda) at the table's V block; None: the pass's (``_state_opts``)
    "h_vector": None,
    "dh_vector": None,
    "h_split_vector": None,
    "dh_split_vector": None,
    "heads_inner": False,  # the parallel output, dv_local and dq/dk kernels' launch order (``chunks.chunk_grid``)
    "fill_sms": False,  # shrink the state passes' V block while their grid is under one wave (``_state_bv``)
    "A_row_block": (4, 2),  # kda's A kernel's warps and stages (3 stages: ~170 registers, 2: ~115 on sm90)
    "wy_pair": (4, 2),
    "decode": (4, 3),  # the decode kernel (one program per sequence, head and V block of BV_decode)
    "BV_decode": 32,
    "l2norm": (4, 1),  # the L2 norm of q and k (FUSED_L2NORM), BR rows a program
    "kkt_solve": (1, 1),  # the WY solve kernel forming k kᵀ itself (FUSED_KKT; FLA autotunes its own over 1-4 warps)
    "fused_kkt": True,  # FUSED_KKT applies to these inputs (off for fp32: below)
    # the state passes with the state in key blocks of 64 for K in 65..256 (FLA's layout: the forward's
    # ``chunk_delta_h_split_kernel``, the backward's ``chunk_delta_dh_split_kernel``): ``<pass>_split_k`` lists the
    # gate kinds ("none", "scalar", "vector") that take it, ``<pass>_split`` its launch and ``BV_<pass>_split`` its V
    # block. Empty by default: a by_dims entry lists the gates where the H200 shows a win (RESULTS, thirty-fifth
    # and thirty-sixth sessions; kda's forward pass loses in key blocks, its state-gradient pass at K 256 x V 512
    # wins 56.9 -> 1.9 ms)
    "h_split_k": (),
    "h_split": (4, 2),
    "BV_h_split": 64,
    "dh_split_k": (),
    "dh_split": (4, 2),
    "BV_dh_split": 64,
    "BV_dh_split_lo_vector": 16,  # the smallest V block fill_sms may give kda's key-block state-gradient pass
    # fp32 inputs under a split form (torch's "highest"): kernel ("wu", "h", "o", ...) -> another split form for its
    # dots (``_kernel_prec``), where one kernel gains from it and another loses (six bf16 products against three
    # tf32: the output, state and W/U kernels faster, the state-gradient pass slower; RESULTS, thirty-fourth
    # session). The launch options stay those of the call's form. Empty: every kernel on the call's form (sm90's fp32
    # table gives W/U, state and output six bf16 products: gated forward kernels 1.830 -> 1.559 ms, thirty-sixth)
    "split_precs": {},
}
# Per input dtype, under an arch table's own "by_dtype" section: fp32 key tiles spill in the solve kernel that forms
# k kᵀ itself (offline sm_90: 10 KB a thread with exact dots), so fp32 keeps chunk_kkt_kernel and the solve apart.
_DTYPE_DEFAULTS = {torch.float32: {"fused_kkt": False}}
OVERRIDES: dict = {}
WY_PAIR_HALF = True  # the WY/pair backward's dN chain and pair dots on half operands, as FLA's (RESULTS: 9th session)
FUSED_KKT = True  # no gate / scalar gate: k kᵀ formed by the WY solve kernel in registers, not by chunk_kkt_kernel
# (H200, 1 warp, tf32 merges: kkt + solve 0.217 -> 0.102 ms at B=8 T=2048 H=16 D=128; RESULTS: tenth session)
# no gate / a scalar gate: the WY/pair backward writes dk in the inputs' dtype where it is final (False: fp32, the op
# casts it; at B=8 T=2048 H=16 D=128 that cast is 0.05 ms of delta_rule's 1.46 ms of fwd+bwd kernels on the H200)
FINAL_DK = True
# the same for a gate per key dim (kda): dq from the intra kernel, dk from the pairs' kernel, each its last writer.
# H200, kda fwd+bwd kernels, bitwise the same: 4.047 -> 3.938 ms at B=8 T=2048 H=16 D=128, 4.540 -> 4.424 at B=2
# T=8192 (`sweep_delta.py --families kda --variants "shipped,final dqk vector"`; RESULTS, sixteenth session)
FINAL_DQK_VECTOR = True
FUSED_A = True  # kda: k kᵀ and q kᵀ by one kernel in the forward (False: the GLA line's A kernel twice)
WU_SPLIT = True  # W, U by full-chunk dots after a solve-only kernel (False: the solve kernel forms them by blocks)
KG = True  # kda: the state pass reads keys decayed once by the W/U kernel (False: decays them per V block)
ROW_LOADS = True  # without FUSED_KKT (kda): the substitution loads each row of N (False: picks it out of the tile)
SOLVE_MERGE_TF32 = True  # the solve's merge dots at the inputs' precision (tf32 for half inputs, as FLA's; False: ieee)
# with FUSED_KKT, how the solve inverts its diagonal [16, 16] blocks: "powers", (I - N)(I + N^2)(I + N^4)(I + N^8),
# six dots four deep at the merges' precision (tf32 for half inputs), or "steps", row by row (15 serial steps a
# block, two reductions each). H200 A/B (RESULTS, thirteenth session): gated forward kernels 0.557 -> 0.422 ms at
# (8, 2048, 32, 64), 0.448 -> 0.411 at (8, 2048, 16, 128); the same distance from fp64 at beta in (0, 2)
SOLVE_DIAG = "powers"
# the same for the solve that reads A from memory (kda's gated pairs) with half inputs. H200 A/B (RESULTS, fourteenth
# session): kda forward kernels 0.996 -> 0.866 ms at (8, 2048, 32, 64), 0.840 -> 0.763 at (8, 2048, 16, 128); the
# same distance from fp64 at beta in (0, 2). fp32 inputs keep the row steps
SOLVE_DIAG_A = "powers"
# launch forms of the state-gradient pass that Triton 3.6 miscompiles under three tf32 products (8 warps, 1 stage:
# rel err 1.05 against fp64 on the H200, no error raised; RESULTS, eleventh session): ``launch.fitted`` runs them on
# 4 warps, whether a table asks for them or fp32 tiles lower the stages to them
_DH_WRONG_FORMS = ((8, 1),)
# and in bf16 / fp16 on 4 warps, 1 stage (delta_rule: dk off by 0.75 and an illegal address at K = 128 with
# ``DELTA_TEST_KNOBS='{"dh": [4, 1]}'``, fourteenth session; no table asks for it): run on 2 warps
_DH_WRONG_FORMS_HALF = ((4, 1),)
# and there on 8 warps, 1 stage at V blocks of 32 or less (gated_delta_rule, bf16, K = 256, V = 512, the option
# sweep's "dh BV=32 w8 s1": an illegal memory access on the H200, thirty-fourth session; at V blocks of 64 that form
# ran right, thirty-third): 2 warps too, whether a table asks for it or kda's shared memory lowers the stages to it
_DH_WRONG_FORMS_HALF_NARROW = ((4, 1), (8, 1))


def _dh_wrong_forms(dtype: torch.dtype, prec: str, BV: int) -> tuple:
    """The forms ``launch.fitted`` must not run the state-gradient pass on, for these inputs, dots and V block."""
    if prec in launch.SPLIT_PRECS:
        return _DH_WRONG_FORMS
    if dtype in HALF:
        return _DH_WRONG_FORMS_HALF_NARROW if BV <= 32 else _DH_WRONG_FORMS_HALF
    return ()


FUSED_L2NORM = True  # use_qk_l2norm by triton_l2norm's two kernels (False: the torch ops); A/B in RESULTS (seventh+eighth sessions)
# fp32 at torch's "highest" by three tf32 products (``launch.FP32_HIGHEST``) with a gate per key dim (kda): on since
# the H200 ran its state passes that way at full V blocks against fp64 (test_gpu_fp32_three_tf32_wide_grid[kda],
# B=4 H=16 K=V=128, 2026-12-01), as no gate and a scalar gate were before. False: exact "ieee" dots.
FP32_SPLIT_VECTOR_GATE = True


@functools.cache
def _arch_table(arch: str) -> dict:
    from ..common.autotune import table

    given = table(arch).get("delta", {})
    return {
        **_DEFAULTS,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if not k.startswith("_")},
    }


@functools.cache
def _arch(device_type: str, index) -> str:
    if device_type != "cuda":  # the interpreter on CPU tensors
        return "default"
    from ..common.autotune import arch_of

    return arch_of(torch.device(device_type, index))


@functools.cache
def _device_table(device: torch.device, key: tuple | None = None) -> dict:
    """The launch options of ``device``'s arch, found once per device and launch key (a launch asks for them ~1 us
    faster). ``key`` (K, V, input dtype[, the dots' precision]) adds, in this order, the dtype's
    :data:`_DTYPE_DEFAULTS`, the arch table's ``by_dims`` section for K, V and its ``by_dtype`` section for the dtype
    (their ``"delta"`` parts, then the dtype's ``"delta_<precision>"``: fp32's tiles under three tf32 products are
    not those of one), where measured."""
    arch = _arch(device.type, device.index)
    opts = _arch_table(arch)
    if key is not None:
        from ..common.autotune import by_dims, by_dtype

        K, V, dtype, *prec = key
        dtype_opts = by_dtype(arch, dtype)
        extra = {
            **by_dims(arch, K, V).get("delta", {}),
            **dtype_opts.get("delta", {}),
            **(dtype_opts.get(f"delta_{prec[0]}", {}) if prec else {}),
        }
        opts = {
            **opts,
            **_DTYPE_DEFAULTS.get(dtype, {}),
            **{k: tuple(v) if isinstance(v, list) else v for k, v in extra.items() if k != "_comment"},
        }
    return opts


def _solve_diag(kkt: bool, dtype) -> str:
    """The solve kernel's DIAG: ``SOLVE_DIAG`` with k kᵀ in the kernel (half inputs only, ``_DTYPE_DEFAULTS``),
    ``SOLVE_DIAG_A`` when it reads A with half inputs, the row steps for fp32. A switch set to anything else is an
    error here, not the row steps by the kernel's fall-through."""
    diag = SOLVE_DIAG if kkt else SOLVE_DIAG_A if dtype != torch.float32 else "steps"
    if diag not in ("powers", "steps"):
        raise ValueError(f"SOLVE_DIAG / SOLVE_DIAG_A: expected 'powers' or 'steps', got {diag!r}")
    return diag


def _knob(name: str, device, key: tuple | None = None):
    if OVERRIDES and name in OVERRIDES:
        return OVERRIDES[name]
    return _device_table(device, key)[name]


def _dense(x, dtype):
    """``x`` in ``dtype``, contiguous: itself when it already is (a no-op ``to`` still costs ~2 us of host)."""
    return x.contiguous() if x.dtype == dtype else x.to(dtype).contiguous()


def _state_bv(name: str, programs: int, V: int, device, key: tuple | None = None, lo: int = 16) -> int:
    """V block of a sequential state pass (``BV_h``, ``BV_dh``); with ``fill_sms`` (on in sm90.json: 2-3% at
    B=2 T=8192) halved down to ``lo`` while the grid still fits the SMs (``launch.fill_sms``)."""
    BV = launch.head_block(V, _knob(name, device, key))
    if _knob("fill_sms", device, key):
        BV = launch.fill_sms(device, programs, V, BV, lo=lo)[1]
    return BV


def _state_opts(kernel: str, BV: int, V: int, gid: int, device, key: tuple | None = None) -> dict:
    """Launch options of a sequential state pass (``h``, ``dh``, their key-block forms ``h_split``, ``dh_split``)
    whose V block is ``BV`` (the table's is ``BV_<kernel>``). The names, from the least specific: ``<kernel>``;
    ``<kernel>_vector`` for a gate per key (kda); where ``fill_sms`` halved the table's block (few programs, each a
    narrow block: they pipeline deeper on fewer warps) ``<kernel>_fill``, then ``<kernel>_fill_vector`` for a gate
    per key. The most specific name that is overridden (sweep_delta) wins, then the most specific the table sets
    (a None default sets nothing)."""
    names = [kernel] + ([f"{kernel}_vector"] if gid == GATE_VECTOR_ID else [])
    if BV < launch.head_block(V, _knob(f"BV_{kernel}", device, key)):
        names += [f"{kernel}_fill"] + ([f"{kernel}_fill_vector"] if gid == GATE_VECTOR_ID else [])
    table = _device_table(device, key)
    over = [n for n in names if n in OVERRIDES]
    return _opts(over[-1] if over else [n for n in names if table.get(n) is not None][-1], device, key)


def _key_blocks(kernel: str, K: int, gid: int, device, key: tuple) -> bool:
    """Whether state pass ``kernel`` ("h", "dh") holds its state in key blocks of 64 (its ``*_split_kernel``): K in
    65..256 (two to four blocks) and the call's gate kind listed in the table's ``<kernel>_split_k`` (a scalar
    gate in any of its forms is "scalar"). An entry that names no gate kind is an error here, not a silent whole K."""
    listed = _knob(f"{kernel}_split_k", device, key)
    if not isinstance(listed, (list, tuple)) or not set(listed) <= set(GATE_IDS):
        raise ValueError(
            f"delta launch option {kernel}_split_k = {listed!r}: expected a list of gate kinds among {tuple(GATE_IDS)}"
        )
    kind = GATE_NONE if gid == GATE_NONE_ID else GATE_VECTOR if gid == GATE_VECTOR_ID else GATE_SCALAR
    return 64 < K <= 256 and kind in listed


def _dh_bv(programs: int, V: int, split: bool, gid: int, prec: str, device, key: tuple) -> int:
    """V block of the state-gradient pass over ``programs`` sequences x heads: ``BV_dh`` (the key-block pass's
    ``BV_dh_split``) as ``fill_sms`` halves it, down to 16 (32 under fp32 split forms: below); kda's key-block pass
    no further than ``BV_dh_split_lo_vector`` (sm90 K 256 x V 512: its blocks of 32 take 2.9x the time of 64 at
    B=1 T=8192 H=8, 4.88 -> 1.88 ms, and at B=8, 5.53 -> 1.94; thirty-sixth session)."""
    # fp32 by three tf32 products at K = 128: a V block of 16 reads shared memory out of bounds on the H200 (Triton
    # 3.6, compute-sanitizer: "Invalid __shared__ read" in this kernel's first dot; illegal memory access in
    # delta_rule's fp32 tests, 2026-12-01); blocks of 32 and 64 are clean there and as fast
    lo = 32 if prec in launch.SPLIT_PRECS else 16
    if split and gid == GATE_VECTOR_ID:
        lo = max(lo, _knob("BV_dh_split_lo_vector", device, key))
    return _state_bv("BV_dh_split" if split else "BV_dh", programs, V, device, key, lo=lo)


_SPLIT_PREC_KERNELS = ("wu", "h", "o")  # the forward's kernels that take a ``split_precs`` entry


def _kernel_prec(kernel: str, prec: str, device, key: tuple) -> str:
    """The dots' precision of ``kernel`` in a call at ``prec``: the table's ``split_precs`` entry for it where
    ``prec`` is a split form (fp32 inputs), else ``prec``. An entry that is not a split form is an error here,
    not a silent exact or one-tf32 product."""
    if prec not in launch.SPLIT_PRECS:
        return prec
    table = _knob("split_precs", device, key)
    if not set(table) <= set(_SPLIT_PREC_KERNELS):
        raise ValueError(
            f"delta launch option split_precs names {sorted(set(table) - set(_SPLIT_PREC_KERNELS))}: expected "
            f"kernels among {_SPLIT_PREC_KERNELS}"
        )
    chosen = table.get(kernel, prec)
    if chosen not in launch.SPLIT_PRECS:
        raise ValueError(
            f"delta launch option split_precs[{kernel!r}] = {chosen!r}: expected one of {launch.SPLIT_PRECS}"
        )
    return chosen


def _opts(kernel: str, device, key: tuple | None = None) -> dict:
    """Launch options of ``kernel``: its table entry [num_warps, num_stages] or [num_warps, num_stages, maxnreg]
    (a register cap per thread, for two programs a multiprocessor where the uncapped kernel fits one)."""
    warps, stages, *cap = _knob(kernel, device, key)
    return {"num_warps": warps, "num_stages": stages, **({"maxnreg": cap[0]} if cap else {})}


def forward_parts(
    q, k, v, beta, gate, gate_kind, scale, h0, cu_seqlens, BT=64, X=None, need_o=True, X_buf=None, Aqk=None,
    Aqk_buf=None,
):  # fmt: skip
    """The staged chunked forward (see :mod:`fla_compile.lowering.delta.triton_wy`).

    q, k [B, T, HK, K] (cast to v's dtype here), v [B, T, H, V], beta [B, T, H], gate in log space, h0 fp32
    [N, H, K, V] or None. ``X`` [B, T, H, BT] in v's dtype: a previous call's inverse, read back instead of solved.
    Returns (o, ht fp32 [N, H, K, V], parts) with parts: gc (fp32 in-chunk gate cumsum or None), X (the
    inverses), w, u, vn (v_new) [B, T, H, *] and h [NS, H, K, V] (states entering each chunk slot) in v's dtype,
    Aqk (vector gate: the gated causal q kᵀ, [B, T, H, BT] in v's dtype) and the chunk metadata.
    """
    dt = v.dtype
    q, k = _dense(q, dt), _dense(k, dt)
    v, beta = v.contiguous(), beta.contiguous()
    B, T, HK, K = q.shape
    H, V = v.shape[2], v.shape[3]
    G = H // HK
    gid = GATE_IDS[gate_kind]
    dev = q.device
    cu, info, chunk_off, NS, N = chunk_meta(B, T, cu_seqlens, BT, dev)
    prec = launch.prec(dt, K, V, split=gid != GATE_VECTOR_ID or FP32_SPLIT_VECTOR_GATE)
    key = (K, V, dt, prec)  # the launch options' key: the arch table's by_dims and by_dtype sections
    BK = launch.head_block(K)
    f32 = dict(device=dev, dtype=torch.float32)
    gc = None
    if gid:
        gc = torch.empty(gate.shape, **f32)
        BKg = min(64, BK) if gid == GATE_VECTOR_ID else 16
        grid = (NS, 1 if gid == GATE_SCALAR_ID else launch.cdiv(K, BKg), H)
        launch.fitted(
            gla_kern.chunk_cumsum_kernel, grid,
            gate.contiguous(), gc, info, H, K, BT, BKg, gid, **_opts("cumsum", dev, key),
        )  # fmt: skip
    gcp = gc if gc is not None else beta  # a placeholder pointer: never read without a gate
    merge_prec = prec if SOLVE_MERGE_TF32 else "ieee"  # the solve's merge dots
    if X is None:
        # k kᵀ formed in the solve kernel (no A) where the table says so for this dtype (not fp32: _DTYPE_DEFAULTS)
        kkt = FUSED_KKT and gid != GATE_VECTOR_ID and _knob("fused_kkt", dev, key)
        X = torch.empty(B, T, H, BT, device=dev, dtype=dt) if X_buf is None else X_buf
        A = X if kkt else torch.empty(B, T, H, BT, **f32)  # with kkt a placeholder pointer, never read
        if gid == GATE_VECTOR_ID and FUSED_A and Aqk is None:  # k kᵀ and q kᵀ in one pass
            NC = BT // 16
            Aqk = torch.empty(B, T, H, BT, device=dev, dtype=dt) if Aqk_buf is None else Aqk_buf
            launch.fitted(  # the whole K in one block (K <= MAX_HEAD_DIM)
                kw.chunk_kda_A_rows_kernel, (NS, NC, H),
                q, k, gc, A, Aqk, info, H, G, K, BT, 16, BK, NC, prec, **_opts("A_row_block", dev, key),
            )  # fmt: skip
        elif gid == GATE_VECTOR_ID:
            NC = BT // 16
            BKa = min(64, BK)
            launch.fitted(
                gla_intra.chunk_gla_A_kernel, (NS, NC * NC, H),
                k, k, gc, A, info, H, G, K, BT, 16, BKa, NC, prec, BT, **_opts("A", dev, key),
            )  # fmt: skip
        elif not kkt:
            launch.fitted(
                kw.chunk_kkt_kernel, (NS, H),
                k, gcp, A, info, H, G, K, BT, min(64, BK), gid, prec, **_opts("kkt", dev, key),
            )  # fmt: skip
        load_x = False
    else:
        A, load_x, kkt = X, True, False
    w = torch.empty(B, T, H, K, device=dev, dtype=dt)
    u = torch.empty(B, T, H, V, device=dev, dtype=dt)
    use_kg = KG and WU_SPLIT and gid == GATE_VECTOR_ID
    kg = torch.empty(B, T, H, K, device=dev, dtype=dt) if use_kg else None
    if WU_SPLIT:
        if not load_x:
            launch.fitted(
                kw.chunk_wy_kernel, (NS, H),
                k, v, beta, gcp, A, X, w, u, info, H, G, K, V, BT, 16, 16, gid, False, prec, True, ROW_LOADS, kkt,
                min(64, BK), merge_prec, DIAG=_solve_diag(kkt, dt),
                **_opts("kkt_solve" if kkt else "solve", dev, key),
            )  # fmt: skip
        launch.fitted(
            kw.chunk_wu_kernel, (NS, H),
            k, v, beta, gcp, X, w, u, info, H, G, K, V, BT, min(64, BK), launch.head_block(V, 64), gid,
            _kernel_prec("wu", prec, dev, key), kg if use_kg else w, use_kg, **_opts("wu", dev, key),
        )  # fmt: skip
    else:
        launch.fitted(
            kw.chunk_wy_kernel, (NS, H),
            k, v, beta, gcp, A, X, w, u, info, H, G, K, V, BT, min(64, BK), launch.head_block(V, 64), gid, load_x,
            prec, False, ROW_LOADS, kkt, min(64, BK), merge_prec, **_opts("wy", dev, key),
        )  # fmt: skip
    h = torch.empty(NS, H, K, V, device=dev, dtype=dt)
    vn = torch.empty(B, T, H, V, device=dev, dtype=dt)
    ht = torch.empty(N, H, K, V, **f32)
    split = _key_blocks("h", K, gid, dev, key) and (gid != GATE_VECTOR_ID or use_kg)  # kda: its decayed keys only
    BV = _state_bv("BV_h_split" if split else "BV_h", N * H, V, dev, key)
    full = full_chunks(T, cu_seqlens, BT)  # unmasked over full chunks
    launch.fitted(
        kw.chunk_delta_h_split_kernel if split else kw.chunk_delta_h_kernel, (N * H * launch.cdiv(V, BV),),
        k, w, u, gcp, h, vn, h0 if h0 is not None else ht, ht, cu, chunk_off, H, G, K, V, BT, 64 if split else BK, BV,
        gid, h0 is not None, _kernel_prec("h", prec, dev, key), kg if use_kg else w, use_kg, FULL_CHUNKS=full,
        **_state_opts("h_split" if split else "h", BV, V, gid, dev, key),
    )  # fmt: skip
    if gid == GATE_VECTOR_ID and Aqk is None:  # the output's and the backward's gated q k^T (given: a forward's, kept)
        NC = BT // 16
        Aqk = torch.empty(B, T, H, BT, device=dev, dtype=dt) if Aqk_buf is None else Aqk_buf
        launch.fitted(
            gla_intra.chunk_gla_A_kernel, (NS, NC * NC, H),
            q, k, gc, Aqk, info, H, G, K, BT, 16, min(64, BK), NC, prec, BT, **_opts("A", dev, key),
        )  # fmt: skip
    o = None
    if need_o:
        o = torch.empty(B, T, H, V, device=dev, dtype=dt)
        BV = launch.head_block(V, _knob("BV_o", dev, key))
        grid, order = chunk_grid(NS, launch.cdiv(V, BV), H, _knob("heads_inner", dev, key))
        launch.fitted(
            gla_kern.chunk_fwd_o_kernel, grid,
            q, k, vn, gcp, h, Aqk if Aqk is not None else h, o, info, scale, H, G, K, V, BT, min(64, BK), BV, gid,
            _kernel_prec("o", prec, dev, key), BT, **order, **_opts("o", dev, key),
        )  # fmt: skip
    meta = dict(cu=cu, info=info, chunk_off=chunk_off, NS=NS, N=N, BT=BT)
    return o, ht, dict(gc=gc, X=X, w=w, u=u, vn=vn, h=h, Aqk=Aqk, meta=meta)


def backward_parts(
    q, k, v, beta, gate, gate_kind, scale, h0, do, dht, cu_seqlens, BT=64, X=None, Aqk=None, final_dq=False
):
    """The staged chunked backward (see :mod:`fla_compile.lowering.delta.triton_wy_bwd`): recomputes the forward's
    parts, then (dq, dk per head of v, dv, dbeta, dgate or None, dh0 or None), fp32 but dv, which comes in v's
    dtype (its one writer is the last word on it), and dq and dk in their inputs' with ``final_dq`` (the caller
    adds nothing to them: no GQA sum, no l2norm) and no per-key gate (whose intra pass adds to them; dk:
    ``FINAL_DK``): no cast kernels after."""
    dt = v.dtype
    _, _, P = forward_parts(q, k, v, beta, gate, gate_kind, scale, h0, cu_seqlens, BT=BT, X=X, need_o=False, Aqk=Aqk)
    q, k = _dense(q, dt), _dense(k, dt)
    v, beta = v.contiguous(), beta.contiguous()
    do = _dense(do, dt)
    dht = None if dht is None else dht.float().contiguous()
    B, T, HK, K = q.shape
    H, V = v.shape[2], v.shape[3]
    G = H // HK
    gid = GATE_IDS[gate_kind]
    m = P["meta"]
    cu, info, chunk_off, NS, N = m["cu"], m["info"], m["chunk_off"], m["NS"], m["N"]
    dev = q.device
    f32 = dict(device=dev, dtype=torch.float32)
    prec = launch.prec(dt, K, V, split=gid != GATE_VECTOR_ID or FP32_SPLIT_VECTOR_GATE)
    key = (K, V, dt, prec)  # the launch options' key: the arch table's by_dims and by_dtype sections
    BK = launch.head_block(K)
    gc, X, w, vn, h, Aqk = P["gc"], P["X"], P["w"], P["vn"], P["h"], P["Aqk"]
    gcp = gc if gc is not None else beta  # a placeholder pointer: never read without a gate
    # 1. dv_local = M^T do, in v's dtype (as FLA): a quarter less of the state-gradient pass's traffic, one more
    # rounding of dv_new (H200, B=8 T=2048 H=16 D=128 bf16: dv_local + dh kernels 0.382 -> 0.354 ms delta_rule,
    # 0.415 -> 0.374 gated, 0.457 -> 0.438 kda)
    dvl = torch.empty(B, T, H, V, device=dev, dtype=dt)
    BV = launch.head_block(V, 64)
    grid, order = chunk_grid(NS, launch.cdiv(V, BV), H, _knob("heads_inner", dev, key))
    launch.fitted(
        gla_kern.chunk_bwd_dv_kernel, grid,
        q, k, gcp, Aqk if Aqk is not None else dvl, do, dvl, dvl, info, scale, H, G, K, V, BT, min(64, BK), BV,
        gid, prec, BT, False, **order, **_opts("dv_local", dev, key),
    )  # fmt: skip
    # 2. the state gradient, backwards over the chunks, and dv_new
    dh = torch.empty(NS, H, K, V, device=dev, dtype=dt)
    dvn = torch.empty(B, T, H, V, device=dev, dtype=dt)
    dh0 = torch.empty(N, H, K, V, **f32) if h0 is not None else None
    split = _key_blocks("dh", K, gid, dev, key)
    BV = _dh_bv(N * H, V, split, gid, prec, dev, key)
    launch.fitted(
        kwb.chunk_delta_dh_split_kernel if split else kwb.chunk_delta_dh_kernel, (N * H * launch.cdiv(V, BV),),
        q, k, w, gcp, dvl, do, dh, dvn, dht if dht is not None else dvl, dh0 if dh0 is not None else dvl, cu,
        chunk_off, scale, H, G, K, V, BT, 64 if split else BK, BV, gid, dht is not None, dh0 is not None, prec,
        **_state_opts("dh_split" if split else "dh", BV, V, gid, dev, key),
        avoid=_dh_wrong_forms(dt, prec, BV),
    )  # fmt: skip
    # 3. dq, dk and the gate gradient through the output and the state update (the GLA line's kernels, v_new for v)
    dq = torch.empty(B, T, H, K, device=dev, dtype=dt if final_dq and gid != GATE_VECTOR_ID else torch.float32)
    dk = torch.empty(B, T, H, K, **f32)
    dA = torch.empty(B, T, H, BT, **f32) if gid == GATE_VECTOR_ID else dk
    BKq, BVq = min(64, BK), launch.head_block(V, 64)
    dg = (
        torch.empty(B, T, H, K if gid == GATE_VECTOR_ID else launch.cdiv(K, BKq), **f32) if gid else None
    )  # scalar: per K block
    fused = gid != GATE_VECTOR_ID  # steps 4 and 5 by one kernel, reading dW = -dv_new Sᵀ from the dqk kernel
    dw = torch.empty(B, T, H, K, device=dev, dtype=dt) if fused else None
    grid, order = chunk_grid(NS, launch.cdiv(K, BKq), H, _knob("heads_inner", dev, key))
    launch.fitted(
        gla_kern.chunk_bwd_dqk_kernel, grid,
        q, k, vn, gcp, h, do, dh, dA, dg if dg is not None else dq, dq, dk, info, scale, H, G, K, V, BT, BKq,
        BVq, gid, prec, **(dict(dvn=dvn, dw=dw, DW=True) if fused else {}), **order, **_opts("dqk", dev, key),
    )  # fmt: skip
    NC = BT // 16
    BKi = min(64, BK)
    # dq and dk straight in the inputs' (half) dtypes by their last writers where nothing adds to them after (no GQA
    # sum, no l2norm backward): the same rounding as the op's casts after, without those passes over fp32 copies.
    # No gate / a scalar gate: dk by the WY/pair kernel (``FINAL_DK``); a gate per key dim (``FINAL_DQK_VECTOR``): dq
    # by the intra kernel, dk by the pairs' kernel
    final_half = final_dq and torch.float32 not in (q.dtype, k.dtype)
    final_vec = FINAL_DQK_VECTOR and gid == GATE_VECTOR_ID and final_half
    if gid == GATE_VECTOR_ID:
        db1 = torch.empty(B, T, H, K, **f32)
        dq_in = torch.empty(B, T, H, K, device=dev, dtype=q.dtype) if final_vec else None
        launch.fitted(
            gla_intra.chunk_gla_bwd_intra_kernel, (NS, NC * launch.cdiv(K, BKi), H),
            q, k, gc, dA, dq, dk, db1, info, scale, H, G, K, BT, 16, BKi, NC, prec,
            **(dict(dqo=dq_in, DQO=True) if final_vec else {}), **_opts("intra", dev, key),
        )  # fmt: skip
        dq = dq if dq_in is None else dq_in
        launch.fitted(
            gla_intra.chunk_rc_add_kernel, (NS, launch.cdiv(K, BKi), H),
            db1, dg, info, H, K, BT, BKi, **_opts("rc", dev, key),
        )  # fmt: skip
    # 4. through W = X (b e^G k) and U = X (b v)
    dv = torch.empty(B, T, H, V, device=dev, dtype=dt)
    dbeta = torch.empty(B, T, H, **f32)
    dG = torch.empty(gate.shape, **f32) if gid else dbeta
    dN = torch.empty(B, T, H, BT, **f32)
    BV = launch.head_block(V, 64)
    if fused:  # 4 and 5 in one kernel: dN stays in it (the dN buffer carries Q for its transposed load)
        dk_in = torch.empty(B, T, H, K, device=dev, dtype=k.dtype) if FINAL_DK and final_half else None
        launch.fitted(
            kwb.chunk_wy_pair_bwd_kernel, (NS, H),
            k, v, beta, gcp, X, dw, dvn, dv, dk, dbeta, dG, dN, info, H, G, K, V, BT, min(64, BK), BV, gid, prec,
            WY_PAIR_HALF, **(dict(dko=dk_in, DKO=True) if dk_in is not None else {}), **_opts("wy_pair", dev, key),
        )  # fmt: skip
        dk = dk if dk_in is None else dk_in
        if gid == GATE_SCALAR_ID:
            dg = scalar_dg_per_step(dg)
            launch.fitted(
                gla_intra.chunk_rc_add_kernel, (NS, 1, H), dG, dg, info, H, 1, BT, 16, **_opts("rc", dev, key)
            )
    else:  # a gate per key dim: 4, then 5, the pairs of A = k kᵀ (gated), by 16-row blocks
        launch.fitted(
            kwb.chunk_wy_bwd_kernel, (NS, H),
            k, v, beta, gcp, X, h, dvn, dv, dk, dbeta, dG, dN, info, H, G, K, V, BT, BK, BV, gid, prec,
            **_opts("wy_bwd", dev, key),
        )  # fmt: skip
        dk_in = torch.empty(B, T, H, K, device=dev, dtype=k.dtype) if final_vec else None
        launch.fitted(
            kwb.chunk_kk_pair_bwd_vec_kernel, (NS, NC, H),
            k, beta, gc, dN, dk, dbeta, dG, info, H, G, K, BT, 16, BK, NC, prec,
            **(dict(dko=dk_in, DKO=True) if final_vec else {}), **_opts("pair_vec", dev, key),
        )  # fmt: skip
        dk = dk if dk_in is None else dk_in
        launch.fitted(
            gla_intra.chunk_rc_add_kernel, (NS, launch.cdiv(K, BKi), H),
            dG, dg, info, H, K, BT, BKi, **_opts("rc", dev, key),
        )  # fmt: skip
    return dq, dk, dv, dbeta, dg, dh0


def _key(name, q, v, gate_kind):
    return (name, gate_kind, q.shape[-1], v.shape[-1], q.dtype, v.dtype, q.device)


# The ops keep the forward's WY inverses X for the backward: [B, T, H, X_SLOTS] in v's dtype, a layout fixed
# before any chunk size is known (fake impls give it). A forward at BT = X_SLOTS writes X there and tags the
# tensor with BT (a Python attribute that lives as long as the tensor object, through autograd's saved tensors);
# the backward reads it when so tagged, and recomputes X otherwise (the fused recurrent forward, another BT).
# A copy of X has no tag (a compiler's layout change, activation offloading): the op's backward (``X_from_op``)
# also reads an untagged X where the forward, called with the same inputs, wrote it (``op_wrote_X``).
X_SLOTS = 64
_X_TAG = "_fla_compile_X_BT"


def _saved_shape(v, vector_gate: bool) -> tuple:
    """[B, T, H, X_SLOTS]; with a gate per key dim (kda) [2, B, T, H, X_SLOTS]: X, then the gated q kᵀ."""
    B, T, H = v.shape[:3]
    return ((2,) if vector_gate else ()) + (B, T, H, X_SLOTS)


def saved_X_like(v, vector_gate: bool = False):
    return v.new_empty(_saved_shape(v, vector_gate))


def _X_slot(X, v, vector_gate: bool) -> bool:
    return (
        X is not None
        and tuple(X.shape) == _saved_shape(v, vector_gate)
        and X.dtype == v.dtype
        and X.device == v.device
        and X.is_contiguous()
    )


def op_wrote_X(q, v, cu_seqlens, gate_kind, X) -> bool:
    """Whether the op's forward on these inputs (the chunk path at BT = X_SLOTS, not the decode kernel) wrote
    its X into ``X`` (the op's own saved output, or a copy of it): the same decision as ``delta_line`` and
    ``chunk_forward`` make, from the same inputs."""
    decode = cu_seqlens is None and q.shape[1] <= DECODE_MAX_T
    return not decode and _X_slot(X, v, gate_kind == "vector")


def no_X(X_out):
    """No X is kept: the op's output is zeros (deterministic), untagged."""
    if X_out is not None and X_out.numel():
        if hasattr(X_out, _X_TAG):
            delattr(X_out, _X_TAG)
        X_out.zero_()


def chunk_forward(
    q, k, v, beta, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, use_qk_l2norm=False, chunk_size=None,
    X_out=None,
):  # fmt: skip
    """Chunked forward: (o [B,T,H,V] in v's dtype, final state fp32 [N,H,K,V]); keeps X in ``X_out`` (see above)."""
    BT = chunk_size or 64
    vec = gate_kind == "vector"
    keep = BT == X_SLOTS and _X_slot(X_out, v, vec)
    if not keep:
        no_X(X_out)
    elif hasattr(X_out, _X_TAG):
        delattr(X_out, _X_TAG)
    q, k, v, beta, gate, _ = _prepare(q, k, v, beta, gate, use_qk_l2norm)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht, _ = forward_parts(
        q, k, v, beta, gate, gate_kind, scale, h0, cu_seqlens, BT=BT,
        X_buf=(X_out[0] if vec else X_out) if keep else None, Aqk_buf=X_out[1] if keep and vec else None,
    )  # fmt: skip
    if keep:
        setattr(X_out, _X_TAG, BT)
    return o, ht


def fused_recurrent(
    q, k, v, beta, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, use_qk_l2norm=False, final_state=None
):
    """Step-by-step forward for decoding (small T). ``final_state`` may be ``initial_state`` (updated in place)."""
    B, T, HK, K = q.shape
    H, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    if cu_seqlens is None:  # cached per shape: a decoding step launches no arange and multiply for it
        cu = dense_cu(B, T, q.device)
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    g = gate.contiguous() if gate is not None else beta
    o = torch.empty(B, T, H, V, device=q.device, dtype=v.dtype)
    ht = final_state if final_state is not None else torch.empty(N, H, K, V, device=q.device, dtype=torch.float32)
    h0 = initial_state.contiguous() if initial_state is not None else ht
    BV = launch.head_block(V, _knob("BV_decode", q.device))
    kd.fused_recurrent_kernel[(N, H, launch.cdiv(V, BV))](
        q, k, v, beta, g, h0, o, ht, cu, scale, H=H, HK=HK, K=K, V=V, BK=launch.head_block(K), BV=BV,
        GATE=GATE_IDS[gate_kind], HAS_H0=initial_state is not None, L2NORM=use_qk_l2norm,
        **_opts("decode", q.device),
    )  # fmt: skip
    return o, ht


def chunk_backward(
    q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, do, dht, use_qk_l2norm=False, chunk_size=None,
    X=None, X_from_op=False,
):  # fmt: skip
    """Gradients (dq, dk, dv, dbeta, dgate or None, dh0 or None): fp32, dv and (see ``backward_parts``) dq in the
    inputs' dtype; the op casts what is not. ``X``: the forward's inverses (``chunk_forward(X_out=...)``), used
    when tagged with this call's chunk size, or with ``X_from_op`` (the op's saved X, perhaps copied) where the
    op's forward wrote it (``op_wrote_X``); else recomputed."""
    BT = chunk_size or 64
    vec = gate_kind == "vector"
    Aqk = None
    if X is not None:
        tagged = getattr(X, _X_TAG, None) == BT and _X_slot(X, v, vec)
        if not (tagged or (X_from_op and BT == X_SLOTS and op_wrote_X(q, v, cu_seqlens, gate_kind, X))):
            X = None
    if X is not None and vec:
        X, Aqk = X[0], X[1]
    q, k, v, beta, gate, norms = _prepare(q, k, v, beta, gate, use_qk_l2norm)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    B, T, HK, K = q.shape
    H = v.shape[2]
    final_dq = H == HK and not use_qk_l2norm
    dq, dk, dv, db, dg, dh0 = backward_parts(
        q, k, v, beta, gate, gate_kind, scale, h0, do, dht, cu_seqlens, BT, X, Aqk, final_dq
    )
    if H > HK:  # GQA: sum the heads of each group, in a fixed order
        dq = dq.view(B, T, HK, H // HK, K).sum(3)
        dk = dk.view(B, T, HK, H // HK, K).sum(3)
    if use_qk_l2norm and FUSED_L2NORM:
        dq, dk = _l2norm_qk_bwd(*norms, dq, dk)
    elif use_qk_l2norm:
        qn, rq, kn, rk = norms
        dq, dk = _l2norm_bwd(qn, rq, dq), _l2norm_bwd(kn, rk, dk)
    return dq, dk, dv, db, dg, dh0
