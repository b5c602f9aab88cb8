"""Config selection for the GLA-line Triton kernels: per-arch tables, screened tuning, a disk cache.

Candidates live as data in ``configs/<arch>.json`` (sm80, sm90, sm100, default); the first of
each list is the untuned default. A key is what changes the generated code and the best
blocks: kernel, gate kind, head dims, dtype and a bucket of T (a fixed bucket for packed
sequences, so packed batches of any length never re-tune). For a new key every candidate is
screened once, on a small problem, against the float64 torch reference and for bitwise
determinism over two runs; only survivors are timed. Winners are written to
``$FLA_COMPILE_CACHE_DIR`` (default ``~/.cache/fla_compile``), so a second process tunes
nothing. An arch table's ``by_dims`` section adjusts the first candidate for head dims where
the shared winner loses (8-warp kernels on 64-wide tiles). An arch whose table is marked
``"tuned": true`` ships measured winners as the first candidates: there a first call tunes
nothing (``FLA_COMPILE_AUTOTUNE=1`` tunes anyway, ``tune`` refreshes). No tuning happens inside CUDA-graph capture, on the CPU interpreter, or with
``FLA_COMPILE_AUTOTUNE=0``: those use the default. A key whose every candidate fails screening
keeps the default, and nothing is written for it.

The screening and timing run a line's kernels, so they live with the line (``lowering/gla/tuning.py``,
which registers its ``tune`` here, and whose ``tune_main`` is ``python -m fla_compile tune``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import tempfile
import threading

import torch

from . import launch

log = logging.getLogger(__name__)

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"
KINDS = ("none", "scalar", "vector")
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


def dims_key(K: int, V: int) -> str:
    return f"K{K}V{V}"


def by_dims(arch: str, K: int | None, V: int | None) -> dict:
    """The section of an arch's ``"by_dims"`` table for head dims K, V ({} when none was measured): per-kernel
    options that win at those dims where the shared first candidate does not (8 warps on a 64-wide tile)."""
    if K is None or V is None:
        return {}
    return table(arch).get("by_dims", {}).get(dims_key(K, V), {})


def by_dtype(arch: str, dtype) -> dict:
    """The section of an arch's ``"by_dtype"`` table for inputs of ``dtype`` (keyed "float32", ...; {} when none
    was measured): options that win for that dtype where the bf16-tuned ones lose (fp32 tiles take twice the
    registers and shared memory)."""
    return table(arch).get("by_dtype", {}).get(str(dtype).removeprefix("torch."), {})


def candidates(kernel: str, gate_kind: str, arch: str, K: int | None = None, V: int | None = None) -> list[dict]:
    """The configs to screen for a key; the first, the untuned default, carries the ``by_dims`` options of K, V."""
    t = table(arch)
    cands = [dict(c) for c in (t["decode"] if kernel == "decode" else t["chunk"][gate_kind])]
    extra = by_dims(arch, K, V).get(kernel, {}).get(gate_kind, {})
    if extra:
        cands[0].update(extra)
    return cands


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


_interpreting = launch.interpreted  # a module name of its own: tests switch it here alone


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


TUNERS: dict = {}  # kernel line -> tune(kernel, gate_kind, K, V, dtype, T, device) -> winner or None


def register_tuner(line: str, tune) -> None:
    """Give the config system a line's tuner (screens and times that line's kernels). The line registers
    it (``lowering/gla/tuning.py``): this module stays below every line and imports none of them."""
    TUNERS[line] = tune


# get_config's answers once final for this process (a winner, or the default where tuning is off): finding
# them again (the cache file's path, the arch, the tuning checks) on every call made the small ops host-bound
# on the H200 (linear_attn's forward 402 -> 196 us per call back to back with this memo, device time 186 us)
_resolved: dict = {}


def get_config(kernel, gate_kind, K, V, dtype, T, device, varlen=False, line="gla") -> dict:
    """The config for a call: a cached winner, a fresh tuning result, or the arch default."""
    if device.type != "cuda" or _interpreting():
        return candidates(kernel, gate_kind, "default")[0]
    env, tuner = os.environ, TUNERS.get(line)
    memo = (line, kernel, gate_kind, K, V, dtype, "varlen" if varlen else t_bucket(T), device.index)
    memo += (env.get("FLA_COMPILE_AUTOTUNE"), env.get("FLA_COMPILE_CACHE_DIR"), tuner)
    cfg = _resolved.get(memo)
    if cfg is not None:
        return cfg
    key = make_key(kernel, gate_kind, K, V, dtype, None if varlen else T)
    cfg = lookup(
        key,
        cache_file(device),
        allowed=lambda: tuner is not None and _tuning_allowed(device),
        default=lambda: candidates(kernel, gate_kind, arch_of(device), K, V)[0],
        tune_fn=lambda: launch.launching(tuner, kernel, gate_kind, K, V, dtype, T, device),  # runs, even in a dry run
    )
    if not capturing():  # a default taken because of a capture is tuned on a later call
        _resolved[memo] = cfg
    return cfg


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
        _resolved.clear()
