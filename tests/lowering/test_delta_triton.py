"""The delta-line Triton kernels: interpreter checks on CPU at tiny sizes, and GPU checks marked ``gpu``.

TRITON_INTERPRET must be set before triton is imported, so the interpreter checks run in one
child process (this file run as a script) and report per case; the parent only reads the
report, leaving the other test files' triton untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests import child_runs
from tests.compare import rel

FAMILY_GATE = {"delta_rule": "none", "gated_delta_rule": "scalar", "kda": "vector"}


def make(family, B=2, T=37, HK=1, H=2, K=20, V=40, dtype=torch.float32, gate_scale=2.0, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, HK, K, generator=gen)
    k = F.normalize(torch.randn(B, T, HK, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.rand(B, T, H, generator=gen)
    g = {
        "none": None,
        "scalar": -torch.rand(B, T, H, generator=gen) * gate_scale,
        "vector": -torch.rand(B, T, H, K, generator=gen) * gate_scale,
    }[FAMILY_GATE[family]]
    h0 = torch.randn(B, H, K, V, generator=gen)
    xs = [q, k, v, beta, g, h0]
    return [None if x is None else x.to(device=device, dtype=dtype if x is not h0 else torch.float32) for x in xs]


def _pack(cu_lens, q, k, v, beta, g, h0):
    """The inputs as one batch of packed sequences of ``cu_lens`` tokens, an initial state per sequence, and their
    cu_seqlens: (q, k, v, beta, g, h0, cu); unchanged (cu None) without ``cu_lens``."""
    if cu_lens is None:
        return q, k, v, beta, g, h0, None
    n = sum(cu_lens)
    q, k, v, beta = (x.flatten(0, 1)[None, :n] for x in (q, k, v, beta))
    g = None if g is None else g.flatten(0, 1)[None, :n]
    h0 = torch.randn(len(cu_lens), *h0.shape[1:])
    return q, k, v, beta, g, h0, torch.tensor([0, *torch.tensor(cu_lens).cumsum(0).tolist()])


def torch_grads(family, q, k, v, beta, g, h0, do, dht, scale, cu=None, l2=False):
    """fp64 reference outputs and gradients through the torch chunked path (checked against the loops)."""
    from fla_compile.lowering.delta.torch_path import delta_line_forward

    xs = [None if x is None else x.double().requires_grad_() for x in (q, k, v, beta, g, h0)]
    o, ht = delta_line_forward(xs[0], xs[1], xs[2], xs[3], xs[4], FAMILY_GATE[family], scale, xs[5], cu, l2)
    grads = torch.autograd.grad((o, ht), [x for x in xs if x is not None], (do.double(), dht.double()))
    it = iter(grads)
    names = ["dq", "dk", "dv", "db", "dg", "dh0"]
    return o, ht, {n: next(it) if x is not None else None for n, x in zip(names, xs)}


# ---------------------------------------------------------------- interpreter checks (child process)


@contextlib.contextmanager
def _launches(with_args=False):
    """Every ``launch.fitted`` call of the delta launchers inside the block, as (kernel name, keyword arguments), in
    the list the block gets; ``with_args``: (kernel name, keyword arguments, positional arguments)."""
    from fla_compile.lowering.delta import triton_launch as DT

    seen, real = [], DT.launch.fitted

    def fitted(kernel, grid, *args, **kw):
        seen.append((DT.launch._kernel_name(kernel), kw, *((args,) if with_args else ())))
        return real(kernel, grid, *args, **kw)

    DT.launch.fitted = fitted
    try:
        yield seen
    finally:
        DT.launch.fitted = real


@contextlib.contextmanager
def _switched(name, value, module=None):
    """``<module>.<name>`` (default: the delta line's ``triton_launch``) set to ``value`` inside the block, and back
    to what it was after."""
    if module is None:
        from fla_compile.lowering.delta import triton_launch as module

    was = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, was)


_NAMES = ["o", "ht", "dq", "dk", "dv", "db", "dg", "dh0"]


def _in_dtype(dtype, cu_lens, q, k, v, beta, g, h0):
    """The case packed (``_pack``) with q, k, v and beta in ``dtype`` (the fp64 reference takes these same values)."""
    xs = _pack(cu_lens, q, k, v, beta, g, h0)
    return [x.to(dtype) if i < 4 else x for i, x in enumerate(xs)]


def _kernels_vs_fp64(family, BT, q, k, v, beta, g, h0, cu, seed=3):
    """Forward and backward through the kernels (chunk size BT) of one case, against the fp64 reference:
    ({name: relative error}, the outputs and gradients in ``_NAMES`` order, None where a family has none)."""
    from fla_compile.lowering.delta import triton_launch as DT

    gen = torch.Generator().manual_seed(seed)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    fwd = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, chunk_size=BT)
    bwd = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, do, dht, chunk_size=BT)
    ro, rs, ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.3, cu)
    got, refs = [*fwd, *bwd], [ro, rs, *(ref[n] for n in _NAMES[2:])]
    return {n: rel(x, r) for n, x, r in zip(_NAMES, got, refs) if x is not None}, got


def _case_forward(family, BT, cu_lens=None, l2=False, gate_scale=2.0):
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, gate_scale=gate_scale)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, l2, chunk_size=BT)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(o), torch.zeros_like(ht), 0.3, cu, l2)
    out = {"o": rel(o, ro), "ht": rel(ht, rs)}
    if cu is None:
        o2, ht2 = DT.fused_recurrent(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, None, l2)
        out.update(o_rec=rel(o2, ro), ht_rec=rel(ht2, rs))
    return out


def _case_backward(family, BT, cu_lens=None, l2=False, gate_scale=2.0, T=37, K=20):
    """K = 80: two K blocks of the dq/dk kernel, the second partial (a scalar gate's dg comes per block)."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, T=T, gate_scale=gate_scale, K=K)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    do = torch.randn(*v.shape)
    dht = torch.randn(*h0.shape)
    _, _, ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.3, cu, l2)
    got = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, do, dht, l2, chunk_size=BT)
    names = ["dq", "dk", "dv", "db", "dg", "dh0"]
    return {n: rel(x, ref[n]) for n, x in zip(names, got) if x is not None}


def _case_fused_l2norm(family, cu_lens=None, dtype=torch.float32, fused=True):
    """use_qk_l2norm by the two Triton kernels (FUSED_L2NORM, the default) or by torch ops (``fused=False``):
    forward and gradients against the fp64 reference (K = 20 in a 32 block, GQA, packed or not); half inputs
    within half's accuracy of it."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, T=37)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    ro, rs, ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.3, cu, True)
    xs = [None if x is None else x.to(dtype) for x in (q, k, v, beta, g)]
    with _switched("FUSED_L2NORM", fused):
        o, ht = DT.chunk_forward(*xs[:4], xs[4], FAMILY_GATE[family], 0.3, h0, cu, True, chunk_size=16)
        got = DT.chunk_backward(
            *xs[:4], xs[4], FAMILY_GATE[family], 0.3, h0, cu, do.to(dtype), dht, True, chunk_size=16
        )
    out = {"o": rel(o, ro), "ht": rel(ht, rs)}
    out.update({n: rel(x, ref[n]) for n, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got) if x is not None})
    if fused:
        out["dq_dtype"] = float(got[0].dtype != dtype)
    if dtype != torch.float32:
        out["tol"] = 5e-3
    return out


def _case_final_dk(family, cu_lens=None):
    """Half inputs (fp16: the interpreter has no bf16 dots): the WY/pair backward writes dk in the inputs' dtype (``FINAL_DK``), bitwise the fp32 dk of the
    switch's off setting rounded by a cast, and both within half's accuracy of fp64; fp32 keeps fp32."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, T=37, HK=2)  # no GQA: dk is final
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.3, cu)[2]["dk"]
    xs = [None if x is None else x.to(torch.float16) for x in (q, k, v, beta, g)]
    runs = {}
    for on in (True, False):
        with _switched("FINAL_DK", on):
            runs[on] = DT.chunk_backward(
                *xs[:4], xs[4], FAMILY_GATE[family], 0.3, h0, cu, do.to(torch.float16), dht, chunk_size=16
            )[1]
    with _switched("FINAL_DK", True):
        dk32 = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, do, dht, chunk_size=16)[1]
    return {
        "dk_dtype": float(runs[True].dtype != torch.float16 or runs[False].dtype != torch.float32),
        "dk_vs_cast": float(not torch.equal(runs[True], runs[False].to(torch.float16))),
        "dk_fp32_dtype": float(dk32.dtype != torch.float32),
        "dk": rel(runs[True], ref),
        "dk_fp32": rel(dk32, ref),
        "tols": {"dk": 1e-2},
    }


