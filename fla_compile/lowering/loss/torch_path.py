"""Chunked torch implementations of the fused linear losses: the logits ``hidden @ weight.T`` of
a chunk of rows at a time, never all [N, vocab] of them.

Each chunk's logits are computed with fp32 accumulation and kept in fp32 (fp64 for fp64 inputs):
the log-sum-exp, the loss and the gradient of the loss wrt the chunk's logits are formed from them,
and in the same pass that gradient goes through the weight once more for the chunk's hidden-state
gradient and is accumulated into the weight's (and bias's) gradient, in fp32. The forward thus
returns the gradients of a ``mean`` or ``sum`` loss; the backward only scales them by the incoming
gradient. ``reduction='none'`` cannot do that (the weight's gradient mixes rows with their own
incoming gradients): its backward recomputes the chunks with those row weights (``*_backward``).

Memory: the inputs, the gradients (hidden-sized and weight-sized, the latter accumulated in fp32),
and about two [chunk, vocab] fp32 buffers; ``chunk_rows`` keeps one of those near ``LOGITS_BUDGET``.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from ...numerics import HALF

log = logging.getLogger("fla_compile")

# bytes of one chunk's fp32 logits: each chunk re-reads the weight and read-modify-writes its fp32 gradient, so
# fewer, larger chunks are faster (H200, N=16384, vocab 151936, hidden 2048, bf16: 256 rows 138 ms, 512 rows
# 104 ms, 1024 rows 90 ms at 2.96 GiB peak; the unfused loss 71 ms at 27.8 GiB)
LOGITS_BUDGET = 1 << 30
# The softmax and its gradient of a chunk of cross entropy (or KL) by one Triton kernel (``triton_kernels``)
# rather than torch's elementwise passes over the chunk's fp32 logits: "auto" where it pays (CUDA, half weights:
# the gradient is written once in their dtype, ready for both products), True wherever the kernels run (tests
# force it under TRITON_INTERPRET=1; never fp64), False never (benchmarks/fused_loss.py --softmax-grad A/Bs).
# "auto" since its GPU tests passed on the H200 and it won there (N=16384, vocab 151936, hidden 2048, bf16,
# chunks of 1024 rows: 56.1 ms vs 86.9 ms for torch's passes; the unfused loss 71.2 ms at 27.8 GiB, ours 2.67 GiB).
TRITON_SOFTMAX_GRAD: str | bool = "auto"


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype logits, losses and accumulators are kept in: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def chunk_rows(n: int, vocab: int, chunk_size: int = 0) -> int:
    """Rows per chunk: ``chunk_size`` if given (> 0), else the largest power of two whose fp32
    logits fit in ``LOGITS_BUDGET`` (1024 rows for a 151936 vocabulary), at most ``n``."""
    if chunk_size > 0:
        return max(1, min(chunk_size, n))
    rows = max(1, LOGITS_BUDGET // (4 * max(vocab, 1)))
    return max(1, min(1 << (rows.bit_length() - 1), n))


@functools.cache
def _fp32_out_gemm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this device's ``mm``/``addmm`` take half operands with an fp32 result (``out_dtype``,
    CUDA): checked once per device and dtype on a tiny product against its fp64 value."""
    if device.type != "cuda" or dtype not in HALF:
        return False
    try:
        a = torch.randn(8, 16, device=device).to(dtype)
        b = torch.randn(16, 8, device=device).to(dtype)
        acc = torch.ones(8, 8, device=device)
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        ref = 1 + a.double() @ b.double()
        ok = torch.mm(a, b, out_dtype=torch.float32).dtype == torch.float32 and (acc - ref).abs().max().item() < 1e-3
    except Exception:  # noqa: BLE001 - this torch has no fp32-output half gemm here: upcast instead
        ok = False
    log.debug("fla_compile: fp32-output %s gemm on %s: %s", dtype, device, ok)
    return ok


def gemm_mode(weight: torch.Tensor) -> str:
    """How a chunk's products run for this weight: "native" (fp32/fp64 inputs), "out_dtype" (half
    inputs on CUDA, fp32 results from the gemm itself), "half" (half inputs on CUDA without that:
    half results upcast, the weight's gradient accumulated in fp32 by slices of the vocabulary), or
    "upcast" (half inputs elsewhere: the weight upcast once, fp32 products)."""
    if weight.dtype not in HALF:
        return "native"
    if weight.device.type != "cuda":
        return "upcast"
    return "out_dtype" if _fp32_out_gemm(weight.device, weight.dtype) else "half"


