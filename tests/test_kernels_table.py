"""benchmarks/kernels.py's side-by-side table without a GPU: the wall-time ratio, the kernel-time ratio beside it,
a refused FLA row named by its error, and kernel-time rows kept out of the op rows."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kt():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("kernels_table", ROOT / "benchmarks" / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(name, value, note=""):
    return {"row": name, "shape": "B=8", "value": value, "unit": "ms", "note": note}


def test_side_by_side_ratios(kt):
    rows = [
        _row("ours gla fwd", "0.5000"),
        _row("fla gla fwd", "0.7000"),
        _row("ours gla fwd kernels", "0.4000"),
        _row("fla gla fwd kernels", "0.2000"),
        _row("ours simple_gla fwd+bwd", "1.0000"),
        _row("fla simple_gla fwd+bwd", "", "RuntimeError: Triton >= 3.4.0 refused"),
        _row("ours gla decode step", "0.0450"),
    ]
    lines = kt.side_by_side(rows).splitlines()
    assert lines[0].endswith("| FLA / ours, kernel time |")
    body = lines[2:]
    assert body[0] == "| gla fwd | B=8 | 0.5000 | 0.7000 | 1.40 | 0.50 |"
    assert body[1] == "| simple_gla fwd+bwd | B=8 | 1.0000 | RuntimeError |  |  |"
    assert len(body) == 2  # no row for the kernel-time rows themselves, none for decode


def test_tables_from_a_cut_runs_log(kt):
    """A run cut by its limit printed its rows as it went: ``--from-log`` rebuilds both tables from them, and lines
    that are no rows (warm-up lines, a table's header, a traceback) are skipped."""
    log = "\n".join(
        [
            "warm ours gla (8, 2048, 16, 128): 2.0 s ok",
            "| row | shape | value | unit | note |",
            "| --- | --- | --- | --- | --- |",
            "| device copy bandwidth |  | 4.300 | TB/s |  |",
            "| ours gla fwd | B=8 | 0.5000 | ms |  |",
            "| fla gla fwd | B=8 | 0.7000 | ms |  |",
            "| ours gla fwd kernels | B=8 | 0.4000 | ms |  |",
            "| fla gla fwd kernels | B=8 | 0.6000 | ms |  |",
            "| fla gla fwd+bwd | B=8 |  | ms | RuntimeError: refused |",
            "| memory floor gla fwd | B=8 | 0.0936 | ms | bytes of q,k,v,g,o / copy bandwidth |",
            "Traceback (most recent call last):",
        ]
    )
    rows = kt.rows_from_log(log)
    assert [r["row"] for r in rows] == [
        "device copy bandwidth", "ours gla fwd", "fla gla fwd", "ours gla fwd kernels", "fla gla fwd kernels",
        "fla gla fwd+bwd", "memory floor gla fwd",
    ]  # fmt: skip
    assert rows[5]["note"] == "RuntimeError: refused" and rows[5]["value"] == ""
    assert "| gla fwd | B=8 | 0.5000 | 0.7000 | 1.40 | 1.50 |" in kt.side_by_side(rows)


def test_first_call_profile_table(kt, monkeypatch):
    """``--first-call-profile``: per family a bytecode-filling cold call, then per compile-ahead setting a cold and
    a warm call (the compiles' seconds summed by stage, none when warm), all sharing one bytecode prefix; and the
    cold calls' slowest compiles. A family without a first-call form is refused by name."""
    calls = []

    def first_call(cache_dir, family="gla", env=None):
        calls.append((family, env["FLA_COMPILE_AHEAD"], env["PYTHONPYCACHEPREFIX"]))
        cold = len(calls) % 3 != 0
        compiles = [{"kernel": "chunk_fwd_o_kernel", "setup": 0.5, "ttgir": 0.25, "cubin": 0.25},
                    {"kernel": "chunk_cumsum_kernel", "setup": 0.5, "ttgir": 0.0, "cubin": 0.0}] if cold else []  # fmt: skip
        return {"seconds": 12.0 if cold else 1.5, "import": 1.0, "cuda init": 0.5, "fwd": 4.0, "bwd": 6.0,
                "launches": 8.0, "compiles": compiles}  # fmt: skip

    monkeypatch.setattr(kt, "first_call", first_call)
    lines = kt.first_call_profile(["gla", "kda"]).splitlines()
    assert [c[:2] for c in calls] == [("gla", "1")] * 3 + [("kda", "1")] * 3 and len({c[2] for c in calls}) == 1
    assert lines[2] == (
        "| gla | 1 | cold, no bytecode | 12.00 | 1.00 | 0.50 | 4.00 | 6.00 | 8.00 | 2, 1.50 s | "
        "setup 1.00 / ttgir 0.25 / cubin 0.25 |"
    )
    assert lines[3].startswith("| gla | 1 | cold | 12.00 |")
    assert lines[4].startswith("| gla | 1 | warm | 1.50 |") and "| 0, 0.00 s |" in lines[4]
    assert lines[-1] == "kda (1, cold): chunk_fwd_o_kernel 1.00 s, chunk_cumsum_kernel 0.50 s"
    calls.clear()
    kt.first_call_profile(["gla"], ahead=("0", "1"))
    assert [c[1] for c in calls] == ["0", "0", "0", "1", "1"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="family 'mamba'"):
        kt.first_call("/nonexistent", "mamba")
