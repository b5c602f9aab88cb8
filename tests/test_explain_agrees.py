"""``explain`` says exactly what ``torch.compile(backend="fla")`` does (issue 16): over every spelling
of ``tests/patterns/spellings.py`` (loops) and of the parallel, cumsum and chunked tests, positive and negative, both name the same matches (family,
spelling, source line, path) and the same misses, and the compiled run really calls our op once
per rewritten region (counted at dispatch), and none where nothing was rewritten.

T is short (8 steps): Dynamo unrolls each loop, and the set must stay fast."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from fla_compile import backend, costs

from .patterns import spellings as S
from .patterns import test_chunked as CH
from .patterns import test_cumsum as C
from .patterns import test_log_scan as LS
from .patterns import test_parallel as P
from .patterns.test_loop import NEGATIVE, POSITIVE

B, T, H, K, V = 1, 8, 2, 4, 4
OPTIONS = {"inductor": False}  # the same for both; Inductor's cold compile of the negatives is slow on CPU
SPELLINGS = sorted(n for n, f in vars(S).items() if inspect.isfunction(f) and f.__module__ == S.__name__)


def op_calls(fn, *args) -> tuple:
    """``fn(*args)`` and the forward calls of ``torch.ops.fla_compile.*`` it made, as the dispatcher
    saw them (the profiler: a dispatch mode would make Dynamo run the compiled function uncaptured)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn(*args)
    names = [e.name for e in prof.events() if e.name.startswith("fla_compile::")]
    return out, [n.split("::")[1].split(".")[0] for n in names if not n.endswith("_bwd")]


def make_inputs(fn, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pool = dict(
        q=torch.randn(B, T, H, K, generator=gen),
        k=torch.randn(B, T, H, K, generator=gen),
        v=torch.randn(B, T, H, V, generator=gen),
        g=torch.randn(B, T, H, K, generator=gen),
        gk=F.logsigmoid(torch.randn(B, T, H, K, generator=gen)),
        h0=torch.randn(B, H, K, V, generator=gen),
        b=torch.randn(B, T, H, K, generator=gen),
    )
    return [pool[n] for n in inspect.signature(fn).parameters]


def matches(report_or_reports):
    ms = [m for r in report_or_reports for m in r.matches]
    return sorted((m.family, m.spelling, m.source, m.path) for m in ms)


def misses(report):
    return sorted((str(m.grade), m.spelling, m.source, m.reason, m.count) for m in report.misses)


def compiled_run(fn, args, options=OPTIONS):
    """The backend's reports (every graph of the compile, merged as explain merges them), the
    compiled output and the op calls of the compiled run."""
    torch._dynamo.reset()
    backend.REPORTS.clear()
    compiled = torch.compile(fn, backend="fla", options=options)
    with torch.no_grad():
        compiled(*args)  # compiles (Dynamo does not capture under a dispatch mode)
        out, calls = op_calls(compiled, *args)
    union = fla_compile.report.Report()
    for r in backend.REPORTS:
        union.extend(r)
    torch._dynamo.reset()
    return union, out, calls


def explained(fn, args, options=OPTIONS):
    torch._dynamo.reset()
    report = fla_compile.explain(fn, *args, options=options)
    torch._dynamo.reset()
    return report


def check_agree(fn, args, options=OPTIONS):
    said = explained(fn, args, options)
    done, out, calls = compiled_run(fn, args, options)
    assert matches([said]) == matches([done]), f"explain:\n{said}\nbackend:\n{done}"
    assert misses(said) == misses(done), f"explain:\n{said}\nbackend:\n{done}"
    # the op really runs, once per rewritten region (a loop is one call over the whole sequence)
    assert sorted(calls) == sorted(m.op.split(".")[-1] for m in done.rewritten), (calls, str(done))
    ref = fn(*args)
    for o, r in zip(*(x if isinstance(x, tuple) else (x,) for x in (out, ref))):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    return said


def test_every_spelling_is_listed():
    assert set(POSITIVE) | set(NEGATIVE) == set(SPELLINGS)


# a fast subset for every run; the whole set (about a minute on 2 cores) is marked slow
FAST = ["delta_householder", "kda_diag_embed", "gla_fla_naive", "miss_diag_embed_not_exp", "miss_value_gate"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in SPELLINGS])
def test_explain_says_what_the_backend_does(name):
    fn = getattr(S, name)
    report = check_agree(fn, make_inputs(fn, SPELLINGS.index(name)))
    if name in POSITIVE:
        assert [(m.family, m.spelling) for m in report.rewritten] == [(POSITIVE[name], "loop")], str(report)
    else:
        assert not report.matches and any(NEGATIVE[name] in m.reason for m in report.near_misses), str(report)
        lines = [(m.spelling, m.source, m.reason) for m in report.misses]
        assert len(lines) == len(set(lines)), str(report)  # one line per region, with its count


