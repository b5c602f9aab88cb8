"""Compiling a call's kernels ahead (``lowering/common/ahead.py``): the dry run's host-side logic on stub kernels,
on the CPU's torch path, and on its Triton path with every kernel a stub (the dry run's compiles against the real
call's launches). On the H200 it is checked by ``tests/test_compile_ahead_gpu.py`` and measured by ``python
benchmarks/kernels.py --first-call-profile gla,kda --first-call-ahead 0,1``."""

import concurrent.futures
import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

import fla_compile.ops as ops
from fla_compile.lowering.common import ahead, launch
from fla_compile.ops import _library

pytest.importorskip("triton.runtime._async_compile")

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _Kernel:
    """Stands in for a JIT function: records launches (``kernel[grid](...)``) and compiles (``warmup``)."""

    def __init__(self):
        self.launched, self.compiled = [], []
        self.fn = self.warmup  # named like a JITFunction's .fn for the launch helpers

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launched.append((grid, args, kwargs)) or "launched"

    def warmup(self, *args, grid, **kwargs):
        self.compiled.append((grid, args, kwargs))


def test_fitted_compiles_instead_of_launching_in_a_dry_run():
    """Under COMPILE_ONLY ``fitted`` submits the form it would launch (its avoided form on half the warps) and
    runs nothing; ``launching`` (tuning's way in) launches there, and the flag is back afterwards."""
    k, seen = _Kernel(), []
    token = launch.COMPILE_ONLY.set(seen)
    try:
        assert launch.fitted(k, (4, 2), "a", 3, num_warps=8, num_stages=1, avoid=((8, 1),), FLAG=True) is None
        assert launch.launching(launch.fitted, k, (1,), num_warps=4, num_stages=2) == "launched"
        assert launch.COMPILE_ONLY.get() is seen
    finally:
        launch.COMPILE_ONLY.reset(token)
    assert k.compiled == [((4, 2), ("a", 3), {"num_warps": 4, "num_stages": 1, "FLAG": True})]
    assert k.launched == [((1,), (), {"num_warps": 4, "num_stages": 2})] and len(seen) == 1
    assert launch.fitted(k, (1,), num_warps=4, num_stages=2) == "launched"  # outside a dry run: launches


def test_compile_ahead_counts_the_launches_and_keeps_a_failed_dry_run_quiet():
    """The dry run's launches are counted; one that raises stops quietly (the real call compiles the rest), and
    the dry-run flag is unset after it either way."""
    k = _Kernel()

    def run(fail=False):
        for _ in range(3):
            launch.fitted(k, (1,), num_warps=4, num_stages=2)
        if fail:
            raise RuntimeError("garbage in a dry run")
        assert not torch.is_grad_enabled()

    cpu = torch.device("cpu")
    assert ahead.compile_ahead(run, cpu, workers=2) == 3
    assert ahead.compile_ahead(lambda: run(fail=True), cpu, workers=2) == 3
    assert launch.COMPILE_ONLY.get() is None and not k.launched and len(k.compiled) == 6


def test_compile_ahead_says_what_a_first_call_waited_for(caplog):
    """Compiles that took time are said at INFO (a first call's seconds); cached kernels' milliseconds are not."""
    k = _Kernel()

    def run(wait):
        launch.fitted(k, (1,), num_warps=4, num_stages=2)
        time.sleep(wait)

    with caplog.at_level(logging.INFO, logger=ahead.__name__):
        ahead.compile_ahead(lambda: run(0), torch.device("cpu"), workers=2)
        assert not caplog.records
        ahead.compile_ahead(lambda: run(0.6), torch.device("cpu"), workers=2)
    assert "compiled the kernels of 1 launches ahead on 2 threads" in caplog.text


@pytest.mark.parametrize(
    "cpus,ranks,want", [(32, None, 16), (32, "8", 4), (128, "8", 16), (4, "8", 1), (8, "0", 8), (8, "x", 8)]
)
def test_compile_threads_share_the_cpus_among_local_ranks(monkeypatch, cpus, ranks, want):
    """One pool a process, its CPUs divided among torchrun's local ranks (``LOCAL_WORLD_SIZE``), at most 16, at
    least 1; a value that is not a positive count counts as one rank."""
    monkeypatch.setattr(ahead, "_cpus", lambda: cpus)
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert ahead.default_workers() == want


def test_compile_ahead_without_async_compile_runs_nothing(monkeypatch):
    monkeypatch.setattr(ahead, "_async_mode", lambda: None)
    ran = []
    assert ahead.compile_ahead(lambda: ran.append(1), torch.device("cpu")) == 0 and not ran


def test_a_thread_loads_what_it_compiled_and_leaves_a_failed_load_to_the_launch():
    class Compiled:
        def __init__(self, fails):
            self.fails, self.loaded = fails, False

        def _init_handles(self):
            if self.fails:
                raise RuntimeError("out of resources: shared memory")
            self.loaded = True

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loading = ahead._Loading(pool, None)
        good, bad = (loading.submit(lambda f=f: Compiled(f)).result() for f in (False, True))
    assert good.loaded and not bad.loaded


