"""normalized_linear_attn: the numerator and the normalizer by one linear_attn call, against an fp64 loop."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile.ops as ops
from tests.compare import rel


def loop(q, k, v, eps, S0=None, z0=None):
    """o_t = S_t^T q_t / (z_t . q_t + eps), S_t = S_{t-1} + k_t v_t^T, z_t = z_{t-1} + k_t (fp64)."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1]) if S0 is None else S0.double().clone()
    z = q.new_zeros(B, H, K) if z0 is None else z0.double().clone()
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / ((z * q[:, t]).sum(-1, keepdim=True) + eps))
    return torch.stack(outs, 1), S, z


def feats(B=2, T=23, H=2, K=8, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (F.elu(torch.randn(B, T, H, K, generator=g)) + 1 for _ in range(2))  # elu + 1 feature map
    return q, k, torch.randn(B, T, H, V, generator=g)


def test_matches_the_loop_with_state_and_gradients():
    q, k, v = feats()
    S0, z0 = torch.rand(2, 2, 8, 5), torch.rand(2, 2, 8)
    o, (S, z) = ops.normalized_linear_attn(q, k, v, eps=1e-3, initial_state=(S0, z0), output_final_state=True)
    ro, rS, rz = loop(q.double(), k.double(), v.double(), 1e-3, S0, z0)
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5 and rel(z, rz) < 1e-5
    xs = [x.double().requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.normalized_linear_attn(a, b, c, eps=0.1)[0], xs)


def test_packed_sequences_restart_the_normalizer():
    q, k, v = feats(B=1, T=30)
    cu = torch.tensor([0, 11, 30])
    o, _ = ops.normalized_linear_attn(q, k, v, cu_seqlens=cu)
    for s, e in [(0, 11), (11, 30)]:
        ro, _, _ = loop(q[:, s:e].double(), k[:, s:e].double(), v[:, s:e].double(), 1e-6)
        assert rel(o[:, s:e], ro) < 1e-5


@pytest.mark.parametrize(
    "kw, match",
    [({"eps": -1.0}, "eps must be"), ({"initial_state": torch.zeros(1)}, "initial_state must be a pair")],
)
def test_bad_input_names_the_argument(kw, match):
    q, k, v = feats()
    with pytest.raises(ValueError, match=f"normalized_linear_attn.*{match}"):
        ops.normalized_linear_attn(q, k, v, **kw)