def _case_final_dqk_vector(cu_lens=None, HK=2):
    """kda with half inputs (fp16: the interpreter has no bf16 dots): dq from the intra kernel and dk from the pairs'
    kernel in the inputs' dtype (``FINAL_DQK_VECTOR``), bitwise the fp32 sums of the switch's off setting cast
    after; with GVA (HK < H: a group sum after) both settings agree bitwise too."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make("kda", T=37, HK=HK)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    ref = torch_grads("kda", q, k, v, beta, g, h0, do, dht, 0.3, cu)[2]
    xs = [None if x is None else x.to(torch.float16) for x in (q, k, v, beta, g)]
    runs = {}
    for on in (True, False):
        with _switched("FINAL_DQK_VECTOR", on):
            runs[on] = DT.chunk_backward(*xs, "vector", 0.3, h0, cu, do.to(torch.float16), dht, chunk_size=16)
    final = HK == 2
    want = torch.float16 if final else torch.float32
    on, off = runs[True], runs[False]
    return {
        "dq_dk_dtype": float(on[0].dtype != want or on[1].dtype != want),
        "dq_vs_cast": float(not torch.equal(on[0], off[0].to(on[0].dtype))),
        "dk_vs_cast": float(not torch.equal(on[1], off[1].to(on[1].dtype))),
        "rest_same": float(not all(torch.equal(a, b) for a, b in zip(on[2:], off[2:]) if a is not None)),
        "dq": rel(on[0], ref["dq"]),
        "dk": rel(on[1], ref["dk"]),
        "tols": {"dq": 1e-2, "dk": 1e-2},
    }


def _case_inplace_decode(family):
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, T=1)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(v), torch.zeros_like(h0), 0.3)
    state = h0.clone()
    o, ht = DT.fused_recurrent(q, k, v, beta, g, FAMILY_GATE[family], 0.3, state, None, False, final_state=state)
    return {"o": rel(o, ro), "ht": rel(ht, rs), "same_storage": float(ht.data_ptr() != state.data_ptr())}


def _case_op_dispatch(family):
    """The custom op with the Triton path forced on CPU tensors (as CUDA tensors take it)."""
    import fla_compile.ops as ops
    from fla_compile.lowering.delta import dispatch as delta_dispatch

    delta_dispatch._use_triton = lambda *a: True
    q, k, v, beta, g, h0 = make(family, B=1, T=20, K=16, V=16)
    for x in (q, k, v, beta, h0, g):
        if x is not None:
            x.requires_grad_()
    args = (q, k, v, beta) if g is None else (q, k, v, g, beta)
    o, ht = getattr(ops, family)(*args, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    (o.square().sum() + ht.sum()).backward()
    ro, rs, ref = torch_grads(family, q.detach(), k.detach(), v.detach(), beta.detach(), None if g is None else g.detach(),
                              h0.detach(), 2 * o.detach(), torch.ones_like(ht), 16**-0.5, None, True)  # fmt: skip
    out = {"o": rel(o, ro), "ht": rel(ht, rs), "dq": rel(q.grad, ref["dq"]), "dk": rel(k.grad, ref["dk"])}
    out.update(dv=rel(v.grad, ref["dv"]), db=rel(beta.grad, ref["db"]), dh0=rel(h0.grad, ref["dh0"]))
    if g is not None:
        out["dg"] = rel(g.grad, ref["dg"])
    return out


def _case_saved_parts(family):
    """The op keeps the forward's X (and kda's gated q kᵀ) for its backward, which then recomputes neither."""
    import fla_compile.ops as ops
    from fla_compile.lowering.delta import dispatch as delta_dispatch
    from fla_compile.lowering.delta import triton_launch as DT

    delta_dispatch._use_triton = lambda *a: True
    seen, real, real_intra = [], DT.backward_parts, DT.gla_intra

    class Counted:  # counts launches of the A kernels (k kᵀ, q kᵀ) by pass
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            return lambda *a, **kw: seen.append(self.name) or self.kernel[grid](*a, **kw)

    DT.gla_intra = types.SimpleNamespace(**{**vars(real_intra), "chunk_gla_A_kernel": Counted(
        real_intra.chunk_gla_A_kernel, "A")})  # fmt: skip

    def spy(*a, **kw):
        seen.append("bwd")
        return real(*a, **kw)

    DT.backward_parts = spy
    try:
        q, k, v, beta, g, h0 = make(family, B=1, T=70, K=16, V=16)
        for x in (q, k, v, beta, g):
            if x is not None:
                x.requires_grad_()
        args = (q, k, v, beta) if g is None else (q, k, v, g, beta)
        o, _ = getattr(ops, family)(*args, initial_state=h0)
        o.square().sum().backward()
        ro, _, ref = torch_grads(family, q.detach(), k.detach(), v.detach(), beta.detach(),
                                 None if g is None else g.detach(), h0, 2 * o.detach(), torch.zeros_like(h0), 16**-0.5)  # fmt: skip
    finally:
        DT.backward_parts, DT.gla_intra = real, real_intra
    out = {"o": rel(o, ro), "dk": rel(k.grad, ref["dk"]), "dv": rel(v.grad, ref["dv"])}
    # the backward launches no A kernel: k kᵀ (solve) and kda's q kᵀ come from the forward
    out["A_recomputed"] = float("A" in seen[seen.index("bwd") :])
    return out


def _case_copied_X(family, T=70):
    """The op's backward reads a copy of its saved X (no tag: a compiler's layout copy, offloading) where the
    forward on the same inputs wrote it: no solve launched, the gradients bit for bit those of the tagged X.
    At a decode length (the forward wrote zeros) and in a direct ``chunk_backward`` without ``X_from_op`` the
    copy is not read: X is recomputed, the gradients those of no X."""
    from fla_compile.lowering.delta import dispatch as delta_dispatch
    from fla_compile.lowering.delta import triton_launch as DT

    delta_dispatch._use_triton = lambda *a: True
    solves, real = [], DT.kw

    class Counted:
        def __getitem__(self, grid):
            return lambda *a, **kw: solves.append(1) or real.chunk_wy_kernel[grid](*a, **kw)

    DT.kw = types.SimpleNamespace(**{**vars(real), "chunk_wy_kernel": Counted()})
    op = getattr(torch.ops.fla_compile, family).default
    bwd = getattr(torch.ops.fla_compile, f"{family}_bwd").default
    out = {}
    try:
        for t in (T, 9):
            q, k, v, beta, g, h0 = make(family, B=1, T=t, K=16, V=16)
            gates = (beta,) if g is None else (g, beta)
            o, ht, X = op(q, k, v, *gates, 0.25, h0, None, False)
            do = torch.randn(o.shape, generator=torch.Generator().manual_seed(3))
            solves.clear()
            tagged = bwd(q, k, v, *gates, 0.25, h0, None, False, do, None, X)
            n_tagged = len(solves)
            solves.clear()
            copied = bwd(q, k, v, *gates, 0.25, h0, None, False, do, None, X.clone())
            n_copied = len(solves)
            none = bwd(q, k, v, *gates, 0.25, h0, None, False, do, None, torch.zeros_like(X))
            if t == T:  # chunked: both read X, no solve
                out[f"solves_T{t}"] = float(n_tagged + n_copied)
                out[f"copy_differs_T{t}"] = float(not all(torch.equal(a, b) for a, b in zip(tagged, copied)))
            else:  # decode length: X holds zeros, never read
                out[f"no_solve_T{t}"] = float(n_tagged == 0 or n_copied == 0)
                out[f"zeros_read_T{t}"] = float(not all(torch.equal(a, b) for a, b in zip(none, copied)))
        solves.clear()
        direct = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.25, h0, None, do, None, X=X.clone())
        out["direct_untagged_read"] = float(len(solves) == 0 and direct is not None)
    finally:
        DT.kw = real
    return out


def _case_compiled_conv_keeps_X():
    """Compiled by the fla backend, a graph whose q, k, v come out of a depthwise conv (the short conv of
    Qwen3-Next, Kimi-Linear): every backward gets the forward's tagged X, and the gradients are eager's. With
    Inductor's layout optimization on (it is, for a graph with a convolution) q, k, v and X were saved
    channels-last and copied back for the op: the copy of X lost its tag and all but the last layer's backward
    recomputed X (found on the H200 in the Qwen3-Next training step)."""
    from fla_compile.lowering.delta import dispatch as delta_dispatch
    from fla_compile.lowering.delta import triton_launch as DT
    from tests.short_conv import ShortConvDelta

    delta_dispatch._use_triton = lambda *a: True
    tags, real = [], DT.chunk_backward

    def spy(*a, X=None, **kw):
        tags.append(getattr(X, DT._X_TAG, None))
        return real(*a, X=X, **kw)

    torch.manual_seed(0)
    model = torch.nn.Sequential(ShortConvDelta(D=16), ShortConvDelta(D=16))
    x = torch.randn(1, 70, 64)

    def grads(fn):
        model.zero_grad(set_to_none=True)
        fn(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    DT.chunk_backward = spy
    try:
        eager = grads(model)
        tags.clear()
        compiled = grads(torch.compile(model, backend="fla", fullgraph=True))
    finally:
        DT.chunk_backward = real
    out = {f"d{i}": rel(a, b) for i, (a, b) in enumerate(zip(compiled, eager))}
    out["untagged_X"] = float(sum(t != DT.X_SLOTS for t in tags) + (len(tags) != 2))
    return out


def _case_half(family):
    """Half inputs: the dots take them as they are (fp32 accumulation) and the chunk states, X, W, U and v_new are
    stored in their dtype; compared with the fp32 inputs' fp64 result. fp16, not bf16: Triton 3.9's interpreter
    computes bf16 ``tl.dot`` wrong (garbage of 1e10), fp16 right; the GPU tests cover bf16."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, B=1, T=40, K=16, V=16)
    q, k, v, beta = (x.half() for x in (q, k, v, beta))
    do, dht = torch.randn(*v.shape).half(), torch.randn(*h0.shape)
    ro, rs, ref = torch_grads(family, q.float(), k.float(), v.float(), beta.float(), g, h0, do.float(), dht, 0.25)
    o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.25, h0)
    got = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.25, h0, None, do, dht)
    out = {"o": rel(o, ro), "ht": rel(ht, rs), "tol": 1e-2, "o_is_half": float(o.dtype != torch.float16)}
    out.update({n: rel(x, ref[n]) for n, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got) if x is not None})
    return out


