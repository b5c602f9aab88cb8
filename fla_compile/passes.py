"""The pipeline after capture, as a flat list of named passes: normalize, then each spelling.

Each spelling pass finds candidate regions, classifies and proves them (``verify``) and
rewrites the proven ones (``rewrite``); everything it leaves is reported as a near miss.
"""

from __future__ import annotations

import dataclasses
import logging

import torch.fx as fx

from .ir import Family
from .patterns import (
    chunked,
    cumsum,
    log_scan,
    loop,
    loop_roles,
    loss,
    multistate,
    normalized,
    pairwise,
    parallel,
    peel,
    pull,
    push,
)
from .patterns._graph import specialize_sizes, to_ssa, value_of
from .patterns._time import split_leading_ints, time_read
from .patterns._vmap import devmap
from .report import Miss, Report
from .rewrite import call_family, is_zeros
from .verify import NearMiss, classify_loop, prove_loop, step_inputs

log = logging.getLogger("fla_compile")


@dataclasses.dataclass(frozen=True)
class Options:
    """Backend options (``torch.compile(..., backend="fla", options={...})``).

    verify: prove every region on fresh probes before rewriting it (default on).
    strict: raise with the reasons when a region looks like a recurrence but is not proven.
    inductor: compile the rest of the graph with Inductor (off: aot_eager). A rest that is only
        layout and casts around our ops has nothing for Inductor to generate and runs as is
        (a report note says so), sparing Inductor's cold compile.
    costs: below the crossover of the device's cost table (``fla_compile.costs``) a proven region
        is left as written, the cheaper path for small work; the report says so. Off: always
        rewrite (``@jit`` makes this choice at call time instead, where the length is known). A fused
        loss whose logits fit in one chunk is kept too, with Inductor on (``patterns.loss.kept_reason``).
    cudagraphs: run the compiled graph under CUDA graphs (Inductor's cudagraph trees, what
        ``mode="reduce-overhead"`` turns on for the inductor backend): a replay instead of one host launch per
        kernel, for steps whose host time exceeds their kernels' (small batches, many layers). Needs
        ``inductor``. As with that mode, a graph's outputs are overwritten by its next run: clone what you keep.
    """

    verify: bool = True
    strict: bool = False
    inductor: bool = True
    costs: bool = True
    cudagraphs: bool = False

    @classmethod
    def from_dict(cls, options: dict | None) -> Options:
        options = dict(options or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = set(options) - set(known)
        if unknown:
            raise ValueError(f"fla backend: unknown options {sorted(unknown)}; known: {', '.join(known)}")
        for name, value in options.items():
            if not isinstance(value, bool):
                raise TypeError(f"fla backend: option {name!r} must be a bool, got {value!r}")
        if options.get("cudagraphs") and not options.get("inductor", True):
            raise ValueError(
                "fla backend: cudagraphs=True needs inductor=True (Inductor's cudagraph trees run the graph)"
            )
        return cls(**options)


def loop_pass(graph: fx.Graph, opts: Options, report: Report) -> None:
    split_leading_ints(graph)  # k[b, t] read as k[b][t]: time loops inside a loop over sequences
    peels, peel_misses = peel.unpeel(graph)  # a first step written apart: the general step in its place
    report.misses += [Miss(loop.SPELLING, reason, src) for reason, src in peel_misses]
    pulls: list = []
    pushes: list = []
    try:
        _loop_pass(graph, opts, report, pulls, pushes)
    finally:  # where the loop was not rewritten: as written
        pull.undo(pulls)
        for p in reversed(pushes):
            push.undo(p)
        peel.undo(peels)


def _reframed(graph: fx.Graph, final: fx.Node):
    """The loop ending in the state ``final``, framed again after a pass moved nodes into or out of its steps;
    StopIteration where it is not framed."""
    return next(r for r in loop.find(graph)[0] if r.blocks[-1][r.state_offset] is final and not r.states)


def _pulled_mamba(graph: fx.Graph, region, opts: Options, pulls: list):
    """A scan read out over its last axis whose decay and input were made before the loop (Mamba's reference
    scan): with their time-local producers pulled into the step, the mamba op where that is proven.
    (region, rec, err) or None (the graph then as it was)."""
    reads = [n for b in region.blocks for n in b if (r := time_read(n)) is not None and r.key in region.reads]
    p = pull.pull(graph, reads, region.T)
    if p is None:
        return None
    try:
        new = _reframed(graph, region.blocks[-1][region.state_offset])
        step, _ = new.step_graph()
        metas = step_inputs(step, new.reads)
        state_meta = value_of(step.graph.find_nodes(op="placeholder")[0])
        rec = classify_loop(step, metas, state_meta)
        if rec.family != Family.MAMBA:
            raise NearMiss("not the mamba op")
        err = prove_loop(step, metas, state_meta, rec, call_family) if opts.verify else float("nan")
    except (StopIteration, NearMiss, ValueError):
        pull.undo([p])
        return None
    pulls.append(p)
    return new, rec, err


def _pushed_mamba(graph: fx.Graph, region, rec, err, opts: Options, pulls: list, pushes: list):
    """A scan whose every state is stacked and read out after the loop (mamba.py's ``(hs @ C).squeeze``): with the
    read-out pushed into the step (``patterns/push.py``), Mamba's scan where the mamba op is proven there.
    (region, rec, err): the mamba op's, or the scan's as given where it is not (the graph then as it was, the
    region framed again: undoing the push made the read-out's nodes anew)."""
    p = push.push(graph, region)
    if p is None:
        return region, rec, err
    final = region.blocks[-1][region.state_offset]
    try:
        found = _pulled_mamba(graph, _reframed(graph, final), opts, pulls)
    except (StopIteration, NearMiss, ValueError):
        found = None
    if found is not None:
        pushes.append(p)
        return found
    push.undo(p)
    return _reframed(graph, final), rec, err


def _loop_pass(graph: fx.Graph, opts: Options, report: Report, pulls: list, pushes: list) -> None:
    regions, misses = loop.find(graph)
    if any(r.states for r in regions):  # loops carrying several states: split, then re-roll what is left
        emptied = set().union(*(multistate.split(r, opts, report) for r in regions if r.states))
        regions, misses = loop.find(graph)
        misses = [m for m in misses if not ("carries no state" in m[0] and m[1] in emptied)]
    report.misses += [Miss(loop.SPELLING, reason, src) for reason, src in misses]
    if not regions and not misses:  # nothing framed: say why a loop-like graph was not (for information)
        report.notes += [f"{loop.SPELLING} at {src}: {reason}" for reason, src in loop.copied_sources(graph)]
    for region in regions:
        if region.states:  # several states left as written: multistate.split said why
            continue
        if region.norm_offset is not None:  # a normalizer carried beside the state
            normalized.loop_pass(region, opts, report)
            continue
        try:
            step, _ = region.step_graph()
            # probed as the step's reads are at run time; constants made from literals (an identity matrix) keep
            # their values
            metas = step_inputs(step, region.reads)
            state_meta = value_of(step.graph.find_nodes(op="placeholder")[0])
            rec = classify_loop(step, metas, state_meta)
            err = prove_loop(step, metas, state_meta, rec, call_family) if opts.verify else float("nan")
            if rec.family == Family.HGRN and rec.q is not None and len(state_meta.shape) >= 2:
                region, rec, err = _pulled_mamba(graph, region, opts, pulls) or (region, rec, err)
            elif rec.family == Family.HGRN and rec.q is None and len(state_meta.shape) >= 2:
                region, rec, err = _pushed_mamba(graph, region, rec, err, opts, pulls, pushes)
        except (NearMiss, ValueError) as e:
            report.misses.append(Miss(loop.SPELLING, str(e), region.source))
            continue
        except Exception as e:  # a bug of ours: the graph is untouched so far, so leave the loop as written
            log.warning(
                "fla_compile: the loop at %s is left as written after an internal error", region.source, exc_info=True
            )
            report.misses.append(
                Miss(loop.SPELLING, f"internal error, left as written: {type(e).__name__}: {e}", region.source)
            )
            continue
        rec = rec.replace(
            initial_state=None if is_zeros(region.init_state) else region.init_state,
            output_final_state=region.final_state_used,
            source=region.source,
        )
        loop_roles.lower(region, rec, err, opts, report)


PRE_PASSES = [("chunked", chunked.run_pass)]
PASSES = [
    ("loop", loop_pass),
    ("normalized", normalized.run_pass),  # before parallel and cumsum, which would take its numerator
    ("parallel", parallel.run_pass),
    ("pairwise", pairwise.run_pass),
    ("cumsum", cumsum.run_pass),
    ("logcumsumexp", log_scan.run_pass),
    ("loss", loss.run_pass),
    ("chunked (whole function)", chunked.run_whole_pass),
]


def run(gm: fx.GraphModule, opts: Options) -> tuple[fx.GraphModule, Report]:
    """Match and rewrite every recognized region of ``gm``; return the graph to compile and the report.

    ``gm`` itself may be changed (the backend owns the graph Dynamo hands it).
    """
    report = Report()
    for _, fn in PRE_PASSES:  # passes that run regions as written, before normalization
        fn(gm.graph, opts, report)
    if devmap(gm.graph):  # torch.func.vmap calls become the batched ops they stand for
        gm.recompile()
    graph, why = to_ssa(gm)
    if graph is None:
        report.notes.append(f"graph not normalized: {why}")
        graph = gm.graph
        internal = any(m.reason.startswith("internal error") for m in report.misses)
        if not report.matches and not internal:
            # the passes never ran (in-place ops a reference function compiled directly, such as
            # torch_chunk_gated_delta_rule, can leave to_ssa failing): the function as a whole, as written;
            # on a normalized graph the last pass (chunked.run_whole_pass) does this
            whole = Report()
            chunked.run_pass(gm.graph, opts, whole, top_level=True)
            if whole.matches:  # proven as a whole: the parts' near misses no longer apply
                report = whole
    else:
        for _, fn in PASSES:
            fn(graph, opts, report)
    report.dedup()  # a construct inside an unrolled loop's body is found once per step: said once
    if not report.matches:
        return gm, report
    # a rewritten loop takes its batch dims at run time (and pins what it holds as numbers itself);
    # every other rewrite, and a choice to keep a region as written, was made at these sizes
    pin_all = any(m.spelling != loop.SPELLING or m.kept for m in report.matches)
    if pin_all and specialize_sizes(gm):
        report.notes.append(
            "symbolic sizes (Dynamo's automatic dynamic shapes) pinned to this call's values: other sizes recompile"
        )
    graph.lint()
    if graph is gm.graph:
        gm.recompile()
        return gm, report
    return fx.GraphModule(gm, graph), report
