"""Pieces shared by the bindings: packed-sequence metadata, the causal conv1d, probe helpers.

Everything here is plain torch on whatever device the tensors live on, with no host syncs:
packed-sequence metadata is derived with tensor ops (``searchsorted``) or, where its size is
data dependent, inside one small custom op whose fake impl returns an unbacked size, so that
``torch.compile(fullgraph=True)`` sees no graph break.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..numerics import rel_err

# ---------------------------------------------------------------------------------------------
# packed sequences
# ---------------------------------------------------------------------------------------------

# names under which transformers (FlashAttentionKwargs, DataCollatorWithFlattening) and
# flash-linear-attention pass packed-sequence offsets down to a layer
CU_SEQLENS_KEYS = ("cu_seqlens", "cu_seq_lens_q")


@torch.library.custom_op("fla_compile_hf::cu_seqlens_from_seq_idx", mutates_args=())
def cu_seqlens_from_seq_idx(seq_idx: torch.Tensor) -> torch.Tensor:
    """[1, T] (or [T]) sequence index per token -> int32 offsets [N + 1] of the runs of equal index."""
    s = seq_idx.reshape(-1)
    start = torch.ones_like(s, dtype=torch.bool)
    start[1:] = s[1:] != s[:-1]
    first = torch.nonzero(start).flatten()
    return torch.cat([first, first.new_full((1,), s.numel())]).to(torch.int32)


@cu_seqlens_from_seq_idx.register_fake
def _(seq_idx):
    n = torch.library.get_ctx().new_dynamic_size(min=2)  # N + 1 offsets of N >= 1 sequences
    return seq_idx.new_empty(n, dtype=torch.int32)


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """Offsets [N + 1] -> sequence index of each of the T packed tokens, [1, T] int64 (no host sync)."""
    pos = torch.arange(T, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True).unsqueeze(0)


def packed_cu_seqlens(kwargs: dict, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor | None:
    """The packed-sequence offsets a layer was given, under any of the names in use, else None."""
    if cu_seqlens is not None:
        return cu_seqlens
    for key in CU_SEQLENS_KEYS:
        if kwargs.get(key) is not None:
            return kwargs[key]
    if kwargs.get("seq_idx") is not None:
        return cu_seqlens_from_seq_idx(kwargs["seq_idx"])
    return None


def packed_seq_idx(kwargs: dict, T: int) -> torch.Tensor | None:
    """Sequence index per token [B, T] for packed inputs (from ``seq_idx`` or offsets), else None."""
    if kwargs.get("seq_idx") is not None:
        return kwargs["seq_idx"]
    for key in CU_SEQLENS_KEYS:
        if kwargs.get(key) is not None:
            return seq_idx_from_cu_seqlens(kwargs[key], T)
    return None


# ---------------------------------------------------------------------------------------------
# causal depthwise conv1d (the short convolution in front of every layer kind but lightning)
# ---------------------------------------------------------------------------------------------


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(f"fla_compile.hf: unsupported conv1d activation {activation!r}")


def causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, seq_idx=None, **kwargs):
    """y_t = act(bias + sum_d w[:, W-1-d] x_{t-d}), x: [B, D, T], weight: [D, W].

    With packed sequences (``seq_idx`` [B, T], or ``cu_seqlens`` / ``cu_seq_lens_q`` offsets) a tap
    never reads a token of another sequence: y_t only sums over x_{t-d} with seq(t-d) == seq(t).
    Computes in the weight's dtype and returns the input's, like transformers' torch path.
    """
    B, D, T = hidden_states.shape
    W = weight.shape[-1]
    x = hidden_states.to(weight.dtype)
    seq_idx = packed_seq_idx({**kwargs, "seq_idx": seq_idx}, T)
    if seq_idx is None:
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=W - 1, groups=D)[..., :T]
    else:
        out = x * weight[:, W - 1 : W]
        for d in range(1, min(W, T + 1)):
            same = F.pad(seq_idx, (d, 0), value=-1)[..., :T] == seq_idx  # [B, T]: x_{t-d} in t's sequence
            out = out + F.pad(x, (d, 0))[..., :T] * weight[:, W - 1 - d : W - d] * same[:, None, :].to(x.dtype)
        if bias is not None:
            out = out + bias[:, None]
    return _activate(out, activation).to(hidden_states.dtype)


def causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None, **kwargs):
    """Decode steps: x [B, D, T] continues ``conv_state`` [B, D, S] (updated in place to its last S inputs)."""
    D, T = hidden_states.shape[1:]
    S = conv_state.shape[-1]
    full = torch.cat([conv_state, hidden_states], dim=-1).to(weight.dtype)
    conv_state.copy_(full[..., -S:])
    out = F.conv1d(full, weight.unsqueeze(1), bias, padding=0, groups=D)[..., -T:]
    return _activate(out, activation).to(hidden_states.dtype)


def dense(*tensors):
    """The op inputs as contiguous tensors (transformers hands over split/transposed views).

    The ops' kernels read dense [B, T, H, D] rows, and their backward returns dense gradients;
    under torch.compile a copy here fuses into the producer.
    """
    return tuple(t.contiguous() for t in tensors)


def no_fused_path(*args, **kwargs):
    """Stands in for a fused 'whole layer' kernel the layer may try first: None runs its unfused path."""
    return None


# ---------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------

PROBE_TOL = 1e-4


def fp32_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` in fp32, for the proofs.

    Layers that keep their decoding state as plain attributes (RecurrentGemma's ``recurrent_states``,
    ``conv1d_state``) hold, after a forward with grad, tensors inside an autograd graph, which
    ``copy.deepcopy`` refuses; the copy gets them detached.
    """
    memo = {}
    for m in module.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(module, memo).float()


