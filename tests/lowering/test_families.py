"""The family table of ``fla_compile.lowering``: every op family has an entry, the ops call its
entry points, and each decode entry agrees with its line's forward (CPU: the torch path)."""

from __future__ import annotations

import importlib

import pytest
import torch

import fla_compile.cli
from fla_compile import lowering
from fla_compile.lowering import FAMILIES


def test_every_op_family_has_one_entry():
    lines = [importlib.import_module(f"fla_compile.ops.{m}") for m in ("gla", "delta")]  # the modules, not the ops
    own = ["rwkv6", "hgrn", "mamba"]  # their own modules: ops/rwkv6.py, ops/hgrn.py, ops/mamba.py
    ops = [spec.name for line in lines for spec in line.SPECS] + own
    assert all(hasattr(torch.ops.fla_compile, name) for name in own)
    assert sorted(FAMILIES) == sorted(ops) == sorted(fla_compile.cli.FAMILIES)
    assert {f.line for f in FAMILIES.values()} == {"gla", "delta", "scan"}


def test_entries_are_data():
    fam = FAMILIES["gla"]
    with pytest.raises(AttributeError):  # frozen
        fam.gate_kind = "none"
    assert fam.forward is lowering.gla_line and fam.backward is lowering.gla_line_backward


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decode_matches_forward(family, monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", "0")
    fam = FAMILIES[family]
    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 3, 2, 8, 4
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    gate = {"none": None, "scalar": -torch.rand(B, T, H, generator=gen)}.get(fam.gate_kind)
    if fam.gate_kind == "vector":
        gate = -torch.rand(B, T, H, K, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen)
    if family == "hgrn":  # x [B, T, D], an elementwise gate, a vector state
        args = (v.flatten(2), -torch.rand(B, T, H * V, generator=gen), h0[:, :, 0].flatten(1))
    elif family == "mamba":  # u, dt [B, T, D], A [D, N], B, C [B, T, N], the state [B, D, N]
        args = (v.flatten(2), torch.rand(B, T, H * V, generator=gen), -torch.rand(H * V, K, generator=gen), q[:, :, 0],
                k[:, :, 0], torch.randn(B, H * V, K, generator=gen))  # fmt: skip
    elif fam.line == "delta":
        beta = torch.rand(B, T, H, generator=gen)
        args = (q, torch.nn.functional.normalize(k, dim=-1), v, beta, gate, fam.gate_kind, K**-0.5, h0)
    else:
        args = (q, k, v, gate, fam.gate_kind, K**-0.5, h0)
    o, ht = fam.forward(*args)
    od, htd = fam.decode(*args)
    torch.testing.assert_close(od, o)
    torch.testing.assert_close(htd, ht)
