"""The rebind path follows what a layer's forward calls, through the wrappers transformers puts around it.

transformers 5.25 (with the ``kernels`` package, one of its dependencies) makes its torch fallbacks
``kernels`` function modules: an ``nn.Module`` whose forward, ``(self, *args, **kwargs)``, declares
the wrapped function's signature and calls it from its closure, so that a hub kernel can replace it.
It also moved the layers' conv behind a module-level ``causal_conv1d_forward`` that calls
``causal_conv1d_fn``. The patch must read the signature through the module, and swap a name that the
forward reaches only through a function of its own module; a function of another module is left
alone. These tests build both shapes without transformers.
"""

from __future__ import annotations

import inspect
import types

import torch

from fla_compile.hf import rebind, signature


def _function_module(func):
    """A stand-in for ``kernels``' function module around ``func`` (its forward declares ``func``'s
    signature, as ``kernels`` 0.19 does)."""

    class Func(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return func(*args, **kwargs)

    Func.forward.__signature__ = inspect.signature(func)
    return Func()


def _layer_module(name: str):
    """A module holding conv_fn, a function-module conv_forward calling it, and a forward calling that."""
    mod = types.ModuleType(name)
    exec(
        "def conv_fn(x, weight, bias=None, activation=None, **kwargs):\n"
        "    return ('theirs', x)\n"
        "def conv_forward(conv, x, cache, layer_idx, **kwargs):\n"
        "    return conv_fn(x, conv, **kwargs)\n"
        "def forward(self, x):\n"
        "    return conv_forward(None, x, None, 0)\n",
        mod.__dict__,
    )
    mod.conv_forward = _function_module(mod.conv_forward)
    return mod


def test_signature_is_read_through_a_function_module():
    def torch_fn(query, key, value, g, beta, chunk_size=64, initial_state=None, **kwargs):
        return query

    func = _function_module(torch_fn)
    assert rebind.innermost(func) is torch_fn

    def ours(query, key, value, g, beta, initial_state=None, cu_seqlens=None, **kwargs):
        return query, initial_state, cu_seqlens

    adapted = signature.adapt(func, ours, ignore=("chunk_size",))
    assert adapted(1, 2, 3, 4, 5, initial_state="s", cu_seqlens="c") == (1, "s", "c")


def test_a_module_with_a_signature_of_its_own_is_not_looked_through():
    """Near miss: a module whose forward takes named parameters is a layer, not a wrapper."""

    def torch_fn(x):
        return x

    class Layer(torch.nn.Module):
        def forward(self, x, scale=1.0):
            return torch_fn(x) * scale

    assert rebind.wrapped(Layer()) is None
    assert rebind.innermost(Layer()).__class__ is Layer


def test_a_name_reached_through_a_function_of_the_same_module_is_swapped():
    mod = _layer_module("fake_modeling_same")
    assert "conv_fn" in rebind.global_names(mod.forward)
    assert rebind.lookup_global(mod.forward, "conv_fn") is mod.conv_fn

    def ours(x, weight, bias=None, activation=None, **kwargs):
        return ("ours", x)

    patched = rebind.rebind_globals(mod.forward, {"conv_fn": ours})
    assert patched(None, 7) == ("ours", 7)
    assert mod.forward(None, 7) == ("theirs", 7)  # nothing global changed
    assert mod.conv_forward(None, 7, None, 0) == ("theirs", 7)


def test_a_function_of_another_module_is_left_alone():
    """Near miss: the callee comes from another module (a library the model imports); its globals are not ours to
    rebind, and the name is not reported as reachable."""
    lib = _layer_module("fake_library")
    mod = types.ModuleType("fake_modeling_other")
    exec("def forward(self, x):\n    return conv_forward(None, x, None, 0)\n", mod.__dict__)
    mod.conv_forward = lib.conv_forward
    assert "conv_fn" not in rebind.global_names(mod.forward)
    assert rebind.lookup_global(mod.forward, "conv_fn") is None
    patched = rebind.rebind_globals(mod.forward, {"conv_fn": lambda *a, **k: ("ours",)})
    assert patched(None, 7) == ("theirs", 7)
