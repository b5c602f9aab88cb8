"""Decode-step sweep (CUDA): one token per sequence, B=64 H=16 K=V=128 bf16, the state updated in place.

    python benchmarks/sweep_decode.py

For each GLA-line family, the fused recurrent kernel's time for every (BV, num_warps) in the sweep, next to
the step's memory floor (the fp32 state read and written once, at the measured copy bandwidth); then the
delta line's decode step (delta_rule, gated_delta_rule, kda): its shipped options, then every (BV, num_warps)
with its output's relative difference from the shipped options' ("diff", from a zero state). The best GLA-line
entry per gate kind is what ``lowering/common/configs/sm90.json``'s first "decode" entry should be; the delta
line's best goes into its "delta" section as "decode": [num_warps, 3] and "BV_decode".

    python benchmarks/sweep_decode.py --shipped

The delta line's shipped decode step alone, three readings per family in two orders (a process's first reading
can be 1.5x the rest: the twelfth session's one gated_delta_rule row of 0.0668 ms was that).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kernels import DELTA_GATES, bench, copy_bandwidth, delta_decode_step  # noqa: E402

B, H, D = 64, 16, 128
GATES = {"linear_attn": "none", "retention": "scalar", "simple_gla": "scalar", "gla": "vector"}


def shipped(floor: float) -> None:
    """Each delta-line family's shipped decode step, three readings, in one order and then the reverse."""
    order = ["gated_delta_rule", "kda", "delta_rule"]
    for rep, families in enumerate([order, order[::-1]]):
        for family in families:
            step = delta_decode_step(family, B, H, D)
            ms = [bench(step) for _ in range(3)]
            print(f"order {rep} {family}: " + " ".join(f"{m:.4f}" for m in ms) + f" ms, x floor {min(ms) / floor:.2f}")


def main() -> int:
    from fla_compile.lowering.delta import triton_launch as DT
    from fla_compile.lowering.gla import triton_launch as GT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shipped", action="store_true", help="the delta line's shipped decode step alone, repeated")
    args = p.parse_args()
    bw = copy_bandwidth()
    floor = B * H * D * D * 4 * 2 / bw * 1e3
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s; decode floor (state read + write) {floor:.4f} ms")
    if args.shipped:
        shipped(floor)
        return 0
    dev = "cuda"
    q, k, v = (torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    rows = ["| family | BV | warps | ms | x floor |", "| --- | --- | --- | --- | --- |"]
    for family, kind in GATES.items():
        g = {
            "none": None,
            "scalar": F.logsigmoid(torch.randn(B, 1, H, device=dev)),
            "vector": F.logsigmoid(torch.randn(B, 1, H, D, device=dev)),
        }[kind]
        state = torch.zeros(B, H, D, D, device=dev)
        for BV in (16, 32, 64, 128):
            for warps in (1, 2, 4, 8):
                cfg = {"BV": BV, "num_warps": warps}
                try:
                    ms = bench(
                        lambda g=g, cfg=cfg, state=state, kind=kind: GT.fused_recurrent(
                            q, k, v, g, kind, 0.1, state, inplace_state=True, config=cfg
                        )
                    )
                    rows.append(f"| {family} | {BV} | {warps} | {ms:.4f} | {ms / floor:.2f} |")
                except Exception as e:  # a failing config is a row
                    rows.append(f"| {family} | {BV} | {warps} | error {type(e).__name__} | |")
    for family, kind in DELTA_GATES.items():
        kn = F.normalize(k.float(), dim=-1).to(torch.bfloat16)
        beta = torch.rand(B, 1, H, device=dev, dtype=torch.bfloat16)
        g = {
            "none": None,
            "scalar": F.logsigmoid(torch.randn(B, 1, H, device=dev)),
            "vector": F.logsigmoid(torch.randn(B, 1, H, D, device=dev)),
        }[kind]
        state = torch.zeros(B, H, D, D, device=dev)

        def step(g=g, kind=kind, beta=beta, kn=kn, state=state):
            return DT.fused_recurrent(q, kn, v, beta, g, kind, 0.1, state, None, False, final_state=state)

        ms = bench(step)
        rows.append(f"| {family} | shipped | | {ms:.4f} | {ms / floor:.2f} |")
        state.zero_()
        ref = step()[0].float()  # the shipped options' output from a zero state: every variant is checked on it
        for BV in (16, 32, 64, 128):  # the delta line's decode options ("decode", "BV_decode" in the tables)
            for warps in (1, 2, 4, 8):
                DT.OVERRIDES.update(decode=(warps, 3), BV_decode=BV)
                try:
                    state.zero_()
                    err = ((step()[0].float() - ref).norm() / ref.norm()).item()
                    ms = bench(step)
                    rows.append(f"| {family} | {BV} | {warps} | {ms:.4f} | {ms / floor:.2f} | diff {err:.1e} |")
                except Exception as e:  # a failing config is a row
                    rows.append(f"| {family} | {BV} | {warps} | error {type(e).__name__} | |")
                finally:
                    DT.OVERRIDES.clear()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