@pytest.mark.parametrize("env,capturing,want", [({}, False, True), ({"FLA_COMPILE_AHEAD": "0"}, False, False),
                                                ({"TRITON_INTERPRET": "1"}, False, False), ({}, True, False)])  # fmt: skip
def test_enabled_on_cuda_only_outside_captures_and_when_asked(monkeypatch, env, capturing, want):
    for name in ("FLA_COMPILE_AHEAD", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    assert ahead.enabled(torch.device("cuda", 0)) is want
    assert not ahead.enabled(torch.device("cpu"))


@pytest.fixture
def no_gla_forms_seen():
    """gla's forms (forward and backward) other tests have called count as seen: forgotten for a test, then
    restored."""
    sets = [_library.AHEAD_FORMS[name] for name in ("gla", "gla_bwd")]
    kept = [set(seen) for seen in sets]
    for seen in sets:
        seen.clear()
    yield
    for seen, was in zip(sets, kept):
        seen.clear()
        seen.update(was)


def _recording(calls, fwd_launched=False):
    """A stand-in for ``compile_ahead``: runs the dry call under COMPILE_ONLY (``fwd_launched``: as if it had
    launched kernels already) and records it."""

    def compile_ahead(run, device, workers=None):
        token = launch.COMPILE_ONLY.set(["a launch"] if fwd_launched else [])
        try:
            run()
        finally:
            launch.COMPILE_ONLY.reset(token)
        calls.append(device)
        return 0

    return compile_ahead


@pytest.mark.parametrize("fwd_launched", [False, True])
def test_an_op_compiles_each_form_ahead_once_and_computes_the_same(monkeypatch, no_gla_forms_seen, fwd_launched):
    """The op runs dry once per form (gradient wanted, T's bit length, dtype, head sizes, ...) before its real
    call, on the CPU's torch path here (enabled forced on; ``fwd_launched``: as if the dry forward had launched
    kernels, so the dry backward runs too): the outputs and gradients are the same as without, the inputs
    untouched, and a repeated form runs no dry call."""
    calls = []
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 20, 2, 8, generator=g) for _ in range(3))
    gk = torch.nn.functional.logsigmoid(torch.randn(1, 20, 2, 8, generator=g))

    def fwd_bwd(T=20):
        xs = [x[:, :T].detach().clone().requires_grad_() for x in (q, k, v, gk)]
        kept = [x.detach().clone() for x in xs]
        o, _ = ops.gla(*xs)
        grads = torch.autograd.grad(o.square().sum(), xs)
        assert all(torch.equal(x, y) for x, y in zip(xs, kept))
        return [o, *grads]

    want = fwd_bwd()  # its form is seen now, not compiled ahead (on the CPU)
    for name in ("gla", "gla_bwd"):
        _library.AHEAD_FORMS[name].clear()
    monkeypatch.setattr(ahead, "enabled", lambda device: True)
    monkeypatch.setattr(ahead, "compile_ahead", _recording(calls, fwd_launched))
    got = fwd_bwd(T=19)[:0] + fwd_bwd()  # T = 19 and 20 share a form (bit length 5): one dry call
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(want, got))
    fwd_bwd(T=12)  # another bit length
    with torch.no_grad():
        ops.gla(q, k, v, gk)  # no gradient wanted: another form
    assert len(calls) == 3


def test_a_backward_no_forward_compiled_ahead_compiles_its_own(monkeypatch, no_gla_forms_seen):
    """A forward's dry run with a gradient covers its backward (``dht`` None); a backward of another form (a final
    state's gradient) or one whose forward said no gradient (a compiled graph's op call) runs dry itself, once."""
    calls = []
    monkeypatch.setattr(ahead, "enabled", lambda device: True)
    monkeypatch.setattr(ahead, "compile_ahead", _recording(calls))
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 20, 2, 8, generator=g).requires_grad_() for _ in range(3)]
    xs.append(torch.nn.functional.logsigmoid(torch.randn(1, 20, 2, 8, generator=g)).requires_grad_())
    o, _ = ops.gla(*xs)
    torch.autograd.grad(o.sum(), xs)
    assert len(calls) == 1  # the forward's dry run, which covered the backward
    o, ht = ops.gla(*xs, output_final_state=True)
    dxs = torch.autograd.grad(o.sum() + ht.sum(), xs)
    assert len(calls) == 2  # the same forward form; a backward with dht
    o, ht, A = torch.ops.fla_compile.gla(*[x.detach() for x in xs], 8**-0.5, None, None)  # no gradient said
    got = torch.ops.fla_compile.gla_bwd(*[x.detach() for x in xs], 8**-0.5, None, None, torch.ones_like(o),
                                        torch.ones_like(ht), A)  # fmt: skip
    assert len(calls) == 3  # the op's forward (no gradient wanted); its backward's form was covered by the second
    assert all(torch.equal(a, b) for a, b in zip(got, dxs))
    short = [x.detach()[:, :12] for x in xs]  # a compiled graph's first step at another length
    o, ht, A = torch.ops.fla_compile.gla(*short, 8**-0.5, None, None)
    torch.ops.fla_compile.gla_bwd(*short, 8**-0.5, None, None, torch.ones_like(o), None, A)
    assert len(calls) == 5  # its forward, then its backward (no forward's dry run covered it)