def test_explain_and_backend_keep_the_same_regions_as_written():
    # the cost table on (the suite runs with it off): a loop below its crossover stays as written,
    # and explain says so as the backend does; no op runs
    table = [{"device": "*", "family": "linear_attn", "spelling": "loop", "min_work": 10**9}]
    with costs.use(table):
        report = check_agree(S.linear_matmul_cat, make_inputs(S.linear_matmul_cat), {"inductor": False, "costs": True})
    (m,) = report.matches
    assert m.kept.startswith("kept as written") and not report.rewritten


def test_explain_takes_the_backend_options():
    fn = S.gla_fla_naive
    args = make_inputs(fn)
    with pytest.raises(ValueError, match="unknown options"):
        fla_compile.explain(fn, *args, options={"inductr": False})
    unproven = explained(fn, args, {"verify": False, "inductor": False})
    (m,) = unproven.matches
    assert m.error != m.error  # not proven: NaN, as the backend reports it
    strict = explained(
        S.miss_diag_embed_not_exp, make_inputs(S.miss_diag_embed_not_exp), {"strict": True, "inductor": False}
    )
    assert any("raises FlaCompileError" in n for n in strict.notes), str(strict)


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(POSITIVE)]
)
def test_jit_matches_nothing_the_backend_does_not(name):
    # @jit captures the function at probe lengths, the backend the inlined graph: what one
    # matches, the other matches too (the two Householder/diag_embed spellings were jit-only)
    fn = getattr(S, name)
    args = make_inputs(fn)
    torch._dynamo.reset()
    by_jit = fla_compile.jit(fn).explain(*args)
    said = explained(fn, args)
    assert [(m.family, m.spelling) for m in by_jit.matches] == [(m.family, m.spelling) for m in said.matches]
    assert [m.family for m in said.rewritten] == [POSITIVE[name]], str(said)


# the masked quadratic (parallel) and cumsum spellings of their own test files, positive and negative
FORM_CASES = (
    [("parallel", fn, gate, None) for fn, _, gate in P.POSITIVE]
    + [("parallel", fn, False, reason) for fn, reason in P.NEGATIVE]
    + [("cumsum", fn, False, None) for fn in C.POSITIVE]
    + [("cumsum", fn, False, reason) for fn, reason in C.NEGATIVE]
)
FAST_FORMS = {"retention_per_head", "softmax_attention", "einsum_bthd", "cumsum_key_dim"}


def _name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


@pytest.mark.parametrize(
    "spelling,fn,gate,reason",
    [c if _name(c[1]) in FAST_FORMS else pytest.param(*c, marks=pytest.mark.slow) for c in FORM_CASES],
    ids=[f"{c[0]}-{_name(c[1])}" for c in FORM_CASES],
)
def test_explain_says_what_the_backend_does_for_forms(spelling, fn, gate, reason):
    xs = [x.detach() for x in (P.inputs(gate) if spelling == "parallel" else C.inputs())]
    if fn is P.random_mask_input:
        xs.append(torch.tril(torch.rand(P.T, P.T)) > 0.5)
    torch.manual_seed(1)
    said = explained(fn, xs)
    torch.manual_seed(1)
    done, out, calls = compiled_run(fn, xs)
    assert matches([said]) == matches([done]), f"explain:\n{said}\nbackend:\n{done}"
    assert misses(said) == misses(done), f"explain:\n{said}\nbackend:\n{done}"
    assert sorted(calls) == sorted(m.op.split(".")[-1] for m in done.rewritten), (calls, str(done))
    if reason is None:
        assert done.rewritten and all(m.spelling == spelling for m in done.rewritten), str(done)
    else:
        assert not done.matches and any(reason in m.reason for m in done.misses), str(done)
    if fn is not P.random_mask_inside:  # draws random numbers inside: no second run equals the first
        ref = fn(*xs)
        for o, r in zip(*(x if isinstance(x, tuple) else (x,) for x in (out, ref))):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [LS.heinsen, LS.nm_log_h], ids=["heinsen", "nm_log_h"])
