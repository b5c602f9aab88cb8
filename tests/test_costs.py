"""The cost table: below the crossover a proven region is kept as written (the cheaper path for
small work), above it the op runs; the choice is made at compile time in the backend and per call
in ``@jit``, and the report says which path runs."""

import importlib
import json
import logging
from pathlib import Path

import pytest
import torch

import fla_compile
from fla_compile import backend, bench, costs, passes

H, D = 2, 8
# a tiny table: the parallel form runs as written below T=32 at B*H=2, K=8 (work 2*32*32*8)
TABLE = [{"device": "cpu", "family": "*", "spelling": "parallel", "min_work": 2 * 32 * 32 * 8}]


@pytest.fixture(autouse=True)
def _kept_form_by_dynamo_alone(monkeypatch):
    """``@jit`` compiles the form it keeps with Inductor (seconds of C++ compile on a CPU); these tests are
    about the choice, so Dynamo's "eager" backend compiles it here (tests/test_jit_kept.py: the compile)."""
    monkeypatch.setattr(importlib.import_module("fla_compile.jit"), "KEPT_BACKEND", "eager")


def retention(q, k, v):
    """RetNet's parallel form, [B, T, H, D]."""
    T = q.shape[1]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    i = torch.arange(T, dtype=torch.float32)
    decay = torch.tril(0.9 ** (i[:, None] - i[None, :]))
    return ((q @ k.transpose(-1, -2)) * decay @ v).transpose(1, 2)


def linear_loop(q, k, v):
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def inputs(T):
    g = torch.Generator().manual_seed(T)
    return [torch.randn(1, T, H, D, generator=g) for _ in range(3)]


def compiled_report(fn, args, monkeypatch):
    """The backend's report, and how many of our lowerings the graph it hands on holds."""
    torch._dynamo.reset()
    backend.REPORTS.clear()
    graphs = []
    run = passes.run

    def spy(gm, opts):
        new, report = run(gm, opts)
        graphs.append(new)
        return new, report

    monkeypatch.setattr(passes, "run", spy)
    compiled = torch.compile(fn, backend="fla", options={"inductor": False})
    out = compiled(*args)
    torch._dynamo.reset()
    torch.testing.assert_close(out, fn(*args))
    (report,) = backend.REPORTS
    (gm,) = graphs
    return report, sum(backend._is_ours(n.target) for n in gm.graph.nodes if n.op == "call_function")


