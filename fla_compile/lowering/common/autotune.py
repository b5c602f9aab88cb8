"""Config selection for the GLA-line Triton kernels: per-arch tables, screened tuning, a disk cache.

Candidates live as data in ``configs/<arch>.json`` (sm80, sm90, sm100, default); the first of
each list is the untuned default. A key is what changes the generated code and the best
blocks: kernel, gate kind, head dims, dtype and a bucket of T (a fixed bucket for packed
sequences, so packed batches of any length never re-tune). For a new key every candidate is
screened once, on a small problem, against the float64 torch reference and for bitwise
determinism over two runs; only survivors are timed. Winners are written to
``$FLA_COMPILE_CACHE_DIR`` (default ``~/.cache/fla_compile``), so a second process tunes
nothing. An arch whose table is marked ``"tuned": true`` ships measured winners as the first
candidates: there a first call tunes nothing (``FLA_COMPILE_AUTOTUNE=1`` tunes anyway, ``tune``
refreshes). No tuning happens inside CUDA-graph capture, on the CPU interpreter, or with
``FLA_COMPILE_AUTOTUNE=0``: those use the default. A key whose every candidate fails screening
keeps the default, and nothing is written for it.

``python -m fla_compile tune`` pre-tunes the common shapes (:func:`tune_main`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pathlib
import tempfile
import threading

import torch

log = logging.getLogger(__name__)

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"
KINDS = ("none", "scalar", "vector")
FAMILY_GATE = {"linear_attn": "none", "retention": "scalar", "simple_gla": "scalar", "gla": "vector"}
# used when the JSON tables are not installed next to this file
_FALLBACK = {
    "chunk": {
        "none": [{"BT": 64, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}],
        "scalar": [{"BT": 64, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}],
        "vector": [{"BT": 64, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}],
    },
    "decode": [{"BV": 32, "num_warps": 4}],
}
_lock = threading.Lock()
_winners: dict[str, dict[str, dict]] = {}  # cache file -> key -> config
_loaded: set[str] = set()


def arch_of(device) -> str:
    """'sm80', 'sm90', 'sm100' or 'default' for a CUDA device."""
    major, _ = torch.cuda.get_device_capability(device)
    return {8: "sm80", 9: "sm90", 10: "sm100"}.get(major, "default")


@functools.cache
def table(arch: str) -> dict:
    """The candidate table of an arch, from ``configs/<arch>.json``."""
    for name in (arch, "default"):
        path = CONFIG_DIR / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
    return _FALLBACK


def candidates(kernel: str, gate_kind: str, arch: str) -> list[dict]:
    t = table(arch)
    return list(t["decode"] if kernel == "decode" else t["chunk"][gate_kind])


def t_bucket(T: int | None) -> str:
    """A bucket of the sequence length: 'varlen' for packed inputs, else a power of two in [64, 16384]."""
    if T is None:
        return "varlen"
    b = 64
    while b < T and b < 16384:
        b *= 2
    return str(b)


def make_key(kernel, gate_kind, K, V, dtype, T) -> str:
    return f"{kernel}|{gate_kind}|K{K}|V{V}|{str(dtype).replace('torch.', '')}|T{t_bucket(T)}"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FLA_COMPILE_CACHE_DIR", pathlib.Path.home() / ".cache" / "fla_compile"))


def cache_file(device) -> pathlib.Path:
    """One JSON file per GPU model and Triton version, under :func:`cache_dir`."""
    return cache_dir() / _cache_name(torch.device(device).index or 0)


@functools.cache
def _cache_name(index: int) -> str:
    import triton

    name = torch.cuda.get_device_name(index).replace(" ", "_").replace("/", "_")
    # v2: caches written before screening ran with autograd on hold the default for every key (all
    # candidates were rejected under no_grad); a new name leaves them unread
    return f"gla-v2-{arch_of(index)}-{name}-triton{triton.__version__}.json"


def _load(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _persist(path: pathlib.Path, key: str, cfg: dict) -> None:
    """Merge one winner into the cache file, atomically (other processes may write too)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load(path)
        data[key] = cfg
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("fla_compile: cannot write the tuning cache %s: %s", path, e)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream. Tuning then never runs: it would
    launch and time candidates (and synchronize) inside the capture, and the graph would keep them."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _tuning_allowed(device) -> bool:
    """Tune a new key now? ``FLA_COMPILE_AUTOTUNE``: '0' never, '1' always, unset or 'auto' only on an
    arch without shipped winners (never inside CUDA-graph capture or on the interpreter)."""
    mode = os.environ.get("FLA_COMPILE_AUTOTUNE", "auto")
    if device.type != "cuda" or _interpreting() or mode == "0":
        return False
    if mode != "1" and table(arch_of(device)).get("tuned", False):
        return False
    return not torch.cuda.is_current_stream_capturing()


