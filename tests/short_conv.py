"""A Qwen3-Next-like block at toy size, shared by the interpreter and GPU tests of compiled graphs with a conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fla_compile.ops


class ShortConvDelta(torch.nn.Module):
    """A depthwise causal conv makes q, k, v for the gated delta op (L2-normed q, k), as in Qwen3-Next: with a
    convolution in the graph Inductor turns on its layout optimization."""

    def __init__(self, D=32, HK=1, H=2):
        super().__init__()
        self.HK, self.H, self.D = HK, H, D
        C = (2 * HK + H) * D
        self.conv = torch.nn.Conv1d(C, C, 4, groups=C, padding=3)
        self.gate = torch.nn.Linear(C, 2 * H)
        self.out = torch.nn.Linear(H * D, C)

    def forward(self, x):  # x [B, T, C]
        B, T, C = x.shape
        y = F.silu(self.conv(x.transpose(1, 2))[..., :T]).transpose(1, 2)
        q, k, v = y.split([self.HK * self.D, self.HK * self.D, self.H * self.D], -1)
        a, b = self.gate(x).chunk(2, -1)
        o, _ = fla_compile.ops.gated_delta_rule(
            q.reshape(B, T, self.HK, self.D), k.reshape(B, T, self.HK, self.D), v.reshape(B, T, self.H, self.D),
            F.logsigmoid(a) / 4, b.sigmoid(), use_qk_l2norm_in_kernel=True,
        )  # fmt: skip
        return x + self.out(o.flatten(2))
