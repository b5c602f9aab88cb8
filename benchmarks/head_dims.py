"""The ops at large head dims (CUDA): checked against fp64, then timed against the torch path and FLA.

    python benchmarks/head_dims.py                       # check, then time the published shapes
    python benchmarks/head_dims.py --no-check --rows "gla:8,2048,4,256,512" --no-fla

``--check``: each family (the GLA line's linear_attn, simple_gla, retention, gla, rwkv6; the delta line's
delta_rule, gated_delta_rule, kda where K is at most its 256) at each (K, V) of ``--check-dims``, bf16 and fp32, T of
300 (chunked), 1 and 5 (decode), through the op with the limits lifted to the head dims against the same op on fp64
inputs (its torch path): the output, the final state and every gradient, the initial state's included. Then each row
of ``--rows`` (family:B,T,H,K,V, bf16): the op forward and forward+backward (``do_bench`` medians, ms) with the
kernels, then with the limits forced below the head dims (``triton_launch.MAX_HEAD_DIM`` and the like), i.e. on the
torch path, and FLA 0.6.0's chunk op where it has one (and its backward runs). Rows of the thirty-second session
(RESULTS): the GLA and RetNet papers' heads, K 256 x V 512; of the thirty-third: Gated DeltaNet's, the same dims.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import kernels as KB  # noqa: E402  (bench, fwd_bwd and FLA's ops, as the side-by-side table runs them)

import fla_compile.ops as ops  # noqa: E402
from fla_compile.lowering.delta import triton_launch as DT  # noqa: E402
from fla_compile.lowering.gla import triton_launch as L  # noqa: E402
from tests.compare import rel  # noqa: E402

log = logging.getLogger("head_dims")
FAMILIES = ("linear_attn", "simple_gla", "retention", "gla", "rwkv6", "delta_rule", "gated_delta_rule", "kda")
DELTA = ("delta_rule", "gated_delta_rule", "kda")
TOL = {torch.bfloat16: 8e-3, torch.float32: 1e-5}
ROWS = (
    "gla:8,2048,4,256,512;retention:8,2048,8,256,512;simple_gla:8,2048,8,256,512;linear_attn:8,2048,16,272,64;"
    "gated_delta_rule:8,2048,8,256,512"
)


def inputs(family, B, T, H, K, V, dtype, grad=False, h0=True, seed=0):
    """The op's arguments (q, k, v, then the family's gate, rwkv6's bonus, the delta line's beta) and an initial
    state or None. The delta line's keys are unit-norm and its beta in (0, 1), as the models make them."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    xs = [rnd(B, T, H, K).to(dtype), rnd(B, T, H, K).to(dtype), rnd(B, T, H, V).to(dtype)]
    if family in DELTA:
        xs[1] = F.normalize(xs[1].float(), dim=-1).to(dtype)
    if family == "gated_delta_rule":
        xs.append(F.logsigmoid(rnd(B, T, H)))
    elif family in ("gla", "rwkv6", "kda"):
        xs.append(F.logsigmoid(rnd(B, T, H, K)) / 16)
    elif family == "simple_gla":
        xs.append(F.logsigmoid(rnd(B, T, H)) / 16)
    elif family == "retention":  # RetNet's decays, log(1 - 2^(-5-h))
        xs.append(torch.log(1 - 2.0 ** (-5 - torch.arange(H, device="cuda", dtype=torch.float32))))
    if family == "rwkv6":
        xs.append(rnd(H, K) * 0.1)
    if family in DELTA:
        xs.append(torch.rand(B, T, H, device="cuda", generator=gen).to(dtype))
    init = rnd(B, H, K, V) * 0.1 if h0 else None
    if grad:
        for x in xs:
            if x.dim() > 1 or family == "rwkv6":
                x.requires_grad_()
        if init is not None:
            init.requires_grad_()
    return xs, init


def check(family, B, T, H, K, V, dtype) -> float:
    """The largest relative error of the op (output, final state, every gradient) against the op on fp64 inputs."""
    xs, init = inputs(family, B, T, H, K, V, dtype, grad=True)
    fn = getattr(ops, family)
    o, ht = fn(*xs, initial_state=init, output_final_state=True)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    wrt = [x for x in [*xs, init] if x.requires_grad]
    got = [o, ht, *torch.autograd.grad((o, ht), wrt, (do, dht))]
    xd = [x.detach().double().requires_grad_(x.requires_grad) for x in xs]
    init_d = init.detach().double().requires_grad_()
    od, htd = fn(*xd, initial_state=init_d, output_final_state=True)
    wrt_d = [x for x in [*xd, init_d] if x.requires_grad]
    ref = [od, htd, *torch.autograd.grad((od, htd), wrt_d, (do.double(), dht.double()))]
    return max(rel(a, b) for a, b in zip(got, ref))


