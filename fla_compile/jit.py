"""``@fla_compile.jit``: recognise a reference function once at small probe lengths, then run
the matched op at any length, without Dynamo unrolling the time loop.

The function is captured by Dynamo at two short probe lengths T1 < T2 (a few steps), each
graph goes through the same passes as the backend, and the two rewritten graphs must agree
node for node except for integers affine in T (sizes such as ``view(B, T, H, D)``); those
become ``a * T + b`` of the runtime length. The result is checked against the reference at
a third length before it is used. Nothing matched: the reference runs, with one warning
(an error under ``strict=True``). What matched is logged once, at INFO, on logger ``fla_compile``.

The length is known only at each call, so the choice between the op and the function as written
(``fla_compile.costs``: for small work the code as written is the cheaper path) is made there:
below the crossover of every matched region, the function runs as written, compiled by Inductor
(as the backend compiles the regions it keeps), so that @jit's own per-call cost is paid back and
the kept path is never slower than the code as written. That compile is built once per input
signature, like the rest of @jit's cache, on the first call that keeps it (seconds: said at INFO);
Dynamo specializes on the first length and recompiles once, dynamic in T, at a second. It falls
back to the function itself where the compile fails (said once, at WARNING), under
``jit(..., inductor=False)``, and where a kept region is a loop (Dynamo would unroll it at every
length). ``explain`` says which of the two runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import time
import types
import warnings

import torch
import torch.fx as fx

from . import costs, passes, rewrite
from .numerics import HALF, rel_err
from .report import Report

log = logging.getLogger("fla_compile")
PROBE_LENGTHS = (3, 4)
CHECK_LENGTH = 6
KEPT_BACKEND = "inductor"  # what compiles the function as written where it is kept (tests swap in a cheap one)
_SLOW_CALL = 0.5  # s: a first call that took this long compiled something, and says so


class JitError(RuntimeError):
    pass


def _sign_span(a) -> tuple[float, float] | None:
    """(lo, hi) of a float tensor argument whose values all have one sign (not all zero), else None: what
    :func:`_shrink` keeps of it. Read once per set of probes (a sync for a CUDA argument)."""
    if not (isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel()):
        return None
    lo, hi = (float(v) for v in torch.aminmax(a.detach().float()))
    keep = math.isfinite(lo) and math.isfinite(hi) and (lo >= 0 or hi <= 0) and (lo, hi) != (0.0, 0.0)
    return (lo, hi) if keep else None


def _probe_like(a: torch.Tensor, span, shape, gen) -> torch.Tensor:
    """Random probe values for argument ``a`` (on the CPU, in its dtype): normal, or, where its values have one sign
    (``span``, :func:`_sign_span`), uniform over their range (a constant: scaled by 0.5-1). A decay passed as a
    probability then stays positive, which the op's run-time check of its log requires; the proofs draw probes of
    their own (``verify.probe``), so these only shape the capture and the check of the merged graph."""
    if span is None:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(a.dtype)
    lo, hi = span
    u = torch.rand(shape, generator=gen, dtype=torch.float32)
    return (lo + (hi - lo) * u if lo < hi else lo * (0.5 + 0.5 * u)).to(a.dtype)


def _shrink(args, spans, time_dim, T, length, gen, fixed=0):
    """Random probe inputs (:func:`_probe_like`, ``spans`` one per argument): tensors with the time length get
    ``length`` steps, others keep their shape; the first ``fixed`` arguments (a module's parameters) are kept as
    they are."""
    out = list(args[:fixed])
    for a, span in zip(args[fixed:], spans[fixed:]):
        if isinstance(a, torch.Tensor) and a.dim() > time_dim and a.shape[time_dim] == T:
            shape = list(a.shape)
            shape[time_dim] = length
            out.append(_probe_like(a, span, shape, gen) if a.is_floating_point() else a.narrow(time_dim, 0, length))
        elif isinstance(a, torch.Tensor) and a.is_floating_point():
            out.append(_probe_like(a, span, a.shape, gen))
        else:
            out.append(a)
    return out


def _outputs(fn, xs, no_grad=False) -> tuple[list, object, list[int]]:
    """``fn(*xs)`` flattened: (tensor leaves, pytree spec, the positions of its None leaves). A captured graph
    returns the tensors only (``return o, None``: the final state off); any other leaf (a number may depend on
    the length the graph was captured at) is refused."""
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        out = fn(*xs)
    leaves, spec = torch.utils._pytree.tree_flatten(out)
    other = [type(x).__name__ for x in leaves if x is not None and not isinstance(x, torch.Tensor)]
    if other:
        raise JitError(f"the function returns a value of type {other[0]}: @jit carries tensors and None only")
    return [x for x in leaves if x is not None], spec, [i for i, x in enumerate(leaves) if x is None]


def _err(a: list, b: list) -> float:
    return max((rel_err(x.double(), y.double()) for x, y in zip(a, b)), default=0.0)


def _err_rounded(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error of ``out`` against ``ref`` beyond a final rounding of ``out`` to its dtype: the
    lowering casts its result to the dtype the traced code produced (bf16 for bf16 probes) even when
    run in fp32, so each element may sit up to one of that dtype's ulps from ``ref``."""
    out, ref = out.detach(), ref.detach()
    diff = (out.double() - ref.double()).abs()
    if out.dtype in HALF and ref.dtype not in HALF:
        diff = (diff - torch.finfo(out.dtype).eps * ref.double().abs()).clamp_min(0)
    scale = ref.double().norm()
    return float(diff.norm() / scale) if scale > 0 else float(diff.norm())


def _check_generalized(gm, fn, probe: list, order: list[int]):
    """Raise :class:`JitError` unless ``gm`` (graph inputs in ``order``, indices into ``probe``) computes
    ``fn`` at the check length; return the output's pytree spec and the positions of its None leaves.

    In fp32 and fp64 the two must agree to 1e-4. In bf16 / fp16 the function as written and our
    kernels round differently (the loop's state in half precision, ours in fp32), so both run again
    on the same probe in fp32, the lowerings' casts widened (:func:`rewrite.widened`), and must agree
    there to 1e-4 beyond a final rounding (the graph is the function); and the half-precision result
    must be no further from that fp32 truth than twice the function's own half-precision error, or 8
    ulps (no dtype-specific path of the function was left out)."""
    ref, spec, nones = _outputs(fn, probe)
    out, _, _ = _outputs(gm, [probe[i] for i in order], no_grad=True)
    if len(ref) != len(out):
        raise JitError(f"the generalized graph returns {len(out)} tensors where the reference returns {len(ref)}")
    err = _err(out, ref)
    if err < 1e-4:
        return spec, nones
    half = [x.dtype for x in probe if isinstance(x, torch.Tensor) and x.dtype in HALF]
    if not half:
        raise JitError(f"the generalized graph differs from the reference at T={CHECK_LENGTH} (rel err {err:.1e})")
    wide = [x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in probe]
    try:
        ref32 = _outputs(fn, wide)[0]
        with rewrite.widened():
            out32 = _outputs(gm, [wide[i] for i in order], no_grad=True)[0]
    except Exception as e:  # a function that cannot run in fp32: judged in its own dtype, as above
        raise JitError(
            f"the generalized graph differs from the reference at T={CHECK_LENGTH} (rel err {err:.1e}); "
            f"in fp32 it could not be checked ({type(e).__name__}: {e})"
        ) from e
    err32 = max((_err_rounded(o, r) for o, r in zip(out32, ref32)), default=0.0)
    if not err32 < 1e-4:
        raise JitError(
            f"the generalized graph differs from the reference at T={CHECK_LENGTH} in fp32 (rel err {err32:.1e})"
        )
    ours, theirs = _err(out, ref32), _err(ref, ref32)
    ulps = 8 * max(torch.finfo(d).eps for d in half)
    if not ours <= max(2 * theirs, ulps):
        raise JitError(
            f"in {half[0]} the generalized graph is {ours:.1e} from the fp32 reference at T={CHECK_LENGTH}, "
            f"the function as written {theirs:.1e}"
        )
    return spec, nones


_capture_ids = itertools.count(1)


def fresh_code(fn: types.FunctionType, prefix: str | None = None) -> types.FunctionType:
    """``fn`` with a code object of its own, named ``prefix_N`` (its own name without ``prefix``).

    Dynamo keeps compiled entries, and counts recompiles against ``recompile_limit``, per code
    object; a capture whose backend is made anew each time never hits that cache, so reusing
    one code object would exhaust the limit after a few captures and Dynamo would then run it
    uncaptured. Used by every capture here and by ``explain`` (which keeps the user's function's
    name: the chunked pass reads call frames, and they must be the backend's).
    """
    name = fn.__code__.co_name if prefix is None else f"{prefix}_{next(_capture_ids)}"
    code = fn.__code__.replace(co_name=name)
    new = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    if prefix is None:
        new.__qualname__ = fn.__qualname__
    return new


def _trace(fn, args) -> tuple[fx.GraphModule, list[int]]:
    """Capture ``fn`` at probe shapes with Dynamo (a few steps only: the probe is short).

    Returns the graph and, for each of its inputs, the index of the argument it is.
    """
    captured = []

    def capture(gm, example_inputs):
        ids = {id(a): i for i, a in enumerate(args)}
        if not all(id(x) in ids for x in example_inputs):
            raise JitError("the captured graph reads tensors other than the arguments")
        captured.append((gm, [ids[id(x)] for x in example_inputs]))
        return gm.forward

    def probe(*ts):
        return fn(*ts)

    probe = fresh_code(probe, "fla_probe")
    torch.compile(probe, backend=capture, fullgraph=True, dynamic=False)(*args)
    if len(captured) != 1:
        raise JitError(f"expected one captured graph, got {len(captured)}")
    return captured[0]


def _same_target(a, b) -> bool:
    """Two nodes' targets agree: a lowering says itself (``same_call``), anything else by ``==``."""
    same = getattr(a, "same_call", None)
    return same(b) if callable(same) else a == b


def _generalize(g1: fx.GraphModule, g2: fx.GraphModule, T1: int, T2: int, time_input: int, time_dim: int):
    """One graph whose integer arguments are affine in the runtime length T."""
    n1, n2 = list(g1.graph.nodes), list(g2.graph.nodes)
    if len(n1) != len(n2):
        raise JitError(f"the graphs at T={T1} and T={T2} differ in size ({len(n1)} vs {len(n2)} nodes)")
    graph = g1.graph
    placeholders = [n for n in n1 if n.op == "placeholder"]
    with graph.inserting_after(placeholders[-1]):
        T_node = graph.call_function(torch.ops.aten.sym_size.int, (placeholders[time_input], time_dim))
    cache: dict = {}

    def affine(a, b):
        if (a, b) not in cache:
            with graph.inserting_after(T_node):
                x = graph.call_function(_affine, (T_node, a, b))
            cache[(a, b)] = x
        return cache[(a, b)]

    def merge(x, y):
        if isinstance(x, bool) or isinstance(y, bool):
            if x != y:
                raise JitError("a flag differs between probe lengths")
            return x
        if isinstance(x, int) and isinstance(y, int):
            if x == y:
                return x
            a, r = divmod(y - x, T2 - T1)
            if r:
                raise JitError(f"an integer ({x} at T={T1}, {y} at T={T2}) is not affine in T")
            return affine(a, x - a * T1)
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            return type(x)(merge(p, q) for p, q in zip(x, y))
        if isinstance(x, fx.Node) and isinstance(y, fx.Node):
            if n1.index(x) != n2.index(y):
                raise JitError("the graphs at two probe lengths are wired differently")
            return x
        if isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys():
            return {k: merge(x[k], y[k]) for k in x}
        if type(x) is not type(y) or (not isinstance(x, torch.Tensor) and x != y):
            raise JitError("a constant differs between probe lengths")
        return x

    for a, b in zip(n1, n2):
        if a.op != b.op or not _same_target(a.target, b.target):
            raise JitError(f"'{a.name}' differs between probe lengths")
        if a.op in ("placeholder", "get_attr"):
            continue
        a.args = merge(a.args, b.args)
        a.kwargs = merge(a.kwargs, b.kwargs)
    graph.lint()
    g1.recompile()
    return g1


def _affine(T, a, b):
    return a * T + b


def _compiled(fn):
    """``fn`` under ``torch.compile(backend=KEPT_BACKEND)``, with a code object of its own: its own
    Dynamo cache entries and recompile budget (one per input signature of ``@jit``)."""

    def as_written(*args):
        return fn(*args)

    return torch.compile(fresh_code(as_written, "fla_kept"), backend=KEPT_BACKEND)


def _said(error: BaseException) -> str:
    """An error in one line: its type, and its innermost cause's type and first line (Dynamo wraps a backend's)."""
    root = error
    for _ in range(8):  # a chain, bounded
        inner = getattr(root, "inner_exception", None) or root.__cause__
        if inner is None:
            break
        root = inner
    lines = str(root).strip().splitlines()
    said = f"{type(root).__name__}: {lines[0] if lines else ''}"
    return (said if root is error else f"{type(error).__name__}: {said}")[:300]


def _op_runner(gm: fx.GraphModule):
    """A call of the generalized graph with the function's arguments, returning the function's output structure."""
    order, spec, nones, unflatten = gm._fla_inputs, gm._fla_spec, gm._fla_nones, torch.utils._pytree.tree_unflatten

    def run(*args):
        leaves = list(gm(*[args[i] for i in order]))
        for i in nones:  # the function's None outputs, which the graph does not return
            leaves.insert(i, None)
        return unflatten(leaves, spec)

    return run


class JitFunction:
    """The callable ``@fla_compile.jit`` returns (see the module docstring)."""

    def __init__(self, fn, time_dim: int = 1, strict: bool = False, verify: bool = True, inductor: bool = True):
        self.fn, self.time_dim, self.strict, self.inductor = fn, time_dim, strict, inductor
        # the probes are a few steps long: the cost choice is made per call, at the real length
        self.opts = passes.Options(verify=verify, strict=strict, inductor=False, costs=False)
        self.cache: dict = {}
        self.reports: dict = {}
        self.fixed = 0  # leading arguments that are parameters (set by the module wrappers)
        self._warned = False
        self._kept: dict = {}  # (report id, T) -> (costs.token(), reasons): see ``kept``
        # exact input key -> (costs.token(), what runs, the ``_key`` of a compiled as-written form or None)
        self._fast: dict = {}
        self._as_written: dict = {}  # ``_key`` -> what runs the function as written there (see ``as_written``)
        self._compile_failed: dict = {}  # ``_key`` -> why compiling the function as written failed there
        functools.update_wrapper(self, fn)

    def _key(self, args):
        key = []
        td = self.time_dim
        for a in args:
            if isinstance(a, torch.Tensor):  # every call pays this: kept cheap (no per-dim generator)
                shape = tuple(a.shape)
                if len(shape) > td:
                    shape = (*shape[:td], -1, *shape[td + 1 :])
                key.append((shape, a.dtype, a.device.type, a.requires_grad))
            else:
                key.append(("const", repr(a)))
        return tuple(key)

    @staticmethod
    def _fast_key(args, _tensor=torch.Tensor):
        """The exact inputs (shapes, dtypes, devices, requires_grad; constants by repr): one graph and one choice.
        Every call pays it: a list comprehension (0.7 µs less than a generator for three tensors)."""
        return tuple(
            [(a.shape, a.dtype, a.device, a.requires_grad) if isinstance(a, _tensor) else repr(a) for a in args]
        )

    def _time_input(self, args):
        for i, a in enumerate(args):
            if i >= self.fixed and isinstance(a, torch.Tensor) and a.dim() > self.time_dim:
                return i, a.shape[self.time_dim]
        raise JitError(f"no tensor argument has a time dim {self.time_dim}")

    def prepare(self, *args) -> tuple:
        """Trace, match and generalize for inputs like ``args``; returns (graph or None, report)."""
        key = self._key(args)
        if key in self.cache:
            return self.cache[key], self.reports[key]
        report = Report()
        try:
            gm = self._build(args, report)
        except Exception as e:  # noqa: BLE001 - any failure means: run the reference
            report.notes.append(f"jit: {type(e).__name__}: {e}")
            gm = None
        self.cache[key], self.reports[key] = gm, report
        if gm is not None:
            name = getattr(self, "__name__", "function")
            log.info("@fla_compile.jit: %s: matched %s", name, "; ".join(str(m) for m in report.matches))
        return gm, report

    def kept(self, report: Report, args) -> list[str]:
        """Why each matched region would stay as written at the length of ``args`` ("": the op runs).

        Cached per (inputs, length) while the cost table in force is the same: a call pays a dict lookup.
        """
        ti, T = self._time_input(args)
        ck = (id(report), T)
        hit = self._kept.get(ck)
        if hit is None or hit[0] != costs.token():
            # the probes ran on the CPU: the call's own device picks the table's entry
            kind = costs.device_kind(args[ti].device)
            reasons = [
                costs.kept_reason(m.family, m.spelling, dataclasses.replace(m.shape.at(T), device=kind))
                if m.shape
                else ""
                for m in report.matches
            ]
            hit = self._kept[ck] = (costs.token(), reasons)
        return hit[1]

    def _build(self, args, report):
        ti, T = self._time_input(args)
        gen = torch.Generator().manual_seed(0)
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        consts = {i: a for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}

        def tensor_fn(*ts):
            full = list(consts.get(i) for i in range(len(args)))
            for i, t in zip(tensors, ts):
                full[i] = t
            return self.fn(*full)

        spans = [None] * self.fixed + [_sign_span(a) for a in args[self.fixed :]]
        graphs, orders = [], []
        for length in PROBE_LENGTHS:
            probe = _shrink(args, spans, self.time_dim, T, length, gen, self.fixed)
            try:
                gm, order = _trace(tensor_fn, [probe[i] for i in tensors])
            except Exception as e:  # most often a time dim that is not dim ``time_dim``: say which dim was cut
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                raise JitError(
                    f"capturing the function at a probe length of {length} steps failed ({type(e).__name__}: "
                    f"{first.strip()[:300]}); the probes cut dim {self.time_dim} of every argument whose size there "
                    f"is {T} (taken as the length): if time is another dim, pass jit(fn, time_dim=...)"
                ) from e
            orders.append(order)
            new, rep = passes.run(gm, self.opts)
            if not rep.matches:
                report.extend(rep)
                return None
            graphs.append(new)
        report.extend(rep)
        if orders[0] != orders[1] or tensors.index(ti) not in orders[0]:
            raise JitError("the graphs at two probe lengths read their inputs differently")
        order = [tensors[i] for i in orders[0]]  # argument index of each graph input
        gm = _generalize(graphs[0], graphs[1], *PROBE_LENGTHS, order.index(ti), self.time_dim)
        probe = _shrink(args, spans, self.time_dim, T, CHECK_LENGTH, gen, self.fixed)
        spec, nones = _check_generalized(gm, tensor_fn, [probe[i] for i in tensors], [tensors.index(i) for i in order])
        gm._fla_inputs, gm._fla_spec, gm._fla_nones = order, spec, nones
        gm._fla_run = _op_runner(gm)
        return gm

    def __call__(self, *args, **kwargs):
        if not kwargs and not torch.compiler.is_compiling():  # a repeated call: one key, one lookup, one call
            hit = self._fast.get(self._fast_key(args))
            if hit is not None and hit[0] == costs._generation:
                try:
                    return hit[1](*args)
                except Exception as e:
                    if hit[2] is None:  # the op, or the function itself: its own error
                        raise
                    return self._failed(hit[2], e, args)
        return self._call(args, kwargs)

    def _call(self, args, kwargs):
        """A call with new inputs (or keywords, or under an outer compile): prepare, choose, remember."""
        compiling = torch.compiler.is_compiling()
        if kwargs:
            args = self._bind_kwargs(args, kwargs)
        key = self._key(args)
        if key not in self.cache:
            if compiling:
                torch.compiler.disable(self.prepare)(*args)
            else:
                self.prepare(*args)
        gm = self.cache[key]
        if gm is None:
            report = self.reports[key]
            if self.strict:
                raise JitError(f"@fla_compile.jit: nothing matched in {self.fn.__name__}\n{report}")
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"@fla_compile.jit: nothing matched in {self.fn.__name__}; running it as written\n{report}",
                    stacklevel=3,
                )
            return self.fn(*args)
        # small work: the function as written is cheaper (under an outer torch.compile the op is
        # kept: that graph is built once for its sizes, and the table's times are eager times)
        if compiling:
            return gm._fla_run(*args)
        report = self.reports[key]
        kept = self.kept(report, args)
        if kept and all(kept):
            run, compiled = self.as_written(key, report, args), key
        else:
            run, compiled = gm._fla_run, None
        if compiled is not None and run is self.fn:
            compiled = None
        if not kwargs:
            if len(self._fast) > 4096:  # many lengths: start over rather than grow without bound
                self._fast.clear()
            self._fast[self._fast_key(args)] = (costs._generation, run, compiled)
        if compiled is None:
            return run(*args)
        t0 = time.perf_counter()
        try:
            out = run(*args)
        except Exception as e:
            return self._failed(key, e, args)
        if time.perf_counter() - t0 > _SLOW_CALL:  # Dynamo compiled (the first length, or dynamic in T at a second)
            log.info(
                "@fla_compile.jit: %s: the first call of the function as written at T=%d took %.1f s (compiling it)",
                self._name(),
                self._time_input(args)[1],
                time.perf_counter() - t0,
            )
        return out

    def _name(self) -> str:
        return getattr(self, "__name__", "function")

    def _compiles(self, key, report) -> tuple[bool, str]:
        """Whether the function as written runs compiled for inputs of ``key``, and what the report says of it."""
        if not self.inductor:
            return False, "@jit runs it eagerly (jit(..., inductor=False))"
        if key in self._compile_failed:
            return False, f"@jit runs it eagerly: compiling it failed ({self._compile_failed[key]})"
        if any(m.spelling == "loop" for m in report.matches):
            return False, "@jit runs it eagerly: Dynamo would unroll its loop at every length"
        return True, f"@jit runs it compiled ({KEPT_BACKEND})"

    def as_written(self, key, report, args):
        """What runs the function as written for inputs of ``key``: compiled, built once (the compile
        itself happens at its first call), or the function itself (see ``_compiles``)."""
        run = self._as_written.get(key)
        if run is None:
            if self._compiles(key, report)[0]:
                log.info(
                    "@fla_compile.jit: %s: below the crossover at T=%d: compiling the function as written (%s), "
                    "once for these inputs",
                    self._name(),
                    self._time_input(args)[1],
                    KEPT_BACKEND,
                )
                run = _compiled(self.fn)
            else:
                run = self.fn
            self._as_written[key] = run
        return run

    def _failed(self, key, error, args):
        """The compiled form raised: run the function itself. Its own error (raised by it too) propagates and the
        compiled form stays; otherwise the compile is what failed, and these inputs run eagerly from now on."""
        out = self.fn(*args)
        self._compile_failed[key] = _said(error)
        self._as_written[key] = self.fn
        self._fast.clear()
        if len(self._compile_failed) == 1:
            log.warning(
                "@fla_compile.jit: %s: compiling the function as written failed; it runs eagerly (%s)",
                self._name(),
                self._compile_failed[key],
                exc_info=error,
            )
        return out

    def _bind_kwargs(self, args, kwargs):
        import inspect

        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.arguments.values())

    def explain(self, *args, **kwargs) -> Report:
        if kwargs:
            args = self._bind_kwargs(args, kwargs)
        gm, report = self.prepare(*args)
        if gm is None:
            return report
        kept = self.kept(report, args)
        if not (kept and all(kept)):  # the op runs (any region above its crossover takes the whole function there)
            matches = [dataclasses.replace(m, kept="") for m in report.matches]
            return Report(matches, list(report.misses), list(report.notes))
        compiled, how = self._compiles(self._key(args), report)
        matches = [dataclasses.replace(m, kept=f"{k}; {how}", compiled=compiled) for m, k in zip(report.matches, kept)]
        return Report(matches, list(report.misses), list(report.notes))


