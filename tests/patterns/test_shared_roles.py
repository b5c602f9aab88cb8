"""Loop roles read with fewer dims than the state has (held_out_4's misses, forty-third session).

- Mamba2's per-token path with one group: B_t and C_t [B, N] are shared by every head, written
  ``Bm[:, t, None, None, :]`` against the state [B, H, P, N]. The role is the value without the head axis, broadcast
  along it (``verify._inserts``; an inner axis only, never the batch: B == H is checked too).
- RWKV-LM's bonus ``u.view(1, H, K, 1)``: a leading 1 is no batch dim of u's own.
Each beside a look-alike that stays as written.
"""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel


def mamba2_token_loop(x, dt_raw, A_log, Bm, Cm, squash=False):
    """x [b, l, h, p]; dt_raw [b, l, h]; A_log [h]; Bm, Cm [b, l, n] (one group). ``squash``: a tanh on the state
    before the read-out (no recurrence op computes it)."""
    b, l, h, p = x.shape
    dt = F.softplus(dt_raw)
    A = -torch.exp(A_log)
    state = x.new_zeros(b, h, p, Bm.shape[-1])
    ys = torch.empty_like(x)
    for t in range(l):
        dA = torch.exp(dt[:, t] * A)
        dBx = (dt[:, t, :, None] * x[:, t])[..., None] * Bm[:, t, None, None, :]
        state = state * dA[..., None, None] + dBx
        read = torch.tanh(state) if squash else state
        ys[:, t] = torch.matmul(read, Cm[:, t, None, :, None]).squeeze(-1)
    return ys


def mamba2_squashed(x, dt_raw, A_log, Bm, Cm):
    return mamba2_token_loop(x, dt_raw, A_log, Bm, Cm, squash=True)


def rwkv_lm_wkv(r, k, v, w_raw, u, bonus_on_state=False):
    """RWKV-LM's plain-torch WKV: k as [B, H, K, T] columns, u.view(1, H, K, 1). ``bonus_on_state``: the bonus
    scales the carried state instead of the step's k v^T (not rwkv6)."""
    B, T, H, K = r.shape
    r_, v_ = r.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    k_ = k.permute(0, 2, 3, 1)
    w = torch.exp(-torch.exp(w_raw)).permute(0, 2, 3, 1)
    bonus = u.view(1, H, K, 1)
    s = r.new_zeros(B, H, K, v.shape[-1])
    out = r.new_zeros(B, H, T, v.shape[-1])
    for t in range(T):
        at = k_[:, :, :, t : t + 1] @ v_[:, :, t : t + 1, :]
        read = (at + bonus * s) if bonus_on_state else (bonus * at + s)
        out[:, :, t] = (r_[:, :, t : t + 1, :] @ read).squeeze(2)
        s = at + w[:, :, :, t : t + 1] * s
    return out.permute(0, 2, 1, 3)


def rwkv_bonus_on_state(r, k, v, w_raw, u):
    return rwkv_lm_wkv(r, k, v, w_raw, u, bonus_on_state=True)


def _mamba2_inputs(b=2, h=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 6, h, 3, generator=g)
    dt_raw = torch.randn(b, 6, h, generator=g) - 1
    A_log = torch.randn(h, generator=g) * 0.3
    Bm, Cm = (torch.randn(b, 6, 4, generator=g) for _ in range(2))
    return [t.requires_grad_() for t in (x, dt_raw, A_log, Bm, Cm)]


def _rwkv_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(2, 6, 3, 4, generator=g) for _ in range(2))
    v = torch.randn(2, 6, 3, 5, generator=g)
    w_raw = torch.randn(2, 6, 3, 4, generator=g) * 0.5 - 1
    u = torch.randn(3, 4, generator=g)
    return [t.requires_grad_() for t in (r, k, v, w_raw, u)]


def _run(fn, args):
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    ref = fn(*args)
    assert rel(out, ref) < 1e-5
    g1 = torch.autograd.grad(out.sum(), args)
    g2 = torch.autograd.grad(ref.sum(), args)
    for a, b in zip(g1, g2):
        assert rel(a, b) < 1e-5
    return [m.family for m in report.matches], report


@pytest.mark.parametrize("b,h", [(2, 3), (2, 2)], ids=["B2_H3", "B2_H2"])
def test_mamba2_token_loop_with_shared_b_and_c(b, h):
    fams, report = _run(mamba2_token_loop, _mamba2_inputs(b, h))
    assert fams == ["simple_gla"], str(report)


def test_mamba2_token_loop_squashed_is_left_as_written():
    fams, _ = _run(mamba2_squashed, _mamba2_inputs())
    assert fams == []


def test_rwkv_lm_bonus_as_a_column():
    fams, report = _run(rwkv_lm_wkv, _rwkv_inputs())
    assert fams == ["rwkv6"], str(report)


def test_rwkv_bonus_on_the_state_is_left_as_written():
    fams, _ = _run(rwkv_bonus_on_state, _rwkv_inputs(1))
    assert "rwkv6" not in fams
