"""The public entry points: explain, jit's safe fallback, the registered backend."""

import warnings

import torch

import fla_compile

from .patterns import spellings as S


def test_backend_is_registered():
    assert "fla" in torch._dynamo.list_backends(exclude_tags=())


def test_explain_reports_matches_and_misses():
    q, k, v = torch.randn(2, 8, 2, 4), torch.randn(2, 8, 2, 4), torch.randn(2, 8, 2, 5)
    report = fla_compile.explain(S.linear_matmul_cat, q, k, v)
    assert [m.family for m in report.matches] == ["linear_attn"]
    assert "linear_attn" in str(report)
    report = fla_compile.explain(S.miss_nonlinear_in_state, q, k, v)
    assert not report.matches and report.misses


def test_jit_never_computes_something_else():
    q, k, v = torch.randn(2, 20, 2, 4), torch.randn(2, 20, 2, 4), torch.randn(2, 20, 2, 5)
    fn = fla_compile.jit(S.miss_nonlinear_in_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(q, k, v)
    assert torch.allclose(out, S.miss_nonlinear_in_state(q, k, v), rtol=1e-5, atol=1e-6)
    for spelling in (S.linear_matmul_cat, S.gla_sigmoid_gate):
        args = (q, k, v) if spelling is S.linear_matmul_cat else (q, k, v, torch.randn(2, 20, 2, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fla_compile.jit(spelling)(*args)
        ref = spelling(*args)
        assert ((out - ref).norm() / ref.norm()) < 1e-5


def test_jit_function_any_length_and_gradients():
    fn = fla_compile.jit(S.gla_fla_naive)
    for T in (9, 33):
        q, k, v = (torch.randn(2, T, 2, 4, requires_grad=True) for _ in range(3))
        g = torch.nn.functional.logsigmoid(torch.randn(2, T, 2, 4)).requires_grad_()
        out, h = fn(q, k, v, g)
        ref, ref_h = S.gla_fla_naive(q, k, v, g)
        assert ((out - ref).norm() / ref.norm()) < 1e-5 and ((h - ref_h).norm() / ref_h.norm()) < 1e-5
        (gq,) = torch.autograd.grad(out.sum(), q)
        (rq,) = torch.autograd.grad(ref.sum(), q)
        assert ((gq - rq).norm() / rq.norm()) < 1e-5
    assert [m.family for m in fn.explain(q, k, v, g).matches] == ["gla"]


def test_jit_module_instance_class_and_outer_compile():
    import torch.nn.functional as F

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).view(B, T, 3, 2, 4).unbind(2)
            h = x.new_zeros(B, 2, 4, 4)
            outs = []
            for t in range(T):
                h = 0.9 * h + k[:, t, :, :, None] * F.elu(v[:, t, :, None, :])
                outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
            return torch.stack(outs, 1)

    layer = Layer()
    x = torch.randn(2, 30, 8)
    ref = layer(x)
    inst = fla_compile.jit(layer)
    assert ((inst(x) - ref).norm() / ref.norm()) < 1e-5
    assert [m.family for m in inst.explain(x).matches] == ["retention"]
    cls = fla_compile.jit(Layer)()
    cls.load_state_dict(layer.state_dict())
    assert ((cls(x) - ref).norm() / ref.norm()) < 1e-5
    compiled = torch.compile(inst, backend="aot_eager")
    x2 = torch.randn(2, 17, 8)
    assert ((compiled(x2) - layer(x2)).norm() / layer(x2).norm()) < 1e-5


def test_jit_strict_raises():
    import pytest

    q, k, v = torch.randn(2, 10, 2, 4), torch.randn(2, 10, 2, 4), torch.randn(2, 10, 2, 5)
    with pytest.raises(Exception, match="nothing matched"):
        fla_compile.jit(S.miss_nonlinear_in_state, strict=True)(q, k, v)


def _gla_in_input_dtype(q, k, v, g):
    """A GLA loop that keeps the input's dtype throughout (the state too), as bf16 training code does."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = S * g[:, t, :, :, None].exp() + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def _gla_scaled_from_t6(q, k, v, g):
    """Near miss for the half-precision check: from T = 6 on the output is 2% larger, so the graphs traced
    at the probe lengths (3, 4) generalize to something else."""
    out = _gla_in_input_dtype(q, k, v, g)
    return out * 1.02 if q.shape[1] > 5 else out


def _half_inputs(dtype, T=24):
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, T, 2, 8, generator=gen) for _ in range(3))
    g = F.logsigmoid(torch.randn(2, T, 2, 8, generator=gen))
    return [x.to(dtype) for x in (q, k, v, g)]


def test_jit_half_precision_runs_the_op():
    """bf16 / fp16 inputs: the loop as written rounds its state every step, our op keeps it in fp32, so the
    generalized graph is checked against the function in fp32 (and in the input dtype no further from it than
    the function itself); before, every half-precision call ran as written."""
    import pytest

    for dtype in (torch.bfloat16, torch.float16):
        args = _half_inputs(dtype)
        fn = fla_compile.jit(_gla_in_input_dtype, strict=True)  # strict: raises if it would run as written
        out = fn(*args)
        assert out.dtype == dtype
        exact = _gla_in_input_dtype(*[x.double() for x in args])
        as_written = _gla_in_input_dtype(*args)
        ours, theirs = ((x.double() - exact).norm() / exact.norm() for x in (out, as_written))
        assert ours < 1e-2 and ours <= theirs, (dtype, ours, theirs)
        # near miss: agrees at the probe lengths, not at the check length: runs as written, exactly
        with pytest.raises(Exception, match="differs from the reference"):
            fla_compile.jit(_gla_scaled_from_t6, strict=True)(*args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fla_compile.jit(_gla_scaled_from_t6)(*args)
        assert torch.equal(out, _gla_scaled_from_t6(*args))


def _linear_and_length(q, k, v):
    """Returns a number next to the output: the length, which a captured graph would hold as a constant."""
    return S.linear_matmul_cat(q, k, v), q.shape[1]


def test_jit_refuses_number_outputs():
    """A number among the outputs may depend on the length the graph was captured at: ``@jit`` carries tensors
    and None only, says why, and runs the function as written."""
    import pytest

    q, k, v = torch.randn(2, 20, 2, 4), torch.randn(2, 20, 2, 4), torch.randn(2, 20, 2, 5)
    with pytest.raises(Exception, match="returns a value of type int"):
        fla_compile.jit(_linear_and_length, strict=True)(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, n = fla_compile.jit(_linear_and_length)(q, k, v)
    assert n == 20 and torch.equal(out, S.linear_matmul_cat(q, k, v))
