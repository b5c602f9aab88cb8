"""``@jit`` below the crossover: the function as written runs compiled (Inductor by default), built once per
input signature and once more dynamic in T, with gradients, falling back to the function itself where the
compile fails; ``explain`` names the path. Most tests swap Inductor for a backend that counts the graphs
Dynamo hands it and runs them as captured (Inductor's cold C++ compile is seconds); one test compiles for real."""

import importlib
import logging

import pytest
import torch

import fla_compile
from fla_compile import costs

from .test_costs import TABLE, D, H, inputs, linear_loop, lowerings, retention

jit_module = importlib.import_module("fla_compile.jit")  # the module (``fla_compile.jit`` is the decorator)


@pytest.fixture
def graphs(monkeypatch):
    """The graphs the kept path compiles (each run as captured)."""
    seen = []

    def counting(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    monkeypatch.setattr(jit_module, "KEPT_BACKEND", counting)
    return seen


def grads(fn, args):
    """fn's output and the gradients of a fixed loss of it, on fresh leaves."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*leaves)
    out.mul(torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def test_kept_path_is_inductor_compiled_and_agrees_forward_and_backward():
    """The real thing: Inductor compiles the kept form; values and gradients are eager's."""
    fn = fla_compile.jit(retention)
    with costs.use(TABLE):
        args = inputs(16)
        grads(fn, args)  # the first call proves at probe lengths (running the op), then compiles the kept form
        out, calls = lowerings(lambda *a: grads(fn, a), args)
        ref = grads(retention, args)
        torch.testing.assert_close(out, ref)
        assert calls == 0  # below the crossover: not the op
        (m,) = fla_compile.explain(fn, *args).matches
    assert m.compiled and m.path == "as written (compiled)"
    assert m.kept.endswith("; @jit runs it compiled (inductor)")
    run = next(iter(fn._as_written.values()))
    assert run is not fn.fn and hasattr(run, "_torchdynamo_orig_callable")  # a torch.compile'd function


def test_kept_path_compiles_once_per_signature_then_dynamic_in_T(graphs):
    fn = fla_compile.jit(retention)
    with costs.use(TABLE):
        with torch.no_grad():
            fn(*inputs(16))  # the first call proves at probe lengths (running the op), then compiles the kept form
            for T in (16, 8, 12, 20, 12):
                args = inputs(T)
                out, calls = lowerings(fn, args)
                torch.testing.assert_close(out, retention(*args))
                assert calls == 0
            # Dynamo specialized on T=16, then recompiled once, dynamic in T: no compile per length
            assert len(graphs) == 2
            out, calls = lowerings(fn, inputs(48))  # above the crossover: the op, nothing compiled
            assert calls == 1 and len(graphs) == 2
        for T in (16, 16, 8):  # with gradients: another signature (requires_grad), compiled once
            args = inputs(T)
            torch.testing.assert_close(grads(fn, args), grads(retention, args))
        assert len(graphs) == 4  # its static and its dynamic graph


def test_repeated_call_runs_the_compiled_form_on_the_fast_path(graphs, monkeypatch):
    fn = fla_compile.jit(retention)
    with costs.use(TABLE), torch.no_grad():
        fn(*inputs(16))
        monkeypatch.setattr(fn, "_key", lambda args: (_ for _ in ()).throw(AssertionError("slow path")))
        ran = []
        monkeypatch.setattr(fn, "fn", lambda *a: ran.append(1) or retention(*a))  # the function itself: not run
        args = inputs(16)
        torch.testing.assert_close(fn(*args), retention(*args))
        assert ran == [] and len(graphs) == 1


def test_compile_failure_falls_back_to_the_function_once(monkeypatch, caplog):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(jit_module, "KEPT_BACKEND", broken)
    fn = fla_compile.jit(retention)
    with costs.use(TABLE), torch.no_grad(), caplog.at_level(logging.INFO, logger="fla_compile"):
        fn(*inputs(16))
        for T in (16, 16, 8):
            args = inputs(T)
            out, calls = lowerings(fn, args)
            torch.testing.assert_close(out, retention(*args))
            assert calls == 0
        (m,) = fla_compile.explain(fn, *inputs(16)).matches
    failed = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failed) == 1 and "compiling the function as written failed" in failed[0].getMessage()
    assert not m.compiled and m.path == "as written"
    assert "@jit runs it eagerly: compiling it failed (" in m.kept and "no compiler here" in m.kept


