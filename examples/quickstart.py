"""A GLA-style layer written as a naive time loop, compiled with backend="fla".

Prints what was matched, the max error against eager, and the speed-up (CPU or GPU).
"""

import time

import torch
import torch.nn.functional as F

import fla_compile


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


def bench(fn, *args, reps=3):
    fn(*args)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t0) / reps


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
        t_eager, t_fla = bench(layer, x), bench(compiled, x)
    print(
        f"compile {compile_s:.1f} s; eager {t_eager * 1e3:.1f} ms, fla {t_fla * 1e3:.1f} ms: {t_eager / t_fla:.1f}x faster"
    )


if __name__ == "__main__":
    main()