@contextlib.contextmanager
def head_limit(limit: int):
    """Both lines' head-dim limits (every dtype's, K's and V's) set to ``limit`` inside."""
    names = {L: ("MAX_HEAD_DIM", "MAX_HEAD_DIM_FP32"), DT: ("MAX_HEAD_DIM", "MAX_VALUE_DIM", "MAX_HEAD_DIM_FP32")}
    old = {(m, n): getattr(m, n) for m, ns in names.items() for n in ns}
    for m, n in old:
        setattr(m, n, limit)
    try:
        yield
    finally:
        for (m, n), value in old.items():
            setattr(m, n, value)


def time_row(family, B, T, H, K, V, with_fla: bool) -> dict:
    """ms of the forward and forward+backward: the kernels, the torch path, FLA (where it takes the shape)."""
    xs, _ = inputs(family, B, T, H, K, V, torch.bfloat16, grad=True, h0=False)

    def fwd(fn):
        def step():
            with torch.no_grad():
                fn(*xs)

        return step

    fn, row = getattr(ops, family), {}
    for name, limit in (("kernels", max(K, V)), ("torch path", min(K, V) - 1)):
        with head_limit(limit):
            row[f"{name} fwd"], row[f"{name} fwd+bwd"] = KB.bench(fwd(fn)), KB.bench(KB.fwd_bwd(fn, xs))
    log.info("%s %s: %s", family, (B, T, H, K, V), {k: round(v, 3) for k, v in row.items()})
    if with_fla and family in KB.FLA_OPS:  # retention: FLA fixes the decays itself, the same as ``inputs``'
        op = KB.fla_op(family)
        start = time.perf_counter()
        try:
            fwd(op)()
            log.info("FLA's first %s call: %.1f s (its autotune on a cold cache)", family, time.perf_counter() - start)
            row["FLA fwd"] = KB.bench(fwd(op))  # kept where its backward refuses (gated_delta_rule on Hopper)
            row["FLA fwd+bwd"] = KB.bench(KB.fwd_bwd(op, xs))
        except Exception as e:  # a head dim FLA refuses: the row's FLA cells it could not fill stay empty
            log.info("FLA's %s refused %s: %s", family, (B, T, H, K, V), (str(e).splitlines() or [""])[0][:200])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the checks against fp64")
    p.add_argument("--check-dims", default="256,512;512,256;512,512;272,64", help="K,V pairs to check")
    p.add_argument("--rows", default=ROWS, help="family:B,T,H,K,V rows to time, ';'-separated")
    p.add_argument("--no-fla", dest="fla", action="store_false", help="time ours only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        log.error("head_dims.py needs a CUDA device")
        return 2
    failed = 0
    if args.check:
        dims = [tuple(int(x) for x in pair.split(",")) for pair in args.check_dims.split(";")]
        for family in FAMILIES:
            for K, V in dims:
                if family in DELTA and K > DT.MAX_HEAD_DIM:  # the delta line holds the whole K in one block
                    continue
                for dtype in (torch.bfloat16, torch.float32):
                    for T in (300, 1, 5):
                        with head_limit(max(K, V)):
                            err = check(family, 2, T, 2, K, V, dtype)
                        ok = err < TOL[dtype]
                        failed += not ok
                        log.info("%-11s K %3d V %3d %-8s T %3d %s %.2e", family, K, V, str(dtype)[6:], T,
                                 "ok" if ok else "FAILED", err)  # fmt: skip
        log.info("checks failed: %d", failed)
    cols = ["kernels fwd", "kernels fwd+bwd", "torch path fwd", "torch path fwd+bwd", "FLA fwd", "FLA fwd+bwd"]
    table = ["| family | (B, T, H, K, V) | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for spec in filter(None, args.rows.split(";")):
        family, shape = spec.split(":")
        B, T, H, K, V = (int(x) for x in shape.split(","))
        row = time_row(family, B, T, H, K, V, args.fla)
        table.append(f"| {family} | {B}, {T}, {H}, {K}, {V} | " + " | ".join(
            f"{row[c]:.3f}" if c in row else "" for c in cols) + " |")  # fmt: skip
    print("\n".join(table))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
