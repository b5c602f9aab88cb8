"""Launch-option sweep of the delta line's staged kernels (CUDA): one table from one run.

    python benchmarks/sweep_delta.py [--families kda,gated_delta_rule,delta_rule] [--shape 8,2048,16,128]
        [--variants "shipped,A rows stages 2"] [--fwd-kernels] [--bwd-kernels] [--metadata] [--isolate]

For each family, times the op's forward and forward+backward (``fla_compile.ops``, bf16, ``do_bench`` medians)
with the shipped options, then with one option changed at a time (``triton_launch.OVERRIDES``: warps/stages,
the state pass's V block, the W/U split, kda's A kernel), and prints per-kernel times of the shipped options
(``torch.profiler``). A variant whose launches (recorded, nothing run: ``launch_forms.py``) equal the shipped
options' or an earlier variant's is a row saying so, not timed: an option the family does not read. Each row also
gives its largest relative difference from the shipped options' output and
gradients (**WRONG** above 5e-2): a variant is a candidate only where it is right, and its GPU tests
(``DELTA_TEST_KNOBS``) decide. Decide on the summed kernel times (``torch.profiler``), not the wall times: at this
size the wall times of one run move by 10% between variants that change no kernel. The winners go into the arch table (``common/configs/sm90.json``) by hand.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kernels import bench, fwd_bwd, inputs, kernel_table, max_rel, ours, outputs_and_grads  # noqa: E402
from launch_forms import launch_forms  # noqa: E402
from profile_ops import triton_metadata  # noqa: E402

from fla_compile.lowering.common.gates import GATE_IDS  # noqa: E402

ALL_GATES = tuple(GATE_IDS)  # a state pass's <pass>_split_k listing every gate kind

VARIANTS = [
    ("shipped", {}),
    ("wu fused", {"WU_SPLIT": False}),
    ("solve picks rows", {"ROW_LOADS": False}),
    (
        "no kg",
        {"KG": False},
    ),  # kda: the state pass decays the keys itself, per V block  # the substitution's rows picked from the tile (the old way)
    ("h BV=32", {"BV_h": 32}),
    ("h warps 8", {"h": (8, 2)}),
    ("dh BV=32", {"BV_dh": 32}),
    ("fill SMs", {"fill_sms": True}),  # V blocks of the state passes halved while their grid is under one wave
    ("dh warps 4", {"dh": (4, 2)}),
    ("dh warps 8", {"dh": (8, 2)}),  # K = V = 64: by_dims K64V64 ships [4, 2], measured on gated_delta_rule only
    ("dh w4 s3", {"dh": (4, 3)}),  # FLA's dhu pass at K = 64 autotunes to 4 warps, 3 stages, BV 64 (0.128 ms)
    ("wy_bwd warps 4", {"wy_bwd": (4, 2)}),
    # kda's WY backward holds one program a multiprocessor at K = V = 128 (8 warps x 255 registers, 20 B spilled);
    # two under a cap of 128, offline sm_90 (thirty-ninth session): 800 B spilled. 4 warps, 1 stage: 700 B
    ("wy_bwd w8 r128", {"wy_bwd": (8, 2, 128)}),
    ("solve warps 1", {"solve": (1, 1)}),
    ("solve warps 4", {"solve": (4, 1)}),
    ("wu warps 8", {"wu": (8, 2)}),
    ("dqk warps 8", {"dqk": (8, 2)}),
    ("pair_vec warps 8", {"pair_vec": (8, 2)}),
    ("pair_vec warps 2", {"pair_vec": (2, 2)}),
    # kda at K = 256 (offline sm_90, thirty-sixth session): the pair kernel spills 532 B a thread on [4, 2], none on
    # 8 warps (246 / 242 registers at 2 / 1 stages); the WY backward spills ~530 B on any 8- or 16-warp launch
    ("pair_vec w8 s1", {"pair_vec": (8, 1)}),
    ("A warps 8", {"A": (8, 2)}),
    ("A unfused", {"FUSED_A": False}),
    ("o BV=128 w8 s3", {"BV_o": 128, "o": (8, 3)}),  # the GLA line's tuned output kernel options
    ("o w8 s3", {"o": (8, 3)}),
    # K = V = 64 (by_dims K64V64 ships o [4, 2]): FLA's kda output kernel there 0.118 ms, ours 0.152 (fourteenth session)
    ("o w4 s3", {"o": (4, 3)}),
    ("o w2 s2", {"o": (2, 2)}),
    ("o w2 s3", {"o": (2, 3)}),
    # registers capped at 128: four programs a multiprocessor on 4 warps where ~133 fit three (the GLA line's output
    # kernel at K = V = 64: 133-136 -> 124, no spill, offline sm_90; FLA's retention output kernel 118)
    ("o w4 s2 r128", {"o": (4, 2, 128)}),
    ("heads_inner off", {"heads_inner": False}),
    ("h w4 s3", {"h": (4, 3)}),
    ("h w2 s2", {"h": (2, 2)}),
    # the state passes' options where fill_sms halved their V block (h_fill, dh_fill: [4, 3] since the fifteenth
    # session), each back to the kernel's own
    ("h_fill w4 s2", {"h_fill": (4, 2)}),
    ("dh_fill w8 s2", {"dh_fill": (8, 2)}),
    # FLA's picks at K = V = 128: V blocks of 64, 4 warps, 4 stages, no halving for B=2 (fourteenth session)
    ("h w4 s4", {"h": (4, 4)}),
    ("h w4 s4 no fill", {"h": (4, 4), "fill_sms": False}),
    ("dh BV=64 w4 s3 no fill", {"BV_dh": 64, "dh": (4, 3), "fill_sms": False}),  # FLA's dhu pick there
    ("wu w4 s3", {"wu": (4, 3)}),
    ("wu w2 s2", {"wu": (2, 2)}),
    ("A rows warps 2", {"A_row_block": (2, 2)}),  # kda's A kernel (one row block per program)
    ("A rows warps 8", {"A_row_block": (8, 2)}),
    ("A rows stages 1", {"A_row_block": (4, 1)}),
    ("A rows stages 2", {"A_row_block": (4, 2)}),
    ("A rows stages 3", {"A_row_block": (4, 3)}),
    ("dh stages 1", {"dh": (8, 1)}),  # the one-block state-gradient pass unpipelined
    # the state-gradient pass in one wave: at BV 64 / 8 warps (~234 registers: one program per SM) B·H·V/BV =
    # 256 programs take two waves of 132 SMs, each walking every chunk; at BV 32 / 4 warps the state is 32
    # registers a thread and 512 programs may fit at 4 per SM
    ("dh BV=32 w4", {"BV_dh": 32, "dh": (4, 2)}),
    ("dh BV=32 w4 s3", {"BV_dh": 32, "dh": (4, 3)}),
    ("dh BV=32 w2", {"BV_dh": 32, "dh": (2, 2)}),
    ("dh BV=16 w2", {"BV_dh": 16, "dh": (2, 2)}),
    # unpipelined (~half the shared memory: two programs per SM, so 256 programs in one wave)
    ("dh w4 s1", {"dh": (4, 1)}),
    ("dh BV=32 w4 s1", {"BV_dh": 32, "dh": (4, 1)}),
    # 2 warps: FLA restricts its WY backward to 2 warps on Hopper, where Triton 3.4-3.7 miscompiles the 4-warp
    # kernel at BT=64 (wrong dk/dbeta, sometimes an illegal address: its #984), the symptoms of our dh at 4 warps
    # / 1 stage
    ("dh w2 s1", {"dh": (2, 1)}),
    # one wave of programs at (8, 2048, 16, 128): the shipped 8-warp pass (230 registers, 123 KB shared, offline
    # sm_90) fits one program a multiprocessor, so its 256 programs take two waves of the 132 SMs. A V block of 128
    # (128 programs: one wave, k, q and W read once; 254 registers, 96 KB, no spill at 1 stage), or 1 stage with
    # registers capped at 128 (57-73 KB, two programs a multiprocessor; no gate: 142 registers uncapped)
    ("dh BV=64", {"BV_dh": 64}),  # the V block before K128V128's by_dims entry (128)
    ("dh BV=128 w8 s1", {"BV_dh": 128, "dh": (8, 1)}),
    ("dh BV=128 w8 s2", {"BV_dh": 128, "dh": (8, 2)}),
    ("dh w8 s1 r128", {"dh": (8, 1, 128)}),
    ("dh BV=32 w2 s1", {"BV_dh": 32, "dh": (2, 1)}),
    # no gate / a scalar gate: the WY backward and the k kᵀ pairs by one kernel reading the dqk kernel's dW (shipped
    # 2026-11-30 at 4 warps, 1 stage: 0.410 ms; 2 stages 0.444; 8 warps 0.682, kda keeps its two kernels)
    ("wy+pair w4 s2", {"wy_pair": (4, 2)}),
    ("wy+pair w2", {"wy_pair": (2, 1)}),
    ("wy+pair w8 s1", {"wy_pair": (8, 1)}),  # offline sm_90: no spill at 8 warps
    # the dqk kernel's dW accumulator: 185 -> 255 registers at 4 warps without a gate (offline sm_90)
    ("dqk w8", {"dqk": (8, 2)}),
    # the WY/pair backward's dN chain and pair dots on bf16 operands (FLA's choice) instead of fp32 (tf32): offline
    # sm_90 at 4 warps 255 registers + 20 B spill -> 224, no spill (no gate)
    ("wy+pair fp32 dots", {"WY_PAIR_HALF": False}),
    ("wy+pair half w8", {"WY_PAIR_HALF": True, "wy_pair": (8, 1)}),
    ("wy+pair half w4 s2", {"WY_PAIR_HALF": True, "wy_pair": (4, 2)}),
    ("final dk off", {"FINAL_DK": False}),  # dk in fp32 from the WY/pair backward, cast by the op (before: 15th)
    ("final dqk vector off", {"FINAL_DQK_VECTOR": False}),  # kda: dq, dk in fp32, cast by the op (before: 16th)
    # no gate / a scalar gate: shipped (2026-12-01), k kᵀ formed by the WY solve kernel with its ten 16x16 blocks in
    # registers, as FLA's fused kkt+solve, on 1 warp, the merge dots tf32 for half inputs. H200, B=8 T=2048 H=16
    # D=128 bf16, gated_delta_rule forward kernels: kkt 0.044 + solve 0.173 ms (the variant "two kernels exact
    # merges") -> 0.102; at 2 warps 0.186, 4 warps 0.364; the diagonal blocks through a scratch A instead 0.231-0.399
    # FLA's fused kkt+solve autotunes to 1 warp, 3 stages at K = 64 (its H200 autotune cache: 0.166 ms at
    # (8, 2048, 32, 64)); ours loops over key blocks of 64, so stages can prefetch at K = 128
    ("kkt in solve s2", {"kkt_solve": (1, 2)}),
    ("kkt in solve s3", {"kkt_solve": (1, 3)}),
    ("kkt in solve w2", {"kkt_solve": (2, 1)}),
    ("kkt in solve w4", {"kkt_solve": (4, 1)}),
    ("solve diag steps", {"SOLVE_DIAG": "steps"}),  # row steps, 15 serial a block, for the shipped powers of N
    # registers capped for more 1-warp programs an SM (offline sm_90, K = 64, scalar gate: 183 registers, 11 programs
    # an SM; 168: 12, 20 B spilled; 128: 16, 260 B): the solve is latency-bound at (8, 2048, 32, 64), 0.231 ms
    ("kkt in solve r168", {"kkt_solve": (1, 1, 168)}),
    ("kkt in solve r128", {"kkt_solve": (1, 1, 128)}),
    ("kkt in solve exact merges", {"SOLVE_MERGE_TF32": False}),
    # chunk_kkt_kernel writing A in fp32 for the solve kernel to read back (kda's path): merges tf32 0.164 ms for
    # the solve, exact (offline sm_90 at 2 warps 255 registers, tf32 166) 0.173
    ("two kernels", {"FUSED_KKT": False}),
    ("two kernels exact merges", {"FUSED_KKT": False, "SOLVE_MERGE_TF32": False}),
    ("two kernels w1", {"FUSED_KKT": False, "solve": (1, 1)}),
    ("two kernels w4", {"FUSED_KKT": False, "solve": (4, 1)}),
    ("solve merges exact", {"SOLVE_MERGE_TF32": False}),  # kda: its two-kernel solve with exact merges
    # fp32 inputs (--dtype float32) at "highest": three tf32 products instead of "ieee" FMA loops, which spill
    # 18-55 KB a thread in the state passes and the backward (offline sm_90, RESULTS); the dq/dk kernel on 8 warps
    # (offline: its spill 1,964 -> 908 B; the WY/pair backward's grows on 8, 1,620 -> 1,880)
    ("three tf32", {"FP32_HIGHEST": "tf32x3"}),
    ("three tf32 dqk w8", {"FP32_HIGHEST": "tf32x3", "dqk": (8, 2)}),  # H200 2026-12-01: fwd+bwd 8.652 vs 8.609 ms
    ("ieee", {"FP32_HIGHEST": "ieee"}),
    ("one tf32", {"FP32_HIGHEST": "tf32"}),  # torch's "high": the split's own cost, kernel by kernel, against it
    # fp32 operands as bf16 parts (common/dots.py): six bf16 products (near fp32: 1.6e-7 from fp64 on a tile loop
    # of the H200, three tf32 2.0e-7, at 2.6x its speed with Triton's own forms) or three (4.4e-6); on the bf16
    # tiles (the key "delta_bf16x6" has no by_dtype entry) and on three tf32's
    ("bf16x6", {"FP32_HIGHEST": "bf16x6"}),
    ("bf16x6 tiles", {"FP32_HIGHEST": "bf16x6", "BV_h": 32, "BV_o": 64, "o": (4, 1)}),
    ("bf16x3", {"FP32_HIGHEST": "bf16x3"}),
    ("bf16x3 tiles", {"FP32_HIGHEST": "bf16x3", "BV_h": 32, "BV_o": 64, "o": (4, 1)}),
    # the forward's W/U, state and output kernels on six bf16 products, the rest on three tf32 (split_precs; the
    # tiles stay three tf32's): the kernels that gained from six bf16 products, not the state-gradient pass that lost
    ("fwd bf16x6", {"split_precs": {"wu": "bf16x6", "h": "bf16x6", "o": "bf16x6"}}),
    ("fwd bf16x6 h o", {"split_precs": {"h": "bf16x6", "o": "bf16x6"}}),
    ("split_precs off", {"split_precs": {}}),  # every kernel on the call's form (sm90 ships "fwd bf16x6" since)
    # fp32 keeps k kᵀ out of the solve kernel (_DTYPE_DEFAULTS) for the exact dots' spills (10-13 KB a thread,
    # offline sm_90). With tf32 dots ("high", --matmul-precision high) the fused kernel on 1 warp has none (254
    # registers), with three tf32 products 308 B on 1 warp, 132 B on 2: the fused forward may win there too
    ("fp32 kkt in solve", {"fused_kkt": True}),
    (
        "fp32 kkt in solve w2",
        {"fused_kkt": True, "kkt_solve": (2, 1)},
    ),  # the exact FMA dots three tf32 replaced (43 ms gated forward on the H200)
    # fp32 at three tf32 (shipped since 2026-12-01, with the bf16 launch options): the output kernel took 0.951 of
    # the gated forward's 2.372 ms on the H200. Offline sm_90 (benchmarks/fp32_dot_regs.py --grid): at BV_o 128,
    # 8 warps, 3 stages it spills 100 B a thread; at BV_o 64 on 4 warps, 3 stages (131 KB shared) or 1 stage, none.
    # The state pass spills least at BV_h 32 (344 B against 836 at 64)
    ("fp32 o BV64 w4 s3", {"BV_o": 64, "o": (4, 3)}),
    ("fp32 o BV64 w4 s1", {"BV_o": 64, "o": (4, 1)}),
    ("fp32 o BV64 w8 s3", {"BV_o": 64, "o": (8, 3)}),
    ("fp32 h BV32", {"BV_h": 32}),
    ("fp32 h BV32 w8", {"BV_h": 32, "h": (8, 2)}),
    # K = 256, V = 512 (--shape 8,2048,8,256,512; by_dims K256V512 ships h [8, 2], BV_dh 32): both state passes hold
    # the whole K, one program a multiprocessor (offline sm_90, thirty-third session: 252 / 233 registers, 189 / 201
    # KB of shared memory); FLA's state pass there 0.386 ms a call against our 0.446
    ("h w8 s1", {"h": (8, 1)}),
    ("h BV=32 w4 s2", {"BV_h": 32, "h": (4, 2)}),
    ("h BV=32 w4 s3", {"BV_h": 32, "h": (4, 3)}),
    ("h BV=32 w4 s4", {"BV_h": 32, "h": (4, 4)}),
    ("dh BV=32 w8 s1", {"BV_dh": 32, "dh": (8, 1)}),
    # the state passes with the state in key blocks of 64 (FLA's layout), for the gate kinds their <pass>_split_k
    # lists, on <pass>_split's launch and BV_<pass>_split's V block. H200, K 256 x V 512 (thirty-fifth session):
    # the forward's on [4, 2] 0.385 ms a pass against the whole K's 0.444 (shipped there since, without kda's gate),
    # kda's 0.554 against 0.522. Thirty-sixth: the state-gradient pass on V blocks of 64, 8 warps, kda's 56.9 ms
    # (the whole K on the scalar gate's V blocks of 32) -> 1.94, gated's 0.950 -> 0.795, delta_rule's 1.008 -> 1.237
    ("h K blocks 64", {"h_split_k": ALL_GATES}),
    ("h K blocks 64 w8", {"h_split_k": ALL_GATES, "h_split": (8, 2)}),
    ("h K blocks 64 w4 s3", {"h_split_k": ALL_GATES, "h_split": (4, 3)}),
    ("h K blocks 64 BV=32 w4 s3", {"h_split_k": ALL_GATES, "BV_h_split": 32, "h_split": (4, 3)}),
    ("h whole K", {"h_split_k": ()}),
    ("dh K blocks 64", {"dh_split_k": ALL_GATES}),
    ("dh K blocks 64 w4", {"dh_split_k": ALL_GATES, "dh_split": (4, 2)}),
    ("dh K blocks 64 w8", {"dh_split_k": ALL_GATES, "dh_split": (8, 2)}),
    ("dh K blocks 64 BV=32 w8", {"dh_split_k": ALL_GATES, "BV_dh_split": 32, "dh_split": (8, 2)}),
    ("dh K blocks 64 BV=128 w8", {"dh_split_k": ALL_GATES, "BV_dh_split": 128, "dh_split": (8, 2)}),
    ("dh whole K", {"dh_split_k": ()}),
    ("no fill", {"fill_sms": False}),  # the shipped state passes on the tables' V blocks at any grid
]


def apply(changes):
    from fla_compile.lowering.common import launch
    from fla_compile.lowering.delta import triton_launch as DT

    old = {}
    for key, value in changes.items():
        if key == "FP32_HIGHEST":  # the dot precision of fp32 inputs at "highest" (common/launch.py)
            old[key] = launch.FP32_HIGHEST
            launch.FP32_HIGHEST = value
        elif key in DT._DEFAULTS:  # a launch option: through OVERRIDES (None: back to the table's)
            old[key] = DT.OVERRIDES.get(key)
            if value is None:
                DT.OVERRIDES.pop(key, None)
            else:
                DT.OVERRIDES[key] = value
        else:
            old[key] = getattr(DT, key)
            setattr(DT, key, value)
    return old


def restore(old):
    apply(old)


def isolated(args) -> int:
    """Each variant in a child process of its own (``--isolate``): a variant that faults the device (an illegal
    memory access leaves the process's CUDA context unusable, so every later launch fails) costs only its own row.
    The children draw the same inputs (seeded) and compare with the shipped outputs the first child saved."""
    import subprocess
    import tempfile

    common = ["--shape", args.shape, "--dtype", args.dtype, "--matmul-precision", args.matmul_precision]
    common += ["--fwd-kernels"] * args.fwd_kernels + ["--bwd-kernels"] * args.bwd_kernels
    wanted = args.variants.split(",") if args.variants else [name for name, _ in VARIANTS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            ref = str(pathlib.Path(tmp) / f"{family}.pt")
            for name in ["shipped"] + [n for n in wanted if n != "shipped"]:
                argv = [sys.executable, __file__, "--families", family, "--variants", name, "--reference", ref]
                proc = subprocess.run(argv + common, capture_output=True, text=True)
                mine = [line for line in proc.stdout.splitlines() if line.startswith(f"| {family} | {name} |")]
                notes = [line for line in proc.stdout.splitlines() if line and not line.startswith("|")]
                if notes:  # --fwd-kernels / --bwd-kernels lines
                    print("\n".join(notes), flush=True)
                if proc.returncode == 0 and mine:
                    rows.append(mine[-1])
                else:
                    errors = [line for line in proc.stderr.splitlines() if "Error" in line] or proc.stderr.splitlines()
                    rows.append(
                        f"| {family} | {name} | process failed (rc {proc.returncode}): {errors[-1][:120] if errors else ''} | | | |"
                    )
                    if name == "shipped":
                        break  # nothing to compare the others with
                print(rows[-1], flush=True)
    print("\n| family | variant | fwd ms | fwd+bwd ms | fwd+bwd kernels ms | max rel diff vs shipped |")
    print("| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--families", default="kda,gated_delta_rule,delta_rule")
    p.add_argument("--shape", default="8,2048,16,128", help="B,T,H,D or B,T,H,K,V")
    p.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--fwd-kernels", action="store_true", help="also print each variant's forward kernels (device ms)")
    p.add_argument("--bwd-kernels", action="store_true", help="also print each variant's fwd+bwd kernels (device ms)")
    p.add_argument(
        "--metadata", action="store_true", help="at the end: registers, spills, shared of every kernel built"
    )
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--matmul-precision", default="highest", choices=("highest", "high"),
                   help="torch.set_float32_matmul_precision for fp32 inputs ('high': plain tf32 dots)")  # fmt: skip
    p.add_argument("--isolate", action="store_true",
                   help="each variant in a process of its own (a faulting variant costs only its row)")  # fmt: skip
    p.add_argument("--reference", default="", help=argparse.SUPPRESS)  # --isolate's children: the shipped outputs
    args = p.parse_args()
    unknown = set(args.variants.split(",") if args.variants else ()) - {name for name, _ in VARIANTS}
    if unknown:
        p.error(f"--variants: no variant named {sorted(unknown)} (see VARIANTS in {__file__})")
    if args.isolate:
        return isolated(args)
    dtype = getattr(torch, args.dtype)
    torch.set_float32_matmul_precision(args.matmul_precision)
    B, T, H, D, *V = (int(x) for x in args.shape.split(","))
    V = V[0] if V else None
    names = set(args.variants.split(",")) if args.variants else None
    rows = [
        "| family | variant | fwd ms | fwd+bwd ms | fwd+bwd kernels ms | max rel diff vs shipped |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for family in args.families.split(","):
        fn = ours(family)
        torch.manual_seed(0)  # the same inputs in every process (--isolate)
        xs = inputs(family, B, T, H, D, dtype, V=V)
        xg = inputs(family, B, T, H, D, dtype, grad=True, V=V)
        if args.reference and pathlib.Path(args.reference).exists():
            shipped = [t.cuda() for t in torch.load(args.reference)]
        else:
            shipped = outputs_and_grads(fn, xg)
            if args.reference:
                torch.save([t.cpu() for t in shipped], args.reference)
        # launch forms -> the variant that timed them (a variant launching as the shipped options is skipped)
        timed = {repr(launch_forms(fwd_bwd(fn, xg))): "shipped"}
        for name, changes in VARIANTS:
            if names and name not in names and (name != "shipped" or args.reference):
                continue
            old = apply(changes)
            try:
                forms = repr(launch_forms(fwd_bwd(fn, xg)))
                if name != "shipped" and forms in timed:
                    rows.append(f"| {family} | {name} | launches as {timed[forms]}: skipped | | | |")
                    print(rows[-1], flush=True)
                    continue
                timed[forms] = name
                with torch.no_grad():
                    t_f = bench(lambda fn=fn, xs=xs: fn(*xs))
                t_fb = bench(fwd_bwd(fn, xg))
                diff = max_rel(outputs_and_grads(fn, xg), shipped)
                bound = 5e-2 if dtype != torch.float32 else 1e-4  # bf16: other tiles round differently
                flag = " **WRONG**" if not diff <= bound else ""
                fb_table = kernel_table(fwd_bwd(fn, xg))
                t_k = sum(ms for _, _, ms in fb_table)
                rows.append(f"| {family} | {name} | {t_f:.3f} | {t_fb:.3f} | {t_k:.3f} | {diff:.1e}{flag} |")
                if args.fwd_kernels:
                    with torch.no_grad():
                        table = kernel_table(lambda fn=fn, xs=xs: fn(*xs))
                    print(f"{family} {name} forward:", ", ".join(f"{k} {ms:.3f}" for k, _, ms in table), flush=True)
                if args.bwd_kernels:
                    print(f"{family} {name} fwd+bwd:", ", ".join(f"{k} {ms:.3f}" for k, _, ms in fb_table), flush=True)
            except Exception as e:  # a variant that fails to compile or launch is a row, not a lost table
                rows.append(f"| {family} | {name} | error: {type(e).__name__}: {str(e)[:100]} | | | |")
            finally:
                restore(old)
            print(rows[-1], flush=True)
        if args.reference and names and "shipped" not in names:
            continue
        print(
            f"\n### {family} fwd+bwd, shipped options, B={B} T={T} H={H} D={D}\n\n| kernel | calls | ms |\n| --- | --- | --- |"
        )
        for kname, calls, ms in kernel_table(fwd_bwd(fn, xg)):
            print(f"| {kname} | {calls} | {ms:.3f} |")
    print("\n" + "\n".join(rows))
    if args.metadata:
        print("\n| kernel | registers | spills | shared | warps | stages |\n| --- | --- | --- | --- | --- | --- |")
        print("\n".join(sorted(set(triton_metadata()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