class Gemm:
    """The three products of a chunk, each accumulating in fp32 whatever the inputs' dtype (see
    ``gemm_mode``)."""

    SLICE = 16384  # vocabulary rows per fp32 temporary of the weight's gradient in "half" mode

    def __init__(self, weight: torch.Tensor):
        self.dtype = weight.dtype
        self.acc = acc_dtype(weight)
        self.mode = gemm_mode(weight)
        self.w = weight.to(self.acc) if self.mode == "upcast" else weight

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """[C, V] = h @ w.T in the accumulation dtype."""
        if self.mode == "out_dtype":
            return torch.mm(h, self.w.t(), out_dtype=torch.float32)
        if self.mode == "half":
            return torch.mm(h, self.w.t()).float()
        return torch.mm(h.to(self.acc), self.w.t())

    def grad_dtype(self) -> torch.dtype:
        """The dtype both backward products take dz in: the weight's for the half products, else fp32/fp64."""
        return self.dtype if self.mode in ("out_dtype", "half") else self.acc

    def input_grad(self, dz: torch.Tensor) -> torch.Tensor:
        """[C, Hd] = dz @ w, dz in the accumulation dtype or already in ``grad_dtype`` (not cast again)."""
        return torch.mm(dz.to(self.w.dtype), self.w)

    def add_weight_grad(self, dw: torch.Tensor, dz: torch.Tensor, h: torch.Tensor) -> None:
        """dw += dz.T @ h, dw in the accumulation dtype, dz in it or already in ``grad_dtype``."""
        if self.mode == "out_dtype":
            torch.addmm(dw, dz.to(self.dtype).t(), h, out_dtype=torch.float32, out=dw)
        elif self.mode == "half":
            dzh = dz.to(self.dtype)
            for s in range(0, dw.shape[0], self.SLICE):
                dw[s : s + self.SLICE] += torch.mm(dzh[:, s : s + self.SLICE].t(), h).float()
        else:
            dw.addmm_(dz.to(self.acc).t(), h.to(self.acc))


def _row_scale(valid: torch.Tensor, reduction: str, acc: torch.dtype) -> torch.Tensor:
    """d loss / d row loss for ``mean`` (over the valid rows; all ignored: 0, as torch) and ``sum``."""
    w = valid.to(acc)
    return w / w.sum().clamp_min(1) if reduction == "mean" else w


