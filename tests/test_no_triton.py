"""The library imports and runs its torch path without Triton (not a runtime dependency).

Triton is installed where the tests run (the interpreter tests need it), so a child process
hides it: a meta-path finder in front of every other one refuses ``triton`` and its submodules,
as if it were not installed. The child imports fla_compile, runs the ops forward and backward,
a ``torch.compile(backend="fla")`` of a tiny loop and ``@fla_compile.jit``, and checks that no
Triton module was ever loaded.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTriton())
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not hide triton")

    import torch
    import torch.nn.functional as F

    import fla_compile
    import fla_compile.hf  # noqa: F401

    torch.manual_seed(0)
    B, T, H, D = 1, 16, 2, 8
    q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
    gk = F.logsigmoid(torch.randn(B, T, H, D))
    o, ht = fla_compile.ops.gla(q, k, v, gk, output_final_state=True)
    o.sum().backward()
    assert q.grad is not None and ht.shape == (B, H, D, D)
    beta = torch.rand(B, T, H)
    g = F.logsigmoid(torch.randn(B, T, H))
    o, _ = fla_compile.ops.gated_delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, g, beta)
    o.sum().backward()

    def loop(q, k, v):
        S = q.new_zeros(B, H, D, D)
        outs = []
        for t in range(T):
            S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        return torch.stack(outs, 1)

    q, k, v = (x.detach() for x in (q, k, v))
    ref = loop(q, k, v)
    torch._dynamo.reset()
    out = torch.compile(loop, backend="fla")(q, k, v)
    assert (out - ref).abs().max() < 1e-4, (out - ref).abs().max()
    report = fla_compile.explain(loop, q, k, v)
    assert report.matches, str(report)
    out = fla_compile.jit(loop)(q, k, v)
    assert (out - ref).abs().max() < 1e-4

    loaded = sorted(m for m in sys.modules if m == "triton" or m.startswith("triton."))
    assert not loaded, loaded
    print("ok without triton")
    """
)


def test_runs_without_triton():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    env.pop("FLA_COMPILE_TRITON", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ok without triton" in proc.stdout
