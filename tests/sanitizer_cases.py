"""Every Triton kernel path of the public ops, at small odd sizes, forward and backward: the program that
``tests/test_sanitizer_gpu.py`` runs under ``compute-sanitizer`` (memcheck, initcheck).

A kernel that reads or writes past a buffer's end, or reads memory nothing wrote, can pass every numeric test:
the stray bytes may be masked out later, or be zeros today. The sanitizer sees the access itself. The cases
reach the paths the kernels branch on: odd T (a partial last chunk), packed sequences, GQA (more value heads
than q/k heads), K != V, head dims 32 to 512, bf16 / fp16 / fp32, an initial state with the final state in the
loss, a decoding step (T = 1), a long single sequence (the state passes in segments), the in-kernel l2 norm,
hgrn's three kernels, mamba's chunked, padded and walked scans, and the fused losses.

    python tests/sanitizer_cases.py GROUP[:I] [...]   # a group's cases, or its I-th; exit 0 when all ran
    python tests/sanitizer_cases.py --list           # every case as GROUP:I

Run it under the sanitizer with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: with torch's caching allocator every
buffer lies inside a larger block, so an access past its end stays inside an allocation and is not reported.
"""

from __future__ import annotations

import pathlib
import sys
from dataclasses import dataclass, field

if __name__ == "__main__":  # run as a script: this checkout's packages (``tests``, ``fla_compile``) first
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.compare import flat  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: the torch paths, to check the cases build
QKV = ["gla", "simple_gla", "retention", "linear_attn", "rwkv6", "normalized_linear_attn"]
DELTA = ["delta_rule", "gated_delta_rule", "kda"]


@dataclass(frozen=True)
class Shape:
    """B sequences of T steps (or packed ``cu`` offsets with B = 1), HK heads of q and k, H of v."""

    B: int
    T: int
    HK: int
    H: int
    K: int
    V: int
    cu: tuple = ()
    h0: bool = True

    def __str__(self) -> str:
        packed = f" packed {list(self.cu)}" if self.cu else ""
        return f"B{self.B} T{self.T} HK{self.HK} H{self.H} K{self.K} V{self.V}{packed}{'' if self.h0 else ' no-h0'}"

    @property
    def N(self) -> int:
        return len(self.cu) - 1 if self.cu else self.B


@dataclass
class Case:
    name: str
    run: object  # () -> None: builds its inputs, runs forward and backward
    settings: dict = field(default_factory=dict)  # module attribute -> value while it runs


def _rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, generator=gen).to(dtype)


def _backward(outs, leaves, gen):
    """Backward of sum(out * random) over every output given, into every leaf."""
    loss = sum((o.float() * _rand(gen, *o.shape)).sum() for o in outs if o is not None)
    torch.autograd.grad(loss, leaves)


def qkv_case(family: str, s: Shape, dtype, l2norm: bool = False) -> Case:
    import fla_compile.ops as ops

    def run():
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        B, T = s.B, s.T
        q, k = _rand(gen, B, T, s.HK, s.K, dtype=dtype), _rand(gen, B, T, s.HK, s.K, dtype=dtype)
        v = _rand(gen, B, T, s.H, s.V, dtype=dtype)
        kw = {}
        if family in DELTA:
            if not l2norm:
                k = F.normalize(k.float(), dim=-1).to(dtype)
            beta = torch.rand(B, T, s.H, device=DEVICE, generator=gen).to(dtype)
            gate = {
                "delta_rule": [],
                "gated_delta_rule": [F.logsigmoid(_rand(gen, B, T, s.H))],
                "kda": [F.logsigmoid(_rand(gen, B, T, s.H, s.K)) / 8],
            }[family]
            leaves = [q, k, v, *gate, beta]
            kw["use_qk_l2norm_in_kernel"] = l2norm
        elif family == "normalized_linear_attn":  # positive features, as elu + 1 makes them
            q, k = F.elu(q.float()).add(1).to(dtype), F.elu(k.float()).add(1).to(dtype)
            leaves = [q, k, v]
        else:
            gate = {
                "gla": [F.logsigmoid(_rand(gen, B, T, s.H, s.K)) / 8],
                "simple_gla": [F.logsigmoid(_rand(gen, B, T, s.H))],
                "retention": [],
                "linear_attn": [],
                "rwkv6": [F.logsigmoid(_rand(gen, B, T, s.H, s.K)) / 8, _rand(gen, s.H, s.K)],
            }[family]
            leaves = [q, k, v, *gate]
        leaves = [x.requires_grad_() for x in leaves]
        args = list(leaves)
        if family == "retention":  # fixed decays, one a head
            args.append(torch.log(1 - 2.0 ** (-5.0 - torch.arange(s.H, device=DEVICE, dtype=torch.float32))))
        h0 = None
        if s.h0:
            h0 = (_rand(gen, s.N, s.H, s.K, s.V) * 0.1).requires_grad_()
            leaves.append(h0)
            if family == "normalized_linear_attn":  # (S0, z0): the state and the key sum, positive
                h0 = (h0, _rand(gen, s.N, s.H, s.K).abs().requires_grad_())
                leaves.append(h0[1])
        cu = torch.tensor(s.cu, device=DEVICE, dtype=torch.int32) if s.cu else None
        out = getattr(ops, family)(*args, initial_state=h0, output_final_state=True, cu_seqlens=cu, **kw)
        _backward(flat(out), leaves, gen)

    return Case(f"{family} {s} {str(dtype)[6:]}{' l2norm' if l2norm else ''}", run)


