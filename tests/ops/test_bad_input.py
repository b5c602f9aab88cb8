"""Bad and edge-case input to every public op, on the CPU: a clear answer, never an error from inside.

- T = 0 returns an empty output and the initial state as the final state (zeros without one), and
  its backward passes the final state's gradient to the initial state;
- q, k and v of different float dtypes raise a ValueError naming both; gates and beta may be float32
  with bf16/fp16 q, k, v;
- ``cu_seqlens`` must run from 0 to T without decreasing (sequences of length 0 are fine);
- views (transposed, sliced) give the results of contiguous copies, gradients included;
- every error is a ValueError that starts with ``fla_compile.<op>: `` and names the argument, also
  when the op is called inside ``torch.compile(backend="fla")``;
- ``help(op)`` says what the op returns.

The references are fp64: the naive loops of ``fla_compile.reference`` where values are compared, the
op on contiguous copies where only the layout differs. A ``gpu`` part at the end runs float64 on CUDA.
"""

from __future__ import annotations

import math
import pydoc
import re

import pytest
import torch
import torch.nn.functional as F

from fla_compile import ops
from fla_compile.reference import delta as ref_delta
from fla_compile.reference import gla as ref_gla
from tests.compare import rel

OPS = ["linear_attn", "retention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "kda"]
DELTA = {"delta_rule", "gated_delta_rule", "kda"}
# the op's tensor arguments after q, k, v, in order, and their shapes ([B,T,H] "bth" or [B,T,H,K] "bthk")
GATES = {
    "linear_attn": {},
    "retention": {"decay": "h"},
    "simple_gla": {"g": "bth"},
    "gla": {"gk": "bthk"},
    "delta_rule": {"beta": "bth"},
    "gated_delta_rule": {"g": "bth", "beta": "bth"},
    "kda": {"g": "bthk", "beta": "bth"},
}


def make(op, B=1, T=6, HK=2, H=4, K=4, V=3, dtype=torch.float64, gate_dtype=None, seed=0, requires_grad=False):
    """Keyword arguments of ``ops.<op>``: q, k, v, its gates and an initial state [B, H, K, V]."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    a = {"q": rnd(B, T, HK, K), "k": F.normalize(rnd(B, T, HK, K), dim=-1), "v": rnd(B, T, H, V)}
    a = {n: x.to(dtype) for n, x in a.items()}
    gdt = gate_dtype or dtype
    for name, shape in GATES[op].items():
        if name == "decay":
            a[name] = -torch.linspace(0.05, 0.8, H, dtype=torch.float64).to(torch.promote_types(dtype, torch.float32))
        elif name == "beta":
            a[name] = torch.rand(B, T, H, generator=gen, dtype=torch.float64).to(gdt)
        else:
            a[name] = F.logsigmoid(rnd(B, T, H) if shape == "bth" else rnd(B, T, H, K)).to(gdt)
    a["initial_state"] = rnd(B, H, K, V).to(torch.float64 if dtype == torch.float64 else torch.float32)
    if requires_grad:
        a = {n: x.requires_grad_() for n, x in a.items()}
    return a


def call(op, a, **kw):
    return getattr(ops, op)(**a, **kw)


def reference(op, a, detach=True, **kw):
    """The fp64 naive loop of the family on the same arguments (no cu_seqlens)."""
    a = {n: (x.detach() if detach else x).double() if isinstance(x, torch.Tensor) else x for n, x in a.items()}
    q, k, v, h0 = a["q"], a["k"], a["v"], a.get("initial_state")
    if op in DELTA:
        gates = {"gated_delta_rule": {"g": a.get("g")}, "kda": {"gk": a.get("g")}}.get(op, {})
        return ref_delta.delta_loop(q, k, v, a["beta"], initial_state=h0, output_final_state=True, **gates, **kw)
    gates = [a[n] for n in GATES[op]]
    return getattr(ref_gla, op)(q, k, v, *gates, initial_state=h0, output_final_state=True, **kw)


# ---------------------------------------------------------------------------------------------
# T = 0


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_empty_sequence(op, with_state, dtype):
    a = make(op, B=2, T=0, dtype=dtype)
    h0 = a.pop("initial_state")
    if with_state:
        a["initial_state"] = h0
    o, ht = call(op, a, output_final_state=True)
    assert o.shape == (2, 0, 4, 3) and o.dtype == dtype
    assert ht.shape == (2, 4, 4, 3) and ht.dtype == dtype
    assert torch.equal(ht, h0) if with_state else not ht.any()
    if with_state:
        assert ht.data_ptr() != h0.data_ptr()  # a new tensor, not the caller's state
    o, ht = call(op, a)
    assert o.shape == (2, 0, 4, 3) and ht is None
    if with_state:  # a view as the state: the final state is still a dense copy
        a["initial_state"] = h0.transpose(-1, -2).contiguous().transpose(-1, -2)
        _, ht = call(op, a, output_final_state=True)
        assert torch.equal(ht, h0) and ht.is_contiguous()


@pytest.mark.parametrize("op", OPS)
def test_empty_sequence_gradients(op):
    """dh0 = dht; the other gradients exist, with the inputs' (empty) shapes."""
    a = make(op, T=0, requires_grad=True)
    o, ht = call(op, a, output_final_state=True)
    dht = torch.randn_like(ht)
    torch.autograd.backward([o, ht], [torch.zeros_like(o), dht])
    assert torch.equal(a["initial_state"].grad, dht)
    for name in ("q", "k", "v", *GATES[op]):
        g = a[name].grad
        assert g is None or (g.shape == a[name].shape and not g.any()), name


@pytest.mark.parametrize("op", OPS)
def test_empty_packed_batch(op):
    """cu_seqlens [0, 0, 0]: two empty sequences, each passing its state through."""
    a = make(op, T=0)
    a["initial_state"] = torch.randn(2, 4, 4, 3, dtype=torch.float64)
    o, ht = call(op, a, output_final_state=True, cu_seqlens=torch.tensor([0, 0, 0]))
    assert o.shape == (1, 0, 4, 3) and torch.equal(ht, a["initial_state"])


# ---------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("which,other", [("v", torch.float64), ("k", torch.float64), ("v", torch.bfloat16)])
def test_mixed_qkv_dtypes(op, which, other):
    a = make(op, dtype=torch.float32)
    a[which] = a[which].to(other)
    with pytest.raises(ValueError) as e:
        call(op, a)
    msg = str(e.value)
    assert msg.startswith(f"fla_compile.{op}: ") and f"q is float32 but {which} is " in msg, msg


@pytest.mark.parametrize("op", [op for op in OPS if set(GATES[op]) - {"decay"}])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fp32_gates_with_half_inputs(op, dtype):
    """Gates and beta in float32 with bf16/fp16 q, k, v (as the models compute them): against the fp64 loop."""
    a = make(op, T=20, dtype=dtype, gate_dtype=torch.float32)
    assert all(a[n].dtype == torch.float32 for n in GATES[op])
    o, ht = call(op, a, output_final_state=True)
    ro, rht = reference(op, a)
    assert o.dtype == dtype and ht.dtype == torch.float32
    assert rel(o, ro) < 2e-2 and rel(ht, rht) < 2e-2


@pytest.mark.parametrize("op", [op for op in OPS if set(GATES[op]) - {"decay"}])
def test_gate_of_a_third_dtype(op):
    """A gate must be in q's dtype or float32: float64 gates with float32 q are refused by name."""
    for name in set(GATES[op]) - {"decay"}:
        a = make(op, dtype=torch.float32)
        a[name] = a[name].double()
        with pytest.raises(ValueError, match=rf"^fla_compile\.{op}: {name} is float64 but q is float32"):
            call(op, a)


# ---------------------------------------------------------------------------------------------
# cu_seqlens


BAD_CU = {
    "decreasing": ([0, 4, 2, 6], "must be non-decreasing"),
    "not_from_0": ([1, 3, 6], "must start at 0"),
    "short_of_T": ([0, 3, 5], "must end at T = 6"),
    "past_T": ([0, 3, 7], "must end at T = 6"),
    "one_offset": ([0], "must hold at least two offsets"),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", sorted(BAD_CU))
def test_bad_cu_seqlens(op, case):
    cu, match = BAD_CU[case]
    a = make(op)
    with pytest.raises(ValueError, match=rf"^fla_compile\.{op}: cu_seqlens {match}"):
        call(op, a, cu_seqlens=torch.tensor(cu))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ["decreasing", "short_of_T"])
def test_bad_cu_seqlens_reach_the_op(op, case):
    """Calling the custom op directly (as rewritten graphs do) checks them too, on the CPU."""
    cu, match = BAD_CU[case]
    a = make(op)
    gates = [a[n] for n in GATES[op]]
    flags = (False,) if op in DELTA else ()
    with pytest.raises(ValueError, match=rf"^fla_compile\.{op}: cu_seqlens {match}"):
        getattr(torch.ops.fla_compile, op)(a["q"], a["k"], a["v"], *gates, 0.5, None, torch.tensor(cu), *flags)


@pytest.mark.parametrize("op", OPS)
def test_empty_sequences_in_a_pack(op):
    """Sequences of length 0 inside a pack are legitimate: their state passes through; the others run as alone."""
    bounds = [0, 0, 4, 4, 6]
    a = make(op, T=6)
    a["initial_state"] = torch.randn(4, 4, 4, 3, dtype=torch.float64)
    o, ht = call(op, a, output_final_state=True, cu_seqlens=torch.tensor(bounds))
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        if s == e:
            assert torch.equal(ht[n], a["initial_state"][n])
            continue
        part = {x: (t[:, s:e] if t.dim() >= 3 else t) for x, t in a.items() if x != "initial_state"}
        ro, rht = reference(op, {**part, "initial_state": a["initial_state"][n : n + 1]})
        assert rel(o[:, s:e], ro) < 1e-12 and rel(ht[n : n + 1], rht) < 1e-12


# ---------------------------------------------------------------------------------------------
# non-contiguous inputs


def _views(a):
    """Same values, other layouts: q, v and the state transposed in memory, k and the gates sliced
    out of larger tensors (strided in time or in the last dim)."""
    out = {}
    for n, x in a.items():
        if n in ("q", "v", "initial_state"):
            out[n] = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        elif x.dim() >= 3:
            out[n] = torch.stack([x, torch.full_like(x, float("nan"))], 2).flatten(1, 2)[:, ::2]
        else:
            out[n] = torch.stack([x, torch.full_like(x, float("nan"))], -1)[..., 0]
        assert torch.equal(out[n], x) and not out[n].is_contiguous(), n
    return out


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(op):
    a = make(op, T=9)
    views = _views(a)
    o, ht = call(op, views, output_final_state=True)
    ro, rht = reference(op, a)
    assert rel(o, ro) < 1e-12 and rel(ht, rht) < 1e-12
    # gradients through the views equal those of contiguous copies
    leaves = {n: x.clone().requires_grad_() for n, x in a.items()}
    o2, ht2 = call(op, leaves, output_final_state=True)
    base = {n: x.clone().requires_grad_() for n, x in a.items()}
    o3, ht3 = call(op, _views(base), output_final_state=True)
    (o2.square().sum() + ht2.sum()).backward()
    (o3.square().sum() + ht3.sum()).backward()
    for n in a:
        assert rel(base[n].grad, leaves[n].grad) < 1e-12, n


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_cu_seqlens(op):
    a = make(op, T=6)
    a["initial_state"] = a["initial_state"].expand(2, -1, -1, -1)  # a stride-0 view too
    cu = torch.tensor([0, 9, 2, 9, 6, 9])[::2]
    o, ht = call(op, a, output_final_state=True, cu_seqlens=cu)
    o2, ht2 = call(op, {**a, "initial_state": a["initial_state"].contiguous()}, output_final_state=True,
                   cu_seqlens=cu.contiguous())  # fmt: skip
    assert torch.equal(o, o2) and torch.equal(ht, ht2)


# ---------------------------------------------------------------------------------------------
# every error: a ValueError, starting with the op's name, naming the argument


def _common_cases():
    meta = torch.device("meta")
    return {
        "q_not_tensor": (lambda a: a.update(q=a["q"].tolist()), "q must be a tensor"),
        "q_3d": (lambda a: a.update(q=a["q"][0]), "q must be [B, T, H, D]"),
        "k_int": (lambda a: a.update(k=a["k"].long()), "k must be float32"),
        "k_shape": (lambda a: a.update(k=a["k"][..., :2]), "q and k must have the same shape"),
        "v_length": (lambda a: a.update(v=a["v"][:, :3]), "v must be [B, T, H, V]"),
        "v_heads": (lambda a: a.update(v=a["v"][:, :, :3]), "v has 3 heads, which is not a multiple"),
        "k_dim_0": (lambda a: a.update(q=a["q"][..., :0], k=a["k"][..., :0]), "q and k need at least one"),
        "v_dim_0": (lambda a: a.update(v=a["v"][..., :0]), "v needs at least one"),
        "v_device": (lambda a: a.update(v=a["v"].to(meta)), "v is on meta but q is on cpu"),
        "state_shape": (lambda a: a.update(initial_state=a["initial_state"][:, :1]), "initial_state must be"),
        "state_int": (lambda a: a.update(initial_state=a["initial_state"].long()), "initial_state must be a float"),
        "state_list": (lambda a: a.update(initial_state=[0.0]), "initial_state must be a tensor"),
        "state_device": (lambda a: a.update(initial_state=a["initial_state"].to(meta)), "initial_state is on meta"),
        "scale_str": (lambda a: a.update(scale="0.5"), "scale must be a finite number"),
        "scale_nan": (lambda a: a.update(scale=math.nan), "scale must be a finite number"),
        "cu_batch": (
            lambda a: a.update(
                {n: torch.cat([x, x]) for n, x in a.items() if x.dim() >= 3}, cu_seqlens=torch.tensor([0, 6])
            ),
            "with cu_seqlens, inputs must be packed into batch size 1",
        ),
        "cu_float": (lambda a: a.update(cu_seqlens=torch.tensor([0.0, 6.0])), "cu_seqlens must be a 1-D int32"),
        "cu_list": (lambda a: a.update(cu_seqlens=[0, 6]), "cu_seqlens must be a tensor"),
        "cu_device": (lambda a: a.update(cu_seqlens=torch.tensor([0, 6], device=meta)), "cu_seqlens is on meta"),
    }


def _gate_cases(op):
    cases = {}
    for name, shape in GATES[op].items():
        if name == "decay":
            cases["decay_str"] = (lambda a: a.update(decay="fast"), "decay must be a float or a tensor")
            cases["decay_shape"] = (lambda a: a.update(decay=a["decay"][:3]), "decay must be a float or a tensor [H]")
            cases["decay_int"] = (lambda a: a.update(decay=torch.ones(4, dtype=torch.long)), "decay must be a float")
            continue
        layout = "[B, T, H]" if shape == "bth" else "[B, T, H, K]"
        cases[f"{name}_none"] = (lambda a, n=name: a.update({n: None}), f"{name} must be a tensor {layout}")
        cases[f"{name}_shape"] = (lambda a, n=name: a.update({n: a[n][:, :, :1]}), f"{name} must have shape {layout}")
        cases[f"{name}_int"] = (lambda a, n=name: a.update({n: a[n].long()}), f"{name} must be a float tensor")
        cases[f"{name}_device"] = (lambda a, n=name: a.update({n: a[n].to("meta")}), f"{name} is on meta")
    return cases


ERROR_CASES = [(op, case) for op in OPS for case in sorted({**_common_cases(), **_gate_cases(op)})]


@pytest.mark.parametrize("op,case", ERROR_CASES, ids=[f"{op}-{case}" for op, case in ERROR_CASES])
def test_errors_name_the_op_and_the_argument(op, case):
    mutate, match = {**_common_cases(), **_gate_cases(op)}[case]
    a = make(op)
    mutate(a)
    with pytest.raises(ValueError, match="^" + re.escape(f"fla_compile.{op}: {match}")):
        call(op, a)


# ---------------------------------------------------------------------------------------------
# through torch.compile(backend="fla")


@pytest.mark.parametrize("op", ["gla", "gated_delta_rule"])  # one per line: ~25 s of compiling each
def test_through_the_backend(op):
    """Inside a compiled function: T = 0 runs, mixed dtypes and bad offsets get the same ValueError
    (the offsets from the custom op itself: the public function does not read them while traced)."""
    torch._dynamo.reset()

    def fn(a, cu=None):
        o, ht = call(op, a, output_final_state=True, cu_seqlens=cu)
        return o * 2, ht + 1

    compiled = torch.compile(fn, backend="fla")
    a = make(op, T=0)
    o, ht = compiled(a)
    assert o.shape == (1, 0, 4, 3) and torch.equal(ht, a["initial_state"] + 1)
    a = make(op, dtype=torch.float32)
    with pytest.raises(ValueError, match=rf"^fla_compile\.{op}: q is float32 but v is float64"):
        compiled({**a, "v": a["v"].double()})
    a["initial_state"] = None
    o, _ = compiled(a, torch.tensor([0, 2, 6]))
    assert rel(o, fn(a, torch.tensor([0, 2, 6]))[0]) < 1e-6
    with pytest.raises(ValueError, match=rf"^fla_compile\.{op}: cu_seqlens must be non-decreasing"):
        compiled(a, torch.tensor([0, 4, 2, 6]))


# ---------------------------------------------------------------------------------------------
# docstrings


@pytest.mark.parametrize("op", OPS)
def test_help_says_what_it_returns(op):
    text = pydoc.render_doc(getattr(ops, op), renderer=pydoc.plaintext)
    for needed in ("Returns:", "(o, final_state)", "o [B, T, H, V] in v's dtype", "final_state [N, H, K, V] float32",
                   "None unless", f"fla_compile.{op}: ", "cu_seqlens", "initial_state"):  # fmt: skip
        assert needed in text, (op, needed)
    for name in GATES[op]:
        assert f"{name}: " in text, (op, name)


# ---------------------------------------------------------------------------------------------
# CUDA: float64 runs (on the torch path), on every op and through the backend; packs with empty sequences


def _to(a, device):
    return {n: x.to(device) if isinstance(x, torch.Tensor) else x for n, x in a.items()}


def _reference_grads(op, a):
    """(o, final state, {name: gradient}) of the fp64 loop on the CPU for the loss o^2 + sum(final state)."""
    leaves = {n: x.detach().double().cpu().requires_grad_() for n, x in a.items()}
    ro, rht = reference(op, leaves, detach=False)
    (ro.square().sum() + rht.sum()).backward()
    return ro.detach(), rht.detach(), {n: x.grad for n, x in leaves.items()}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ["all_fp64", "fp64_state"])
