"""Autotuning of the GLA-line kernels on the CPU: keys, tables, the disk cache, screening."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fla_compile.lowering.common import autotune
from fla_compile.lowering.gla import tuning


def _interpreting() -> bool:
    """TRITON_INTERPRET is set and was set before triton was imported (else its jit helpers cannot be interpreted)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language.standard as std

    return type(std.cdiv).__name__ == "InterpretedFunction"


INTERPRET = _interpreting()


def test_key_buckets_T_never_exact():
    key = autotune.make_key
    assert key("chunk", "vector", 128, 128, torch.bfloat16, 1000) == key(
        "chunk", "vector", 128, 128, torch.bfloat16, 1024
    )
    assert key("chunk", "vector", 128, 128, torch.bfloat16, 1025) != key(
        "chunk", "vector", 128, 128, torch.bfloat16, 1024
    )
    assert key("chunk", "vector", 128, 128, torch.bfloat16, 10**6) == key(
        "chunk", "vector", 128, 128, torch.bfloat16, 16384
    )
    assert "varlen" in key("chunk", "scalar", 64, 64, torch.float32, None)
    assert autotune.t_bucket(1) == "64" and autotune.t_bucket(None) == "varlen"


@pytest.mark.parametrize("arch", ["sm80", "sm90", "sm100", "default"])
def test_tables(arch):
    t = autotune.table(arch)
    for kind in autotune.KINDS:
        cands = autotune.candidates("chunk", kind, arch)
        assert cands, (arch, kind)
        for c in cands:
            assert c["BT"] % 16 == 0 and c["BT"] <= 64 and c["BK"] >= 16 and c["BV"] >= 16
            assert c["BK"] & (c["BK"] - 1) == 0 and c["BV"] & (c["BV"] - 1) == 0
    assert all(c["BV"] & (c["BV"] - 1) == 0 for c in t["decode"])


def test_cpu_uses_default():
    cfg = autotune.get_config("chunk", "vector", 64, 64, torch.float32, 2048, torch.device("cpu"))
    assert cfg == autotune.candidates("chunk", "vector", "default")[0]


def test_cache_roundtrip(tmp_path, monkeypatch):
    """Tuned once, written to disk; a fresh process (forget) reads it back and tunes nothing."""
    monkeypatch.setenv("FLA_COMPILE_CACHE_DIR", str(tmp_path))
    path = autotune.cache_dir() / "gla-test.json"
    calls = []

    def tune_fn():
        calls.append(1)
        return {"BT": 32, "BK": 32, "BV": 32}

    def get(allowed=True):
        return autotune.lookup("k1", path, lambda: allowed, lambda: {"default": True}, tune_fn)

    autotune.forget()
    try:
        assert get(allowed=False) == {"default": True} and not calls  # e.g. during CUDA-graph capture
        assert get() == {"BT": 32, "BK": 32, "BV": 32} and len(calls) == 1
        assert json.loads(path.read_text()) == {"k1": {"BT": 32, "BK": 32, "BV": 32}}
        autotune.forget()
        assert get() == {"BT": 32, "BK": 32, "BV": 32} and len(calls) == 1
    finally:
        autotune.forget()


def test_tune_picks_fastest_screened(monkeypatch):
    cands = [{"BT": 64, "id": 0}, {"BT": 32, "id": 1}, {"BT": 16, "id": 2}]
    monkeypatch.setattr(autotune, "arch_of", lambda device: "sm90")
    monkeypatch.setattr(autotune, "candidates", lambda *a: cands)
    monkeypatch.setattr(tuning, "screen", lambda *a: "wrong" if a[5]["id"] == 2 else None)
    monkeypatch.setattr(tuning, "_time", lambda *a: {0: 2.0, 1: 1.0, 2: 0.1}[a[6]["id"]])
    assert tuning.tune("chunk", "vector", 64, 64, torch.bfloat16, 2048, None)["id"] == 1


