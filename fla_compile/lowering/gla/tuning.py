"""Tuning of the GLA-line kernels: screen each candidate config against the float64 torch path and
for bitwise determinism, time the survivors, keep the fastest (``python -m fla_compile tune`` pre-tunes).

The config system itself (tables, keys, the disk cache, ``get_config``) is ``common/autotune.py``;
this module runs this line's kernels, so it lives here and registers :func:`tune` there.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ...numerics import rel_err
from ..common import autotune

log = logging.getLogger(__name__)
FAMILY_GATE = {"linear_attn": "none", "retention": "scalar", "simple_gla": "scalar", "gla": "vector"}


def _problem(gate_kind, K, V, dtype, T, device, B=1, H=2, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    q, k, v = rnd(B, T, H, K).to(dtype), rnd(B, T, H, K).to(dtype), rnd(B, T, H, V).to(dtype)
    g = None
    if gate_kind != "none":
        shape = (B, T, H) if gate_kind == "scalar" else (B, T, H, K)
        g = torch.nn.functional.logsigmoid(rnd(*shape) + 2.0)
    h0 = rnd(B, H, K, V)
    return q, k, v, g, h0


def screen(kernel, gate_kind, K, V, dtype, cfg, device, T=None) -> str | None:
    """None if ``cfg`` is correct (vs float64 torch) and bitwise deterministic, else the reason.

    Independent of the caller's autograd mode: tuning is triggered by the first call of a key inside the
    op's forward, which runs without grad (an autograd.Function's forward, or ``torch.no_grad()`` /
    ``torch.inference_mode()`` in generation), while the reference gradients here need autograd.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _screen(kernel, gate_kind, K, V, dtype, cfg, device, T)


def _screen(kernel, gate_kind, K, V, dtype, cfg, device, T):
    from . import triton_launch as gla_triton
    from .torch_path import gla_line_forward

    T = T or (37 if kernel == "decode" else 150)  # partial chunks, several chunks
    q, k, v, g, h0 = _problem(gate_kind, K, V, dtype, T, device)
    scale = K**-0.5
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    leaves = [x.double().requires_grad_() if x is not None else None for x in (q, k, v, g, h0)]
    ro, rht = gla_line_forward(*leaves[:4], gate_kind, scale, leaves[4])
    try:
        if kernel == "decode":
            runs = [gla_triton.fused_recurrent(q, k, v, g, gate_kind, scale, h0, config=cfg) for _ in range(2)]
            refs = [ro, rht]
        else:
            do = torch.randn_like(v)
            dht = torch.randn_like(h0)
            wrt = [x for x in leaves if x is not None]
            refs = [ro, rht, *torch.autograd.grad((ro, rht), wrt, (do.double(), dht.double()))]
            runs = []
            for _ in range(2):
                o, ht = gla_triton.chunk_forward(q, k, v, g, gate_kind, scale, h0, config=cfg)
                grads = gla_triton.chunk_backward(q, k, v, g, gate_kind, scale, h0, None, do, dht, config=cfg)
                runs.append([o, ht, *[x for x in grads if x is not None]])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as e:  # a config that does not compile or launch (shared memory, registers) loses
        return f"failed to run: {type(e).__name__}: {str(e)[:200]}"
    for i, (a, b, r) in enumerate(zip(runs[0], runs[1], refs)):
        if not torch.equal(a, b):
            return f"output {i} differs between two runs (not deterministic)"
        if not torch.isfinite(a).all():
            return f"output {i} has NaN/inf"
        err = rel_err(a, r)
        if err > tol:
            return f"output {i} relative error {err:.2e} > {tol:.0e}"
    return None


