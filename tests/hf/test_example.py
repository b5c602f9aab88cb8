"""examples/hf_patch.py runs on CPU and reports agreement with transformers' own path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", ["qwen3_next", "mamba2"])
def test_example_runs(arch):
    cmd = [sys.executable, str(ROOT / "examples" / "hf_patch.py"), "--arch", arch, "--hidden", "64", "--seq", "64"]
    cmd += ["--new-tokens", "4", "--repeat", "1", "--threads", "1", "--train"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "layer(s) patched" in out.stdout and "same 4 greedy tokens: True" in out.stdout
    assert "speed-up" in out.stdout and "forward+backward" in out.stdout