def _case_solve_row_loads(family, BT, T=70, cu_lens=None):
    """The two-kernel solve's substitution (``FUSED_KKT`` off, as kda's) with each row of N loaded (``ROW_LOADS``)
    against picked out of the tile: the same arithmetic, so the same outputs; both against fp64. Full and partial
    chunks, packed sequences."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, B=1, T=T, K=16, V=16)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    outs = []
    for row_loads in (True, False):
        with _switched("FUSED_KKT", False), _switched("ROW_LOADS", row_loads):
            outs.append(DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, chunk_size=BT))
    (o, ht), (o2, ht2) = outs
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(o), torch.zeros_like(ht), 0.3, cu)
    return {"o": rel(o, ro), "ht": rel(ht, rs), "o_vs_picked": rel(o, o2), "ht_vs_picked": rel(ht, ht2)}


def _case_beta_two(family, BT, cu_lens=None, near_two=True):
    """beta in (0, 2) (DeltaNet's negative-eigenvalue range): 2 - 1e-4 r or 2 r, forward and gradients through the
    kernels against fp64, full and partial chunks (T = 37 at BT 16, 32), packed sequences."""
    q, k, v, beta, g, h0 = make(family)
    beta = 2 - beta * 1e-4 if near_two else 2 * beta
    return _kernels_vs_fp64(family, BT, *_pack(cu_lens, q, k, v, beta, g, h0), seed=4)[0]


def _case_fused_kkt(family, BT, T=70, cu_lens=None, gate_scale=2.0, K=16):
    """k kᵀ formed by the WY solve kernel (``FUSED_KKT``, half inputs only) against ``chunk_kkt_kernel``'s A:
    forward and gradients (the backward recomputes the forward's parts with it) against the fp64 reference of the
    same rounded inputs and against the other path. Full and partial chunks, packed sequences, GQA, a key dim
    under its block, gates of -20 per step (whose in-chunk cumsums overflow e^{G_i - G_j} wherever a token past
    the sequence is not masked)."""
    halves = _in_dtype(torch.float16, cu_lens, *make(family, B=1, T=T, K=K, V=16, gate_scale=gate_scale))
    with _switched("FUSED_KKT", True):
        out, fused = _kernels_vs_fp64(family, BT, *halves)
    with _switched("FUSED_KKT", False):
        _, two_kernels = _kernels_vs_fp64(family, BT, *halves)
    same = {f"{n}_vs_kkt_kernel": rel(x, y) for n, x, y in zip(_NAMES, fused, two_kernels) if x is not None}
    # 2e-4: the two paths sum k kᵀ's products in another order, and a last-bit difference in fp32 flips an fp16
    # output's rounding here and there (one flip is ~1e-3 of that element): 2e-5 - 6e-5 on one CPU, under 1e-5 on
    # another (the interpreter's dots are numpy's, whose order follows the CPU); a wrong path is off by O(1)
    return {**out, **same, "tol": 2e-2, "tols": dict.fromkeys(same, 2e-4)}


def _case_heads_inner(family, BT, cu_lens=None):
    """The output, dv_local and dq/dk kernels in a 1-D grid, a chunk's heads side by side (``chunks.HEADS_INNER``):
    the same programs in another order, so bitwise the 3-D grid's outputs and gradients, and fp64-close."""
    from fla_compile.lowering.common import chunks

    xs = _pack(cu_lens, *make(family, H=4, HK=2))
    with _switched("HEADS_INNER", True, chunks):
        out, inner = _kernels_vs_fp64(family, BT, *xs)
    with _switched("HEADS_INNER", False, chunks):
        _, grid3 = _kernels_vs_fp64(family, BT, *xs)
    same = {f"{n}_vs_3d_grid": float(not torch.equal(x, y)) for n, x, y in zip(_NAMES, inner, grid3) if x is not None}
    return {**out, **same}


def _case_full_chunks(family, BT):
    """Where every chunk has BT rows (no cu_seqlens, T a multiple of BT) the state pass runs unmasked
    (``chunks.FULL_CHUNKS``, ``state_chunk_rows``): bitwise the masked pass's outputs and gradients, and fp64-close;
    the switch reaches the kernel (and stays off for a partial last chunk)."""
    from fla_compile.lowering.common import chunks

    with _launches() as seen:
        xs = _pack(None, *make(family, T=2 * BT))
        with _switched("FULL_CHUNKS", True, chunks):
            out, full = _kernels_vs_fp64(family, BT, *xs)
        flags = [kw["FULL_CHUNKS"] for name, kw in seen if name == "chunk_delta_h_kernel"]
        used = bool(flags) and all(flags)
        with _switched("FULL_CHUNKS", False, chunks):
            _, masked = _kernels_vs_fp64(family, BT, *xs)
        seen.clear()
        _kernels_vs_fp64(family, BT, *_pack(None, *make(family, T=2 * BT - 1)))
        flags = [kw["FULL_CHUNKS"] for name, kw in seen if name == "chunk_delta_h_kernel"]
        partial_masked = bool(flags) and not any(flags)
    same = {f"{n}_vs_masked": float(not torch.equal(x, y)) for n, x, y in zip(_NAMES, full, masked) if x is not None}
    return {**out, **same, "full_not_used": float(not used), "partial_not_masked": float(not partial_masked)}


def _case_split_k(which, family, K, cu_lens=None, gate_scale=2.0):
    """A state pass with its state in key blocks of 64: ``which`` "h", the forward's (launch option ``h_split_k``
    listing the family's gate kind; the backward recomputes the states through it, so it runs twice), or "dh", the
    backward's state-gradient pass (``dh_split_k``). K = 200: four blocks, the last 8 rows
    of 64; K = 136: three. Outputs and every gradient against fp64, with an initial state and a final state's
    gradient, packed sequences with an empty one and partial chunks; the split kernel ran (kda's forward through
    its decayed keys) and the whole-K one did not."""
    from fla_compile.lowering.delta import triton_launch as DT

    xs = _pack(cu_lens, *make(family, B=1 if cu_lens else 2, T=40, K=K, V=16, gate_scale=gate_scale))
    switch = f"{which}_split_k"
    DT.OVERRIDES[switch] = (FAMILY_GATE[family],)
    try:
        with _launches() as seen:
            out = _kernels_vs_fp64(family, 16, *xs)[0]
    finally:
        DT.OVERRIDES.pop(switch, None)
    names = [name for name, _ in seen]
    runs = names.count(f"chunk_delta_{which}_split_kernel")
    return {**out, "split_not_run": float(runs != (2 if which == "h" else 1) or f"chunk_delta_{which}_kernel" in names)}


def _case_decay_rows(family, BT, T=70, cu_lens=None, gate_scale=2.0):
    """The scalar-gated state passes decay the rows of v_new and of k dS', not the keys' columns: forward and
    gradients against fp64, packed sequences with an empty one and partial chunks; gates of -20 per step, where a
    row past the sequence left unmasked would overflow."""
    xs = _pack(cu_lens, *make(family, B=1 if cu_lens else 2, T=T, K=16, V=16, gate_scale=gate_scale))
    return _kernels_vs_fp64(family, BT, *xs)[0]


def _case_solve_diag(family, switch="SOLVE_DIAG", value="steps", cu_lens=None, beta_two=False):
    """How the solve inverts its diagonal blocks: ``switch`` set to ``value`` against the shipped setting.
    ``SOLVE_DIAG`` (k kᵀ in the solve kernel) and ``SOLVE_DIAG_A`` (kda's A read from memory) ship the product of
    powers of N ("powers"); the row steps ("steps") remain the fp32 path. Half inputs, chunks of 64, packed, beta near 2 (N's entries largest);
    both against fp64, and within 5e-3 of each other: another rounding of X, then the half outputs (each 1.8e-3 -
    2.7e-3 from fp64 at beta near 2 on the interpreter; 1e-7 - 2e-6 apart otherwise)."""
    q, k, v, beta, g, h0 = make(family, B=1, T=100, K=16, V=16)  # a full chunk of 64 and a partial one
    if beta_two:
        beta = 2 - beta * 1e-4
    halves = _in_dtype(torch.float16, cu_lens, q, k, v, beta, g, h0)
    with _switched(switch, value):
        out, flipped = _kernels_vs_fp64(family, 64, *halves)
    _, shipped = _kernels_vs_fp64(family, 64, *halves)
    same = {f"{n}_vs_shipped": rel(x, y) for n, x, y in zip(_NAMES, flipped, shipped) if x is not None}
    return {**out, **same, "tol": 2e-2, "tols": dict.fromkeys(same, 5e-3)}


def _case_wu_by_blocks(family, BT, dtype, cu_lens=None):
    """``WU_SPLIT`` off: the solve kernel forms W and U by blocks itself (with half inputs and no per-key gate, k kᵀ
    formed in it too): forward and gradients against the fp64 reference of the same rounded inputs."""
    xs = _in_dtype(dtype, cu_lens, *make(family, B=1, T=70, K=16, V=16))
    with _switched("WU_SPLIT", False):
        out = _kernels_vs_fp64(family, BT, *xs)[0]
    return {**out, "tol": 1e-5 if dtype == torch.float32 else 2e-2}


def _case_three_tf32(family, BT, cu_lens=None):
    """fp32 at "highest" with ``launch.FP32_HIGHEST = "tf32x3"`` (every product by three tf32 ones, see
    ``common/dots.py``): forward and gradients against fp64, full and partial chunks, packed sequences."""
    from fla_compile.lowering.common import launch

    was = launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS
    launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS = "tf32x3", (20, 40)  # make()'s K and V: the split there too
    try:
        with _switched("FP32_SPLIT_VECTOR_GATE", True):
            q, k, v, beta, g, h0 = make(family)
            return _kernels_vs_fp64(family, BT, *_pack(cu_lens, q, k, v, beta, g, h0))[0]
    finally:
        launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS = was


def _case_split_precs(family, BT, cu_lens=None):
    """fp32 at "highest" with the forward's W/U, state and output kernels on six bf16 products (launch option
    ``split_precs``) and the rest on three tf32 ones: forward and gradients against fp64, and each kernel got its
    form (the state-gradient pass kept the call's)."""
    from fla_compile.lowering.common import launch
    from fla_compile.lowering.delta import triton_launch as DT

    was = launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS
    launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS = "tf32x3", (20, 40)  # make()'s K and V: the split there too
    DT.OVERRIDES["split_precs"] = {"wu": "bf16x6", "h": "bf16x6", "o": "bf16x6"}
    try:
        q, k, v, beta, g, h0 = make(family)
        with _launches(with_args=True) as seen:
            out = _kernels_vs_fp64(family, BT, *_pack(cu_lens, q, k, v, beta, g, h0))[0]
    finally:
        launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS = was
        DT.OVERRIDES.pop("split_precs", None)
    forms = {name: {a for a in args if isinstance(a, str)} for name, _, args in seen}
    wanted = {
        "chunk_wu_kernel": {"bf16x6"},
        "chunk_delta_h_kernel": {"bf16x6"},
        "chunk_fwd_o_kernel": {"bf16x6"},
        "chunk_delta_dh_kernel": {"tf32x3"},
    }
    return {**out, "forms_wrong": float(any(forms.get(n) != f for n, f in wanted.items()))}


def _case_solve_merge_tf32(family, BT, dtype, cu_lens=None, T=70):
    """``SOLVE_MERGE_TF32``: the solve's merge dots at the inputs' precision ("tf32" for half inputs, "ieee" for
    fp32 ones at torch's default "highest"). fp32: bitwise the exact path. Half: forward and gradients within
    half's accuracy of the fp64 reference of the same (rounded) inputs."""
    xs = _in_dtype(dtype, cu_lens, *make(family, B=1, T=T, K=16, V=16))
    with _switched("SOLVE_MERGE_TF32", True):
        got = _kernels_vs_fp64(family, BT, *xs)
    out = got[0]
    if dtype == torch.float32:
        with _switched("SOLVE_MERGE_TF32", False):
            exact = _kernels_vs_fp64(family, BT, *xs)[1]
        out["differs_from_exact"] = float(any(a is not None and not torch.equal(a, b) for a, b in zip(got[1], exact)))
    else:
        out["tol"] = 2e-2
    return out


def _case_kg(BT, T=70, cu_lens=None):
    """kda's state pass reading the W/U kernel's decayed keys (``KG``) against decaying them itself: the same
    fp32 products cast the same way, so the same outputs and gradients; both against fp64. GQA (2 heads of v
    per key head), partial chunks, packed sequences."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make("kda", B=1, T=T, K=16, V=16)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    gen = torch.Generator().manual_seed(3)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    outs = []
    for use_kg in (True, False):
        with _switched("KG", use_kg):
            o, ht = DT.chunk_forward(q, k, v, beta, g, "vector", 0.3, h0, cu, chunk_size=BT)
            grads = DT.chunk_backward(q, k, v, beta, g, "vector", 0.3, h0, cu, do, dht, chunk_size=BT)
            outs.append([o, ht, *[x for x in grads if x is not None]])
    ro, rs, _ = torch_grads("kda", q, k, v, beta, g, h0, torch.zeros_like(v), torch.zeros_like(h0), 0.3, cu)
    out = {"o": rel(outs[0][0], ro), "ht": rel(outs[0][1], rs)}
    out.update({f"vs_no_kg_{i}": rel(a, b) for i, (a, b) in enumerate(zip(*outs))})
    return out


@contextlib.contextmanager
def _nan_empty():
    """``torch.empty`` of a float dtype filled with NaN: the launchers' outputs and scratch buffers poisoned, so an
    entry a kernel leaves unwritten (or reads before it is written) shows up."""
    real = torch.empty

    def poisoned(*args, **kwargs):
        x = real(*args, **kwargs)
        return x.fill_(float("nan")) if x.is_floating_point() else x

    torch.empty = poisoned
    try:
        yield
    finally:
        torch.empty = real


def _case_wy_pair(family, BT, cu_lens=None, T=37, K=20, V=40, dtype=torch.float32, half_dots=False):
    """The WY backward and the k kᵀ pairs by one kernel (no gate or a scalar one; dW from the dqk kernel) on
    NaN-poisoned buffers: every gradient against fp64, and the kernels launched (the fused one, not kda's WY
    kernel). K, V over 64: several key and value blocks, the last partial. fp16: against the fp32 inputs' fp64.
    ``half_dots``: with ``WY_PAIR_HALF`` (the dN chain and pair dots on half operands)."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = make(family, T=T, K=K, V=V)
    q, k, v, beta, g, h0, cu = _pack(cu_lens, q, k, v, beta, g, h0)
    gen = torch.Generator().manual_seed(11)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    q, k, v, beta, do = (x.to(dtype) for x in (q, k, v, beta, do))
    _, _, ref = torch_grads(family, q.float(), k.float(), v.float(), beta.float(), g, h0, do.float(), dht, 0.3, cu)
    launched, real = set(), DT.launch

    def fitted(kernel, *args, **kwargs):  # records which kernels the backward launches
        launched.add(kernel.fn.__name__)
        return real.fitted(kernel, *args, **kwargs)

    DT.launch = types.SimpleNamespace(**{**vars(real), "fitted": fitted})
    try:
        with _nan_empty(), _switched("WY_PAIR_HALF", half_dots):
            got = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.3, h0, cu, do, dht, chunk_size=BT)
    finally:
        DT.launch = real
    out = {n: rel(x, ref[n]) for n, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got) if x is not None}
    out["not_fused"] = float("chunk_wy_pair_bwd_kernel" not in launched or "chunk_wy_bwd_kernel" in launched)
    if dtype != torch.float32:
        out["tol"] = 1e-2
    return out


