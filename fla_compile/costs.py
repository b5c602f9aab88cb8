"""When to rewrite: a per-device cost table, so that a rewritten region is never slower than the
code as written.

For small work, the op's fixed cost (its chunked algorithm, layout around it) exceeds what the
code as written costs: a RetNet parallel form at T=64 runs 3x slower rewritten on a CPU, and 2.6x
faster at T=512. Leaving a region as written is always available and always correct, so below a
crossover the region stays as written. The rule, per device kind, family and spelling:

    work < min_work  or  T < min_T  ->  keep the region as written

``work`` counts what the code as written does, in its spelling's own units:
``B*H*T*T*K`` for a parallel form (its score matrix and read-out) and ``B*H*T*K*V`` for a loop or
a cumsum (their per-step outer products). A loop as written pays interpreter and kernel-launch
costs per step, so its crossover is 0 on every device measured. ``min_T`` (default 0) bounds the
length alone: a parallel form and the chunked op both grow as B*H, so more heads do not move the
length at which the op's chunked algorithm starts to win (at T <= 64 it is one chunk: the same
matmuls as the parallel form, plus the op's own work). ``min_work`` alone would rewrite a short
sequence with many heads (CPU, B*H=32 T=64: 1.6 ms rewritten against 0.6 ms as written).

The table ships with the package (``costs.json`` next to this file). ``python -m fla_compile tune
--costs`` (or ``--costs-only``) measures this machine (``bench.measure``) and writes ``$FLA_COMPILE_CACHE_DIR/costs.json`` (default
``~/.cache/fla_compile``), whose entries take precedence. ``FLA_COMPILE_COSTS=off`` turns the
choice off (always rewrite); ``FLA_COMPILE_COSTS=/path.json`` reads that table alone.
Entries are matched most specific first: device (``cuda-sm90`` before ``cuda`` before ``*``),
then family, then spelling; no entry means: always rewrite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib

import torch

PACKAGED = pathlib.Path(__file__).with_name("costs.json")
_override: list | None = None  # set by ``use`` (tests)
_loaded: dict = {}  # path -> (mtime, entries)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FLA_COMPILE_CACHE_DIR", pathlib.Path.home() / ".cache" / "fla_compile"))


def user_file() -> pathlib.Path:
    return cache_dir() / "costs.json"


def device_kind(device) -> str:
    """``cpu``, or ``cuda-sm90`` and kin (the compute capability), or the device type."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    return device.type


def _read(path: pathlib.Path) -> list:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return []
    hit = _loaded.get(str(path))
    if hit is None or hit[0] != mtime:
        try:
            entries = json.loads(path.read_text()).get("entries", [])
        except (OSError, ValueError, AttributeError):
            entries = []
        hit = _loaded[str(path)] = (mtime, [e for e in entries if isinstance(e, dict)])
    return hit[1]


_memo: dict = {}  # (FLA_COMPILE_COSTS, the user file) -> entries: files are read once per process
_generation = 0  # bumped whenever the table in force may change (``use``, ``tune``)


def entries() -> list[dict]:
    """The table in force: the measured one of this machine first, then the package's."""
    if _override is not None:
        return _override
    env = os.environ.get("FLA_COMPILE_COSTS", "")
    key = (env, os.environ.get("FLA_COMPILE_CACHE_DIR", ""))
    if key not in _memo:
        if env.lower() in ("off", "0", "none", "never"):
            _memo[key] = []
        elif env:
            _memo[key] = _read(pathlib.Path(env))
        else:
            _memo[key] = _read(user_file()) + _read(PACKAGED)
    return _memo[key]


def token() -> int:
    """Changes whenever the table in force is changed from this process (``use``, ``tune``): a
    choice cached with it stays valid while it is equal. (Setting ``FLA_COMPILE_COSTS`` after
    the first choice does not reach choices already cached by ``@jit``.)"""
    return _generation


def _changed() -> None:
    global _generation
    _generation += 1
    _memo.clear()


@contextlib.contextmanager
def use(table: list[dict] | None):
    """Use ``table`` (a list of entries; ``[]``: always rewrite) inside the block."""
    global _override
    old, _override = _override, table
    _changed()
    try:
        yield
    finally:
        _override = old
        _changed()


def _rank(value: str, wanted: str) -> int | None:
    """How specifically ``value`` (a table key) matches ``wanted``: 2 exact, 1 prefix, 0 '*'."""
    if value == wanted:
        return 2
    if value == "*":
        return 0
    if wanted.startswith(value + "-"):
        return 1
    return None


def lookup(kind: str, family: str, spelling: str) -> dict | None:
    """The most specific entry for this device kind, family and spelling (None: always rewrite)."""
    best, best_rank = None, None
    for i, e in enumerate(entries()):
        ranks = (
            _rank(str(e.get("device", "*")), kind),
            _rank(str(e.get("family", "*")), family),
            _rank(str(e.get("spelling", "*")), spelling),
        )
        if None in ranks:
            continue
        rank = (*ranks, -i)  # earlier entries (this machine's) win ties
        if best_rank is None or rank > best_rank:
            best, best_rank = e, rank
    return best


def work(spelling: str, T: int, heads: int, K: int, V: int) -> float:
    """What the code as written does, in the spelling's units (see the module docstring)."""
    return float(heads) * T * (T * K if spelling == "parallel" else K * V)