def hgrn_case(kernel: str, B: int, T: int, D: int, dtype, cu: tuple = ()) -> Case:
    import fla_compile.ops as ops

    def run():
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        x = _rand(gen, B, T, D, dtype=dtype).requires_grad_()
        g = F.logsigmoid(_rand(gen, B, T, D)).to(dtype).requires_grad_()
        N = len(cu) - 1 if cu else B
        h0 = _rand(gen, N, D).requires_grad_()
        c = torch.tensor(cu, device=DEVICE, dtype=torch.int32) if cu else None
        o, ht = ops.hgrn(x, g, initial_state=h0, output_final_state=True, cu_seqlens=c)
        _backward((o, ht), [x, g, h0], gen)

    from fla_compile.lowering.scan import dispatch

    return Case(f"hgrn {kernel} ({B}, {T}, {D}) {str(dtype)[6:]}{' packed' if cu else ''}", run,
                {f"{dispatch.__name__}.FORCE_KERNEL": kernel})  # fmt: skip


def mamba_case(B: int, T: int, D: int, N: int, dtype, cu: tuple = (), h0: bool = True) -> Case:
    import fla_compile.ops as ops

    def run():
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        x, z = _rand(gen, B, T, D, dtype=dtype), _rand(gen, B, T, D, dtype=dtype)
        dt = (torch.rand(B, T, D, device=DEVICE, generator=gen) - 2).to(dtype)
        A = -torch.rand(D, N, device=DEVICE, generator=gen) - 0.1
        Bm, Cm = _rand(gen, B, T, N, dtype=dtype), _rand(gen, B, T, N, dtype=dtype)
        Dk, bias = _rand(gen, D), _rand(gen, D) * 0.1
        n_seq = len(cu) - 1 if cu else B
        leaves = [x, z, dt, A, Bm, Cm, Dk, bias]
        state = None
        if h0:
            state = _rand(gen, n_seq, D, N) * 0.1
            leaves.append(state)
        leaves = [t.requires_grad_() for t in leaves]
        c = torch.tensor(cu, device=DEVICE, dtype=torch.int32) if cu else None
        y, ht = ops.mamba(x, dt, A, Bm, Cm, D=Dk, z=z, dt_bias=bias, dt_softplus=True, initial_state=state,
                          output_final_state=True, cu_seqlens=c)  # fmt: skip
        _backward((y, ht), leaves, gen)

    return Case(f"mamba ({B}, {T}, {D}, {N}) {str(dtype)[6:]}{' packed' if cu else ''}", run)


def loss_case(kind: str, N: int, Dm: int, vocab: int, dtype) -> Case:
    import fla_compile.ops as ops

    def run():
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        h = _rand(gen, N, Dm, dtype=dtype).requires_grad_()
        w = (_rand(gen, vocab, Dm, dtype=dtype) * 0.05).requires_grad_()
        labels = torch.randint(0, vocab, (N,), device=DEVICE, generator=gen)
        labels[::5] = -100  # ignored rows
        if kind == "ce":
            loss = ops.linear_cross_entropy(h, w, labels)
            torch.autograd.grad(loss, [h, w])
        else:
            th, tw = _rand(gen, N, Dm, dtype=dtype), _rand(gen, vocab, Dm, dtype=dtype) * 0.05
            loss = ops.linear_kl_div(h, w, th, tw, labels, temperature=2.0)
            torch.autograd.grad(loss, [h, w])

    return Case(f"linear_{'cross_entropy' if kind == 'ce' else 'kl_div'} ({N}, {Dm}, {vocab}) {str(dtype)[6:]}", run)


def control_case(out_dtype: bool) -> Case:
    """torch alone: a bf16 product read back by a torch reduction. What the sanitizer says of it is the baseline
    for our kernels that read a product's output (the fused losses read logits from ``torch.mm``)."""

    def run():
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        h, w = _rand(gen, 37, 96, dtype=torch.bfloat16), _rand(gen, 1000, 96, dtype=torch.bfloat16)
        z = torch.mm(h, w.t(), out_dtype=torch.float32) if out_dtype and DEVICE == "cuda" else torch.mm(h, w.t())
        z.float().sum().item()

    return Case(f"torch.mm bf16{' out_dtype fp32' if out_dtype else ''}", run)


