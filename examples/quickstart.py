"""A GLA-style layer written as a naive time loop, compiled with backend="fla".

Prints what was matched, the max error against eager, and the speed-up (CPU or GPU): the median
of several runs of each, both warmed up first, with their range.
"""

import statistics
import time

import torch
import torch.nn.functional as F

import fla_compile
import fla_compile.backend  # noqa: F401  (registers "fla" where the package is not pip-installed)


class NaiveGLA(torch.nn.Module):
    """Gated linear attention as one would write it from the paper: a loop over time."""

    def __init__(self, d_model=256, heads=4):
        super().__init__()
        self.h, self.d = heads, d_model // heads
        self.qkv = torch.nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = torch.nn.Linear(d_model, d_model, bias=False)
        self.out = torch.nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.d).unbind(2)
        g = F.logsigmoid(self.gate(x)).view(B, T, self.h, self.d) / 16
        h = x.new_zeros(B, self.h, self.d, self.d)
        o = torch.empty_like(v)
        for t in range(T):
            h = h * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
            o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * self.d**-0.5, h)
        return self.out(o.flatten(2))


def bench(fns, *args, reps=7):
    """Median and range (ms) of ``reps`` runs of each function, after a warm-up run of each;
    the functions take turns, so that a drift of the machine's speed hits them alike."""
    for fn in fns:
        fn(*args)
    times = [[] for _ in fns]
    for _ in range(reps):
        for ts, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn(*args)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [(statistics.median(ts), min(ts), max(ts)) for ts in times]


def main():
    torch.manual_seed(0)
    layer = NaiveGLA()
    x = torch.randn(2, 512, 256)
    with torch.no_grad():
        ref = layer(x)
        compiled = torch.compile(layer, backend="fla")
        t0 = time.perf_counter()
        out = compiled(x)
        compile_s = time.perf_counter() - t0
        print(fla_compile.last_report())
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        print(f"max error vs eager (relative to max |out|): {err:.2e}")
        (eager, e_lo, e_hi), (fla, f_lo, f_hi) = bench([layer, compiled], x)
    print(f"compile (first call) {compile_s:.1f} s; then, median of 7 runs after a warm-up of each:")
    print(f"  eager {eager:.1f} ms (range {e_lo:.1f}-{e_hi:.1f}), fla {fla:.1f} ms (range {f_lo:.1f}-{f_hi:.1f})")
    print(f"  fla is {eager / fla:.1f}x faster than eager")


if __name__ == "__main__":
    main()