def _case_kda_A_rows(BT, T, cu_lens, gate_scale, dtype, BK, K=20, device="cpu"):
    """kda's fused A kernel by row blocks (the whole K; the strong-gate path by K blocks of BK) on NaN-poisoned
    outputs: Akk (fp32) and Aqk (inputs' dtype) against fp64 sums over the chunk."""
    from fla_compile.lowering.common import launch
    from fla_compile.lowering.common.chunks import chunk_meta
    from fla_compile.lowering.delta import triton_wy as kw

    q, k, _, _, g, _ = make("kda", T=T, K=K, gate_scale=gate_scale, device=device)  # GQA: HK = 1, H = 2
    B, H, K = q.shape[0], g.shape[2], q.shape[3]
    lens = [T] * B
    cu = None
    if cu_lens is not None:
        q, k, g = (x.flatten(0, 1)[None, : sum(cu_lens)] for x in (q, k, g))
        lens, B, T = cu_lens, 1, sum(cu_lens)
        cu = torch.tensor([0, *torch.tensor(cu_lens).cumsum(0).tolist()], device=device)
    q, k = q.to(dtype), k.to(dtype)
    qf, kf, gf = (x.flatten(0, 1).double() for x in (q, k, g))  # [TT, H(K), K]
    gc = torch.empty_like(gf)
    ref_kk = torch.zeros(B * T, H, BT, dtype=torch.float64, device=device)
    ref_qk = torch.zeros_like(ref_kk)
    bos = 0
    for n in lens:
        for c0 in range(bos, bos + n, BT):
            c1 = min(c0 + BT, bos + n)
            gc[c0:c1] = gf[c0:c1].cumsum(0)
            low = torch.ones(c1 - c0, c1 - c0, dtype=torch.bool, device=device).tril()[:, :, None]
            # [i, j, H, K]; above the diagonal exp(-inf) = 0: G_i - G_j > 709 there overflows fp64 (-20 per step)
            e = torch.exp((gc[c0:c1, None] - gc[None, c0:c1]).masked_fill(~low[..., None], float("-inf")))
            kk = torch.einsum("ihd,jhd,ijhd->ihj", kf[c0:c1].expand(-1, H, -1), kf[c0:c1].expand(-1, H, -1), e)
            qk = torch.einsum("ihd,jhd,ijhd->ihj", qf[c0:c1].expand(-1, H, -1), kf[c0:c1].expand(-1, H, -1), e)
            ref_kk[c0:c1, :, : c1 - c0] = kk * low.transpose(1, 2)
            ref_qk[c0:c1, :, : c1 - c0] = qk * low.transpose(1, 2)
        bos += n
    gc = gc.float().view(B, T, H, K).contiguous()
    _, info, _, NS, _ = chunk_meta(B, T, cu, BT, device)
    NC = BT // 16
    Akk = torch.full((B, T, H, BT), float("nan"), device=device)
    Aqk = torch.full((B, T, H, BT), float("nan"), dtype=dtype, device=device)
    args = (q, k, gc, Akk, Aqk, info, H, H // q.shape[2], K, BT, 16, launch.pow2(K), NC, launch.prec(dtype, K, K))
    kw.chunk_kda_A_rows_kernel[(NS, NC, H)](*args, BKF=BK)
    return {
        "kk_rows": rel(Akk.flatten(0, 1), ref_kk),
        "qk_rows": rel(Aqk.flatten(0, 1), ref_qk),
        "tol": 4e-6 if dtype == torch.float32 else 2e-3,  # against fp64: the factors' rounding (NaN: unwritten)
    }


INTERPRETER_CASES = {
    **{f"fwd-{f}-BT16": (_case_forward, (f, 16)) for f in FAMILY_GATE},
    "fwd-kda-BT32-l2": (_case_forward, ("kda", 32, None, True)),
    "fwd-gdn-varlen": (_case_forward, ("gated_delta_rule", 16, [5, 0, 40, 19])),
    "fwd-kda-strong-gate": (_case_forward, ("kda", 16, None, False, 20.0)),
    **{f"bwd-{f}-BT16": (_case_backward, (f, 16)) for f in FAMILY_GATE},
    "bwd-delta-BT32-l2": (_case_backward, ("delta_rule", 32, None, True)),
    "bwd-gdn-varlen": (_case_backward, ("gated_delta_rule", 16, [7, 0, 33, 22])),
    "bwd-kda-varlen": (_case_backward, ("kda", 16, [9, 21])),
    "bwd-gdn-strong-gate": (_case_backward, ("gated_delta_rule", 16, None, False, 20.0)),
    "bwd-gdn-K80-varlen": (_case_backward, ("gated_delta_rule", 16, [7, 0, 30], False, 2.0, 37, 80)),
    "bwd-kda-strong-gate": (_case_backward, ("kda", 16, None, False, 20.0, 20)),
    **{f"decode-inplace-{f}": (_case_inplace_decode, (f,)) for f in FAMILY_GATE},
    "half-kda": (_case_half, ("kda",)),
    "kda-kg-BT16": (_case_kg, (16,)),
    "kda-kg-BT32-varlen": (_case_kg, (32, 70, [5, 0, 46, 19])),
    "solve-row-loads-BT64": (_case_solve_row_loads, ("delta_rule", 64)),
    "solve-row-loads-BT32-varlen": (_case_solve_row_loads, ("gated_delta_rule", 32, 70, [5, 0, 46, 19])),
    "beta-near-2-delta-BT16": (_case_beta_two, ("delta_rule", 16)),
    "beta-0-to-2-gdn-BT32-varlen": (_case_beta_two, ("gated_delta_rule", 32, [5, 0, 40, 29], False)),
    "beta-near-2-kda-BT16": (_case_beta_two, ("kda", 16)),
    "kkt-fused-delta-BT64": (_case_fused_kkt, ("delta_rule", 64)),
    **{f"full-chunks-{f}": (_case_full_chunks, (f, 16)) for f in FAMILY_GATE},
    "heads-inner-gdn-varlen": (_case_heads_inner, ("gated_delta_rule", 16, [5, 0, 21, 11])),
    "final-dk-delta": (_case_final_dk, ("delta_rule",)),
    "final-dqk-kda-varlen": (_case_final_dqk_vector, ([5, 0, 40, 19],)),
    "final-dqk-kda-gva": (_case_final_dqk_vector, (None, 1)),
    "final-dk-gdn-varlen": (_case_final_dk, ("gated_delta_rule", [5, 0, 40, 19])),
    "h-split-k-gdn-varlen": (_case_split_k, ("h", "gated_delta_rule", 200, [5, 0, 21, 14])),
    "h-split-k-gdn-strong": (_case_split_k, ("h", "gated_delta_rule", 136, None, 20.0)),
    "h-split-k-delta": (_case_split_k, ("h", "delta_rule", 200)),
    "h-split-k-kda-varlen": (_case_split_k, ("h", "kda", 200, [5, 0, 21, 14])),
    "dh-split-k-gdn-varlen": (_case_split_k, ("dh", "gated_delta_rule", 200, [5, 0, 21, 14])),
    "dh-split-k-gdn-strong": (_case_split_k, ("dh", "gated_delta_rule", 136, None, 20.0)),
    "dh-split-k-delta": (_case_split_k, ("dh", "delta_rule", 200)),
    "dh-split-k-kda-varlen": (_case_split_k, ("dh", "kda", 200, [5, 0, 21, 14])),
    "decay-rows-gdn-BT32-varlen": (_case_decay_rows, ("gated_delta_rule", 32, 70, [5, 0, 46, 19])),
    "decay-rows-gdn-BT64-strong": (_case_decay_rows, ("gated_delta_rule", 64, 70, None, 20.0)),
    "solve-steps-delta": (_case_solve_diag, ("delta_rule",)),
    "solve-steps-gdn-varlen": (_case_solve_diag, ("gated_delta_rule", "SOLVE_DIAG", "steps", [70, 0, 30])),
    "solve-steps-delta-beta-two": (_case_solve_diag, ("delta_rule", "SOLVE_DIAG", "steps", None, True)),
    "solve-a-steps-kda-varlen": (_case_solve_diag, ("kda", "SOLVE_DIAG_A", "steps", [70, 0, 30])),
    "solve-a-steps-kda-beta-two": (_case_solve_diag, ("kda", "SOLVE_DIAG_A", "steps", None, True)),
    "kkt-fused-gdn-BT32-varlen-strong": (_case_fused_kkt, ("gated_delta_rule", 32, 70, [5, 0, 46, 19], 20.0)),
    "kkt-fused-gdn-BT16-K20": (_case_fused_kkt, ("gated_delta_rule", 16, 37, None, 2.0, 20)),
    "wu-by-blocks-gdn-fp16-BT32-varlen": (_case_wu_by_blocks, ("gated_delta_rule", 32, torch.float16, [5, 0, 46, 19])),
    "wu-by-blocks-delta-fp32-BT64": (_case_wu_by_blocks, ("delta_rule", 64, torch.float32)),
    "three-tf32-gdn-BT32-varlen": (_case_three_tf32, ("gated_delta_rule", 32, [5, 0, 40, 29])),
    "three-tf32-kda-BT16": (_case_three_tf32, ("kda", 16)),
    "three-tf32-delta-BT64": (_case_three_tf32, ("delta_rule", 64)),
    "split-precs-gdn-varlen": (_case_split_precs, ("gated_delta_rule", 32, [5, 0, 40, 29])),
    "solve-merge-tf32-gdn-fp32": (_case_solve_merge_tf32, ("gated_delta_rule", 64, torch.float32)),
    "solve-merge-tf32-delta-fp16-varlen": (_case_solve_merge_tf32, ("delta_rule", 64, torch.float16, [5, 0, 46, 19])),
    "saved-gdn": (_case_saved_parts, ("gated_delta_rule",)),
    "saved-kda": (_case_saved_parts, ("kda",)),
    "l2norm-fused-gdn": (_case_fused_l2norm, ("gated_delta_rule",)),
    "l2norm-fused-kda-varlen": (_case_fused_l2norm, ("kda", [5, 0, 20, 12])),
    "l2norm-fused-delta-fp16": (_case_fused_l2norm, ("delta_rule", None, torch.float16)),
    "l2norm-torch-ops-kda-varlen": (_case_fused_l2norm, ("kda", [5, 0, 20, 12], torch.float32, False)),
    "copied-X-gdn": (_case_copied_X, ("gated_delta_rule",)),
    "copied-X-kda": (_case_copied_X, ("kda",)),
    "compiled-conv-keeps-X": (_case_compiled_conv_keeps_X, ()),
    "op-dispatch-gdn": (_case_op_dispatch, ("gated_delta_rule",)),
    "op-dispatch-kda": (_case_op_dispatch, ("kda",)),
    "A-rows-dense-odd-T": (_case_kda_A_rows, (64, 37, None, 2.0, torch.float32, 16)),
    "A-rows-varlen-strong": (_case_kda_A_rows, (32, 37, [9, 40], 20.0, torch.float32, 32)),
    "A-rows-varlen-half": (_case_kda_A_rows, (64, 24, [5, 40], 1.0, torch.float16, 16)),
    "fwd-kda-BT64-strong": (_case_forward, ("kda", 64, None, False, 20.0)),
    "bwd-kda-BT32-varlen": (_case_backward, ("kda", 32, [9, 21])),
    "bwd-kda-BT32-strong": (_case_backward, ("kda", 32, None, False, 20.0, 20)),
    # the WY backward and the pairs by one kernel (no gate or a scalar one)
    "wy-pair-gdn-BT32-half": (_case_wy_pair, ("gated_delta_rule", 32, None, 20, 20, 40, torch.float16)),
    "wy-pair-gdn-K80-varlen": (_case_wy_pair, ("gated_delta_rule", 16, [7, 0, 13], 10, 80, 72)),
    "wy-pair-delta-K80": (_case_wy_pair, ("delta_rule", 32, None, 20, 80, 72)),
    "wy-pair-delta-BT32-varlen": (_case_wy_pair, ("delta_rule", 32, [9, 0, 30], 20)),
    "wy-pair-half-dots-gdn-fp16": (
        _case_wy_pair,
        ("gated_delta_rule", 64, [9, 0, 71], 40, 80, 72, torch.float16, True),
    ),
    "wy-pair-half-dots-delta-fp16": (_case_wy_pair, ("delta_rule", 32, None, 40, 20, 40, torch.float16, True)),
}


def _case_production(family, T=150):
    """The kernels' default sizes (forward BT = 64, backward BT = 32, BK = 64, BV = 32 at K = V = 64),
    over 2 chunks and a partial one, and decoding: against the fp64 loop."""
    from fla_compile.lowering.delta import triton_launch as DT
    from fla_compile.reference import delta as loop

    q, k, v, beta, g, h0 = make(family, B=1, T=T, HK=1, H=2, K=64, V=64)
    gen = torch.Generator().manual_seed(7)
    do, dht = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    kind = FAMILY_GATE[family]
    o, ht = DT.chunk_forward(q, k, v, beta, g, kind, 0.3, h0)
    got = DT.chunk_backward(q, k, v, beta, g, kind, 0.3, h0, None, do, dht)
    od, htd = DT.fused_recurrent(
        q[:, :5], k[:, :5], v[:, :5], beta[:, :5], None if g is None else g[:, :5], kind, 0.3, h0
    )
    xs = [None if x is None else x.double().requires_grad_() for x in (q, k, v, beta, g, h0)]
    gates = {} if g is None else {"g" if kind == "scalar" else "gk": xs[4]}
    ro, rs = loop.delta_loop(*xs[:4], **gates, scale=0.3, initial_state=xs[5], output_final_state=True)
    ref = torch.autograd.grad((ro, rs), [x for x in xs if x is not None], (do.double(), dht.double()))
    dgates = {} if g is None else {"g" if kind == "scalar" else "gk": xs[4][:, :5]}
    rod, rsd = loop.delta_loop(*(x[:, :5] for x in xs[:4]), **dgates, scale=0.3, initial_state=xs[5],
                               output_final_state=True)  # fmt: skip
    out = {"o": rel(o, ro), "ht": rel(ht, rs), "o_rec": rel(od, rod), "ht_rec": rel(htd, rsd)}
    ours = [x for x in got if x is not None]
    out.update({f"d{i}": rel(a, b) for i, (a, b) in enumerate(zip(ours, ref))})
    out["n_grads"] = float(len(ours) != len(ref))
    return out


SLOW_CASES = {
    **{f"production-{f}": (_case_production, (f,)) for f in FAMILY_GATE},
}


_STARTED: dict = {}  # report -> its shards, started by start_background_reports
_REPORTS = {"test_interpreter": "fast", "test_interpreter_production_sizes": "slow"}
BACKGROUND_TESTS = tuple(_REPORTS)


def start_background_reports(selected):
    """tests/conftest.py, once collection is done: start the shards of the reports whose tests were selected."""
    for test, which in _REPORTS.items():
        if test in selected and which not in _STARTED:
            _STARTED[which] = child_runs.spawn(__file__, which)


def _report(which):
    """The interpreter cases' report (the fast set took 156 s in one process, the largest piece of CI's run)."""
    pytest.importorskip("triton")
    return child_runs.collect(_STARTED.pop(which, None) or child_runs.spawn(__file__, which))


@pytest.fixture(scope="module")
def slow_interpreter_report():
    return _report("slow")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_interpreter_production_sizes(slow_interpreter_report, case):
    result = slow_interpreter_report[case]
    assert "error" not in result, result.get("error")
    assert result.pop("n_grads") == 0.0, "not one gradient per input"
    bad = {name: err for name, err in result.items() if not err < 1e-5}  # NaN fails too
    assert not bad, f"relative errors above 1e-5: {bad}"


@pytest.fixture(scope="module")
def interpreter_report():
    return _report("fast")


@pytest.mark.parametrize("case", list(INTERPRETER_CASES))
def test_interpreter(interpreter_report, case):
    result = interpreter_report[case]
    assert "error" not in result, result.get("error")
    if "same_storage" in result:
        assert result.pop("same_storage") == 0.0, "decode state was not updated in place"
    if "o_is_half" in result:
        assert result.pop("o_is_half") == 0.0, "o must come back in v's dtype"
    tol = result.pop("tol", 1e-5)
    tols = result.pop("tols", {})  # per-entry bounds, where one differs from tol
    bad = {name: err for name, err in result.items() if not err < tols.get(name, tol)}  # NaN fails too
    assert not bad, f"relative errors above {tol}: {bad}"


def test_kernels_never_transpose():
    """Triton 3.4 to 3.7.0 miscompile tl.trans of a tl.dot result on Hopper: our kernels load transposed instead."""
    root = Path(__file__).resolve().parents[2] / "fla_compile" / "lowering" / "delta"
    for path in sorted(root.glob("triton_*.py")):
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert "tl.trans(" not in code and ".T\n" not in code and "permute(" not in code, path.name


def _run_interpreter_cases(which="fast", shard="0/1"):
    import traceback

    torch.set_num_threads(1)
    report = {}
    cases = SLOW_CASES if which == "slow" else INTERPRETER_CASES
    i, n = (int(x) for x in shard.split("/"))
    for name, (fn, args) in list(cases.items())[i::n]:
        try:
            report[name] = fn(*args)
        except Exception:  # reported to the parent, which fails that case
            report[name] = {"error": traceback.format_exc()[-2000:]}
    print(json.dumps(report))


# ---------------------------------------------------------------- GPU checks

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _env_launch_options(request, monkeypatch):
    """``DELTA_TEST_KNOBS='{"fill_sms": false, "BV_o": 64}'``: the GPU tests with these launch options
    (``triton_launch.OVERRIDES``; lists become tuples), to test a variant against the whole GPU suite. An upper-case
    name sets that switch of the module instead (``'{"FUSED_L2NORM": true}'``)."""
    knobs = os.environ.get("DELTA_TEST_KNOBS")
    if knobs and request.node.get_closest_marker("gpu"):
        from fla_compile.lowering.delta import triton_launch as DT

        for name, value in json.loads(knobs).items():
            if name.isupper():
                assert hasattr(DT, name), f"DELTA_TEST_KNOBS: triton_launch has no switch {name}"
                monkeypatch.setattr(DT, name, value)
            else:
                monkeypatch.setitem(DT.OVERRIDES, name, tuple(value) if isinstance(value, list) else value)


def _cuda_case(family, B=2, T=300, HK=2, H=4, K=64, V=64, dtype=torch.float32, gate_scale=1.0, seed=0):
    xs = make(family, B, T, HK, H, K, V, dtype=dtype, gate_scale=gate_scale, device="cuda", seed=seed)
    return xs


def _poison():
    """Fill the caching allocator's free blocks with NaN so unwritten outputs show up."""
    junk = torch.full((1 << 27,), float("nan"), device="cuda")
    del junk


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("gate_scale", [0.05, 20.0], ids=["weak", "strong"])
def test_gpu_chunk_vs_fp64(family, dtype, tol, gate_scale, K=64, V=64, T=300, B=2, H=4):
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = _cuda_case(family, B=B, T=T, HK=H // 2, H=H, K=K, V=V, dtype=dtype, gate_scale=gate_scale)
    do = torch.randn_like(v)
    dht = torch.randn_like(h0)
    _poison()
    o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.125, h0)
    ro, rs, ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.125)
    assert rel(o, ro) < tol and rel(ht, rs) < tol
    _poison()
    got = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.125, h0, None, do, dht)
    for name, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got):
        if x is not None:
            # dg under -20-per-step gates is a reverse cumsum of cancelling terms: the fp32 torch
            # path itself is 1.1e-5 from fp64 there (H100 kernel: 1.05e-5), so allow 3e-5
            t = 3e-5 if (name == "dg" and gate_scale > 1 and dtype == torch.float32) else tol
            assert rel(x, ref[name]) < t, name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_gpu_chunk_vs_fp64_K128(family, dtype, tol):
    """The production head size, K = V = 128: the dqk kernel (shared with the GLA line) then runs two key blocks
    of 64 and transposes dot results (``tl.trans(dA)``), the pattern Triton 3.4-3.7.0 miscompiles on Hopper in
    FLA's chunk_bwd_dqkwg (fla-org/flash-linear-attention#640: BK = 64 triggers it)."""
    test_gpu_chunk_vs_fp64(family, dtype, tol, 1.0, K=128, V=128)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("V", [512, 256])