DRY_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch
from host_overhead import make_cases, wrap_kernels
import fla_compile.ops as ops
from fla_compile.lowering.common import ahead, launch

events = []  # (what, the launch's form, inside a dry run)

def form(a):
    return ["tensor", str(a.dtype)] if isinstance(a, torch.Tensor) else repr(a)

class Stub:
    # a kernel that records its launches and its compiles (warmup), and runs nothing
    def __init__(self, kernel):
        self.fn = kernel.fn

    def _form(self, grid, args, kwargs):
        grid = list(grid) if isinstance(grid, tuple) else "callable"
        return [self.fn.__name__, grid, [form(a) for a in args], sorted((n, form(a)) for n, a in kwargs.items())]

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            events.append(("launch", self._form(grid, args, kwargs), launch.COMPILE_ONLY.get() is not None))
        return run

    def warmup(self, *args, grid, **kwargs):
        events.append(("compile", self._form(grid, args, kwargs), launch.COMPILE_ONLY.get() is not None))

wrap_kernels(lambda module, name, kernel: Stub(kernel))
ahead.enabled = lambda device: True  # the interpreter's CPU tensors, as if on CUDA
cases = make_cases(torch)

def split():
    key = lambda f: json.dumps(f)
    got = {"compiled": sorted((f for w, f, _ in events if w == "compile"), key=key),
           "launched": sorted((f for w, f, dry in events if w == "launch" and not dry), key=key),
           "launched_in_dry_run": len([1 for w, _, dry in events if w == "launch" and dry])}
    events.clear()
    return got

out = {}
for name in ("gla", "linear_attn", "retention", "simple_gla", "rwkv6", "delta_rule", "gated_delta_rule",
             "gated_delta_rule_l2", "kda"):
    fn, wrt = cases[name]
    o = fn()[0]
    torch.autograd.grad(o, wrt, torch.ones_like(o))
    out[name] = split()
q, k, v, gk = (x.detach() for x in cases["gla"][1])  # the op as a compiled graph calls it: no gradient said
o, ht, A = torch.ops.fla_compile.gla(q[:, :100], k[:, :100], v[:, :100], gk[:, :100], 0.1, None, None)
torch.ops.fla_compile.gla_bwd(q[:, :100], k[:, :100], v[:, :100], gk[:, :100], 0.1, None, None, torch.ones_like(o),
                              None, A)
out["gla, the op's path"] = split()
q, k, v, gk = (x.detach().requires_grad_() for x in cases["gla"][1])
h0 = torch.randn(q.shape[0], q.shape[2], q.shape[3], v.shape[3], requires_grad=True)
o, ht = ops.gla(q, k, v, gk, initial_state=h0, output_final_state=True)  # the final state in the loss: dht
torch.autograd.grad(o.sum() + ht.sum(), (q, k, v, gk, h0))
out["gla, initial and final state"] = split()
qp, kp, vp, gp = (x[:1].detach().requires_grad_() for x in (q, k, v, gk))  # two packed sequences
o = ops.kda(qp, kp, vp, gp, torch.rand(qp.shape[:3]).requires_grad_(), cu_seqlens=torch.tensor([0, 50, 128]))[0]
torch.autograd.grad(o.sum(), (qp, kp, vp))
out["kda, packed"] = split()
decay = torch.full((q.shape[2],), -0.05, requires_grad=True)  # a learnable decay: its gradient wanted
qs, ks, vs = (x[:, :100] for x in (q, k, v))  # a length retention's first case did not take: a new form
o = ops.retention(qs, ks, vs, decay)[0]
torch.autograd.grad(o.sum(), (q, k, v, decay))
out["retention, learnable decay"] = split()
print(json.dumps(out))
"""


def test_a_dry_run_compiles_each_launch_the_real_call_makes():
    """On the CPU's Triton path with every kernel a stub (a child process: TRITON_INTERPRET is read at import):
    for each op of the two kernel lines, the first call's dry run compiles exactly the launches its real forward
    and backward then make (kernel, grid, scalars and dtypes, options), and launches nothing itself. A launch
    added outside ``launch.fitted`` would run in the dry run and be missing from its compiles."""
    env = dict(os.environ, FLA_COMPILE_TRITON="interpret", TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", DRY_CHILD, str(ROOT)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out) == 13
    for name, got in out.items():
        assert got["launched_in_dry_run"] == 0, name
        if name == "gla, initial and final state":  # the forward's dry run compiled a backward without dht too
            assert all(f in got["compiled"] for f in got["launched"]), name
            continue
        assert len(got["compiled"]) >= 6 and got["compiled"] == got["launched"], name