def crossover_T(spelling: str, min_work: float, heads: int, K: int, V: int) -> int:
    """The length at which ``work`` reaches ``min_work`` for these other sizes."""
    per = float(heads) * (K if spelling == "parallel" else K * V)
    if per <= 0:
        return 0
    return math.ceil(math.sqrt(min_work / per) if spelling == "parallel" else min_work / per)


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes of a region that the choice reads: length, batch*heads, key and value dims, device."""

    T: int
    heads: int
    K: int
    V: int
    device: str

    def at(self, T: int) -> Shape:
        return dataclasses.replace(self, T=T)


def kept_reason(family: str, spelling: str, shape: Shape) -> str:
    """Why the region stays as written at this shape, or "" where the rewrite is the cheaper path."""
    kind = shape.device
    e = lookup(kind, family, spelling)
    if e is None:
        return ""
    min_work = float(e.get("min_work", 0))
    min_T = int(e.get("min_T", 0))
    if shape.T < min_T:
        return (
            f"kept as written: T={shape.T} is below the crossover length (T={min_T}) for {family}/{spelling} on {kind}"
        )
    if work(spelling, shape.T, shape.heads, shape.K, shape.V) >= min_work:
        return ""
    Tc = crossover_T(spelling, min_work, shape.heads, shape.K, shape.V)
    return (
        f"kept as written: T={shape.T} is below the crossover (T≈{Tc} at B·H={shape.heads}, K={shape.K}, "
        f"V={shape.V}) for {family}/{spelling} on {kind}"
    )


def shape_of(T: int, q, v, heads: int) -> Shape:
    """A ``Shape`` from example values of q and v (anything with ``shape[-1]`` and ``device``)."""
    return Shape(int(T), int(heads), int(q.shape[-1]), int(v.shape[-1]), device_kind(q.device))


def decide(opts, family: str, spelling: str, shape_of_region, *region) -> tuple[str, Shape | None]:
    """The backend's choice for a proven region: (the reason it stays as written, or "" to
    rewrite; its ``Shape``, which ``@jit`` reads to choose again at each call's length).

    ``shape_of_region(*region)`` makes the region's ``Shape``. Sizes that cannot be read mean: rewrite,
    as before this table existed. With ``opts.costs`` off the region is always rewritten.
    """
    try:
        shape = shape_of_region(*region)
    except Exception:  # noqa: BLE001 - an unforeseen layout: the rewrite is proven, take it
        return "", None
    if not getattr(opts, "costs", True):
        return "", shape
    return kept_reason(family, spelling, shape), shape


def loop_shape(region) -> Shape:
    """The ``Shape`` of a re-rolled loop: its length and its state [*batch, K, V]."""
    from .patterns._graph import value_of

    S = value_of(region.blocks[-1][region.state_offset])
    return Shape(region.T, math.prod(S.shape[:-2]), int(S.shape[-2]), int(S.shape[-1]), device_kind(S.device))


def form_shape(rec, out) -> Shape:
    """The ``Shape`` of a proven parallel or cumsum form, from its output node and layout."""
    from .patterns._graph import value_of

    lay = rec.layout
    o = value_of(out)
    labels = lay.out.labels
    T = o.shape[labels.index(lay.out.time)]
    V = o.shape[labels.index(lay.out.feat)] if lay.out.feat in labels else 1
    K = V
    q = value_of(rec.q) if rec.q is not None and not isinstance(rec.q, torch.Tensor) else rec.q
    if isinstance(q, torch.Tensor) and lay.q.feat in lay.q.labels and q.dim() == len(lay.q.labels):
        K = q.shape[lay.q.labels.index(lay.q.feat)]
    return Shape(int(T), math.prod(lay.bsizes), int(K), int(V), device_kind(o.device))


# ------------------------------------------------------------------ measured entries (``tune``)
def crossover_work(spelling: str, rows, H=4, D=64, B=1) -> float:
    """The work from which the rewrite is faster at every larger measured length (0: at all)."""
    faster_from = None
    for i, (_, written, rewritten) in enumerate(rows):
        if rewritten < written:
            faster_from = i if faster_from is None else faster_from
        else:
            faster_from = None
    if faster_from == 0:
        return 0.0
    if faster_from is None:  # never faster here: up to twice the largest length measured
        return work(spelling, 2 * rows[-1][0], B * H, D, D)
    T = math.sqrt(rows[faster_from - 1][0] * rows[faster_from][0])  # between the last slower and first faster
    return work(spelling, T, B * H, D, D)


def record(kind: str, measured: dict, log=print) -> list[dict]:
    """Write the crossovers of ``measured`` (spelling -> rows of ``bench.measure``) as the entries of
    device kind ``kind`` in ``user_file()`` (other devices' are kept); return the new entries."""
    import datetime

    new = []
    for spelling, rows in measured.items():
        w = crossover_work(spelling, rows)
        log(
            f"  {spelling}: keep as written below work {w:.3g} (T≈{crossover_T(spelling, w, 4, 64, 64)} at B·H=4, D=64)"
        )
        new.append(
            {
                "device": kind,
                "family": "*",
                "spelling": spelling,
                "min_work": w,
                "why": f"measured by python -m fla_compile tune, {datetime.date.today()}, torch {torch.__version__}",
            }
        )
    path = user_file()
    old = _read(path)
    keep = [
        e
        for e in old
        if (e.get("device"), e.get("family"), e.get("spelling"))
        not in {(e2["device"], e2["family"], e2["spelling"]) for e2 in new}
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "entries": new + keep}, indent=1) + "\n")
    _changed()
    log(f"fla_compile tune: cost table for {kind} written to {path}")
    return new
