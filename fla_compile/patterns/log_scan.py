"""The ``logcumsumexp`` spelling: an elementwise scan h_t = a_t h_{t-1} + b_t in log space (Heinsen's parallel scan,
minGRU's parallel mode), the hgrn family.

    a_star = torch.cumsum(log_a, dim=t)                      # optionally F.pad(..., one zero first along t)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=t))

Structure proposes: a ``logcumsumexp`` over dim t of ``log_b - a_star``, with ``a_star`` a cumsum over t (padded by
one zero in front, or not), whose only reader adds the same ``a_star`` back and takes ``exp``. Then
h_t = sum_{s <= t} exp(a_star_t - a_star_s) exp(log_b_s): the hgrn op on x = exp(log_b) and the log-gate log_a (its
padded form where a_star is padded: the padded step's gate is 0). The region from log_a, log_b to the ``exp`` is
proven on fresh probes (``verify.prove_region``) before it is replaced (``rewrite.rewrite_form``); anything after
the ``exp`` (minGRU's ``[:, 1:]``) stays as written.

The op scans in linear space where the code scans in log space. A log value above ~88 overflows x in float32; the
code's h_t at that step overflows too (h_t >= b_t), though its later steps may come back finite where the op's stay
inf. A log value below ~-103 counts as 0 (it can matter only where later gates above 1 grow it back). The op keeps
the log decays as they are and so avoids the code's rounding of exp(a_star_t + ...): at T = 4096 its error against
float64 is 7e-8 where the code's own float32 is 1.8e-5 (``tests/patterns/test_log_scan.py``).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ir import Family, Layout, Recurrence, RegionLayout
from ..report import Report
from ..verify import NearMiss
from . import _region as R
from ._graph import source_line, value_of

SPELLING = "logcumsumexp"
LOGCUMSUMEXP = {torch.logcumsumexp, "logcumsumexp"}
EXP = {torch.exp, "exp"}
ADD = {operator.add, torch.add, "add", "__add__"}
SUB = {operator.sub, torch.sub, "sub", "__sub__"}
PAD = {F.pad, torch._C._nn.pad, torch.constant_pad_nd}


def _front_pad(node: fx.Node, t: int) -> int | None:
    """How many zeros ``node`` (a constant pad) puts in front of dim ``t`` and nowhere else; None otherwise."""
    spec = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    shape = R.shape_of(node.args[0])
    if not isinstance(spec, (tuple, list)) or len(spec) % 2 or shape is None or mode != "constant":
        return None
    if value not in (None, 0, 0.0) or not all(isinstance(p, int) for p in spec):
        return None
    widths = {len(shape) - 1 - i // 2: (spec[i], spec[i + 1]) for i in range(0, len(spec), 2)}
    if any(w != (0, 0) for d, w in widths.items() if d != t) or widths.get(t, (0, 0))[1] != 0:
        return None
    return widths.get(t, (0, 0))[0]


def _cumsum_of(a_star: fx.Node, t: int, n: int) -> tuple[fx.Node, int] | None:
    """(log_a, front pad) where ``a_star`` is cumsum(log_a) over dim ``t`` of ``n`` dims, padded in front or not."""
    pad = 0
    if a_star.target in PAD:
        pad = _front_pad(a_star, t)
        a_star = a_star.args[0]
        if pad is None or not isinstance(a_star, fx.Node):
            return None
    if a_star.target not in R.CUMSUM or not isinstance(a_star.args[0], fx.Node):
        return None
    d = R.dim_arg(a_star)
    if not isinstance(d, int) or d % n != t:
        return None
    return a_star.args[0], pad


def _single_user(n: fx.Node, targets: set) -> fx.Node | None:
    if len(n.users) != 1:
        return None
    (u,) = n.users
    return u if u.target in targets else None


def match(lcse: fx.Node, opts):
    """Bind and prove one log-space scan: (``Recurrence``, proof error, (its exp node,)), None where ``lcse`` is
    not one; NearMiss with the reason where it is nearly one."""
    x, t = lcse.args[0], R.dim_arg(lcse)
    shape = R.shape_of(lcse)
    if not isinstance(x, fx.Node) or not isinstance(t, int) or shape is None or x.target not in SUB:
        return None
    n = len(shape)
    t %= n
    log_b, a_star = x.args[0], x.args[1]
    if not isinstance(log_b, fx.Node) or not isinstance(a_star, fx.Node):
        return None
    found = _cumsum_of(a_star, t, n)
    if found is None:
        return None
    log_a, pad = found
    add = _single_user(lcse, ADD)
    if add is None or set(add.args) != {a_star, lcse}:
        raise NearMiss(f"'{lcse.name}' is not added back to the cumsum '{a_star.name}' it subtracts (log h)")
    out = _single_user(add, EXP)
    if out is None:
        raise NearMiss(f"the scan is kept in log space ('{add.name}' is not read by exp alone): log h, not h")
    sa, sb, so = R.shape_of(log_a), R.shape_of(log_b), R.shape_of(out)
    if sa is None or sb is None or so is None or len(sa) > n or len(sb) > n:
        return None
    T = so[t]
    ia, ib = t - n + len(sa), t - n + len(sb)  # the time dim in each, right-aligned against the output
    if ia < 0 or sa[ia] != T - pad:
        raise NearMiss(f"the log-gates '{log_a.name}' do not run along the scan's time dim {t} ({T - pad} steps)")
    if ib < 0 or sb[ib] != T:
        raise NearMiss(f"the log-values '{log_b.name}' do not run along the scan's time dim {t} ({T} steps)")
    roles = [log_b, log_a]
    why = R.inner_users(R.cone(out, set(roles)), out, roles)
    if why:
        raise NearMiss(why)
    labels = tuple(range(n))
    feat = n - 1 if n - 1 != t else "channel"
    batch = tuple(d for d in labels if d not in (t, feat))
    layout = RegionLayout(None, None, None, Layout(labels, t, feat), batch, tuple(so[d] for d in batch),
                          out_dtype=value_of(out).dtype)  # fmt: skip
    rec = Recurrence(Family.HGRN, None, None, log_b, gate=log_a, layout=layout, spelling=SPELLING,
                     source=source_line(lcse), extras={"log_x": True, "gate_pad": pad})  # fmt: skip
    gm, _ = R.extract(out, roles)
    rec, err = R.prove(gm, [rec], opts)
    return rec, err, (out,)


def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every log-space scan in ``graph``."""
    R.run_anchored(graph, LOGCUMSUMEXP, match, SPELLING, opts, report)
