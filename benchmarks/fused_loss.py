"""Fused vs unfused linear cross entropy: peak memory and time of the loss's forward + backward.

The loss is an LM head's: ``logits = hidden @ weight.T``, then transformers' ``ForCausalLMLoss``
(upcast to fp32, labels shifted, ignore_index -100, mean), gradients wrt hidden and weight.
Rows:

  eager           the code as written (the [N, vocab] logits in bf16, their fp32 copy, their gradient)
  inductor        torch.compile of the same code (Inductor, unfused)
  fla             torch.compile(backend="fla"): the loss recognised and fused (the report must say so)
  op chunk=C      fla_compile.ops.linear_cross_entropy called directly, C rows per chunk (0: automatic)
  op chunk=C S    the same with the chunks' softmax gradient from S (--softmax-grad): "torch" (six elementwise
                  passes over the fp32 logits) or "triton[:BLOCK_V[:warps]]" (one kernel; the default on CUDA
                  for half weights)

"peak" is the most memory allocated during one forward + backward beyond the inputs; "ms" the
median of --reps timed runs (CUDA events) after warm-up; "rel err" compares the loss and the two
gradients with an fp32-logits reference (eager on fp32 upcasts, chunked so it fits).

    python benchmarks/fused_loss.py                                    # H200: N=16384, vocab 151936, hidden 2048, bf16
    python benchmarks/fused_loss.py --no-inductor --chunks 1024 --softmax-grad torch,triton,triton:8192,triton:2048:4
    python benchmarks/fused_loss.py --chunk-only 1024 --softmax-grad triton,triton:8192,triton:2048:4,triton:1024:4
    python benchmarks/fused_loss.py --device cpu --N 256 --vocab 4096 --hidden 128 --dtype float32 --reps 2
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fla_compile
from fla_compile.backend import last_report
from fla_compile.lowering.loss import gemm_mode, torch_path
from fla_compile.ops import linear_cross_entropy

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a checkout
from tests.compare import rel  # noqa: E402


def causal_lm_loss(hidden, weight, labels):
    """An LM head and transformers' ForCausalLMLoss, as written (without importing transformers)."""
    logits = (hidden @ weight.T).float()
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


def fused(chunk, softmax_grad=None):
    """The op with ``chunk`` rows per chunk; ``softmax_grad`` "torch" or "triton[:BLOCK_V[:warps]]" sets the
    chunks' softmax gradient (``torch_path.TRITON_SOFTMAX_GRAD``, the kernel's launch options) for its calls."""
    flag, config = "auto", {}
    if softmax_grad is not None:
        name, *opts = softmax_grad.split(":")
        flag = name == "triton"
        config = dict(zip(("BLOCK_V", "num_warps"), map(int, opts)))

    def run(hidden, weight, labels):
        labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
        old = torch_path.TRITON_SOFTMAX_GRAD
        torch_path.TRITON_SOFTMAX_GRAD = flag
        if config:
            from fla_compile.lowering.loss import triton_kernels

            old_config = dict(triton_kernels.CONFIG)
            triton_kernels.CONFIG.update(config)
        try:
            return linear_cross_entropy(hidden, weight, labels, chunk_size=chunk)
        finally:
            torch_path.TRITON_SOFTMAX_GRAD = old
            if config:
                triton_kernels.CONFIG.update(old_config)

    return run


def reference(hidden, weight, labels, rows=1024):
    """Loss and gradients with fp32 logits, chunk by chunk of rows (fits where the full ones do not)."""
    y = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    h = hidden.detach().reshape(-1, hidden.shape[-1])
    w = weight.detach().float().requires_grad_()
    n = (y != -100).sum()
    total, dh = 0.0, torch.empty(h.shape, dtype=torch.float32, device=h.device)
    for s in range(0, h.shape[0], rows):
        hc = h[s : s + rows].float().requires_grad_()
        loss = F.cross_entropy(hc @ w.T, y[s : s + rows], ignore_index=-100, reduction="sum") / n
        g = torch.autograd.grad(loss, [hc, w])
        dh[s : s + rows] = g[0]
        w.grad = g[1] if w.grad is None else w.grad + g[1]
        total += loss.item()
    return torch.tensor(total), dh.view(hidden.shape), w.grad


def measure(fn, hidden, weight, labels, reps, device):
    def once():
        loss = fn(hidden, weight, labels)
        return (loss, *torch.autograd.grad(loss, [hidden, weight]))

    out = once()  # warm-up (and compilation)
    out = once()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    res = once()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device == "cuda" else float("nan")
    del res
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        r = once()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        del r
    return out, peak, statistics.median(times)