@pytest.mark.skipif(not INTERPRET, reason="screens through the Triton interpreter")
def test_screen_rejects_wrong_and_nondeterministic(monkeypatch):
    from fla_compile.lowering.gla import triton_launch as gla_triton

    cfg = {"BT": 16, "BK": 16, "BV": 16}
    cpu = torch.device("cpu")
    assert tuning.screen("chunk", "scalar", 16, 16, torch.float32, cfg, cpu, T=20) is None
    assert tuning.screen("decode", "vector", 16, 16, torch.float32, {"BV": 16}, cpu, T=5) is None

    real = gla_triton.chunk_forward
    monkeypatch.setattr(gla_triton, "chunk_forward", lambda *a, **kw: (real(*a, **kw)[0] * 1.01, real(*a, **kw)[1]))
    assert "relative error" in tuning.screen("chunk", "scalar", 16, 16, torch.float32, cfg, cpu, T=20)

    def noisy(*a, **kw):
        o, ht = real(*a, **kw)
        return o + 1e-9 * torch.randn_like(o), ht

    monkeypatch.setattr(gla_triton, "chunk_forward", noisy)
    assert "not deterministic" in tuning.screen("chunk", "scalar", 16, 16, torch.float32, cfg, cpu, T=20)


@pytest.mark.skipif(not INTERPRET, reason="screens through the Triton interpreter")
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "op_forward"])
def test_screen_under_no_grad(mode):
    """Tuning starts at the first call of a key inside the op's forward, often under no_grad (generation);
    an autograd.Function's forward (the custom op's, when inputs require grad) runs without grad too. The
    screening's reference gradients must not depend on the caller's mode, which it leaves as it was."""
    cfg = {"BT": 16, "BK": 16, "BV": 16}
    results = []

    def run():
        results.append(tuning.screen("chunk", "scalar", 16, 16, torch.float32, cfg, torch.device("cpu"), T=20))
        results.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

    if mode == "op_forward":

        class Op(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                run()
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 2

        Op.apply(torch.ones(2, requires_grad=True))
    else:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            run()
    assert results == [None, (False, mode == "inference_mode")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_screen_under_no_grad_cuda():
    """As on the CPU, with the arch's own candidates: every one that passes with autograd passes without."""
    device = torch.device("cuda")
    for cfg in autotune.candidates("chunk", "vector", autotune.arch_of(device))[:2]:
        with_grad = tuning.screen("chunk", "vector", 64, 64, torch.bfloat16, cfg, device)
        with torch.no_grad():
            assert tuning.screen("chunk", "vector", 64, 64, torch.bfloat16, cfg, device) == with_grad, cfg


def test_cli_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    out = subprocess.run([sys.executable, "-m", "fla_compile", "tune", "--dims", "64"], capture_output=True, text=True)
    assert out.returncode == 1 and "no CUDA" in out.stderr
    assert tuning.tune_main(["--dims", "64"]) == 1


def test_tune_returns_none_when_nothing_survives(monkeypatch):
    """No survivor: tune says so, lookup returns the default and stores nothing."""
    monkeypatch.setattr(autotune, "arch_of", lambda device: "sm90")
    monkeypatch.setattr(autotune, "candidates", lambda *a: [{"BT": 64, "id": 0}])
    monkeypatch.setattr(tuning, "screen", lambda *a: "wrong")
    assert tuning.tune("chunk", "vector", 64, 64, torch.bfloat16, 2048, None) is None


def test_lookup_stores_nothing_without_survivor(tmp_path):
    path = tmp_path / "gla-test.json"
    autotune.forget()
    try:
        got = autotune.lookup("k1", path, lambda: True, lambda: {"default": True}, lambda: None)
        assert got == {"default": True} and not path.exists()
    finally:
        autotune.forget()


def test_shipped_table_tunes_nothing_on_first_calls(monkeypatch):
    """sm90 ships measured winners ("tuned": true): a first call takes them unless FLA_COMPILE_AUTOTUNE=1."""
    assert autotune.table("sm90").get("tuned") is True
    monkeypatch.setattr(autotune, "arch_of", lambda device: "sm90")
    monkeypatch.setattr(autotune, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    cuda = torch.device("cuda")
    monkeypatch.delenv("FLA_COMPILE_AUTOTUNE", raising=False)
    assert not autotune._tuning_allowed(cuda)
    monkeypatch.setenv("FLA_COMPILE_AUTOTUNE", "1")
    assert autotune._tuning_allowed(cuda)
    monkeypatch.setenv("FLA_COMPILE_AUTOTUNE", "0")
    assert not autotune._tuning_allowed(cuda)
    monkeypatch.delenv("FLA_COMPILE_AUTOTUNE")
    monkeypatch.setattr(autotune, "arch_of", lambda device: "sm80")  # no shipped winners there
    assert autotune._tuning_allowed(cuda)


def test_no_tuning_inside_cuda_graph_capture(tmp_path, monkeypatch):
    """During capture a new key gets the default, even where tuning is allowed, and nothing is stored;
    ``tune`` itself refuses. Capture is simulated (the CPU has no CUDA graphs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    path = tmp_path / "gla-capture.json"
    tuned = []
    autotune.forget()
    try:
        got = autotune.lookup("k1", path, lambda: True, lambda: {"default": True}, lambda: tuned.append(1) or {"x": 1})
        assert got == {"default": True} and not tuned and not path.exists()
        with pytest.raises(RuntimeError, match="inside CUDA-graph capture"):
            tuning.tune("decode", "scalar", 64, 64, torch.bfloat16, 1, torch.device("cuda"))
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # the same call, not capturing
        got = autotune.lookup("k1", path, lambda: True, lambda: {"default": True}, lambda: tuned.append(1) or {"x": 1})
        assert got == {"x": 1} and tuned == [1] and path.exists()
    finally:
        autotune.forget()


def test_get_config_remembers_final_answers(monkeypatch, tmp_path):
    """A small op calls get_config on every call: once an answer is final (a winner, or the default where
    tuning is off) the next call is a dict lookup; a default taken inside a capture is not remembered, and
    a changed FLA_COMPILE_AUTOTUNE or forget() asks again."""
    monkeypatch.setattr(autotune, "arch_of", lambda device: "sm90")
    monkeypatch.setattr(autotune, "_cache_name", lambda index: "memo-test.json")
    monkeypatch.setattr(autotune, "_interpreting", lambda: False)
    monkeypatch.setenv("FLA_COMPILE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FLA_COMPILE_AUTOTUNE", raising=False)
    capturing = [False]
    monkeypatch.setattr(autotune, "capturing", lambda: capturing[0])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    calls = []
    real = autotune.lookup
    monkeypatch.setattr(autotune, "lookup", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    autotune.forget()
    cuda = torch.device("cuda", 0)
    args = ("chunk", "scalar", 128, 128, torch.bfloat16, 2048, cuda)
    capturing[0] = True
    assert autotune.get_config(*args) == autotune.candidates("chunk", "scalar", "sm90", 128, 128)[0]
    capturing[0] = False
    first = autotune.get_config(*args)
    assert autotune.get_config(*args) is first and len(calls) == 2  # the capture's answer was asked again, once
    monkeypatch.setenv("FLA_COMPILE_AUTOTUNE", "0")
    autotune.get_config(*args)
    assert len(calls) == 3
    autotune.forget()
    autotune.get_config(*args)
    assert len(calls) == 4
    autotune.forget()


@pytest.mark.parametrize("arch", ["sm80", "sm90", "sm100", "default"])
def test_by_dims_tables(arch):
    """Every ``by_dims`` entry names head dims, a known gate kind and options the launchers read: a misspelt
    option would be dropped without a word and the kernel would run the shared default."""
    import re

    from fla_compile.lowering.delta import triton_launch as DT

    kernels = ("h", "o", "dh", "dv", "dqk", "A", "intra", "rc", "cumsum", "walk")
    names = "|".join(kernels)
    option = re.compile(
        rf"({names})(_head)?_(warps|stages|BV|BK|maxnreg)|(o|dv|dqk)(_head)?_heads_inner|(fwd|bwd)_scan"
        r"|(h|dh)_fill(_head)?_(warps|stages|maxnreg|decay_rows)|(h|dh)(_head)?_fill_per_sm|fwd_walk|walk_fill"
        r"|intra_factored|o(_head|_bonus|_fp32|_seg)?_v_early|o_(bonus|fp32|seg)_(warps|stages|BV|BK|maxnreg)"
        r"|h_seg_(heads|min|chunks)"
    )
    for dims, entry in autotune.table(arch).get("by_dims", {}).items():
        if dims == "_comment":
            continue
        assert re.fullmatch(r"K\d+V\d+", dims), dims
        assert set(entry) <= {"chunk", "delta"}, entry
        for kind, opts in entry.get("chunk", {}).items():
            assert kind in autotune.KINDS, kind
            assert all(option.fullmatch(name) for name in opts), opts
        assert set(entry.get("delta", {})) <= set(DT._DEFAULTS), entry["delta"]


def test_by_dims_first_candidate_only():
    """sm90 ships 4-warp output kernels at K = V = 64 and a capped state-gradient pass at K = V = 128; dims without
    an entry keep the shared first candidate, the rest of the candidate list is untouched, and the table itself is
    not mutated by the merge."""
    wide = autotune.candidates("chunk", "scalar", "sm90", 128, 128)
    narrow = autotune.candidates("chunk", "scalar", "sm90", 64, 64)
    shared = autotune.table("sm90")["chunk"]["scalar"][0]
    assert (
        autotune.candidates("chunk", "scalar", "sm90")[0]
        == shared
        == autotune.candidates("chunk", "scalar", "sm90", 256, 128)[0]
    )
    walk = {"fwd_walk": True, "walk_BV": 64, "walk_warps": 4, "walk_stages": 2, "walk_fill": 0.7}
    fill = dict(h_fill_head_stages=4, h_fill_decay_rows=True, h_fill_per_sm=2, h_fill_warps=4, h_fill_stages=4)
    fill.update(h_head_fill_per_sm=1, h_fill_head_warps=8, h_fill_head_decay_rows=False)
    fill.update(dh_fill_per_sm=2, dh_fill_warps=4, dh_head_fill_per_sm=1, dh_fill_head_warps=8)
    assert wide[0] == {**shared, "dh_maxnreg": 128, "dqk_head_stages": 2, **fill, **walk} and "dh_maxnreg" not in shared
    assert wide[0]["o_warps"] == 8 and narrow[0]["o_warps"] == 4 and narrow[0]["o_stages"] == 2
    assert narrow[1:] == wide[1:]
    assert autotune.candidates("chunk", "vector", "sm90", 64, 32)[0] == autotune.table("sm90")["chunk"]["vector"][0]


def test_by_dims_delta_launch_options(monkeypatch):
    """The delta line's launch options at K = V = 64 on sm90 take the ``by_dims`` output kernel's warps and register
    cap; the other knobs, other dims and the no-dims lookup (decode, L2 norm) keep the arch's."""
    from fla_compile.lowering.delta import triton_launch as DT

    monkeypatch.setattr(DT, "_arch", lambda device_type, index: "sm90")
    DT._device_table.cache_clear()
    try:
        dev = torch.device("cuda", 0)
        assert DT._opts("o", dev, (64, 64, torch.bfloat16)) == {"num_warps": 4, "num_stages": 2, "maxnreg": 128}
        assert DT._opts("o", dev, (128, 128, torch.bfloat16)) == DT._opts("o", dev) == {"num_warps": 8, "num_stages": 3}
        assert DT._opts("wu", dev, (64, 64, torch.bfloat16)) == DT._opts("wu", dev)
        monkeypatch.setattr(DT, "OVERRIDES", {"o": (2, 1)})  # a sweep's override still wins
        assert DT._opts("o", dev, (64, 64, torch.bfloat16)) == {"num_warps": 2, "num_stages": 1}
    finally:
        DT._device_table.cache_clear()


def test_heads_inner_from_the_tables(monkeypatch):
    """The parallel chunk kernels' launch order is each line's table's: on sm90 the delta line and vector gates run a
    chunk's heads side by side ("heads_inner"), scalar gates and other archs the 3-D grid; ``chunks.HEADS_INNER``
    forces one order over every table."""
    from fla_compile.lowering.common import chunks
    from fla_compile.lowering.delta import triton_launch as DT

    assert autotune.candidates("chunk", "vector", "sm90")[0].get("heads_inner") is True
    assert not autotune.candidates("chunk", "scalar", "sm90")[0].get("heads_inner", False)
    assert not any(c.get("heads_inner", False) for c in autotune.candidates("chunk", "vector", "default"))
    assert DT._knob("heads_inner", torch.device("cpu")) is False
    monkeypatch.setattr(DT, "_arch", lambda device_type, index: "sm90")
    DT._device_table.cache_clear()
    try:
        assert DT._knob("heads_inner", torch.device("cuda", 0), (128, 128, torch.bfloat16)) is True
    finally:
        DT._device_table.cache_clear()
    assert chunks.chunk_grid(3, 2, 4, True) == ((24,), {"HEADS_INNER": True})
    assert chunks.chunk_grid(3, 2, 4, False) == ((3, 2, 4), {})
    monkeypatch.setattr(chunks, "HEADS_INNER", False)
    assert chunks.chunk_grid(3, 2, 4, True) == ((3, 2, 4), {})


def test_register_cap_option():
    """``<kernel>_maxnreg`` in a config launches that kernel with Triton's register cap; without it, none."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    cfg = {"num_warps": 4, "num_stages": 2, "o_warps": 4, "o_maxnreg": 128}
    assert gla_triton._opts(cfg, "o") == {"num_warps": 4, "num_stages": 2, "maxnreg": 128}
    assert "maxnreg" not in gla_triton._opts(cfg, "dv")


def test_head_decay_options():
    """One decay per head (gid 3) reads ``<kernel>_head_<option>`` before ``<kernel>_<option>``; the other gates
    never read the head form, so a scalar gate's kernel keeps its own options in the shared scalar table."""
    from fla_compile.lowering.gla import triton_launch as gla_triton

    cfg = {"num_warps": 4, "num_stages": 2, "dqk_head_maxnreg": 168, "dqk_warps": 8, "o_maxnreg": 128,
           "o_head_heads_inner": False, "o_heads_inner": True}  # fmt: skip
    assert gla_triton._opts(cfg, "dqk", 3) == {"num_warps": 8, "num_stages": 2, "maxnreg": 168}
    for gid in (None, 0, 1, 2):
        assert gla_triton._opts(cfg, "dqk", gid) == {"num_warps": 8, "num_stages": 2}
        assert gla_triton._heads_inner(cfg, "o", gid) is True
    assert gla_triton._opts(cfg, "o", 3)["maxnreg"] == 128  # no head form: the kernel's own
    assert gla_triton._heads_inner(cfg, "o", 3) is False
    sm90 = autotune.candidates("chunk", "scalar", "sm90", 64, 64)[0]
    assert gla_triton._opts(sm90, "dqk", 3)["maxnreg"] == 168 and "maxnreg" not in gla_triton._opts(sm90, "dqk", 1)


def test_sm90_segments():
    """sm90 segments the vector gate's forward state pass for few long sequences only (``h_seg_*``, measured on the
    H200, thirtieth session): 128 sequences x heads x segments, segments of 32 chunks or more, from 2 segments at
    K = V = 64 and from 4 at 128; the issue shapes with 128 sequences x heads, and short sequences, keep one."""
    import torch

    from fla_compile.lowering.gla import triton_launch as L

    bf16 = torch.bfloat16
    for D, want in (
        (64, {(2, 8192): 4, (1, 8192): 4, (1, 32768): 8, (2, 4096): 2}),
        (128, {(2, 8192): 4, (2, 4096): 1}),
    ):
        cfg = autotune.candidates("chunk", "vector", "sm90", D, D)[0]
        for (B, T), S in {**want, (8, 2048): 1, (4, 2048): 1, (1, 2048): 1}.items():
            assert L._segments(cfg, B, T, 16, cfg["BT"], None, bf16)[0] == S, (D, B, T)
    for kind in ("none", "scalar"):  # measured slower at K = V = 128, host-bound at 64: not from the table
        for D in (64, 128):
            cfg = autotune.candidates("chunk", kind, "sm90", D, D)[0]
            assert L._segments(cfg, 1, 32768, 16, cfg["BT"], None, bf16) == (1, 512)