def test_explain_says_what_the_backend_does_for_log_scans(fn):
    """The log-space scan (``patterns/log_scan.py``): one hgrn call where explain names one, a near miss alike."""
    xs = LS._inputs((LS.B, LS.T, LS.D), (LS.B, LS.T, LS.D), grad=False)
    said = explained(fn, xs)
    done, out, calls = compiled_run(fn, xs)
    assert matches([said]) == matches([done]) and misses(said) == misses(done), f"explain:\n{said}\nbackend:\n{done}"
    assert (
        sorted(calls) == sorted(m.op.split(".")[-1] for m in done.rewritten) == (["hgrn"] if fn is LS.heinsen else [])
    )
    torch.testing.assert_close(out, fn(*xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,name,family,gate_kind", CH.CASES, ids=[c[1] for c in CH.CASES])
def test_explain_says_what_the_backend_does_for_chunked(model, name, family, gate_kind):
    """transformers' chunked and recurrent reference functions (the chunked spelling), called directly."""
    fn = CH.reference_function(model, name)
    args = list(CH.inputs(gate_kind))
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    torch._dynamo.reset()
    said = fla_compile.explain(fn, *args, options=OPTIONS, **kw)
    torch._dynamo.reset()
    backend.REPORTS.clear()
    compiled = torch.compile(fn, backend="fla", options=OPTIONS)
    with torch.no_grad():
        compiled(*args, **kw)
        _, calls = op_calls(lambda *a: compiled(*a, **kw), *args)
    done = fla_compile.report.Report()
    for r in backend.REPORTS:
        done.extend(r)
    torch._dynamo.reset()
    assert matches([said]) == matches([done]), f"explain:\n{said}\nbackend:\n{done}"
    assert misses(said) == misses(done), f"explain:\n{said}\nbackend:\n{done}"
    # called directly (not from a model's forward), a recurrent reference is the loop it is
    spelling = "loop" if "recurrent" in name else "chunked"
    assert [(m.family, m.spelling) for m in done.rewritten] == [(family, spelling)], str(done)
    assert calls == [family], calls


def test_explain_says_what_the_backend_does_for_a_chunked_lookalike():
    def outer(q, k, v, g, beta):
        return CH.decoy(q, k, v, g, beta)

    args = list(CH.inputs("bth"))
    said = explained(outer, args)
    done, _, calls = compiled_run(outer, args)
    assert matches([said]) == matches([done]) == [] and not calls
    assert misses(said) == misses(done), f"explain:\n{said}\nbackend:\n{done}"
    assert any("no family op reproduces" in m.reason for m in done.misses), str(done)


def test_backend_option_values_are_checked():
    """A non-bool value and cudagraphs without Inductor are refused with the option's name; known options listed."""
    from fla_compile.passes import Options

    with pytest.raises(ValueError, match="known: verify, strict, inductor, costs, cudagraphs"):
        Options.from_dict({"cuda_graphs": True})
    with pytest.raises(TypeError, match="'costs' must be a bool"):
        Options.from_dict({"costs": "no"})
    with pytest.raises(ValueError, match="cudagraphs=True needs inductor=True"):
        Options.from_dict({"cudagraphs": True, "inductor": False})
    assert Options.from_dict({"cudagraphs": True}).cudagraphs


def test_inductor_config_of_a_graph():
    """Layout optimization off where our ops run (Inductor's channels-last copies of their inputs and saved X),
    CUDA graphs where asked, nothing otherwise."""
    import torch

    from fla_compile.backend import inductor_config
    from fla_compile.passes import Options

    def ours(q, k, v, g):
        return torch.ops.fla_compile.gla(q, k, v, g, 0.25, None, None)[0] + 1

    x = torch.zeros(1, 4, 1, 8)
    with_op = torch.fx.symbolic_trace(ours)
    plain = torch.fx.symbolic_trace(lambda a: a.sin())
    assert inductor_config(with_op, Options()) == {"layout_optimization": False}
    assert inductor_config(plain, Options()) == {}
    assert inductor_config(plain, Options(cudagraphs=True)) == {"triton.cudagraphs": True}
    assert with_op(x, x, x, x).shape == x.shape