def lowerings(fn, args):
    """How many of our lowerings (one op call each) a ``@jit`` call runs."""
    calls = []
    import fla_compile.rewrite as rewrite

    orig = rewrite.run_family

    def spy(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    rewrite.run_family = spy
    try:
        out = fn(*args)
    finally:
        rewrite.run_family = orig
    return out, len(calls)


def test_backend_report_says_kept_code_is_compiled():
    """With Inductor on, a kept region is part of the graph Inductor compiles: the report's path says so (as @jit's
    does); without Inductor it runs as written. analyze() alone: no Inductor compile in this test."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(retention, backend=capture)(*inputs(16))
    labels = {}
    for inductor in (True, False):
        with costs.use(TABLE):
            _, report = backend.analyze(graphs[0], passes.Options.from_dict({"inductor": inductor}))
        (m,) = report.matches
        assert m.kept
        labels[inductor] = m.path
    assert labels == {True: "as written (compiled)", False: "as written"}


def test_backend_keeps_small_parallel_form_as_written(monkeypatch):
    with costs.use(TABLE):
        report, calls = compiled_report(retention, inputs(16), monkeypatch)
    (m,) = report.matches
    assert m.family == "retention" and m.spelling == "parallel" and m.path == "as written" and calls == 0
    assert m.kept == (
        "kept as written: T=16 is below the crossover (T≈32 at B·H=2, K=8, V=8) for retention/parallel on cpu"
    )
    assert "kept as written: T=16 is below the crossover (T≈32" in str(report)
    assert not report.near_misses and not report.rewritten


def test_backend_rewrites_large_parallel_form(monkeypatch):
    with costs.use(TABLE):
        report, calls = compiled_report(retention, inputs(48), monkeypatch)
    (m,) = report.matches
    assert not m.kept and m.path == "fla_compile.retention" and calls == 1
    assert report.rewritten == [m]


def test_loop_has_no_crossover_in_that_table(monkeypatch):
    with costs.use(TABLE):
        report, calls = compiled_report(linear_loop, inputs(8), monkeypatch)
    (m,) = report.matches
    assert m.spelling == "loop" and not m.kept and calls == 1


def test_loop_kept_below_its_crossover(monkeypatch):
    table = [{"device": "*", "family": "linear_attn", "spelling": "loop", "min_work": 2 * 16 * 8 * 8}]
    with costs.use(table):
        report, calls = compiled_report(linear_loop, inputs(8), monkeypatch)
    (m,) = report.matches
    assert m.kept.startswith("kept as written: T=8 is below the crossover (T≈16") and calls == 0


def test_jit_chooses_per_call():
    fn = fla_compile.jit(retention)
    with costs.use(TABLE):
        fn(*inputs(16))  # the first call traces and proves at probe lengths (running the op)
        for T, ops in ((16, 0), (64, 1), (8, 0)):
            args = inputs(T)
            out, calls = lowerings(fn, args)
            torch.testing.assert_close(out, retention(*args))
            assert calls == ops, T
        (m,) = fla_compile.explain(fn, *inputs(16)).matches
        assert m.kept.startswith("kept as written: T=16 is below the crossover (T≈32")
        (m,) = fla_compile.explain(fn, *inputs(64)).matches
        assert not m.kept and m.path == "fla_compile.retention"


def test_table_lookup_most_specific_first(tmp_path, monkeypatch):
    table = [
        {"device": "*", "spelling": "parallel", "min_work": 1},
        {"device": "cuda", "spelling": "parallel", "min_work": 2},
        {"device": "cuda-sm90", "family": "gla", "spelling": "parallel", "min_work": 3},
    ]
    with costs.use(table):
        assert costs.lookup("cpu", "gla", "parallel")["min_work"] == 1
        assert costs.lookup("cuda-sm80", "gla", "parallel")["min_work"] == 2
        assert costs.lookup("cuda-sm90", "gla", "parallel")["min_work"] == 3
        assert costs.lookup("cuda-sm90", "retention", "parallel")["min_work"] == 2
        assert costs.lookup("cpu", "gla", "loop") is None
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"entries": table[:1]}))
    monkeypatch.setenv("FLA_COMPILE_COSTS", str(path))
    assert costs.entries() == table[:1]
    monkeypatch.setenv("FLA_COMPILE_COSTS", "off")
    assert costs.entries() == []


def test_packaged_table_parses_and_keeps_small_parallel_on_cpu(monkeypatch):
    monkeypatch.delenv("FLA_COMPILE_COSTS")
    monkeypatch.setenv("FLA_COMPILE_CACHE_DIR", "/nonexistent")
    assert costs.entries()
    assert costs.kept_reason("retention", "parallel", costs.Shape(64, 4, 64, 64, "cpu"))
    assert not costs.kept_reason("retention", "parallel", costs.Shape(2048, 4, 64, 64, "cpu"))
    assert not costs.kept_reason("gla", "loop", costs.Shape(16, 4, 64, 64, "cpu"))


def test_jit_logs_what_it_matched_once(caplog):
    fn = fla_compile.jit(retention)
    with caplog.at_level(logging.INFO, logger="fla_compile"):
        for _ in range(3):
            fn(*inputs(16))
    lines = [r for r in caplog.records if "@fla_compile.jit" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "retention (parallel)" in lines[0].getMessage()


def test_crossover_from_measurements():
    rows = [(16, 1.0, 3.0), (64, 1.0, 2.0), (256, 4.0, 1.0), (512, 9.0, 2.0)]
    assert costs.crossover_work("parallel", rows) == costs.work("parallel", 128, 4, 64, 64)  # sqrt(64*256)
    assert costs.crossover_work("loop", [(8, 2.0, 1.0), (16, 3.0, 1.0)]) == 0.0
    never = costs.crossover_work("parallel", [(16, 1.0, 2.0), (32, 1.0, 2.0)])
    assert never == costs.work("parallel", 64, 4, 64, 64)


def test_tune_writes_this_devices_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FLA_COMPILE_COSTS")
    other = {"device": "cuda-sm90", "family": "*", "spelling": "parallel", "min_work": 5}
    (tmp_path / "costs.json").write_text(json.dumps({"entries": [other]}))
    fake = {"parallel": [(16, 1.0, 3.0), (64, 1.0, 2.0), (256, 4.0, 1.0)], "loop": [(8, 2.0, 1.0)]}
    monkeypatch.setattr(bench, "measure", lambda spelling, device: fake[spelling])
    bench.tune_costs("cpu", log=lambda *_: None)
    written = json.loads((tmp_path / "costs.json").read_text())["entries"]
    assert other in written
    mine = {e["spelling"]: e["min_work"] for e in written if e["device"] == "cpu"}
    assert mine == {"parallel": costs.work("parallel", 128, 4, 64, 64), "loop": 0.0}
    # the measured entries win over the package's
    assert costs.lookup("cpu", "retention", "parallel")["min_work"] == mine["parallel"]


def test_cli_tune_costs_only(tmp_path, monkeypatch, capsys):
    from fla_compile import cli

    monkeypatch.setenv("FLA_COMPILE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bench, "measure", lambda spelling, device: [(16, 1.0, 2.0), (64, 3.0, 1.0)])
    assert cli.main(["tune", "--costs-only"]) == 0
    assert "cost table for cpu written" in capsys.readouterr().out
    assert {e["spelling"] for e in json.loads((tmp_path / "costs.json").read_text())["entries"]} == {"parallel", "loop"}


def test_jit_repeated_call_takes_the_fast_path(monkeypatch):
    """A repeated call with the same inputs costs one key and one lookup; a new table or length is
    decided again (the cached choice is tied to the table's token)."""
    fn = fla_compile.jit(retention)
    with costs.use(TABLE):
        for T in (16, 64):
            fn(*inputs(T))
        monkeypatch.setattr(fn, "_key", lambda args: (_ for _ in ()).throw(AssertionError("slow path")))
        for T, ops in ((16, 0), (64, 1)):  # both choices replayed without the slow path
            args = inputs(T)
            out, calls = lowerings(fn, args)
            torch.testing.assert_close(out, retention(*args))
            assert calls == ops, T
        with pytest.raises(AssertionError, match="slow path"):
            fn(*inputs(32))  # a length not seen yet
    with pytest.raises(AssertionError, match="slow path"):
        fn(*inputs(16))  # another table in force: the choice is made again


def test_jit_choice_reads_the_calls_device(monkeypatch):
    """@jit proves on CPU probes; the choice must read the entry of the device the call runs on
    (an H200 run took the CPU entry: the op ran where the code as written was faster)."""
    fn = fla_compile.jit(retention)
    gpu_only = [{"device": "gpu-x", "family": "*", "spelling": "parallel", "min_work": 1e12}]
    with costs.use(gpu_only):
        fn(*inputs(16))  # traced and proven on the CPU
        real = costs.device_kind
        monkeypatch.setattr(costs, "device_kind", lambda d: "gpu-x" if torch.device(d).type == "cpu" else real(d))
        args = inputs(64)
        out, calls = lowerings(fn, args)
        torch.testing.assert_close(out, retention(*args))
        assert calls == 0  # the call's device kind is "gpu-x": kept as written


def test_min_T_keeps_short_sequences_whatever_the_heads():
    """A length bound of its own: many heads raise the work of a short parallel form above min_work, but its
    single chunk is the same matmuls as the op's (CPU, B*H=32 T=64: 0.6 ms as written, 1.6 ms rewritten)."""
    table = [{"device": "cpu", "family": "*", "spelling": "parallel", "min_work": 1, "min_T": 48}]
    with costs.use(table):
        short = costs.kept_reason("retention", "parallel", costs.Shape(T=32, heads=64, K=64, V=64, device="cpu"))
        long = costs.kept_reason("retention", "parallel", costs.Shape(T=48, heads=1, K=8, V=8, device="cpu"))
    assert "crossover length (T=48)" in short
    assert long == ""
    shipped = json.loads((Path(costs.__file__).parent / "costs.json").read_text())["entries"]
    assert all(e.get("min_T", 0) >= 65 for e in shipped if e["spelling"] == "parallel")