def generator(device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(0)
    return g


def randn(gen, *shape, device, scale=1.0):
    return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` (ours behind the adapter with the original's signature) takes ``name``: the
    packed-sequence part of a probe only runs where the installed transformers can pass offsets."""
    from .signature import takes

    return takes(fn, name)


def conv_probe(original, ours, device) -> float:
    """Prefill conv: dense, with bias, and packed (against the original run per sequence)."""
    gen = generator(device)
    x, w, b = randn(gen, 2, 12, 9, device=device), randn(gen, 12, 4, device=device), randn(gen, 12, device=device)
    errs = [rel_err(ours(x, w, b, activation="silu"), original(x, w, b, activation="silu"))]
    errs.append(rel_err(ours(x, w, None, activation=None), original(x, w, None, activation=None)))
    if not accepts(ours, "cu_seq_lens_q"):
        return max(errs)
    cu = torch.tensor([0, 4, 9], device=device, dtype=torch.int32)
    xp = x[:1]
    ref = torch.cat([original(xp[..., s:e], w, b, activation="silu") for s, e in ((0, 4), (4, 9))], -1)
    errs.append(rel_err(ours(xp, w, b, activation="silu", cu_seq_lens_q=cu), ref))
    errs.append(rel_err(ours(xp, w, b, activation="silu", seq_idx=seq_idx_from_cu_seqlens(cu, 9)), ref))
    return max(errs)


def conv_update_probe(original, ours, device) -> float:
    gen = generator(device)
    x, w, b = randn(gen, 2, 12, 1, device=device), randn(gen, 12, 4, device=device), randn(gen, 12, device=device)
    state = randn(gen, 2, 12, 4, device=device)
    s_ref, s_ours = state.clone(), state.clone()
    ref = original(x, s_ref, w, b, "silu")
    out = ours(x, s_ours, w, b, "silu")
    return max(rel_err(out, ref), rel_err(s_ours, s_ref))


def state_update_err(original, ours, state, args, z, dt_bias) -> float:
    """Worst rel err of a selective-state-update step (Mamba1's and Mamba2's decode step): output and the
    state it updates in place, with and without the z gate, each side on its own copy of ``state``."""
    errs = []
    for zz in (None, z):
        s_ref, s_ours = state.clone(), state.clone()
        ref = original(s_ref, *args, z=zz, dt_bias=dt_bias, dt_softplus=True)
        out = ours(s_ours, *args, z=zz, dt_bias=dt_bias, dt_softplus=True)
        errs += [rel_err(out, ref), rel_err(s_ours, s_ref)]
    return max(errs)