def test_the_functions_own_error_propagates_and_keeps_the_compiled_form(graphs, monkeypatch):
    """An error the function raises itself is not a failed compile: raised as is, nothing falls back."""
    fn = fla_compile.jit(retention)
    with costs.use(TABLE), torch.no_grad():
        fn(*inputs(16))
        (run,) = fn._as_written.values()

        def own_error(*a):
            raise ValueError("bad input")

        monkeypatch.setattr(fn, "fn", own_error)
        fast = next(iter(fn._fast))
        fn._fast[fast] = (fn._fast[fast][0], own_error, fn._fast[fast][2])  # as if the compiled form raised it too
        with pytest.raises(ValueError, match="bad input"):
            fn(*inputs(16))
        assert not fn._compile_failed and list(fn._as_written.values()) == [run]


def test_eager_where_asked_or_where_the_kept_region_is_a_loop(graphs):
    with costs.use(TABLE), torch.no_grad():
        off = fla_compile.jit(retention, inductor=False)
        args = inputs(16)
        torch.testing.assert_close(off(*args), retention(*args))
        (m,) = fla_compile.explain(off, *args).matches
        assert not graphs and m.path == "as written" and m.kept.endswith("(jit(..., inductor=False))")
    # a loop kept as written: Dynamo would unroll it once per length, so it is not compiled
    table = [{"device": "*", "family": "*", "spelling": "loop", "min_work": 1e9}]
    with costs.use(table), torch.no_grad():
        loop = fla_compile.jit(linear_loop)
        args = inputs(8)
        loop(*args)  # proves at probe lengths (running the op)
        out, calls = lowerings(loop, args)
        torch.testing.assert_close(out, linear_loop(*args))
        (m,) = fla_compile.explain(loop, *args).matches
    assert calls == 0 and not graphs and m.path == "as written" and "unroll its loop" in m.kept


def test_op_path_label_unchanged(graphs):
    fn = fla_compile.jit(retention)
    with costs.use(TABLE), torch.no_grad():
        (m,) = fla_compile.explain(fn, *inputs(48)).matches
    assert not m.kept and not m.compiled and m.path == "fla_compile.retention"


def retention_on(q, k, v):
    """``retention`` with its decay made on the inputs' device."""
    T = q.shape[1]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    i = torch.arange(T, dtype=torch.float32, device=q.device)
    decay = torch.tril(0.9 ** (i[:, None] - i[None, :]))
    return ((q @ k.transpose(-1, -2)) * decay @ v).transpose(1, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kept_path_compiled_on_cuda():
    """On the GPU the kept form compiles to Triton kernels; values and gradients are eager's."""
    table = [{"device": "cuda", "family": "*", "spelling": "parallel", "min_work": 1e12}]
    fn = fla_compile.jit(retention_on)
    with costs.use(table):
        args = [a.cuda() for a in inputs(64)]
        out = grads(fn, args)
        ref = grads(retention_on, args)
        (m,) = fla_compile.explain(fn, *args).matches
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # Triton's pow and exp against CUDA's: a few ulp
    assert m.path == "as written (compiled)"


class RetentionLayer(torch.nn.Module):
    """A projection, then RetNet's parallel form: the kept form reads the module's parameters."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(D_MODEL, 3 * H * D)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(2)
        return retention(q, k, v)


D_MODEL = 8


@pytest.mark.parametrize("how", ["instance", "class"])
def test_module_kept_path_trains(graphs, how):
    """Training through a module's kept path: the parameters' gradients are eager's."""
    torch.manual_seed(0)
    layer = RetentionLayer()
    if how == "instance":
        jitted = fla_compile.jit(layer)
    else:
        jitted = fla_compile.jit(RetentionLayer)()
        jitted.load_state_dict(layer.state_dict())
    with costs.use(TABLE):
        for T in (16, 16, 12):
            x = torch.randn(2, T, D_MODEL)
            for m in (layer, jitted):
                m.zero_grad()
            out, ref = jitted(x), layer(x)
            out.square().sum().backward()
            ref.square().sum().backward()
            torch.testing.assert_close(out, ref)
            params = dict(layer.named_parameters())
            for name, p in jitted.named_parameters():
                torch.testing.assert_close(p.grad, params[name.removeprefix("inner.")].grad)
        if how == "instance":
            (m,) = jitted.explain(torch.randn(2, 16, D_MODEL)).matches
            assert m.path == "as written (compiled)"
    assert len(graphs) == 2  # T=16, then dynamic in T