def _time(kernel, gate_kind, K, V, dtype, T, cfg, device) -> float:
    import triton.testing

    from . import triton_launch as gla_triton

    if kernel == "decode":
        B, T = 64, 1
    else:
        T = min(T or 2048, 8192)
        B = max(1, 16384 // T)
    q, k, v, g, h0 = _problem(gate_kind, K, V, dtype, T, device, B=B, H=8)
    if kernel == "decode":
        return triton.testing.do_bench(
            lambda: gla_triton.fused_recurrent(q, k, v, g, gate_kind, 0.1, h0, inplace_state=True, config=cfg)
        )
    do, dht = torch.randn_like(v), torch.randn_like(h0)

    def step():
        gla_triton.chunk_forward(q, k, v, g, gate_kind, 0.1, h0, config=cfg)
        gla_triton.chunk_backward(q, k, v, g, gate_kind, 0.1, h0, None, do, dht, config=cfg)

    return triton.testing.do_bench(step)


def tune(kernel, gate_kind, K, V, dtype, T, device) -> dict:
    """Screen every candidate of the arch, time the survivors, return the fastest (None if none survive)."""
    if autotune.capturing():
        raise RuntimeError("fla_compile: autotuning was asked for inside CUDA-graph capture; run one call first")
    arch = autotune.arch_of(device)
    cands = autotune.candidates(kernel, gate_kind, arch, K, V)
    best, best_ms = None, float("inf")
    for cfg in cands:
        why = screen(kernel, gate_kind, K, V, dtype, cfg, device)
        if why is not None:
            log.warning(
                "fla_compile: rejected %s config %s for %s K=%d V=%d %s: %s", kernel, cfg, gate_kind, K, V, dtype, why
            )
            continue
        ms = _time(kernel, gate_kind, K, V, dtype, T, cfg, device)
        log.info("fla_compile: %s %s K=%d V=%d %s T~%s %s: %.3f ms", kernel, gate_kind, K, V, dtype, T, cfg, ms)
        if ms < best_ms:
            best, best_ms = cfg, ms
    return dict(best) if best is not None else None


# ---------------------------------------------------------------------------------------------
# CLI


def _progress(items, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, desc=desc)
        return
    for i, item in enumerate(items):
        log.info("%s: %d/%d %s", desc, i + 1, len(items), item)
        yield item


def tune_main(argv=None) -> int:
    """``python -m fla_compile tune``: pre-tune the GLA-line kernels for common shapes."""
    p = argparse.ArgumentParser(prog="python -m fla_compile tune", description=tune_main.__doc__)
    p.add_argument("--families", default="linear_attn,retention,simple_gla,gla")
    p.add_argument("--dtypes", default="bfloat16", help="e.g. bfloat16,float16,float32")
    p.add_argument("--dims", default="64,128", help="head dims, used for K and V (e.g. 64,128,256)")
    p.add_argument("--T", default="2048,8192,varlen", help="sequence lengths to tune for ('varlen': packed)")
    p.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True, help="tune the decode kernel")
    p.add_argument("--force", action="store_true", help="re-tune keys already in the cache")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        log.error("fla_compile tune: no CUDA device; nothing to tune (the CPU path needs no tuning)")
        return 1
    try:
        import triton  # noqa: F401
    except ImportError:
        log.error("fla_compile tune: Triton is not installed (pip install triton); without it the torch path runs")
        return 1
    device = torch.device("cuda", torch.cuda.current_device())
    kinds = sorted({FAMILY_GATE[f] for f in args.families.split(",")})
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    Ts = [None if t == "varlen" else int(t) for t in args.T.split(",")]
    jobs = [("chunk", g, d, d, dt, T) for g in kinds for d in dims for dt in dtypes for T in Ts]
    if args.decode:
        jobs += [("decode", g, d, d, dt, 1) for g in kinds for d in dims for dt in dtypes]
    path = autotune.cache_file(device)
    done = autotune._load(path)
    for kernel, g, K, V, dt, T in _progress(jobs, "tuning"):
        key = autotune.make_key(kernel, g, K, V, dt, T)
        if key in done and not args.force:
            continue
        cfg = tune(kernel, g, K, V, dt, T, device)
        if cfg is None:
            log.warning("fla_compile tune: no candidate of %s survived screening; it keeps the default", key)
            continue
        with autotune._lock:
            autotune._winners.setdefault(str(path), {})[key] = cfg
            autotune._persist(path, key, cfg)
    log.info("fla_compile tune: %d keys in %s", len(autotune._load(path)), path)
    return 0


autotune.register_tuner("gla", tune)