def test_float64_on_cuda(op, case):
    """float64 on CUDA runs (the torch path: the kernels never see it), forward and backward; so does a
    float64 initial state with float32 inputs. Against the fp64 loop's values and gradients."""
    a = make(op, T=70, K=16, V=16)
    leaves = {n: x.cuda().requires_grad_() for n, x in a.items()}
    if case == "fp64_state":
        leaves = {n: (x if n == "initial_state" else x.detach().float().requires_grad_()) for n, x in leaves.items()}
    o, ht = call(op, leaves, output_final_state=True)
    (o.square().sum() + ht.sum()).backward()
    ro, rht, rgrads = _reference_grads(op, a)
    dt = torch.float64 if case == "all_fp64" else torch.float32
    tol = 1e-10 if case == "all_fp64" else 1e-4
    assert o.is_cuda and o.dtype == dt and ht.dtype == dt
    assert rel(o.cpu(), ro) < tol and rel(ht.cpu(), rht) < tol
    for n, x in leaves.items():
        assert rel(x.grad.cpu(), rgrads[n]) < tol, n


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op", OPS)
def test_float64_on_cuda_through_the_backend(op):
    torch._dynamo.reset()
    a = _to(make(op, T=70, K=16, V=16), "cuda")
    fn = lambda a: call(op, a, output_final_state=True)  # noqa: E731
    o, ht = torch.compile(fn, backend="fla")(a)
    ro, rht = reference(op, a)
    assert o.dtype == torch.float64 and rel(o.cpu(), ro.cpu()) < 1e-10 and rel(ht.cpu(), rht.cpu()) < 1e-10


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op", OPS)
def test_empty_sequences_in_a_pack_on_cuda(op):
    """The kernels' packed path (fp32) with sequences of length 0: states pass through, the rest as alone."""
    bounds = [0, 0, 70, 70, 150]
    a = make(op, T=150, K=16, V=16, dtype=torch.float32)
    a["initial_state"] = torch.randn(4, 4, 16, 16)
    o, ht = call(op, _to(a, "cuda"), output_final_state=True, cu_seqlens=torch.tensor(bounds, device="cuda"))
    o, ht = o.cpu(), ht.cpu()
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        if s == e:
            assert torch.equal(ht[n], a["initial_state"][n])
            continue
        part = {x: (t[:, s:e] if t.dim() >= 3 else t) for x, t in a.items() if x != "initial_state"}
        ro, rht = reference(op, {**part, "initial_state": a["initial_state"][n : n + 1]})
        assert rel(o[:, s:e], ro) < 1e-4 and rel(ht[n : n + 1], rht) < 1e-4
