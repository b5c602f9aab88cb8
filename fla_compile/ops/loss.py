"""Fused linear losses: the loss of ``hidden @ weight.T`` without its [N, vocab] logits in memory.

``linear_cross_entropy`` is ``F.cross_entropy(hidden @ weight.T + bias, labels, ...)`` with
torch's semantics for ``ignore_index`` (ignored rows count in no reduction: ``mean`` divides by the
number of the others, and is nan when all are ignored), ``label_smoothing`` and ``reduction``.
``linear_kl_div`` is the distillation loss KL(softmax(teacher logits / T) || softmax(student logits / T))
per token. Both run chunk by chunk over the rows (``lowering.loss``): a chunk's logits, its loss and,
in the same pass, the gradients wrt its rows and the weight, so the forward returns the gradients of
a ``mean`` or ``sum`` loss and the backward scales them (``reduction='none'``: recomputed).

Underneath each is a ``torch.ops.fla_compile.<name>`` custom op (fake impl, registered autograd,
the backward of ``reduction='none'`` an opaque op too); the ``grad_hidden`` / ``grad_weight`` flags
say which gradients the forward computes (the public functions set them from ``requires_grad``).
"""

from __future__ import annotations

import numbers

import torch

from ..lowering import loss as impl
from ._checks import FLOAT_DTYPES, fail
from ._library import LIB

REDUCTIONS = ("mean", "sum", "none")

