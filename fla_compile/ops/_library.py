"""Registration of the family ops as torch.library custom ops, from a table of specs.

Each family ``name`` becomes two ops in the ``fla_compile`` namespace:

    name(Tensor q, Tensor k, Tensor v, <gate tensors>, float scale,
         Tensor? initial_state, Tensor? cu_seqlens, <bool flags>) -> (Tensor o, Tensor final_state, <saved>)
    name_bwd(<same inputs>, Tensor do, Tensor dht, <saved>[, bool[]? gate_grads]) -> (dq, dk, dv, <d gates>, dh0)

(``<bool flags>`` only for specs that declare ``flags``, e.g. the delta line's in-kernel
L2 norm of q and k; the GLA-line schemas have none. ``<saved>``: one Tensor per name in the spec's
``saved``, intermediates of the forward that its backward reuses instead of recomputing, e.g. gla's
intra-chunk matrix A; none for the other families.)

A saved tensor is a non-differentiable output: the forward allocates it with the spec's ``saved_like``
(the same function as the fake impl, so shapes agree by construction), the implementation fills it
when its path produces that intermediate, autograd keeps it for the backward, and the backward
implementation decides whether it holds what it needs (else it recomputes).

``gate_grads`` (specs with ``optional_gate_grads``: retention, simple_gla): which gates take a gradient
(``ctx.needs_input_grad``), so a backward can skip a gate's gradient nobody asked for (RetNet's and Lightning's
decays are constants; FLA's ``g_gamma`` takes none). A skipped gradient is an empty tensor in the real and in the
fake impl alike, and None to autograd.

with fake impls (so torch.compile, export and CUDA graphs see shapes) and the backward
registered as the forward's autograd formula. The backward is itself an opaque op, so
aot_autograd never traces into our Python. ``dht`` is None when the final state took no gradient
(autograd does not make zeros for it: the kernels skip its load instead).

The public functions call the op through :func:`call`: an eager call on plain CPU / CUDA tensors (see
:func:`eager_ok`) runs the implementation directly, under an ``autograd.Function`` with the same context and
backward, past the dispatcher and torch.library's autograd wrapper, whose host time (tens of microseconds per
forward and backward) made small and decoding calls host-bound. Anything that must see the op (torch.compile,
export, fake or other subclass tensors, dispatch or function modes, functorch transforms, jit tracing, a
backward that builds a graph) takes the op as before.

The implementations run from here: with T = 0 (or B = 0) nothing runs and the final state is the
initial state (zeros without one), its gradient the final state's; ``cu_seqlens`` on the CPU are
checked (:func:`._checks.check_cu_seqlens`) before they are used, also when a compiled graph calls the op.
An op's first call of a form on CUDA (gradient wanted, T's bit length, dtype, head sizes, initial state and
``cu_seqlens`` present) first runs dry, its forward and (gradient wanted) backward each launch compiled on a thread
(``lowering/common/ahead.py``): a fresh process's kernels compile side by side, not one by one at their launches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as _forward_ad

from ..lowering.common import ahead, launch
from ._checks import check_cu_seqlens

LIB = torch.library.Library("fla_compile", "DEF")
CALLS: dict[str, Callable] = {}  # op name -> call(*op arguments): the op's outputs (see ``call``)


def eager_ok(*args) -> bool:
    """Whether an eager call with these arguments may run an op's implementation directly: no Dynamo, export,
    jit trace or functorch transform running, no dispatch or function mode active (each must see the op), no
    autograd profiler recording (its trace keeps the ``fla_compile::<op>`` events), no forward-mode AD level
    open (dual tensors get what the op gives them), and every tensor a plain
    ``torch.Tensor`` or ``nn.Parameter`` on the CPU or CUDA (fake, functional, meta and other subclass tensors
    take the op, whose fake impl or dispatch they need)."""
    C = torch._C
    if torch.compiler.is_compiling() or C._are_functorch_transforms_active() or C._get_tracing_state():
        return False
    if torch.autograd._profiler_enabled() or _forward_ad._current_level >= 0:  # forward AD: the op's handling
        return False
    if C._len_torch_dispatch_stack() or C._is_torch_function_mode_enabled():
        return False
    for a in args:  # a loop, not a generator: this runs on every call
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN or not (a.is_cuda or a.is_cpu)):
            return False
    return True


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # a Parameter (rwkv6's u, mamba's A) is a tensor with nothing to dispatch


def direct(autograd_fn, impl, op, args):
    """One op call: ``impl(*args)`` (no gradient wanted: the outputs, saved intermediates possibly None) or
    ``autograd_fn.apply(*args)`` where :func:`eager_ok`, else the op."""
    if not eager_ok(*args):
        return op(*args)
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return autograd_fn.apply(*args)
    return impl(*args)


def register_direct(name: str, fwd_impl, setup_context, backward, no_grad_impl=None) -> None:
    """``call(name, ...)``'s direct path: the op's autograd formula (its ``setup_context`` and ``backward``) around
    its implementation as an ``autograd.Function`` (grad_fn ``<name>_directBackward``), ``no_grad_impl`` (default
    ``fwd_impl``) where no gradient is wanted, the op where :func:`eager_ok` says it must be seen."""

    def forward(ctx, *args):
        output = fwd_impl(*args)
        setup_context(ctx, args, output)
        return output

    fn = type(f"{name}_direct", (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                                "backward": staticmethod(backward)})  # fmt: skip
    op, impl = getattr(torch.ops.fla_compile, name).default, no_grad_impl or fwd_impl
    CALLS[name] = lambda *args: direct(fn, impl, op, args)


def backward_call(bwd_impl, bwd_op, args):
    """The backward op's outputs from inside an autograd formula: its implementation directly where the op adds
    nothing, the op where it must be seen (:func:`eager_ok`) or where the backward builds a graph (create_graph)."""
    return bwd_impl(*args) if not torch.is_grad_enabled() and eager_ok(*args) else bwd_op(*args)


def call(name: str, *args):
    """``torch.ops.fla_compile.<name>(*args)``, run directly where :func:`eager_ok` (same outputs, same autograd
    formula; without a gradient the saved intermediates, e.g. gla's A, may be None): what the public functions
    call."""
    return CALLS[name](*args)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One family op.

    forward(q, k, v, *gates, scale, initial_state, cu_seqlens, **flags) -> (o, final_state)
    backward(q, k, v, *gates, scale, initial_state, cu_seqlens, do, dht, **flags) -> (dq, dk, dv, *dgates, dh0)
    Gradients of absent inputs may be None; the op returns empty tensors in their place.
    ``flags`` names extra ``bool`` schema arguments after cu_seqlens, passed by keyword.

    ``saved`` names intermediates the op returns after (o, final_state) for its backward; then
    ``saved_like(q, k, v, *gates, initial_state, cu_seqlens, **flags)`` returns them as new empty
    tensors (called on real and on fake tensors: the shapes may depend on the inputs' metadata only,
    never on tuning), ``forward`` gets them as ``saved=`` to fill and ``backward`` as ``saved=``.
    """

    name: str
    gates: tuple[str, ...]
    forward: Callable
    backward: Callable
    doc: str = ""
    flags: tuple[str, ...] = ()
    saved: tuple[str, ...] = ()
    saved_like: Callable | None = None
    optional_gate_grads: bool = False  # backward(..., gate_grads=(bool per gate)): a False one may be skipped


def _schema_args(spec: OpSpec) -> str:
    gates = "".join(f"Tensor {g}, " for g in spec.gates)
    flags = "".join(f", bool {f}" for f in spec.flags)
    return f"Tensor q, Tensor k, Tensor v, {gates}float scale, Tensor? initial_state, Tensor? cu_seqlens{flags}"


def state_dtype(x: torch.Tensor) -> torch.dtype:
    """States are fp32, or fp64 when the inputs are (gradcheck, verification probes)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _state_batch(q, cu_seqlens):
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, contiguous; no call into torch where it already is (a ``to`` costs a microsecond)."""
    return (t if t.dtype == dtype else t.to(dtype)).contiguous()


def _no_steps(v: torch.Tensor) -> bool:
    """T = 0 (or an empty batch): there is no step to run, and the implementations need at least one."""
    return v.shape[0] == 0 or v.shape[1] == 0


def _empty_forward(q, v, h0, cu):
    """(o, final state) without steps: an empty output, the initial state (or zeros) as the final state."""
    if h0 is not None:
        return v.new_empty(v.shape), h0.to(state_dtype(v), memory_format=torch.contiguous_format, copy=True)
    return v.new_empty(v.shape), v.new_zeros(
        _state_batch(q, cu), v.shape[2], q.shape[-1], v.shape[-1], dtype=state_dtype(v)
    )


# op -> the call forms this process has seen (``lowering/common/ahead.py`` compiles a form's kernels ahead once,
# at its first call)
AHEAD_FORMS: dict[str, set] = {}


def register(spec: OpSpec) -> None:
    name, n_gates, n_flags, n_saved = spec.name, len(spec.gates), len(spec.flags), len(spec.saved)
    saved_schema = "".join(f", Tensor {s}" for s in spec.saved)
    opt = spec.optional_gate_grads
    wanted_schema = ", bool[]? gate_grads=None" if opt else ""  # None: every gate's
    LIB.define(f"{name}({_schema_args(spec)}) -> (Tensor, Tensor{', Tensor' * n_saved})")
    LIB.define(f"{name}_bwd({_schema_args(spec)}, Tensor do, Tensor? dht{saved_schema}{wanted_schema}) -> Tensor[]")
    qual = f"fla_compile::{name}"

    def saved_like(q, k, v, gates, h0, cu, flags) -> tuple:
        """The saved outputs as new empty tensors, for the real and the fake impl alike."""
        if not n_saved:
            return ()
        kw = dict(zip(spec.flags, flags))
        return tuple(spec.saved_like(q, k, v, *gates, initial_state=h0, cu_seqlens=cu, **kw))

    compiled_ahead = AHEAD_FORMS.setdefault(name, set())
    bwd_compiled_ahead = AHEAD_FORMS.setdefault(f"{name}_bwd", set())

    def form(q, v, h0, cu, flags, *extra):
        """What picks a call's kernels and their specializations, coarsely (~1 us a call; a later call that differs
        elsewhere, a gate's dtype or T's residue, compiles what it lacks at its launch, as without compiling ahead):
        T's bit length, dtype, head sizes, initial state and ``cu_seqlens`` present, flags; ``extra``: the forward's
        gradient wanted, the backward's dht present and gate gradients."""
        return (*extra, q.shape[1].bit_length(), q.dtype, q.shape[2:], v.shape[2:], h0 is None, cu is None, *flags)

    def fwd_impl(q, k, v, *rest):
        return run_forward(q, k, v, rest, keep=True)

    def fwd_no_grad(*args):
        """The forward of a direct call that takes no gradient: its saved intermediates, kept only for a backward,
        are not made (None in their place: no buffer, no zero fill where the path keeps none)."""
        return run_forward(*args[:3], args[3:], keep=False)

    def run_forward(q, k, v, rest, keep):
        gates, (scale, h0, cu), flags = rest[:n_gates], rest[n_gates : n_gates + 3], rest[n_gates + 3 :]
        kw = dict(zip(spec.flags, flags))
        if cu is not None and type(cu) is torch.Tensor and cu.device.type == "cpu":  # free on the CPU: see _checks
            check_cu_seqlens(name, cu, q.shape[0], q.shape[1], cu.device, read_values=True)
        if _no_steps(v):
            saved = saved_like(q, k, v, gates, h0, cu, flags) if keep else (None,) * n_saved
            return (*_empty_forward(q, v, h0, cu), *saved)
        if q.dtype in launch.DTYPES:  # the kernels' dtypes (fp64 takes the torch path)
            grad = keep and (q.requires_grad or k.requires_grad or v.requires_grad)
            dry = lambda: dry_call(q, k, v, rest, keep, grad)  # noqa: E731
            ahead.once(compiled_ahead, form(q, v, h0, cu, flags, grad), q.device, dry)
        saved = saved_like(q, k, v, gates, h0, cu, flags) if keep else (None,) * n_saved
        if n_saved:
            kw["saved"] = saved
        o, ht = spec.forward(q, k, v, *gates, scale=scale, initial_state=h0, cu_seqlens=cu, **kw)
        return (o.contiguous(), ht.contiguous(), *saved)

    def dry_call(q, k, v, rest, keep, grad):
        """This forward again (its form now seen: no dry run of its own), and with ``grad`` its backward as autograd
        will call it (dht None, each gate's gradient as it requires one), for :func:`.ahead.compile_ahead`: the
        implementations themselves, so the dry run launches what the real calls will."""
        o, _, *saved = run_forward(q, k, v, rest, keep)
        if not grad:
            return
        wanted = (tuple(g.requires_grad for g in rest[:n_gates]),) if opt else ()
        h0, cu, flags = rest[n_gates + 1], rest[n_gates + 2], rest[n_gates + 3 :]
        bwd_compiled_ahead.add(form(q, v, h0, cu, flags, True, *wanted))  # seen: also where nothing is compiled
        if launch.COMPILE_ONLY.get():  # a backward's kernels where the forward took the Triton path
            bwd_impl(q, k, v, *rest, torch.empty_like(o), None, *saved, *wanted)

    n_bwd_rest = n_gates + 3 + n_flags + 2 + n_saved  # the backward's arguments after q, k, v, before gate_grads

    def split_gate_grads(rest):
        """The backward's arguments after q, k, v without ``gate_grads``, and it (() where left out or None)."""
        return (rest[:-1], tuple(rest[-1] or ())) if len(rest) > n_bwd_rest else (rest, ())

    def skipped(gate_grads):
        """Per gradient (q, k, v, gates, h0): whether the backward leaves it out (an unwanted gate's)."""
        return (False,) * 3 + tuple(not w for w in gate_grads) + (False,) if gate_grads else (False,) * (n_gates + 4)

    def bwd_impl(q, k, v, *rest):
        rest, gate_grads = split_gate_grads(rest)
        gates, (scale, h0, cu), rest = rest[:n_gates], rest[n_gates : n_gates + 3], rest[n_gates + 3 :]
        kw, (do, dht), saved = dict(zip(spec.flags, rest[:n_flags])), rest[n_flags : n_flags + 2], rest[n_flags + 2 :]
        inputs = (q, k, v, *gates, h0)
        skip = skipped(gate_grads)
        if _no_steps(v):  # nothing ran: the state's gradient passes through, the rest have no elements
            dense = torch.contiguous_format  # as the fake impl says; and dh0 is a copy: outputs never alias inputs
            grads = [
                q.new_empty(0) if s else torch.zeros_like(x, memory_format=dense) for x, s in zip(inputs[:-1], skip)
            ]
            if h0 is None:
                return grads + [q.new_empty(0)]
            if dht is None:
                return grads + [torch.zeros_like(h0, memory_format=dense)]
            return grads + [dht.to(h0.dtype, memory_format=dense, copy=True)]
        if n_saved:
            kw["saved"] = tuple(saved)
        if gate_grads:
            kw["gate_grads"] = gate_grads

        def run():
            return spec.backward(q, k, v, *gates, scale=scale, initial_state=h0, cu_seqlens=cu, do=do, dht=dht, **kw)

        # a backward form no forward compiled ahead: compiled graphs' op calls do not say that a gradient is wanted,
        # and a final state's gradient (dht) takes kernels of its own
        if q.dtype in launch.DTYPES:
            seen = form(q, v, h0, cu, rest[:n_flags], dht is None, *((gate_grads,) if opt else ()))
            ahead.once(bwd_compiled_ahead, seen, q.device, run)
        grads = run()
        return [cast(g, x.dtype) if g is not None and not s else q.new_empty(0) for g, x, s in zip(grads, inputs, skip)]

    def fwd_fake(q, k, v, *rest):
        gates, (_, h0, cu), flags = rest[:n_gates], rest[n_gates : n_gates + 3], rest[n_gates + 3 :]
        B, T, H, V = v.shape
        K = q.shape[-1]
        o = v.new_empty(B, T, H, V)
        ht = v.new_empty(_state_batch(q, cu), H, K, V, dtype=state_dtype(v))
        return (o, ht, *saved_like(q, k, v, gates, h0, cu, flags))

    def bwd_fake(q, k, v, *rest):  # the saved tensors (last arguments) do not change the gradients' shapes
        h0 = rest[n_gates + 1]
        inputs = (q, k, v, *rest[:n_gates], h0)
        skip = skipped(split_gate_grads(rest)[1])
        return [
            torch.empty_like(x, memory_format=torch.contiguous_format) if x is not None and not s else q.new_empty(0)
            for x, s in zip(inputs, skip)
        ]

    LIB.impl(name, fwd_impl, "CompositeExplicitAutograd")
    LIB.impl(f"{name}_bwd", bwd_impl, "CompositeExplicitAutograd")
    torch.library.register_fake(qual, fwd_fake, lib=LIB)
    torch.library.register_fake(f"{qual}_bwd", bwd_fake, lib=LIB)
    bwd_op = getattr(torch.ops.fla_compile, f"{name}_bwd").default

    def setup_context(ctx, inputs, output):
        kept = output[2:]  # the saved intermediates: no gradient flows into them
        if kept:
            ctx.mark_non_differentiable(*kept)
        ctx.set_materialize_grads(False)  # no zero gradients are made (do, dht may be None)
        ctx.save_for_backward(*[x for x in inputs if isinstance(x, torch.Tensor)], *kept)
        ctx.layout = [isinstance(x, torch.Tensor) for x in inputs]
        ctx.scalars = [x for x in inputs if not isinstance(x, torch.Tensor)]

    def grad_fn(ctx, do, dht, *_):
        saved, scalars = iter(ctx.saved_tensors), iter(ctx.scalars)
        inputs = [next(saved) if is_t else next(scalars) for is_t in ctx.layout]
        kept = list(saved)
        if do is None:
            do = torch.zeros_like(inputs[2])
        wanted = [bool(w) for w in ctx.needs_input_grad[3 : 3 + n_gates]]
        dq, dk, dv, *dgates, dh0 = backward_call(
            bwd_impl, bwd_op, (*inputs, do, dht, *kept, *((wanted,) if opt else ()))
        )
        if opt:
            dgates = [g if w else None for g, w in zip(dgates, wanted)]
        h0 = inputs[3 + n_gates + 1]
        return (dq, dk, dv, *dgates, None, dh0 if h0 is not None else None, None, *([None] * n_flags))

    torch.library.register_autograd(qual, grad_fn, setup_context=setup_context, lib=LIB)

    register_direct(name, fwd_impl, setup_context, grad_fn, no_grad_impl=fwd_no_grad)


def recompute_backward(forward: Callable) -> Callable:
    """A backward that recomputes ``forward`` under autograd: exact, memory linear in T.

    Used by the torch chunked path; kernels register their own backward.
    """

    def backward(q, k, v, *gates, scale, initial_state, cu_seqlens, do, dht, **flags):
        inputs = [q, k, v, *gates, initial_state]
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(x.is_floating_point()) if x is not None else None for x in inputs]
            o, ht = forward(*leaves[:-1], scale=scale, initial_state=leaves[-1], cu_seqlens=cu_seqlens, **flags)
            wrt = [x for x in leaves if x is not None and x.requires_grad]
            outs, douts = ((o,), (do.to(o.dtype),)) if dht is None else ((o, ht), (do.to(o.dtype), dht.to(ht.dtype)))
            grads = torch.autograd.grad(outs, wrt, douts, allow_unused=True)
        it = iter(grads)
        out = []
        for x in leaves:
            g = next(it) if x is not None and x.requires_grad else None
            out.append(torch.zeros_like(x) if g is None and x is not None else g)
        return out

    return backward