def test_gpu_chunk_vs_fp64_K256(family, dtype, tol, V):
    """Gated DeltaNet's published heads, K = 256 and V = 512 (GQA), the kernels called directly: the check behind
    ``MAX_HEAD_DIM`` 256 and ``MAX_VALUE_DIM`` 512 (H200, thirty-third session; the ops past them take the torch
    path). Also in the interpreter (fp32, K = 256, V = 32, every family, thirty-second session); decode below.
    V = 256: sm90's K256V256 entry (the scalar gate's state-gradient pass in key blocks)."""
    test_gpu_chunk_vs_fp64(family, dtype, tol, 1.0, K=256, V=V, T=150, B=1, H=2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K,V", [(64, 32), (32, 64)])
def test_gpu_chunk_vs_fp64_narrow_heads(family, dtype, tol, K, V):
    """Heads of 32 (V = 32: the dv kernel's do and dh; K = 32: the key blocks), GQA, against fp64 with poisoned
    buffers, then bitwise repeatable. With blocks of 32 (block = head dim) bf16 got o, dq, dk wrong by 0.56-1.5
    and illegal memory accesses on the H200 (Triton 3.6, 2026-12-04; memcheck: "Invalid __shared__ read" in the
    dv kernel's wgmma); ``launch.head_block`` runs them in masked blocks of 64."""
    test_gpu_chunk_vs_fp64(family, dtype, tol, 1.0, K=K, V=V, T=200)
    _assert_bitwise_repeat(family, 2, T=200, K=K, V=V, dtype=dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_decode_K256(family):
    """The decode kernel (the whole K in one block) at K = 256, V = 512, fp32, the state updated in place."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = _cuda_case(family, B=4, T=3, HK=1, H=2, K=256, V=512)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(v), torch.zeros_like(h0), 0.125)
    state = h0.clone()
    o, ht = DT.fused_recurrent(q, k, v, beta, g, FAMILY_GATE[family], 0.125, state, final_state=state)
    assert ht.data_ptr() == state.data_ptr()
    assert rel(o, ro) < 1e-5 and rel(state, rs) < 1e-5


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_K256_varlen_and_bf16_decode(family):
    """K = 256, V = 512 in bf16 where the dense cases above do not reach: packed sequences (a 1-token one, one
    ending on a chunk boundary, one partial), forward and every gradient against fp64, poisoned; then the decode
    kernel in bf16 with the fp32 state updated in place."""
    from fla_compile.lowering.delta import triton_launch as DT

    xs = _cuda_case(family, B=1, T=200, HK=1, H=2, K=256, V=512, dtype=torch.bfloat16)
    q, k, v, beta, g = xs[:5]
    cu = torch.tensor([0, 1, 65, 200], device="cuda")
    h0 = torch.randn(3, 2, 256, 512, device="cuda")
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    _poison()
    o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.0625, h0, cu)
    ro, rs, ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.0625, cu)
    assert rel(o, ro) < 2e-2 and rel(ht, rs) < 2e-2, (rel(o, ro), rel(ht, rs))
    _poison()
    got = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.0625, h0, cu, do, dht)
    for name, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got):
        if x is not None:
            assert rel(x, ref[name]) < 2e-2, (name, rel(x, ref[name]))

    q, k, v, beta, g, h0 = _cuda_case(family, B=4, T=1, HK=1, H=2, K=256, V=512, dtype=torch.bfloat16)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(v), torch.zeros_like(h0), 0.0625)
    state = h0.clone()
    o, ht = DT.fused_recurrent(q, k, v, beta, g, FAMILY_GATE[family], 0.0625, state, final_state=state)
    assert ht.data_ptr() == state.data_ptr() and o.dtype == torch.bfloat16
    assert rel(o, ro) < 1e-2 and rel(state, rs) < 1e-2, (rel(o, ro), rel(state, rs))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_heads_inner_launch_order(family, monkeypatch):
    """The output, dv_local and dq/dk kernels in a 1-D grid, a chunk's heads side by side (``chunks.HEADS_INNER``,
    under A/B): bitwise the 3-D grid's outputs and gradients, bf16 at K = V = 128."""
    from fla_compile.lowering.common import chunks

    _assert_bitwise_repeat(
        family, 2, lambda i: monkeypatch.setattr(chunks, "HEADS_INNER", i == 0),
        B=2, T=300, HK=8, H=16, K=128, V=128, dtype=torch.bfloat16,
    )  # fmt: skip


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_dh_full_v_block_bf16_vs_fp64(family):
    """K = V = 128 in bf16 on a grid of 144 sequence-heads, past the SMs of an H200: the state-gradient pass runs its
    whole V block of 128 (sm90's by_dims entry; smaller grids halve it, ``fill_sms``), 8 warps and 2 stages, which
    spill offline (36-132 B) and may lower their stages under kda's shared memory."""
    from fla_compile.lowering.delta import triton_launch as DT

    dev, key = torch.device("cuda"), (128, 128, torch.bfloat16)
    if DT._knob("BV_dh", dev, key) == 128:
        assert DT._state_bv("BV_dh", 9 * 16, 128, dev, key) == 128
    test_gpu_chunk_vs_fp64(family, torch.bfloat16, 2e-2, 1.0, K=128, V=128, T=130, B=9, H=16)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("T", [64, 256])
@pytest.mark.parametrize("K", [64, 128])
def test_gpu_full_chunks_bf16_vs_fp64(family, T, K):
    """Only full chunks of 64 (no masked tail), bf16: where Triton 3.4-3.7 miscompiles FLA's 4-warp WY backward
    on Hopper (fla-org/flash-linear-attention#984: dk and dbeta off by half at T = 64-256, BT = 64, or an illegal
    address). Our WY backward runs 4 warps on sm90 too (``wy_pair``), and so would a 4-warp state-gradient pass."""
    test_gpu_chunk_vs_fp64(family, torch.bfloat16, 2e-2, 1.0, K=K, V=K, T=T)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "switches",
    [
        {"FUSED_KKT": False},
        {"WY_PAIR_HALF": False},
        {"SOLVE_MERGE_TF32": False},
        {"FUSED_KKT": False, "SOLVE_MERGE_TF32": False},
        {"SOLVE_DIAG": "steps"},
    ],
    ids=[
        "kkt_kernel",
        "wy_pair_fp32",
        "merge_exact",
        "kkt_kernel_merge_exact",
        "diag_steps",
    ],  # fmt: skip
)
@pytest.mark.parametrize("family", ["delta_rule", "gated_delta_rule"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [256, 300])
def test_gpu_switch_flipped_vs_fp64(switches, family, dtype, tol, T, monkeypatch):
    """A kernel switch set against its default (``FUSED_KKT`` off: k kᵀ by its own kernel, the solve reading it
    back; ``WY_PAIR_HALF`` off: fp32 operands in the WY/pair backward; ``SOLVE_MERGE_TF32`` off: the solve's merge
    dots exact for half inputs too), so the paths users can pick stay right: K = V = 128 against fp64, full chunks
    only (T = 256, where Triton 3.4-3.7 miscompiles 4-warp WY kernels on Hopper) and a partial one, then bitwise
    repeatable."""
    from fla_compile.lowering.delta import triton_launch as DT

    for switch, value in switches.items():
        monkeypatch.setattr(DT, switch, value)
    test_gpu_chunk_vs_fp64(family, dtype, tol, 1.0, K=128, V=128, T=T)
    _assert_bitwise_repeat(family, 2, T=T, K=128, V=128, dtype=dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("T", [256, 300])
def test_gpu_decay_rows_vs_fp64(T):
    """The gated state passes decaying the rows of v_new and of k dS' (FLA's order): bf16 at K = V = 128 against
    fp64, full chunks and a partial one, then bitwise repeatable."""
    test_gpu_chunk_vs_fp64("gated_delta_rule", torch.bfloat16, 2e-2, 1.0, K=128, V=128, T=T)
    _assert_bitwise_repeat("gated_delta_rule", 2, T=T, K=128, V=128, dtype=torch.bfloat16)


@gpu
@pytest.mark.parametrize("T", [256, 300])
def test_gpu_kda_solve_powers_vs_fp64(T, monkeypatch):
    """kda's solve (A read from memory) inverting its diagonal blocks by powers of N at tf32 (``SOLVE_DIAG_A``
    "powers", shipped; set here so the test keeps it if the default moves): bf16 at K = V = 128 against fp64, full chunks and a partial one, then bitwise repeatable."""
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(DT, "SOLVE_DIAG_A", "powers")
    test_gpu_chunk_vs_fp64("kda", torch.bfloat16, 2e-2, 1.0, K=128, V=128, T=T)
    _assert_bitwise_repeat("kda", 2, T=T, K=128, V=128, dtype=torch.bfloat16)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate_scale", [0.05, 1.0, 20.0], ids=["weak", "mid", "strong"])
def test_gpu_kda_A_rows(dtype, gate_scale):
    """kda's row-block A kernel: A itself against fp64 at K = 128 over packed sequences, then kda's forward and
    backward against fp64."""
    from fla_compile.lowering.delta import triton_launch as DT

    res = _case_kda_A_rows(64, 400, [1, 63, 65, 130, 300], gate_scale, dtype, 64, K=128, device="cuda")
    res.pop("tol")
    lim = 4e-6 if dtype == torch.float32 else 1e-2  # against fp64: the rounding of the factors
    bad = {name: err for name, err in res.items() if not err < lim}  # NaN (an unwritten entry) fails too
    assert not bad, bad
    q, k, v, beta, g, h0 = _cuda_case("kda", dtype=dtype, gate_scale=gate_scale)
    runs = [DT.chunk_forward(q, k, v, beta, g, "vector", 0.125, h0) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs)), "not bitwise deterministic"
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    test_gpu_chunk_vs_fp64("kda", dtype, tol, gate_scale)
    if dtype == torch.float32 and gate_scale == 1.0:
        test_gpu_beta_extremes_varlen_l2("kda")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_beta_extremes_varlen_l2(family):
    from fla_compile.lowering.delta import triton_launch as DT

    for beta_map in (lambda b: b * 1e-4, lambda b: 1 - b * 1e-4, lambda b: 2 * b, lambda b: 2 - b * 1e-4):
        q, k, v, beta, g, _ = _cuda_case(family, B=1, T=700)
        beta = beta_map(beta)
        cu = torch.tensor([0, 1, 64, 65, 300, 700], device="cuda")
        h0 = torch.randn(5, 4, 64, 64, device="cuda")
        do, dht = torch.randn_like(v), torch.randn_like(h0)
        o, ht = DT.chunk_forward(q, k * 3, v, beta, g, FAMILY_GATE[family], 0.125, h0, cu, True)
        ro, rs, ref = torch_grads(family, q, k * 3, v, beta, g, h0, do, dht, 0.125, cu, True)
        assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5
        got = DT.chunk_backward(q, k * 3, v, beta, g, FAMILY_GATE[family], 0.125, h0, cu, do, dht, True)
        for name, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got):
            if x is not None:
                assert rel(x, ref[name]) < 1e-5, name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fused", [False, True], ids=["torch_norm", "fused_norm"])
