"""The torch path of the elementwise scan (hgrn): the CPU path and the kernels' reference.

h_t = a_t * h_{t-1} + x_t with a_t = exp(g_t) is an associative scan over time of pairs (a, x):
(a2, x2) after (a1, x1) is (a2 a1, a2 x1 + x2). It runs as a Hillis-Steele scan: ceil(log2 T)
whole-sequence multiply-adds, each exact in its own rounding. Only products of decays are formed,
never a ratio or an exp of a difference of cumulated gates, so strong gates (-20 per step and below)
underflow to 0 where the true value is 0 and nothing overflows; a gate of -inf (a decay of 0, a reset)
is exact. Packed sequences (``cu_seqlens``) become one sequence with the decay zeroed at every start,
so nothing flows across a boundary, and each start's input absorbs its initial state.
The backward is the same scan run in reverse (``scan_backward``), not autograd.
"""

from __future__ import annotations

import torch


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def inclusive_scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + x_t along dim 1 with h_{-1} = 0; ``a`` and ``x`` are consumed (written in place)."""
    T, step = x.shape[1], 1
    while step < T:
        upd = a[:, step:] * x[:, :-step]  # read before the write: the two ranges overlap
        x[:, step:] += upd
        if 2 * step < T:
            a[:, step:] = a[:, step:] * a[:, :-step]
        step *= 2
    return x


def _bounds(cu_seqlens: torch.Tensor):
    """(starts, ends) of the non-empty packed sequences, and the mask of which are non-empty."""
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    nonempty = ends > starts
    return starts[nonempty], ends[nonempty] - 1, nonempty


def scan_forward(x, g, initial_state=None, cu_seqlens=None):
    """(o [B, T, D] in x's dtype, final state [N, D] fp32 / fp64) of h_t = exp(g_t) h_{t-1} + x_t."""
    acc = acc_dtype(x)
    a = g.to(acc).exp()
    h = x.to(acc, copy=True)
    N = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    h0 = None if initial_state is None else initial_state.to(acc)
    if cu_seqlens is None:
        if h0 is not None:
            h[:, 0] += a[:, 0] * h0
        h = inclusive_scan(a, h)
        return h.to(x.dtype), h[:, -1].clone()
    first, last, nonempty = _bounds(cu_seqlens)
    if h0 is not None:
        h[0, first] += a[0, first] * h0[nonempty]
    a[0, first] = 0  # a reset at every start: the sequences do not see each other
    h = inclusive_scan(a, h)
    ht = h0.clone() if h0 is not None else h.new_zeros(N, x.shape[-1])
    ht[nonempty] = h[0, last]
    return h.to(x.dtype), ht


def scan_backward(x, g, initial_state, cu_seqlens, o, do, dht):
    """(dx, dg, dh0 or None) of the scan, given its output ``o`` (the states h_t) and the gradients of
    o and of the final state: dh_t = do_t + a_{t+1} dh_{t+1} run backward (the reverse scan), then
    dx_t = dh_t, dg_t = dh_t h_{t-1} a_t and dh0 = a_first dh_first."""
    acc = acc_dtype(x)
    if dht is None:  # the final state took no gradient
        dht = x.new_zeros(x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1, x.shape[-1], dtype=acc)
    a = g.to(acc).exp()
    h = o.to(acc)
    dh = do.to(acc, copy=True)
    nxt = torch.zeros_like(a)  # a_{t+1}, zero where t is the last step of its sequence
    nxt[:, :-1] = a[:, 1:]
    hprev = torch.zeros_like(h)
    hprev[:, 1:] = h[:, :-1]
    h0 = None if initial_state is None else initial_state.to(acc)
    if cu_seqlens is None:
        dh[:, -1] += dht.to(acc)
        if h0 is not None:
            hprev[:, 0] = h0
    else:
        first, last, nonempty = _bounds(cu_seqlens)
        dh[0, last] += dht.to(acc)[nonempty]
        nxt[0, last] = 0
        hprev[0, first] = h0[nonempty] if h0 is not None else 0
    dh = inclusive_scan(nxt.flip(1), dh.flip(1)).flip(1)
    dg = dh * hprev * a
    dh0 = None
    if initial_state is not None:
        if cu_seqlens is None:
            dh0 = a[:, 0] * dh[:, 0]
        else:
            dh0 = dht.to(acc, copy=True)  # an empty sequence passes its state through
            dh0[nonempty] = a[0, first] * dh[0, first]
    return dh, dg, dh0


def selective_forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None, scan=None):
    """(y [B, T, D] in u's dtype, final state [N_seq, D, N]) of Mamba's selective scan: the hgrn op over the
    D * N elements, the decay dt A and input u B expanded ([B, T, D, N]: memory D N per token), then the
    read-out by C. Differentiable: autograd runs through the hgrn op (its own backward). Without a
    gradient the expanded scan is ``scan`` (the dispatch passes its ``scan_forward``: the Triton walk
    on CUDA), this module's ``scan_forward`` by default."""
    acc = acc_dtype(u)
    Bsz, T, D = u.shape
    N = A.shape[-1]
    g = dt.to(acc)[..., None] * A.to(acc)
    x = u.to(acc)[..., None] * B.to(acc)[:, :, None, :]
    h0 = initial_state.to(acc).flatten(1) if initial_state is not None else None
    if x.requires_grad or g.requires_grad or (h0 is not None and h0.requires_grad):
        scan = torch.ops.fla_compile.hgrn  # the backward's recompute: autograd through the op
    elif scan is None:
        scan = scan_forward  # the scan itself, not a nested op call
    h, ht = scan(x.flatten(2), g.flatten(2), h0, cu_seqlens)
    y = (h.view(Bsz, T, D, N) * C.to(acc)[:, :, None, :]).sum(-1)
    return y.to(u.dtype), ht.view(ht.shape[0], D, N)