def get_config(kernel, gate_kind, K, V, dtype, T, device, varlen=False) -> dict:
    """The config for a call: a cached winner, a fresh tuning result, or the arch default."""
    if device.type != "cuda" or _interpreting():
        return candidates(kernel, gate_kind, "default")[0]
    key = make_key(kernel, gate_kind, K, V, dtype, None if varlen else T)
    return lookup(
        key,
        cache_file(device),
        allowed=lambda: _tuning_allowed(device),
        default=lambda: candidates(kernel, gate_kind, arch_of(device))[0],
        tune_fn=lambda: tune(kernel, gate_kind, K, V, dtype, T, device),
    )


def lookup(key: str, path: pathlib.Path, allowed, default, tune_fn) -> dict:
    """The winner of ``key``: from memory, else from the cache file at ``path`` (read once per process),
    else tuned now and persisted when ``allowed()`` (never during CUDA-graph capture), else ``default()``
    (not stored: tuned next time)."""
    winners = _winners.get(str(path))
    if winners is not None and key in winners:
        return winners[key]
    with _lock:
        winners = _winners.setdefault(str(path), {})
        if str(path) not in _loaded:
            winners.update(_load(path))
            _loaded.add(str(path))
        if key in winners:
            return winners[key]
        if capturing() or not allowed():  # never tune inside a capture, whatever ``allowed`` says
            return default()
        cfg = tune_fn()
        if cfg is None:  # no candidate survived screening: the default, and nothing stored
            return default()
        winners[key] = cfg
        _persist(path, key, cfg)
    return cfg


def forget() -> None:
    """Drop what this process knows of the cache (as a fresh process would); the files stay."""
    with _lock:
        _winners.clear()
        _loaded.clear()


# ---------------------------------------------------------------------------------------------
# screening and timing


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


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def screen(kernel, gate_kind, K, V, dtype, cfg, device, T=None) -> str | None:
    """None if ``cfg`` is correct (vs float64 torch) and bitwise deterministic, else the reason.

    Independent of the caller's autograd mode: tuning is triggered by the first call of a key inside the
    op's forward, which runs without grad (an autograd.Function's forward, or ``torch.no_grad()`` /
    ``torch.inference_mode()`` in generation), while the reference gradients here need autograd.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _screen(kernel, gate_kind, K, V, dtype, cfg, device, T)


def _screen(kernel, gate_kind, K, V, dtype, cfg, device, T):
    from ..gla import triton_launch as gla_triton
    from ..gla.torch_path import gla_line_forward

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
        err = _rel(a, r)
        if err > tol:
            return f"output {i} relative error {err:.2e} > {tol:.0e}"
    return None


def _time(kernel, gate_kind, K, V, dtype, T, cfg, device) -> float:
    import triton.testing

    from ..gla import triton_launch as gla_triton

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
    if capturing():
        raise RuntimeError("fla_compile: autotuning was asked for inside CUDA-graph capture; run one call first")
    arch = arch_of(device)
    cands = candidates(kernel, gate_kind, arch)
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
    path = cache_file(device)
    done = _load(path)
    for kernel, g, K, V, dt, T in _progress(jobs, "tuning"):
        key = make_key(kernel, g, K, V, dt, T)
        if key in done and not args.force:
            continue
        cfg = tune(kernel, g, K, V, dt, T, device)
        if cfg is None:
            log.warning("fla_compile tune: no candidate of %s survived screening; it keeps the default", key)
            continue
        with _lock:
            _winners.setdefault(str(path), {})[key] = cfg
            _persist(path, key, cfg)
    log.info("fla_compile tune: %d keys in %s", len(_load(path)), path)
    return 0