def test_gpu_l2norm_K128(family, dtype, tol, fused, monkeypatch):
    """use_qk_l2norm at the production head size (K = V = 128, GQA, unnormalized q, k of norm ~11), the norm in
    torch ops and by the fused kernels (``FUSED_L2NORM``): outputs and gradients against fp64, poisoned, and the
    fused path bitwise deterministic."""
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(DT, "FUSED_L2NORM", fused)
    q, k, v, beta, g, h0 = _cuda_case(family, T=300, K=128, V=128, dtype=dtype)
    k = k * 3
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    ro, rs, ref = torch_grads(family, q, k, v, beta, g, h0, do, dht, 128**-0.5, None, True)
    runs = []
    for _ in range(2):
        _poison()
        o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 128**-0.5, h0, None, True)
        _poison()
        got = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 128**-0.5, h0, None, do, dht, True)
        runs.append([x for x in (o, ht, *got) if x is not None])
    assert rel(o, ro) < tol and rel(ht, rs) < tol, (rel(o, ro), rel(ht, rs))
    if fused:  # the fused backward writes dq, dk in the inputs' dtype (the torch-ops norm's are fp32)
        assert got[0].dtype == got[1].dtype == dtype, (got[0].dtype, got[1].dtype)
    for name, x in zip(["dq", "dk", "dv", "db", "dg", "dh0"], got):
        if x is not None:
            assert rel(x, ref[name]) < tol, (name, rel(x, ref[name]))
    assert all(torch.equal(a, b) for a, b in zip(*runs)), "not bitwise deterministic"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_long_sequence_no_drift(family):
    """T = 65536 in one sequence (1024 chunks through the state pass), fp32: within 1e-5 of fp64, the tail too."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = _cuda_case(family, B=1, T=65536, HK=1, H=2, gate_scale=0.02)
    o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.125, h0)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(v), torch.zeros_like(h0), 0.125)
    assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5
    assert rel(o[:, -1024:], ro[:, -1024:]) < 1e-5  # the tail as accurate as the whole


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_deterministic(family):
    _assert_bitwise_repeat(family, 3, dtype=torch.bfloat16, T=1000)


def _assert_bitwise_repeat(family, n, before_run=None, **case):
    """``n`` chunked forwards and backwards of one CUDA case (``_cuda_case(family, **case)``): equal bit for bit.
    ``before_run(i)`` (optional) sets what run i differs in (a switch that must not change a bit)."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = _cuda_case(family, **case)
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    runs = []
    for i in range(n):
        if before_run is not None:
            before_run(i)
        fwd = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.125, h0)
        bwd = DT.chunk_backward(q, k, v, beta, g, FAMILY_GATE[family], 0.125, h0, None, do, dht)
        runs.append([x for x in (*fwd, *bwd) if x is not None])
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other)), "not bitwise deterministic"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_decode_and_ops(family):
    import fla_compile.ops as ops

    q, k, v, beta, g, h0 = _cuda_case(family, B=8, T=1)
    args = (q, k, v, beta) if g is None else (q, k, v, g, beta)
    o, ht = getattr(ops, family)(*args, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(v), torch.zeros_like(h0), 64**-0.5,
                            None, True)  # fmt: skip
    assert rel(o, ro) < 1e-5 and rel(ht, rs) < 1e-5
    from fla_compile.reference import delta as reference

    q, k, v, beta, g, h0 = _cuda_case(family, B=2, T=200)
    leaves = [x.requires_grad_() for x in (q, k, v, beta, h0, g) if x is not None]
    args = (q, k, v, beta) if g is None else (q, k, v, g, beta)
    fn = getattr(ops, family)
    o, ht = torch.compile(fn, fullgraph=True)(*args, initial_state=h0, output_final_state=True)
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(o.shape, generator=gen).cuda(), torch.randn(ht.shape, generator=gen).cuda()
    torch.autograd.backward((o, ht), (do, dht))
    # against the fp64 loop (fla_compile.reference) on the CPU, outputs and every gradient
    r_leaves = [x.detach().cpu().double().requires_grad_() for x in leaves]
    rq, rk, rv, rb, rh0, *rg = r_leaves
    r_args = (rq, rk, rv, rb) if g is None else (rq, rk, rv, rg[0], rb)
    ro, rs = getattr(reference, family)(*r_args, initial_state=rh0, output_final_state=True)
    torch.autograd.backward((ro, rs), (do.cpu().double(), dht.cpu().double()))
    assert rel(o.cpu(), ro) < 1e-5 and rel(ht.cpu(), rs) < 1e-5
    for a, b in zip(leaves, r_leaves):
        assert rel(a.grad.cpu(), b.grad) < 1e-5