LIB.define(
    "linear_cross_entropy(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, int ignore_index, "
    "float label_smoothing, str reduction, bool grad_hidden, bool grad_weight, int chunk_size) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
LIB.define(
    "linear_cross_entropy_bwd(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
    "int ignore_index, float label_smoothing, bool grad_hidden, bool grad_weight, int chunk_size) "
    "-> (Tensor, Tensor, Tensor)"
)
LIB.define(
    "linear_kl_div(Tensor student_hidden, Tensor student_weight, Tensor teacher_hidden, Tensor teacher_weight, "
    "Tensor? labels, int ignore_index, float temperature, str reduction, bool grad_hidden, bool grad_weight, "
    "int chunk_size) -> (Tensor, Tensor, Tensor)"
)
LIB.define(
    "linear_kl_div_bwd(Tensor grad_loss, Tensor student_hidden, Tensor student_weight, Tensor teacher_hidden, "
    "Tensor teacher_weight, Tensor? labels, int ignore_index, float temperature, bool grad_hidden, "
    "bool grad_weight, int chunk_size) -> (Tensor, Tensor)"
)


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _loss_like(hidden: torch.Tensor, reduction: str) -> torch.Tensor:
    shape = (hidden.shape[0],) if reduction == "none" else ()
    return hidden.new_empty(shape, dtype=_acc(hidden))


def _grad_like(x: torch.Tensor | None, wanted: bool, like: torch.Tensor) -> torch.Tensor:
    """The gradient of ``x`` as the op returns it: ``x``'s shape and dtype, or empty (on ``like``'s
    device) when not computed."""
    if x is None or not wanted:
        return like.new_empty(0)
    return x.new_empty(x.shape)


def _out(g: torch.Tensor | None, x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A computed gradient in ``x``'s dtype, or an empty tensor where none was computed."""
    if g is None or x is None:
        return like.new_empty(0)
    return g.to(x.dtype).contiguous()


# ---------------------------------------------------------------- cross entropy: impl, fake, autograd
def _ce_impl(hidden, weight, bias, labels, ignore_index, label_smoothing, reduction, grad_hidden, grad_weight, chunk):
    if reduction == "none":
        grad_hidden = grad_weight = False  # the backward recomputes, with the incoming row gradients
    loss, dh, dw, db = impl.cross_entropy_forward(
        hidden, weight, bias, labels.long(), ignore_index, label_smoothing, reduction, grad_hidden, grad_weight, chunk
    )
    return loss, _out(dh, hidden, hidden), _out(dw, weight, hidden), _out(db, bias, hidden)


def _ce_fake(hidden, weight, bias, labels, ignore_index, label_smoothing, reduction, grad_hidden, grad_weight, chunk):
    grads = reduction != "none"
    return (
        _loss_like(hidden, reduction),
        _grad_like(hidden, grads and grad_hidden, hidden),
        _grad_like(weight, grads and grad_weight, hidden),
        _grad_like(bias, grads and grad_weight, hidden),
    )


def _ce_bwd_impl(g, hidden, weight, bias, labels, ignore_index, label_smoothing, grad_hidden, grad_weight, chunk):
    dh, dw, db = impl.cross_entropy_backward(
        g, hidden, weight, bias, labels.long(), ignore_index, label_smoothing, grad_hidden, grad_weight, chunk
    )
    return _out(dh, hidden, hidden), _out(dw, weight, hidden), _out(db, bias, hidden)


def _ce_bwd_fake(g, hidden, weight, bias, labels, ignore_index, label_smoothing, grad_hidden, grad_weight, chunk):
    return (
        _grad_like(hidden, grad_hidden, hidden),
        _grad_like(weight, grad_weight, hidden),
        _grad_like(bias, grad_weight, hidden),
    )


def _ce_setup(ctx, inputs, output):
    hidden, weight, bias, labels, ignore_index, smoothing, reduction, _, _, chunk = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(hidden, weight, bias, labels, *output[1:])
    ctx.args = (ignore_index, smoothing, reduction, chunk)


def _scaled(saved: torch.Tensor, g: torch.Tensor, needed: bool):
    """The forward's gradient times the incoming one, or None when not needed (or not computed)."""
    if not needed:
        return None
    return (saved * g).to(saved.dtype)


def _ce_backward(ctx, g, *_):
    hidden, weight, bias, labels, dh, dw, db = ctx.saved_tensors
    ignore_index, smoothing, reduction, chunk = ctx.args
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    have = (not need_h or dh.numel() == hidden.numel()) and (not (need_w or need_b) or dw.numel() == weight.numel())
    if reduction != "none" and have:  # the forward computed them: scale by the incoming gradient
        return (_scaled(dh, g, need_h), _scaled(dw, g, need_w), _scaled(db, g, need_b)) + (None,) * 7
    if reduction != "none":  # called without the gradients it needed (a raw op call): recompute
        g = g.expand(hidden.shape[0]) / ((labels != ignore_index).sum().clamp_min(1) if reduction == "mean" else 1)
    dh, dw, db = torch.ops.fla_compile.linear_cross_entropy_bwd(
        g, hidden, weight, bias, labels, ignore_index, smoothing, need_h, need_w or need_b, chunk
    )
    return (dh if need_h else None, dw if need_w else None, db if need_b else None) + (None,) * 7


# ---------------------------------------------------------------- KL divergence: impl, fake, autograd
def _kl_impl(hs, ws, ht, wt, labels, ignore_index, temperature, reduction, grad_hidden, grad_weight, chunk):
    if reduction == "none":
        grad_hidden = grad_weight = False
    labels = labels.long() if labels is not None else None
    loss, dh, dw = impl.kl_div_forward(
        hs, ws, ht, wt, labels, ignore_index, temperature, reduction, grad_hidden, grad_weight, chunk
    )
    return loss, _out(dh, hs, hs), _out(dw, ws, hs)


def _kl_fake(hs, ws, ht, wt, labels, ignore_index, temperature, reduction, grad_hidden, grad_weight, chunk):
    grads = reduction != "none"
    return (
        _loss_like(hs, reduction),
        _grad_like(hs, grads and grad_hidden, hs),
        _grad_like(ws, grads and grad_weight, hs),
    )


def _kl_bwd_impl(g, hs, ws, ht, wt, labels, ignore_index, temperature, grad_hidden, grad_weight, chunk):
    labels = labels.long() if labels is not None else None
    dh, dw = impl.kl_div_backward(g, hs, ws, ht, wt, labels, ignore_index, temperature, grad_hidden, grad_weight, chunk)
    return _out(dh, hs, hs), _out(dw, ws, hs)


def _kl_bwd_fake(g, hs, ws, ht, wt, labels, ignore_index, temperature, grad_hidden, grad_weight, chunk):
    return _grad_like(hs, grad_hidden, hs), _grad_like(ws, grad_weight, hs)


def _kl_setup(ctx, inputs, output):
    hs, ws, ht, wt, labels, ignore_index, temperature, reduction, _, _, chunk = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(hs, ws, ht, wt, labels, *output[1:])
    ctx.args = (ignore_index, temperature, reduction, chunk)


def _kl_backward(ctx, g, *_):
    hs, ws, ht, wt, labels, dh, dw = ctx.saved_tensors
    ignore_index, temperature, reduction, chunk = ctx.args
    need_h, need_w = ctx.needs_input_grad[:2]
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(
            "fla_compile.linear_kl_div: the teacher's hidden or weight requires grad; the fused KL gives "
            "gradients to the student only (detach the teacher)"
        )
    have = (not need_h or dh.numel() == hs.numel()) and (not need_w or dw.numel() == ws.numel())
    if reduction != "none" and have:
        return (_scaled(dh, g, need_h), _scaled(dw, g, need_w)) + (None,) * 9
    if reduction != "none":
        n = hs.shape[0] if labels is None else (labels != ignore_index).sum().clamp_min(1)
        g = g.expand(hs.shape[0]) / (n if reduction == "mean" else 1)
    dh, dw = torch.ops.fla_compile.linear_kl_div_bwd(
        g, hs, ws, ht, wt, labels, ignore_index, temperature, need_h, need_w, chunk
    )
    return (dh if need_h else None, dw if need_w else None) + (None,) * 9


for _name, _impl, _fake in (
    ("linear_cross_entropy", _ce_impl, _ce_fake),
    ("linear_cross_entropy_bwd", _ce_bwd_impl, _ce_bwd_fake),
    ("linear_kl_div", _kl_impl, _kl_fake),
    ("linear_kl_div_bwd", _kl_bwd_impl, _kl_bwd_fake),
):
    LIB.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fla_compile::{_name}", _fake, lib=LIB)
torch.library.register_autograd("fla_compile::linear_cross_entropy", _ce_backward, setup_context=_ce_setup, lib=LIB)
torch.library.register_autograd("fla_compile::linear_kl_div", _kl_backward, setup_context=_kl_setup, lib=LIB)


# ---------------------------------------------------------------- public functions
def _check_matrix(op, name, x, dim, width=None):
    if not isinstance(x, torch.Tensor):
        fail(op, f"{name} must be a tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        fail(op, f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if x.dim() != dim and not (dim == 2 and name.endswith("hidden") and x.dim() >= 2):
        fail(op, f"{name} must have {dim} dims, got shape {tuple(x.shape)}")
    if width is not None and x.shape[-1] != width:
        fail(op, f"{name} must end in the hidden size {width}, got shape {tuple(x.shape)}")


def _check_labels(op, labels, lead, device):
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        fail(op, f"labels must be an int64 (or int32) tensor of class indices, got {got}")
    if tuple(labels.shape) != tuple(lead):
        fail(op, f"labels must have the hidden states' leading shape {tuple(lead)}, got {tuple(labels.shape)}")
    if labels.device != device:
        fail(op, f"labels are on {labels.device} but hidden is on {device}")


def _check_options(op, reduction, chunk_size, ignore_index):
    if reduction not in REDUCTIONS:
        fail(op, f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        fail(op, f"chunk_size must be an int >= 0 (0: chosen from the vocabulary size), got {chunk_size!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        fail(op, f"ignore_index must be an int, got {ignore_index!r}")


def _wants(*xs) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    chunk_size: int = 0,
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, labels)`` without the [N, vocab] logits in memory.

    Args:
        hidden: [..., Hd] (the leading dims are the tokens); weight: [vocab, Hd]; bias: [vocab] or None.
            float32, bfloat16, float16 or float64; the logits are computed with fp32 accumulation.
        labels: int64/int32 [...], the leading shape of ``hidden``; ``ignore_index`` marks rows left out.
        label_smoothing: in [0, 1], as in ``F.cross_entropy``.
        reduction: "mean" (over the rows not ignored), "sum" or "none".
        chunk_size: rows per chunk; 0 chooses it so a chunk's fp32 logits take about 256 MiB.

    Returns:
        The loss, fp32 (fp64 for fp64 inputs): a scalar, or [...] per token for "none" (0 where ignored).

    Raises:
        ValueError: ``fla_compile.linear_cross_entropy: ...`` naming the argument, for a wrong shape,
            dtype, device or option, or (on the CPU) a label outside [0, vocab) that is not ignored.
    """
    op = "linear_cross_entropy"
    _check_matrix(op, "weight", weight, 2)
    _check_matrix(op, "hidden", hidden, 2, weight.shape[1])
    if bias is not None:
        _check_matrix(op, "bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            fail(op, f"bias must be [vocab] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, x in (("weight", weight), ("bias", bias)):
        if x is not None and x.device != hidden.device:
            fail(op, f"{name} is on {x.device} but hidden is on {hidden.device}")
    _check_labels(op, labels, hidden.shape[:-1], hidden.device)
    _check_options(op, reduction, chunk_size, ignore_index)
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= label_smoothing <= 1.0:
        fail(op, f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    lead = labels.shape
    h2, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    loss = torch.ops.fla_compile.linear_cross_entropy(
        h2,
        weight,
        bias,
        y,
        ignore_index,
        float(label_smoothing),
        reduction,
        _wants(hidden),
        _wants(weight, bias),
        chunk_size,
    )[0]
    return loss.reshape(lead) if reduction == "none" else loss


def linear_kl_div(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int = 0,
) -> torch.Tensor:
    """Per-token KL(p_t || p_s), p_s = softmax(student_hidden @ student_weight.T / T), p_t = the
    teacher's alike, without either [N, vocab] logits in memory. Gradients reach the student only.

    Args:
        student_hidden: [..., Hs]; student_weight: [vocab, Hs]; teacher_hidden: [..., Ht] (the same
            leading shape); teacher_weight: [vocab, Ht]. Float dtypes as ``linear_cross_entropy``.
        labels: optional int [...]: tokens whose label is ``ignore_index`` are left out.
        temperature: T > 0, dividing both logits (multiply the loss by T**2 yourself if you want it).
        reduction: "mean" (over the tokens not left out), "sum" or "none".

    Returns:
        The loss, fp32 (fp64 for fp64 inputs): a scalar, or [...] per token for "none".

    Raises:
        ValueError: naming the argument, for a wrong shape, dtype, device or option, or a teacher
            tensor that requires grad (the fused loss gives the student gradients only).
    """
    op = "linear_kl_div"
    _check_matrix(op, "student_weight", student_weight, 2)
    _check_matrix(op, "teacher_weight", teacher_weight, 2)
    _check_matrix(op, "student_hidden", student_hidden, 2, student_weight.shape[1])
    _check_matrix(op, "teacher_hidden", teacher_hidden, 2, teacher_weight.shape[1])
    if teacher_weight.shape[0] != student_weight.shape[0]:
        fail(op, f"teacher_weight has {teacher_weight.shape[0]} classes, student_weight {student_weight.shape[0]}")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        fail(op, f"teacher_hidden must have the leading shape {tuple(lead)}, got {tuple(teacher_hidden.shape)}")
    for name, x in (
        ("student_weight", student_weight),
        ("teacher_hidden", teacher_hidden),
        ("teacher_weight", teacher_weight),
    ):
        if x.device != student_hidden.device:
            fail(op, f"{name} is on {x.device} but student_hidden is on {student_hidden.device}")
    if labels is not None:
        _check_labels(op, labels, lead, student_hidden.device)
    _check_options(op, reduction, chunk_size, ignore_index)
    if not isinstance(temperature, numbers.Real) or not temperature > 0:
        fail(op, f"temperature must be a number > 0, got {temperature!r}")
    if _wants(teacher_hidden, teacher_weight):
        fail(
            op, "teacher_hidden or teacher_weight requires grad: gradients reach the student only (detach the teacher)"
        )
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    y = labels.reshape(-1) if labels is not None else None
    loss = torch.ops.fla_compile.linear_kl_div(
        hs,
        student_weight,
        ht,
        teacher_weight,
        y,
        ignore_index,
        float(temperature),
        reduction,
        _wants(student_hidden),
        _wants(student_weight),
        chunk_size,
    )[0]
    return loss.reshape(lead) if reduction == "none" else loss