def _reduce(rows: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total / valid.sum() if reduction == "mean" else total  # all ignored, mean: 0/0 = nan, as torch


# ---------------------------------------------------------------- cross entropy
def use_triton_softmax_grad(weight: torch.Tensor, mode: str) -> bool:
    """Whether the chunks of cross entropy (of KL: ``weight`` the student's) take their softmax and its
    gradient from the Triton kernels (see :data:`TRITON_SOFTMAX_GRAD`)."""
    flag = TRITON_SOFTMAX_GRAD
    if flag is False or weight.dtype == torch.float64:
        return False
    if flag == "auto":
        return weight.device.type == "cuda" and mode in ("out_dtype", "half")
    return weight.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _ce_chunks(hidden, weight, bias, labels, ignore_index, smoothing, chunk, row_scale, want_dh, want_dw):
    """The per-row losses [N] and, where ``row_scale`` [N] is given, the gradients of
    sum(row_scale * row losses) wrt hidden, weight and bias (None where not wanted)."""
    N, V = hidden.shape[0], weight.shape[0]
    gemm = Gemm(weight)
    acc = gemm.acc
    valid = labels != ignore_index
    target = torch.where(valid, labels, 0)
    rows = torch.empty(N, dtype=acc, device=hidden.device)
    grads = row_scale is not None
    dh = torch.empty_like(hidden) if grads and want_dh else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if grads and want_dw else None
    db = torch.zeros(V, dtype=acc, device=weight.device) if grads and bias is not None and want_dw else None
    b = bias.to(acc) if bias is not None else None
    kernel = use_triton_softmax_grad(weight, gemm.mode)
    if kernel:
        from . import triton_kernels  # here, not at import: TRITON_INTERPRET is read when kernels are defined

        b = b.contiguous() if b is not None else None
        # the gradient of every chunk, in the dtype the products take it in: one buffer for the call; fp32 where
        # the bias's gradient sums its columns (fp16 would flush its ~p / N entries to 0: 9% off at vocab 32000)
        dz_dtype = acc if db is not None else gemm.grad_dtype()
        dz_buf = torch.empty(min(chunk, N), V, dtype=dz_dtype, device=hidden.device) if grads else None
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        h, y = hidden[s:e], target[s:e]
        z = gemm.logits(h)  # [C, V]
        if kernel:
            scale = row_scale[s:e] * valid[s:e] if grads else None
            dz = dz_buf[: e - s] if grads else None
            _, loss = triton_kernels.ce_softmax_grad(z, b, y, scale, smoothing, dz)
            rows[s:e] = torch.where(valid[s:e], loss, 0)
            if not grads:
                continue
            if db is not None:
                db += dz.sum(dim=0)
                dz = dz.to(gemm.grad_dtype())  # once for both products
        else:
            if b is not None:
                z += b
            lse = torch.logsumexp(z, dim=-1)
            loss = lse - z.gather(1, y[:, None])[:, 0]
            if smoothing:  # (1 - eps) * nll + eps * mean over classes of -log p
                loss = (1 - smoothing) * loss + smoothing * (lse - z.mean(dim=-1))
            rows[s:e] = torch.where(valid[s:e], loss, 0)
            if not grads:
                continue
            dz = z.sub_(lse[:, None]).exp_()  # softmax, in z's buffer
            dz.scatter_add_(1, y[:, None], torch.full((e - s, 1), smoothing - 1, dtype=acc, device=z.device))
            if smoothing:
                dz.sub_(smoothing / V)
            dz.mul_((row_scale[s:e] * valid[s:e])[:, None])
            if db is not None:
                db += dz.sum(dim=0)
            dz = dz.to(gemm.grad_dtype())  # once for both products (a no-op unless half products)
        if dh is not None:
            dh[s:e] = gemm.input_grad(dz)
        if dw is not None:
            gemm.add_weight_grad(dw, dz, h)
    return rows, valid, dh, dw, db


def check_labels(labels: torch.Tensor, ignore_index: int, vocab: int) -> None:
    """Labels outside [0, vocab) other than ``ignore_index`` are an error, as in F.cross_entropy
    (read on the CPU; on CUDA an asynchronous assert, no host sync)."""
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if labels.device.type == "cpu":
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"fla_compile.linear_cross_entropy: labels[{i}] = {int(labels[i])} is outside [0, {vocab}) "
                f"and is not ignore_index ({ignore_index})"
            )
    elif labels.device.type == "cuda":
        torch._assert_async(~bad.any(), "fla_compile.linear_cross_entropy: a label is outside [0, vocab)")


def cross_entropy_forward(hidden, weight, bias, labels, ignore_index, smoothing, reduction, want_dh, want_dw, chunk):
    """(loss, d hidden, d weight, d bias) of cross_entropy(hidden @ weight.T + bias, labels); the
    gradients are those of the loss (None where not wanted, and always for ``reduction='none'``)."""
    check_labels(labels, ignore_index, weight.shape[0])
    chunk = chunk_rows(hidden.shape[0], weight.shape[0], chunk)
    acc = acc_dtype(hidden)
    scale = None
    if reduction != "none" and (want_dh or want_dw):
        scale = _row_scale(labels != ignore_index, reduction, acc)
    rows, valid, dh, dw, db = _ce_chunks(
        hidden, weight, bias, labels, ignore_index, smoothing, chunk, scale, want_dh, want_dw
    )
    return _reduce(rows, valid, reduction), dh, dw, db


def cross_entropy_backward(grad_rows, hidden, weight, bias, labels, ignore_index, smoothing, want_dh, want_dw, chunk):
    """(d hidden, d weight, d bias) of sum(grad_rows * per-row losses): ``reduction='none'``'s backward."""
    chunk = chunk_rows(hidden.shape[0], weight.shape[0], chunk)
    scale = grad_rows.to(acc_dtype(hidden))
    _, _, dh, dw, db = _ce_chunks(hidden, weight, bias, labels, ignore_index, smoothing, chunk, scale, want_dh, want_dw)
    return dh, dw, db