if __name__ == "__main__":
    _run_interpreter_cases(*sys.argv[1:3])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("K,V", [(16, 8), (16, 16), (32, 32)])
def test_gpu_fp32_tf32_mode_small_heads(family, K, V):
    """fp32 under "high" (plain tf32 dots) at small head dims, forward and gradients within tf32's accuracy of fp64:
    the three-tf32 split was wrong or faulted at K = 16 on the H200 (2026-12-01, so it is fenced to 64..128), and
    Triton's tf32 tensor-core products with narrow tiles are where such faults live."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        test_gpu_chunk_vs_fp64(family, torch.float32, 5e-3, 1.0, K=K, V=V, T=150)
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_fp32_tf32_mode(family):
    """fp32 inputs under torch.set_float32_matmul_precision("high"): tf32 dots, within tf32's accuracy of fp64."""
    from fla_compile.lowering.delta import triton_launch as DT

    q, k, v, beta, g, h0 = _cuda_case(family, dtype=torch.float32)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        o, ht = DT.chunk_forward(q, k, v, beta, g, FAMILY_GATE[family], 0.125, h0)
    finally:
        torch.set_float32_matmul_precision(old)
    ro, rs, _ = torch_grads(family, q, k, v, beta, g, h0, torch.zeros_like(o), torch.zeros_like(ht), 0.125)
    assert rel(o, ro) < 5e-3 and rel(ht, rs) < 5e-3, (rel(o, ro), rel(ht, rs))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
@pytest.mark.parametrize("T", [256, 300])
def test_gpu_fp32_three_tf32(family, T, monkeypatch):
    """fp32 at "highest" with ``launch.FP32_HIGHEST = "tf32x3"`` (our three tf32 products, ``common/dots.py``; Triton's
    own "tf32x3" faulted here on Triton 3.6): K = V = 128 forward and gradients within fp32's tolerance of fp64,
    full chunks and a partial one, then bitwise repeatable."""
    from fla_compile.lowering.common import launch
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(launch, "FP32_HIGHEST", "tf32x3")
    monkeypatch.setattr(DT, "FP32_SPLIT_VECTOR_GATE", True)
    test_gpu_chunk_vs_fp64(family, torch.float32, 1e-5, 1.0, K=128, V=128, T=T)
    _assert_bitwise_repeat(family, 2, T=T, K=128, V=128, dtype=torch.float32)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", list(FAMILY_GATE))
def test_gpu_fp32_three_tf32_wide_grid(family, monkeypatch):
    """fp32 at "highest" (three tf32 products) on a grid of 64 sequence-heads: the state passes keep their full V
    blocks there (the small cases' grids halve them) and fp32 tiles may lower a kernel's stages (``launch.fitted``),
    the options the training shapes run. Forward and gradients against fp64 (kda: with FP32_SPLIT_VECTOR_GATE on,
    which this checks)."""
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(DT, "FP32_SPLIT_VECTOR_GATE", True)
    test_gpu_chunk_vs_fp64(family, torch.float32, 1e-5, 1.0, K=128, V=128, T=200, B=4, H=16)


def test_launch_options_come_from_the_arch_tables():
    """One config system for both lines: the delta kernels' options live in the per-arch tables ("delta")."""
    pytest.importorskip("triton")
    import re

    from fla_compile.lowering.common import autotune
    from fla_compile.lowering.delta import triton_launch as DT

    src = (Path(DT.__file__)).read_text()
    used = {n for f in ("_opts", "_knob", "_state_bv") for n in re.findall(f + r'\("(\w+)"', src)}
    assert used <= set(DT._DEFAULTS), used - set(DT._DEFAULTS)
    for arch in ("sm90", "default"):
        section = autotune.table(arch)["delta"]
        assert used <= set(section), (arch, used - set(section))
        assert DT._arch_table(arch)["dh"] == tuple(section["dh"])
    assert DT._knob("BV_h", torch.device("cpu")) == autotune.table("default")["delta"]["BV_h"]
    DT.OVERRIDES["BV_h"] = 16
    try:
        assert DT._knob("BV_h", torch.device("cpu")) == 16
    finally:
        DT.OVERRIDES.clear()


def test_solve_diag_switches(monkeypatch):
    """The solve's diagonal inversions: SOLVE_DIAG with k kᵀ in the kernel, SOLVE_DIAG_A with half inputs reading A,
    the row steps for fp32; a value the kernel does not know is an error, not its fall-through to the row steps."""
    pytest.importorskip("triton")
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(DT, "SOLVE_DIAG_A", "powers")
    assert DT._solve_diag(True, torch.bfloat16) == DT.SOLVE_DIAG == "powers"
    assert DT._solve_diag(False, torch.float16) == "powers"
    assert DT._solve_diag(False, torch.float32) == "steps"
    monkeypatch.setattr(DT, "SOLVE_DIAG", "powers_tf32")  # an old value
    with pytest.raises(ValueError, match="expected 'powers' or 'steps', got 'powers_tf32'"):
        DT._solve_diag(True, torch.bfloat16)


def test_launch_option_register_cap(monkeypatch):
    """A table entry [warps, stages, maxnreg] launches with Triton's register cap; two entries launch without one."""
    pytest.importorskip("triton")
    from fla_compile.lowering.delta import triton_launch as DT

    cpu = torch.device("cpu")
    assert DT._opts("dh", cpu) == {"num_warps": DT._DEFAULTS["dh"][0], "num_stages": DT._DEFAULTS["dh"][1]}
    monkeypatch.setitem(DT.OVERRIDES, "dh", (8, 1, 128))
    assert DT._opts("dh", cpu) == {"num_warps": 8, "num_stages": 1, "maxnreg": 128}


def test_dh_wrong_forms_fenced():
    """The state-gradient pass never runs a form the H200 computed wrong or faulted on: 8 warps / 1 stage under
    split fp32 products, 4 warps / 1 stage in bf16 and fp16, and 8 warps / 1 stage there too at V blocks of 32 or
    less; exact fp32 dots and one tf32 product have none."""
    pytest.importorskip("triton")
    from fla_compile.lowering.delta import triton_launch as DT

    for split in DT.launch.SPLIT_PRECS:
        assert DT._dh_wrong_forms(torch.float32, split, 32) == ((8, 1),)
    for half in (torch.bfloat16, torch.float16):
        assert DT._dh_wrong_forms(half, DT.launch.prec(half, 128, 128), 64) == ((4, 1),)
        assert set(DT._dh_wrong_forms(half, DT.launch.prec(half, 256, 512), 32)) == {(4, 1), (8, 1)}
    assert DT._dh_wrong_forms(torch.float32, "ieee", 64) == DT._dh_wrong_forms(torch.float32, "tf32", 64) == ()


def test_launch_options_by_dtype(monkeypatch):
    """Options per input dtype: fp32 keeps k kᵀ out of the solve kernel (``_DTYPE_DEFAULTS``), an arch table's
    ``by_dtype`` section overrides a kernel's options for that dtype only, and its ``delta_<precision>`` part for
    that dtype at those dots only (sm90: fp32's state-pass tiles under three tf32 products, not under one)."""
    pytest.importorskip("triton")
    from fla_compile.lowering.common import autotune
    from fla_compile.lowering.delta import triton_launch as DT

    cpu = torch.device("cpu")
    assert DT._knob("fused_kkt", cpu, (64, 64, torch.bfloat16)) is True
    assert DT._knob("fused_kkt", cpu, (64, 64, torch.float32)) is False
    real = autotune.table
    monkeypatch.setattr(
        autotune, "table", lambda arch: {**real(arch), "by_dtype": {"float32": {"delta": {"dh": [4, 1, 128]}}}}
    )
    DT._device_table.cache_clear()
    try:
        assert DT._opts("dh", cpu, (128, 128, torch.float32)) == {"num_warps": 4, "num_stages": 1, "maxnreg": 128}
        assert DT._opts("dh", cpu, (128, 128, torch.bfloat16))["num_warps"] == DT._DEFAULTS["dh"][0]
    finally:
        DT._device_table.cache_clear()
    sm90 = torch.device("cuda", 0)
    monkeypatch.setattr(autotune, "table", real)
    monkeypatch.setattr(DT, "_arch", lambda *a: "sm90")
    DT._device_table.cache_clear()
    try:
        split, one = (DT._device_table(sm90, (128, 128, torch.float32, p)) for p in ("tf32x3", "tf32"))
        half = DT._device_table(sm90, (128, 128, torch.bfloat16, "tf32"))
        assert (split["BV_h"], split["BV_o"], split["o"]) == (32, 64, (4, 1))
        assert (one["BV_o"], one["o"]) == (64, (4, 1)) and one["BV_h"] == half["BV_h"] != 32  # "high": o only
        assert split["BV_dh"] == one["BV_dh"] == 64  # every fp32 form
    finally:
        DT._device_table.cache_clear()