def groups() -> dict[str, list[Case]]:
    """Group name -> its cases: a group is one process (one sanitizer run)."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    out = {}
    for family in QKV + DELTA:
        cases = [
            qkv_case(family, Shape(2, 200, 2, 4, 64, 64), bf16),  # odd T, GQA
            qkv_case(family, Shape(2, 200, 2, 4, 64, 32), bf16),  # K != V
            qkv_case(family, Shape(1, 331, 2, 2, 128, 128, cu=(0, 37, 200, 331)), bf16),  # packed
            qkv_case(family, Shape(3, 1, 2, 2, 128, 128), bf16),  # a decoding step
            qkv_case(family, Shape(1, 4100, 1, 2, 64, 64, h0=False), bf16),  # one long sequence: segments
            qkv_case(family, Shape(2, 130, 2, 2, 256, 256), bf16),  # the wide heads' kernels
            qkv_case(family, Shape(2, 200, 2, 4, 64, 64), fp16),
            qkv_case(family, Shape(2, 200, 2, 4, 128, 128), fp32),
            qkv_case(family, Shape(1, 331, 2, 2, 64, 32, cu=(0, 37, 200, 331)), fp32),
        ]
        if family in DELTA:
            cases.append(qkv_case(family, Shape(2, 200, 2, 4, 128, 128), bf16, l2norm=True))
            cases.append(qkv_case(family, Shape(1, 200, 2, 2, 256, 512), bf16))  # the key-block state passes
        cases.append(qkv_case(family, Shape(2, 200, 2, 4, 32, 64), bf16))  # a narrow K: masked blocks of 64
        out[family] = cases
    out["hgrn"] = [
        hgrn_case(kernel, B, T, D, dtype, cu)
        for kernel in ("walk", "chunk", "tile")
        for (B, T, D, dtype, cu) in [
            (2, 200, 100, bf16, ()),
            (1, 331, 64, bf16, (0, 37, 200, 331)),
            (2, 3000, 96, fp32, ()),
            (2, 1, 100, fp16, ()),
        ]
    ]
    out["mamba"] = [
        mamba_case(2, 200, 100, 16, bf16),  # chunked, vectorized states
        mamba_case(2, 200, 100, 15, bf16),  # states padded to 16
        mamba_case(1, 1000, 64, 16, bf16, h0=False),  # a small grid: the forward in segments
        mamba_case(2, 40, 100, 16, fp32),  # short: the walk
        mamba_case(2, 130, 36, 80, bf16),  # more states than the chunked kernels take: the walk
        mamba_case(1, 331, 100, 16, bf16, cu=(0, 37, 200, 331)),
        mamba_case(2, 300, 100, 32, fp16),
        mamba_case(3, 1, 100, 16, bf16),
    ]
    out["loss"] = [loss_case(kind, 37, 96, 1000, dtype) for kind in ("ce", "kl") for dtype in (bf16, fp32)]
    out["control"] = [control_case(False), control_case(True)]
    return out


def _set(settings: dict) -> dict:
    """Set ``module.attribute`` values; returns the old ones."""
    import importlib

    old = {}
    for path, value in settings.items():
        mod, attr = path.rsplit(".", 1)
        m = importlib.import_module(mod)
        old[path] = getattr(m, attr)
        setattr(m, attr, value)
    return old


def select(spec: str) -> list[Case]:
    """``GROUP`` (its cases) or ``GROUP:I`` (its I-th case)."""
    all_groups = groups()
    name, _, index = spec.partition(":")
    if name not in all_groups:
        raise SystemExit(f"sanitizer_cases: unknown group {name!r}: expected among {sorted(all_groups)}")
    cases = all_groups[name]
    if not index:
        return cases
    if not index.isdigit() or int(index) >= len(cases):
        raise SystemExit(f"sanitizer_cases: {spec!r}: expected a case index below {len(cases)}")
    return [cases[int(index)]]


def run(specs) -> int:
    """Run the cases of ``specs`` (``GROUP`` or ``GROUP:I``). One process a case under the sanitizer: its first bad
    access leaves the CUDA context unusable, so the cases after it in the same process would not run."""
    for spec in specs:
        for case in select(spec):
            old = _set(case.settings)
            try:
                case.run()
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
            finally:
                _set(old)
            print(f"ran {case.name}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        print(" ".join(f"{g}:{i}" for g, cases in groups().items() for i in range(len(cases))))
        raise SystemExit(0)
    raise SystemExit(run(sys.argv[1:]))