# ---------------------------------------------------------------- KL divergence (distillation)
def _kl_chunks(hs, ws, ht, wt, valid, temperature, chunk, row_scale, want_dh, want_dw):
    """Per-row KL(p_teacher || p_student) [N] of the tempered softmaxes and, where ``row_scale`` is
    given, the gradients of sum(row_scale * rows) wrt the student's hidden and weight."""
    N, V = hs.shape[0], ws.shape[0]
    gs, gt = Gemm(ws), Gemm(wt)
    acc = gs.acc
    rows = torch.empty(N, dtype=acc, device=hs.device)
    grads = row_scale is not None
    dh = torch.empty_like(hs) if grads and want_dh else None
    dw = torch.zeros(ws.shape, dtype=acc, device=ws.device) if grads and want_dw else None
    inv_t = 1.0 / temperature
    kernel = use_triton_softmax_grad(ws, gs.mode)
    if kernel:
        from . import triton_kernels

        dz_buf = torch.empty(min(chunk, N), V, dtype=gs.grad_dtype(), device=hs.device) if grads else None
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        m = valid[s:e] if valid is not None else None
        if kernel:
            zs, zt = gs.logits(hs[s:e]), gt.logits(ht[s:e]).to(acc)
            w = None if not grads else row_scale[s:e] if m is None else row_scale[s:e] * m
            dz = dz_buf[: e - s] if grads else None
            kl = triton_kernels.kl_softmax_grad(zs, zt, temperature, w, dz)
            rows[s:e] = kl if m is None else torch.where(m, kl, 0)
            if not grads:
                continue
        else:
            zs = gs.logits(hs[s:e]).mul_(inv_t)
            zt = gt.logits(ht[s:e]).to(acc).mul_(inv_t)
            ls = zs.sub_(torch.logsumexp(zs, dim=-1, keepdim=True))  # log p_s
            lt = zt.sub_(torch.logsumexp(zt, dim=-1, keepdim=True))  # log p_t
            pt = lt.exp()
            kl = (pt * (lt - ls)).sum(dim=-1)  # terms with p_t = 0 are 0 * finite = 0
            rows[s:e] = kl if m is None else torch.where(m, kl, 0)
            if not grads:
                continue
            dz = ls.exp_().sub_(pt)  # d KL / d (student logits / T) = p_s - p_t
            w = row_scale[s:e] if m is None else row_scale[s:e] * m
            dz = dz.mul_((w * inv_t)[:, None]).to(gs.grad_dtype())  # cast once for both products
        if dh is not None:
            dh[s:e] = gs.input_grad(dz)
        if dw is not None:
            gs.add_weight_grad(dw, dz, hs[s:e])
    return rows, dh, dw


def kl_div_forward(hs, ws, ht, wt, labels, ignore_index, temperature, reduction, want_dh, want_dw, chunk):
    """(loss, d student hidden, d student weight) of the per-token KL(teacher || student), tokens whose
    label is ``ignore_index`` left out (all tokens when ``labels`` is None)."""
    N = hs.shape[0]
    chunk = chunk_rows(N, ws.shape[0], chunk)
    acc = acc_dtype(hs)
    valid = labels != ignore_index if labels is not None else None
    v = valid if valid is not None else torch.ones(N, dtype=torch.bool, device=hs.device)
    scale = _row_scale(v, reduction, acc) if reduction != "none" and (want_dh or want_dw) else None
    rows, dh, dw = _kl_chunks(hs, ws, ht, wt, valid, temperature, chunk, scale, want_dh, want_dw)
    return _reduce(rows, v, reduction), dh, dw


def kl_div_backward(grad_rows, hs, ws, ht, wt, labels, ignore_index, temperature, want_dh, want_dw, chunk):
    """(d student hidden, d student weight) of sum(grad_rows * per-row KL): ``reduction='none'``'s backward."""
    chunk = chunk_rows(hs.shape[0], ws.shape[0], chunk)
    valid = labels != ignore_index if labels is not None else None
    _, dh, dw = _kl_chunks(hs, ws, ht, wt, valid, temperature, chunk, grad_rows.to(acc_dtype(hs)), want_dh, want_dw)
    return dh, dw