class JitModule(torch.nn.Module):
    """An nn.Module whose forward runs through ``JitFunction`` with its parameters as inputs."""

    def __init__(self, module: torch.nn.Module, **options):
        super().__init__()
        self.inner = module

        def functional(*flat):
            n = len(self._names)
            state = dict(zip(self._names, flat[:n]))
            return torch.func.functional_call(self.inner, state, flat[n:])

        self._names: list[str] = []
        self._jit = JitFunction(functional, **options)
        self._jit.__name__ = type(module).__name__

    def forward(self, *args):
        named = dict(self.inner.named_parameters())
        named.update(dict(self.inner.named_buffers()))
        self._names = list(named)
        self._jit.fixed = len(named)
        return self._jit(*named.values(), *args)

    def explain(self, *args) -> Report:
        named = dict(self.inner.named_parameters())
        named.update(dict(self.inner.named_buffers()))
        self._names = list(named)
        self._jit.fixed = len(named)
        return self._jit.explain(*named.values(), *args)


def jit(fn=None, *, time_dim: int = 1, strict: bool = False, verify: bool = True, inductor: bool = True):
    """Recognise the recurrence in a reference function, module class or instance, once.

    ``time_dim``: the time dim of the sequence inputs ([B, T, H, D] -> 1). ``inductor``: where the
    cost table keeps the code as written (small work), run it compiled by Inductor (off: eagerly).
    """
    options = dict(time_dim=time_dim, strict=strict, verify=verify, inductor=inductor)
    if fn is None:
        return lambda f: jit(f, **options)
    if isinstance(fn, torch.nn.Module):
        return JitModule(fn, **options)
    if isinstance(fn, type) and issubclass(fn, torch.nn.Module):

        class Jitted(fn):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self._fla_jit = JitFunction(lambda *flat: self._fla_call(*flat), **options)
                self._fla_jit.__name__ = fn.__name__

            def _fla_call(self, *flat):
                n = len(self._fla_names)
                return torch.func.functional_call(self, dict(zip(self._fla_names, flat[:n])), flat[n:], strict=False)

            def forward(self, *args):
                if getattr(self, "_fla_inside", False):
                    return fn.forward(self, *args)
                named = dict(self.named_parameters())
                self._fla_names = list(named)
                self._fla_jit.fixed = len(named)
                self._fla_inside = True
                try:
                    return self._fla_jit(*named.values(), *args)
                finally:
                    self._fla_inside = False

        Jitted.__name__ = Jitted.__qualname__ = fn.__name__
        return Jitted
    return JitFunction(fn, **options)