def chunk_softmax_grad(a, dtype, dev):
    """One chunk's softmax gradient alone (no products): the torch passes (dz cast twice, as the chunks did
    before, and once) against the kernel's launch options, ms per chunk and GB/s of its ideal traffic."""
    from fla_compile.lowering.loss import triton_kernels

    C, V = a.chunk_only, a.vocab
    g = torch.Generator().manual_seed(1)
    z0 = (torch.randn(C, V, generator=g) * 2).to(dev)
    y = torch.randint(0, V, (C,), generator=g).to(dev)
    scale = torch.full((C,), 1.0 / C, device=dev)
    dz = torch.empty(C, V, dtype=dtype, device=dev)
    z = torch.empty_like(z0)

    def torch_passes(casts):
        def run():
            z.copy_(z0)  # timed separately and subtracted: the chunk owns its logits
            lse = torch.logsumexp(z, dim=-1)
            _ = lse - z.gather(1, y[:, None])[:, 0]
            d = z.sub_(lse[:, None]).exp_()
            d.scatter_add_(1, y[:, None], torch.full((C, 1), -1.0, device=dev))
            d.mul_(scale[:, None])
            for _ in range(casts):
                d.to(dtype)

        return run

    def kernel(bv, nw):
        def run():
            triton_kernels.CONFIG.update(BLOCK_V=bv, num_warps=nw)
            triton_kernels.ce_softmax_grad(z0, None, y, scale, 0.0, dz)

        return run

    def timed(fn):
        fn()
        if dev != "cuda":  # a smoke run (TRITON_INTERPRET=1 for the kernel)
            t0 = time.perf_counter()
            for _ in range(a.reps):
                fn()
            return (time.perf_counter() - t0) * 1e3 / a.reps
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(a.reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / a.reps

    config = dict(triton_kernels.CONFIG)
    copy = timed(lambda: z.copy_(z0))
    ideal = C * V * (8 + dtype.itemsize) / 1e9  # GB: the logits read twice, dz written once
    print(f"one chunk's softmax gradient, [{C}, {V}] fp32 logits -> {dtype}; ideal traffic {ideal:.2f} GB")
    print("| variant | ms per chunk | GB/s of the ideal traffic |")
    print("| --- | --- | --- |")
    variants = [("torch, dz cast twice", torch_passes(2)), ("torch, dz cast once", torch_passes(1))]
    for sg in filter(None, (a.softmax_grad or "triton").split(",")):
        name, *opts = sg.split(":")
        if name == "triton":
            bv, nw = (list(map(int, opts)) + [config["BLOCK_V"], config["num_warps"]][len(opts) :])[:2]
            variants.append((f"triton BLOCK_V={bv} warps={nw}", kernel(bv, nw)))
    for name, fn in variants:
        ms = timed(fn) - (copy if name.startswith("torch") else 0)
        print(f"| {name} | {ms:.3f} | {ideal / ms * 1e3:.0f} |")
    triton_kernels.CONFIG.update(config)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, default=16384, help="tokens (batch 1, sequence N)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--chunks", default="0,512,1024", help="rows per chunk of the direct op rows (0: automatic)")
    p.add_argument(
        "--softmax-grad",
        default="",
        help="comma list of torch, triton, triton:BLOCK_V[:warps]: an op row per chunk size for each (A/B)",
    )
    p.add_argument("--no-inductor", action="store_true", help="skip the Inductor row (its cold compile)")
    p.add_argument(
        "--chunk-only",
        type=int,
        default=0,
        metavar="ROWS",
        help="time only one chunk of ROWS rows' softmax gradient (torch passes against --softmax-grad's triton)",
    )
    a = p.parse_args()
    dtype, dev = getattr(torch, a.dtype), a.device
    if a.chunk_only:
        return chunk_softmax_grad(a, dtype, dev)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, a.N, a.hidden, generator=g).to(dev, dtype).requires_grad_()
    weight = (torch.randn(a.vocab, a.hidden, generator=g) * a.hidden**-0.5).to(dev, dtype).requires_grad_()
    labels = torch.randint(0, a.vocab, (1, a.N), generator=g).to(dev)
    labels[:, : a.N // 8] = -100  # a prompt, ignored
    ref = reference(hidden, weight, labels)
    rows = [("eager", causal_lm_loss)]
    if not a.no_inductor:
        rows.append(("inductor", torch.compile(causal_lm_loss)))
    rows.append(("fla", torch.compile(causal_lm_loss, backend="fla")))
    rows += [(f"op chunk={c}", fused(int(c))) for c in a.chunks.split(",")]
    rows += [
        (f"op chunk={c} {sg}", fused(int(c), sg))
        for c in a.chunks.split(",")
        for sg in filter(None, a.softmax_grad.split(","))
    ]
    print(
        f"N={a.N} vocab={a.vocab} hidden={a.hidden} {a.dtype} on {dev}; fwd+bwd of the loss, grads wrt hidden, weight"
    )
    print("| path | peak GiB | ms | rel err loss / d hidden / d weight |")
    print("| --- | --- | --- | --- |")
    for name, fn in rows:
        try:
            (loss, dh, dw), peak, ms = measure(fn, hidden, weight, labels, a.reps, dev)
        except torch.cuda.OutOfMemoryError:
            print(f"| {name} | out of memory | | |")
            continue
        errs = " / ".join(f"{rel(x.cpu(), r.cpu()):.1e}" for x, r in zip((loss, dh, dw), ref))
        print(f"| {name} | {peak:.2f} | {ms:.1f} | {errs} |")
        if name == "fla":
            rep = last_report()
            print(f"|   fla report: {'; '.join(str(m) for m in rep.matches) or 'NOT FUSED: ' + str(rep)} | | | |")
        del loss, dh, dw
    auto = torch_path.use_triton_softmax_grad(weight, gemm_mode(weight))
    print(
        f"fla_compile {fla_compile.__version__}, torch {torch.__version__}, chunk products: {gemm_mode(weight)}, "
        f"softmax gradient by default: {'triton' if auto else 'torch'}"
    )


if __name__ == "__main__":
    main()
