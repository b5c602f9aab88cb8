"""Timing, in one place: the harness (``samples``, ``median_ms``), ``python -m fla_compile bench`` (the
ops against the naive reference loops) and the cost table's measurements (``measure``, ``tune_costs``:
where the op beats the code as written). The command line (``cli.py``) only parses and prints.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn.functional as F

from . import costs
from .numerics import rel_err

FAMILIES = [
    "linear_attn",
    "retention",
    "simple_gla",
    "gla",
    "delta_rule",
    "gated_delta_rule",
    "kda",
    "rwkv6",
    "hgrn",
    "mamba",
]


def samples(fns, device, warmup: int = 1, reps: int = 5, wall: bool = False) -> list[list[float]]:
    """Milliseconds of each of ``fns`` over ``reps`` rounds, the functions run round-robin within a round
    (so a shared machine's slow spell hits all alike), after ``warmup`` rounds.

    On CUDA the kernels' time by CUDA events, or with ``wall`` the host's time around a synchronized
    call (launch overhead included: what small work costs); on the CPU, ``time.perf_counter``.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    sync()
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            if cuda and not wall:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end))
            else:
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                ts.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(fn, device, warmup: int = 1, reps: int = 5) -> float:
    """The median milliseconds of ``fn()`` (see ``samples``)."""
    return statistics.median(samples([fn], device, warmup, reps)[0])


# ------------------------------------------------------------------ bench: the ops against the references
def family_inputs(family: str, shape, dtype, device, seed=0) -> list:
    """Inputs of ``fla_compile.ops.<family>`` (and of ``reference.<family>``), positional.

    q, k, v [B, T, H, D] randn (k L2-normalized for the delta rules, which need |k| <= 1);
    gates logsigmoid(randn) in log space ([B, T, H] per head, [B, T, H, D] per key);
    retention's decay log(1 - 2^(-5 - h)) per head; beta sigmoid(randn) [B, T, H]; rwkv6's u randn [H, D].
    The scan line folds heads into channels, C = H * D: hgrn's x [B, T, C] and g logsigmoid(randn); mamba's
    x [B, T, C], dt softplus(randn - 2), A -8 rand [C, D] (fp32), B and C randn [B, T, D].
    """
    B, T, H, D = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return torch.randn(s, generator=gen)

    if family == "hgrn":
        x, g = randn(B, T, H * D), F.logsigmoid(randn(B, T, H * D))
        return [x.to(device=device, dtype=dtype), g.to(device)]  # the gate stays fp32
    if family == "mamba":
        x, dt, Bm, C = randn(B, T, H * D), F.softplus(randn(B, T, H * D) - 2), randn(B, T, D), randn(B, T, D)
        A = -8 * torch.rand(H * D, D, generator=gen)
        x, dt, Bm, C = (t.to(device=device, dtype=dtype) for t in (x, dt, Bm, C))
        return [x, dt, A.to(device), Bm, C]  # A stays fp32

    q, k, v = randn(B, T, H, D), randn(B, T, H, D), randn(B, T, H, D)
    if family in ("delta_rule", "gated_delta_rule", "kda"):
        k = F.normalize(k, dim=-1)
    extra = []
    if family == "retention":
        extra = [torch.log1p(-(2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))))]
    elif family in ("simple_gla", "gated_delta_rule"):
        extra = [F.logsigmoid(randn(B, T, H))]
    elif family in ("gla", "kda"):
        extra = [F.logsigmoid(randn(B, T, H, D))]
    elif family == "rwkv6":  # w per key dim, the bonus u [H, K]
        extra = [F.logsigmoid(randn(B, T, H, D)), randn(H, D)]
    if family in ("delta_rule", "gated_delta_rule", "kda"):
        extra.append(torch.sigmoid(randn(B, T, H)))
    qkv = [x.to(device=device, dtype=dtype) for x in (q, k, v)]
    return qkv + [x.to(device) for x in extra]  # gates and beta stay fp32, as the models keep them


def _step(fn, xs, backward: bool):
    """A forward (no grad), or forward + backward of o.sum() into the grads of every input that takes one."""
    if not backward:

        def fwd():
            with torch.no_grad():
                return fn(*xs)[0]

        return fwd

    def fwd_bwd():
        for x in xs:
            x.grad = None
        o = fn(*xs)[0]
        o.backward(torch.ones_like(o))
        return o

    return fwd_bwd


