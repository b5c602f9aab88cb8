"""benchmarks/train_throughput.py without running a model: row 1's block on ``fla``, and a failed row
still printing (the table and the targets). The runs themselves take minutes (see its docstring)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tt():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_row_1_cannot_import_fla(tt):
    block = tt._BlockFla()
    for name in ("fla", "fla.ops.gated_delta_rule"):
        with pytest.raises(ModuleNotFoundError, match="blocked"):
            block.find_spec(name)
    assert block.find_spec("flax") is None and block.find_spec("fla_compile") is None


def test_a_failed_row_is_a_row_and_targets_say_why(tt):
    ok = dict(status="ok", step_ms=10.0, peak_GiB=4.0, first_s=1.0, loss=6.9)
    rows = [
        dict(arch="qwen3_next", row="1", name="hf", tok_s=1000.0, **{**ok, "peak_GiB": 8.0}),
        dict(arch="qwen3_next", row="2", name="hf+fla", status="fails: RuntimeError: no backward"),
        dict(arch="qwen3_next", row="4", name="compiled", tok_s=6000.0, fused_loss="yes", **ok),
    ]
    table = tt.table(rows)
    assert "| qwen3_next | 2 hf+fla | fails: RuntimeError: no backward | - |" in table
    targets = tt.targets(rows)
    assert "row 4 / row 1: 6.00x tokens/s, peak memory / 2.00 (target >= 5x)" in targets
    assert "row 4 / row 2: - (row 2: fails: RuntimeError: no backward; row 4: ok)" in targets