def test_key_block_state_passes_from_the_tables(monkeypatch):
    """sm90's key-block state passes, listed per gate kind: at K 256 x V 512 the forward's for no gate and a scalar
    one (h_split's launch), the state-gradient pass's for a scalar gate and kda's (dh_split [8, 2], kda's [8, 1],
    on V blocks of BV_dh_split, 64, where the whole K keeps BV_dh's 32; kda's not halved below 64 for a small grid);
    at K 256 x V 256 the scalar gate's passes (the forward's since the thirty-ninth session); at K = V = 128
    none. A ``<pass>_split_k`` naming no gate kind is an error naming the option."""
    pytest.importorskip("triton")
    from fla_compile.lowering.common.gates import GATE_SCANNED_ID
    from fla_compile.lowering.delta import triton_launch as DT

    sm90 = torch.device("cuda", 0)
    monkeypatch.setattr(DT, "_arch", lambda *a: "sm90")
    DT._device_table.cache_clear()
    try:
        wide, square = (256, 512, torch.bfloat16, "tf32"), (256, 256, torch.bfloat16, "tf32")
        base = (128, 128, torch.bfloat16, "tf32")
        none, scalar, vector = DT.GATE_NONE_ID, DT.GATE_IDS["scalar"], DT.GATE_VECTOR_ID
        blocks = {
            (kernel, shape[1], gid): DT._key_blocks(kernel, shape[0], gid, sm90, shape)
            for kernel in ("h", "dh")
            for shape in (wide, square, base)
            for gid in (none, scalar, vector)
        }
        assert {k for k, on in blocks.items() if on} == {
            ("h", 512, none),
            ("h", 512, scalar),
            ("dh", 512, scalar),
            ("dh", 512, vector),
            ("h", 256, scalar),
            ("dh", 256, scalar),
        }
        assert DT._key_blocks("dh", 256, GATE_SCANNED_ID, sm90, wide)  # every form of a scalar gate
        assert DT._state_opts("h_split", 64, 512, scalar, sm90, wide) == {"num_warps": 4, "num_stages": 2}
        assert DT._state_opts("h", 64, 512, vector, sm90, wide) == {"num_warps": 8, "num_stages": 2}
        assert DT._state_opts("dh_split", 64, 512, scalar, sm90, wide) == {"num_warps": 8, "num_stages": 2}
        # kda's on 1 stage (dh_split_vector): at 2 its tiles ask 328,704 B of shared memory, which launch.fitted
        # found and retried every call
        assert DT._state_opts("dh_split", 64, 512, vector, sm90, wide) == {"num_warps": 8, "num_stages": 1}
        assert (DT._knob("BV_dh_split", sm90, wide), DT._knob("BV_dh", sm90, wide)) == (64, 32)
        # one sequence of 8 heads (64 programs on V blocks of 64, under one wave of 132 SMs): fill_sms halves the
        # scalar gate's key-block V blocks to 32, not kda's (BV_dh_split_lo_vector); the whole K keeps 32
        monkeypatch.setattr(DT.launch, "sm_count", lambda device: 132)
        bv = {gid: DT._dh_bv(8, 512, DT._key_blocks("dh", 256, gid, sm90, wide), gid, "tf32", sm90, wide)
              for gid in (none, scalar, vector)}  # fmt: skip
        assert bv == {none: 32, scalar: 32, vector: 64}
        assert DT._dh_bv(8, 512, True, vector, "tf32", sm90, square) == 32  # elsewhere the default floor
        for bad in (True, "scalar", ("scalars",)):
            monkeypatch.setitem(DT.OVERRIDES, "dh_split_k", bad)
            with pytest.raises(ValueError, match="dh_split_k"):
                DT._key_blocks("dh", 256, scalar, sm90, wide)
    finally:
        DT._device_table.cache_clear()


def test_split_precs_per_kernel(monkeypatch):
    """``split_precs``: a forward kernel's own split form for fp32 inputs under a split form; calls at other
    precisions keep theirs, and an entry for another kernel or a form that is not a split is an error naming the
    option, not a silently different product."""
    pytest.importorskip("triton")
    from fla_compile.lowering.delta import triton_launch as DT

    cpu, key = torch.device("cpu"), (128, 128, torch.float32, "tf32x3")
    assert DT._kernel_prec("h", "tf32x3", cpu, key) == "tf32x3"  # the tables' default: none
    monkeypatch.setitem(DT.OVERRIDES, "split_precs", {"h": "bf16x6"})
    assert DT._kernel_prec("h", "tf32x3", cpu, key) == "bf16x6"
    assert DT._kernel_prec("o", "tf32x3", cpu, key) == "tf32x3"
    assert DT._kernel_prec("h", "tf32", cpu, (128, 128, torch.float32, "tf32")) == "tf32"  # "high": one product
    assert DT._kernel_prec("h", "ieee", cpu, (128, 128, torch.float32, "ieee")) == "ieee"
    monkeypatch.setitem(DT.OVERRIDES, "split_precs", {"dh": "bf16x6"})
    with pytest.raises(ValueError, match=r"split_precs names \['dh'\]"):
        DT._kernel_prec("h", "tf32x3", cpu, key)
    monkeypatch.setitem(DT.OVERRIDES, "split_precs", {"h": "tf32"})
    with pytest.raises(ValueError, match=r"split_precs\['h'\] = 'tf32'"):
        DT._kernel_prec("h", "tf32x3", cpu, key)
    monkeypatch.delitem(DT.OVERRIDES, "split_precs")
    monkeypatch.setattr(DT, "_arch", lambda *a: "sm90")
    DT._device_table.cache_clear()
    try:  # sm90: the forward's W/U, state and output kernels on six bf16 products, the rest on three tf32
        sm90 = torch.device("cuda", 0)
        assert [DT._kernel_prec(n, "tf32x3", sm90, key) for n in ("wu", "h", "o", "dh")] == ["bf16x6"] * 3 + ["tf32x3"]
        assert DT._kernel_prec("h", "tf32", sm90, (128, 128, torch.float32, "tf32")) == "tf32"
    finally:
        DT._device_table.cache_clear()


def test_state_pass_v_block_fills_the_sms(monkeypatch):
    """``fill_sms``: the state passes' V block is halved while the doubled grid still fits the SMs."""
    pytest.importorskip("triton")
    from fla_compile.lowering.common import launch
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    cuda = torch.device("cuda", 0)
    monkeypatch.setitem(DT.OVERRIDES, "BV_h", 64)
    monkeypatch.setitem(DT.OVERRIDES, "fill_sms", False)
    assert DT._state_bv("BV_h", 32, 128, cuda) == 64  # off: the table's block
    DT.OVERRIDES["fill_sms"] = True
    assert DT._state_bv("BV_h", 32, 128, cuda) == 32  # B·H = 32: 64 -> 128 programs, not 256
    assert DT._state_bv("BV_h", 128, 128, cuda) == 64  # 256 programs already: kept
    assert DT._state_bv("BV_h", 4, 128, cuda) == 16  # never below 16
    assert DT._state_bv("BV_h", 4, 128, torch.device("cpu")) == 64  # the interpreter: the table's


def test_state_pass_options_where_the_v_block_was_halved(monkeypatch):
    """``_state_opts``: a state pass whose V block ``fill_sms`` halved takes ``<kernel>_fill`` (with a gate per key,
    ``<kernel>_fill_vector`` where the table has one), one at the table's block its own options (with a gate per
    key, ``<kernel>_vector`` where the table has one); the most specific override wins (sweep_delta's variants), so
    an override of the kernel alone applies to every block."""
    pytest.importorskip("triton")
    from fla_compile.lowering.delta import triton_launch as DT

    cpu = torch.device("cpu")
    for name, value in (("BV_h", 64), ("h", (4, 2)), ("h_fill", (4, 3))):
        monkeypatch.setitem(DT.OVERRIDES, name, value)
    assert DT._state_opts("h", 64, 128, 1, cpu) == {"num_warps": 4, "num_stages": 2}  # the table's block
    assert DT._state_opts("h", 32, 128, 1, cpu) == {"num_warps": 4, "num_stages": 3}  # halved
    assert DT._state_opts("h", 32, 128, 2, cpu) == {"num_warps": 4, "num_stages": 3}  # no h_fill_vector anywhere
    assert DT._state_opts("h", 32, 32, 1, cpu) == {"num_warps": 4, "num_stages": 2}  # V = 32: the block is whole
    del DT.OVERRIDES["h_fill"]
    assert DT._state_opts("h", 32, 128, 1, cpu) == {"num_warps": 4, "num_stages": 2}  # "h" alone overridden
    DT.OVERRIDES.clear()
    monkeypatch.setattr(
        DT,
        "_device_table",
        lambda device, key=None: {"BV_dh": 64, "dh": (8, 2), "dh_fill": (4, 3), "dh_fill_vector": (2, 1)},
    )
    assert DT._state_opts("dh", 32, 128, 1, cpu) == {"num_warps": 4, "num_stages": 3}
    assert DT._state_opts("dh", 32, 128, 2, cpu) == {"num_warps": 2, "num_stages": 1}  # kda's own
    assert DT._state_opts("dh", 64, 128, 2, cpu) == {"num_warps": 8, "num_stages": 2}
    monkeypatch.setitem(DT.OVERRIDES, "dh_fill", (4, 2))
    assert DT._state_opts("dh", 32, 128, 2, cpu) == {"num_warps": 4, "num_stages": 2}  # overridden beats the table
    monkeypatch.setattr(
        DT, "_device_table", lambda device, key=None: {"BV_dh_split": 64, "dh_split": (8, 2), "dh_split_vector": (8, 1)}
    )
    DT.OVERRIDES.clear()
    assert DT._state_opts("dh_split", 64, 512, 2, cpu) == {"num_warps": 8, "num_stages": 1}  # kda's own, any block
    assert DT._state_opts("dh_split", 32, 512, 2, cpu) == {"num_warps": 8, "num_stages": 1}
    assert DT._state_opts("dh_split", 64, 512, 1, cpu) == {"num_warps": 8, "num_stages": 2}  # a scalar gate
    monkeypatch.setitem(DT.OVERRIDES, "dh_split", (4, 2))
    assert DT._state_opts("dh_split", 64, 512, 2, cpu) == {"num_warps": 4, "num_stages": 2}  # sweep_delta's override