def bench_family(family, shape, dtype, device, backward=False, reps=5, warmup=1) -> dict:
    """One row: ms of ``ops.<family>`` and of ``reference.<family>`` and the ops' rel err vs float64."""
    from . import ops
    from .reference import delta, gla, hgrn, mamba, rwkv6

    ours = getattr(ops, family)
    line = delta if family in ("delta_rule", "gated_delta_rule", "kda") else rwkv6 if family == "rwkv6" else gla
    ref = hgrn.hgrn if family == "hgrn" else _mamba_reference(mamba) if family == "mamba" else getattr(line, family)
    xs = family_inputs(family, shape, dtype, device)
    if backward:
        xs = [x.requires_grad_() if x.dim() > 1 else x for x in xs]
    t_ours = median_ms(_step(ours, xs, backward), device, warmup, reps)
    o = _step(ours, xs, backward)()
    got = [o] + ([x.grad for x in xs if x.requires_grad] if backward else [])
    t_ref = median_ms(_step(ref, xs, backward), device, warmup, reps)
    x64 = [x.detach().double().requires_grad_(x.requires_grad) for x in xs]
    want = [_step(ref, x64, backward)()] + ([x.grad for x in x64 if x.requires_grad] if backward else [])
    err = max(rel_err(a, b) if a is not None else float("nan") for a, b in zip(got, want))
    return {"family": family, "ours_ms": t_ours, "reference_ms": t_ref, "rel_err": err}


def _mamba_reference(mamba):
    """The reference selective scan with ``ops.mamba``'s arguments (it takes u = dt * x)."""

    def ref(x, dt, A, B, C):
        return mamba.selective_scan(dt * x, dt, A, B, C)

    return ref


def bench_sdpa(shape, dtype, device, backward=False, reps=5, warmup=1) -> float:
    """Milliseconds of causal softmax attention (SDPA) at the same B, T, H, D."""
    B, T, H, D = shape
    xs = [torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=backward) for _ in range(3)]
    fn = _step(lambda q, k, v: (F.scaled_dot_product_attention(q, k, v, is_causal=True),), xs, backward)
    return median_ms(fn, device, warmup, reps)


def bench_table(rows, sdpa_ms=None) -> str:
    head = "| family | ours (ms) | reference (ms) | reference / ours | rel err vs fp64 |"
    rule = "| --- | --- | --- | --- | --- |"
    if sdpa_ms is not None:
        head += " SDPA causal (ms) |"
        rule += " --- |"
    lines = [head, rule]
    for r in rows:
        if "error" in r:
            cells = [r["family"], "—", "—", "—", r["error"]]
        else:
            cells = [
                r["family"],
                f"{r['ours_ms']:.3f}",
                f"{r['reference_ms']:.3f}",
                f"{r['reference_ms'] / r['ours_ms']:.1f}x",
                f"{r['rel_err']:.1e}",
            ]
        if sdpa_ms is not None:
            cells.append(f"{sdpa_ms:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the cost table's measurements (``tune --costs``)
def _retnet_parallel(q, k, v):
    """RetNet's parallel form, as written: the spelling whose crossover ``tune`` measures."""
    T, H = q.shape[1], q.shape[2]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device))
    i = torch.arange(T, device=q.device)
    decay = (gamma[:, None, None] ** (i[:, None] - i[None, :]).float()).masked_fill(i[:, None] < i[None, :], 0)
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * decay, v).transpose(1, 2)


def _linear_loop(q, k, v):
    """A linear-attention time loop, as written."""
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


MEASURED = {"parallel": (_retnet_parallel, (16, 32, 64, 128, 256, 512)), "loop": (_linear_loop, (8, 16, 32))}


def measure(spelling: str, device, B=1, H=4, D=64, reps=9) -> list[tuple[int, float, float]]:
    """(T, as written s, rewritten s) at each length of ``MEASURED[spelling]``: the fastest of
    ``reps`` round-robin runs (host time, launches included), forward, fp32, the rewrite compiled
    with the table off."""
    from .backend import REPORTS

    fn, Ts = MEASURED[spelling]
    device = torch.device(device)
    out = []
    for T in Ts:
        g = torch.Generator().manual_seed(T)
        args = [torch.randn(B, T, H, D, generator=g).to(device) for _ in range(3)]
        torch._dynamo.reset()
        n = len(REPORTS)
        with torch.no_grad(), costs.use([]):
            op = torch.compile(fn, backend="fla", dynamic=False, options={"inductor": False})
            op(*args)
            if not any(not m.kept for r in REPORTS[n:] for m in r.matches):
                raise RuntimeError(f"tune: the {spelling} spelling was not rewritten at T={T}")
            written, rewritten = samples([functools.partial(f, *args) for f in (fn, op)], device, 2, reps, wall=True)
        out.append((T, min(written) / 1e3, min(rewritten) / 1e3))  # min: robust to a shared machine's stalls
    torch._dynamo.reset()
    return out


def tune_costs(device, spellings=("parallel", "loop"), log=print) -> list[dict]:
    """Measure this device and write its entries to ``costs.user_file()`` (other devices' are kept)."""
    measured = {}
    for spelling in spellings:
        rows = measured[spelling] = measure(spelling, device)
        for T, a, b in rows:
            log(f"  {spelling:8s} T={T:4d}: as written {a * 1e3:8.3f} ms, rewritten {b * 1e3:8.3f} ms ({a / b:5.2f}x)")
    return costs.record(costs.device_kind(device), measured, log)
