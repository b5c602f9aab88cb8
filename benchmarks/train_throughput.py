"""Training throughput of linear-attention models: transformers as is, with FLA, patched, patched + compiled.

Random-init Qwen3-Next-style (gated delta net, 3 of every 4 layers), Kimi-Linear-style (KDA, 3 of
every 4 layers, MLA softmax attention in the 4th) and Mamba2 models (``examples/hf_patch.py``'s
configs for the first and the last; no download). One training step is forward + backward +
AdamW step on ``model(ids, labels=ids)`` (transformers' ForCausalLMLoss). Rows per model:

  1 hf        transformers' own torch path; the ``fla`` package is made unimportable first
  2 hf+fla    transformers with flash-linear-attention (its kernels where transformers uses them)
  3 patched   ``fla_compile.hf.patch(model)``
  4 compiled  patched + ``torch.compile(loss_of, backend="fla", fullgraph=True)`` with
              ``loss_of(ids) = model(ids, labels=ids).loss``: the whole model and its loss in one graph
              (if fullgraph fails, ``fullgraph=False`` and the reason in the table). The backend fuses
              the LM head and the loss into ``linear_cross_entropy`` ("fused loss" says whether it
              matched). Not ``torch.compile(model)``: the model also returns the logits, and logits
              the caller may read cannot be fused away (the backend reports a near miss)
  5 compiled, loss always fused
              row 4 with the loss fused even where the backend keeps it as written (all its logits in
              one chunk: ``patterns.loss.kept_reason``); --rows 4,5 is the fused loss's A/B in the whole
              step (not run by default)
  6 compiled, CUDA graphs
              row 4 with ``options={"cudagraphs": True}`` (Inductor's cudagraph trees): one replay per graph
              instead of a host launch per kernel, for steps whose host time is above their kernels' (not run
              by default)

Each (model, row) runs in a fresh process (``--one``): ``fla`` importable or not when transformers
is imported, and torch.compile caches and peak-memory statistics kept apart. A row that fails is a
row with its error. "first s" is the first step (compilation included), "step ms" the median of
``--steps`` timed steps after ``--warmup`` steps, tokens/s = B*T / step, "peak GiB" the most memory
allocated during the timed steps (weights, gradients and AdamW states included). "loss" is the
first step's: the same model and batch in every row, so the rows should agree to rounding.

    python benchmarks/train_throughput.py --archs qwen3_next   # H200: bf16, hidden 1024, 8 layers, B=4, T=2048
    python benchmarks/train_throughput.py --archs kimi_linear  # (one model per call: each ~3-4 min, all three
    python benchmarks/train_throughput.py --archs mamba2       #  in one call may pass 10 min)
    python benchmarks/train_throughput.py --device cpu --dtype float32 --hidden 64 --layers 4 \\
        --batch 1 --seq 64 --vocab 256 --steps 2 --warmup 1  # CPU smoke run (~3.5 min, one thread)

B=4 by default: transformers' torch KDA (row 1 of Kimi-Linear) holds fp32 [B, H, T, 64, K] products,
about 3 x 2 GiB saved per KDA layer at B=4, T=2048, H=16, K=64 (~50 GiB for its 6 KDA layers; B=8 is
~100 GiB, close to an H200's 139). The weights are in ``--dtype`` (bf16 on the GPU: AdamW's states
too, no fp32 master copy); the model is ``.train()`` (dropout is 0 in these configs). ``$OUT`` set: the table also goes to
``$OUT/train_throughput.csv``; with ``--profile``, two more steps per row under torch.profiler
(kernels by time) go to the log and ``$OUT/profile_<model>_row<row>.txt``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.abc
import importlib.util
import json
import logging
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

log = logging.getLogger("train_throughput")

ARCHS = ("qwen3_next", "kimi_linear", "mamba2")
ROWS = {
    "1": "hf",
    "2": "hf+fla",
    "3": "patched",
    "4": "compiled",
    "5": "compiled, loss always fused",
    "6": "compiled, CUDA graphs",
}
COMPILED = ("4", "5", "6")
RESULT = "RESULT "  # the prefix of the one JSON line a --one process prints


class _BlockFla(importlib.abc.MetaPathFinder):
    """Makes ``import fla`` (and ``fla.*``) fail, as if flash-linear-attention were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "fla" or name.startswith("fla."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by train_throughput row 1)", name=name)
        return None


def _hf_patch():
    """examples/hf_patch.py as a module: its ``build(arch, hidden, layers, device, dtype)`` and ``VOCAB``."""
    spec = importlib.util.spec_from_file_location("hf_patch", ROOT / "examples" / "hf_patch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_kimi(hidden: int, layers: int, vocab: int, device, dtype):
    """A Kimi-Linear-style model: KDA layers, one MLA softmax layer in every 4, MoE MLPs after the first layer."""
    import torch
    import transformers

    heads = max(2, hidden // 64)
    config = transformers.KimiLinearConfig(
        vocab_size=vocab,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        kv_lora_rank=hidden // 4,
        q_lora_rank=None,
        qk_rope_head_dim=32,
        qk_nope_head_dim=64,
        v_head_dim=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        linear_head_dim=64,
        linear_num_heads=heads,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
    )
    torch.manual_seed(0)
    return transformers.KimiLinearForCausalLM(config).to(device=device, dtype=dtype)


def build(arch: str, args, device, dtype):
    if arch == "kimi_linear":
        return build_kimi(args.hidden, args.layers, args.vocab, device, dtype)
    mod = _hf_patch()
    mod.VOCAB = args.vocab  # build() reads the module's VOCAB when called
    return mod.build(arch, args.hidden, args.layers, device, dtype)


def fla_functions(model) -> tuple[list[str], dict[str, str]]:
    """Which functions of ``model``'s transformers modeling module resolved to flash-linear-attention,
    and which asked for it but fell back to torch (name -> why, the import's error).

    transformers picks each kernel when the modeling module is imported
    (``use_kernel_func_from_hub_with_fallback``): the wrapper's closure holds the package it asked for
    and the implementation it chose; a failed import of the package is silent there.
    """
    import inspect

    mod = sys.modules[type(model).__module__]
    used, fell_back = [], {}
    for name, fn in vars(mod).items():
        if not callable(fn) or not getattr(fn, "__closure__", None):
            continue
        try:
            cv = inspect.getclosurevars(fn).nonlocals
        except (TypeError, ValueError):
            continue
        impl, package = cv.get("implementation"), cv.get("package")
        if impl is not None and getattr(impl, "__module__", "").split(".")[0] == "fla":
            used.append(name)
        elif package == "fla" and impl is cv.get("torch_function"):
            fell_back[name] = _why_not_importable(cv.get("func_name", name))
    return sorted(used), fell_back


def _why_not_importable(func_name: str) -> str:
    """The error of importing what transformers looks for in fla for ``func_name`` (or "found" if none)."""
    from transformers.integrations import hub_kernels

    internal = getattr(hub_kernels, "_KERNELS_INTERNAL_PATH_MAPPINGS", {}).get(func_name)
    path = "fla" if internal is None else f"fla.{internal}"
    try:
        mod = importlib.import_module(path)
    except Exception as e:
        return f"import {path}: {_short(e, 160)}"
    return "found" if hasattr(mod, func_name) else f"{path} has no {func_name}"


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _short(e: BaseException, n: int = 300) -> str:
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def run_one(arch: str, row: str, args) -> dict:
    """One (model, row) in this process: the row's dict (``status`` "ok", "skipped: ..." or "fails: ...")."""
    if row == "1":
        sys.meta_path.insert(0, _BlockFla())
    import torch

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    res = dict(arch=arch, row=row, name=ROWS[row], status="ok", note="")

    if row == "2":
        if device.type != "cuda":
            return {**res, "status": "skipped: FLA's kernels are Triton, CUDA only"}
        try:
            import fla

            res["note"] = f"fla {getattr(fla, '__version__', '?')}"
        except Exception as e:
            return {**res, "status": f"fails: import fla: {_short(e)}"}

    model = build(arch, args, device, dtype)
    res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    used, fell_back = fla_functions(model)
    if row == "1" and used:
        return {**res, "status": f"fails: fla not blocked ({', '.join(used)})"}
    if row == "1" and fell_back:
        res["note"] = f"torch path of {', '.join(fell_back)}"
    if row == "2":
        if fell_back:  # transformers asked for fla and silently took its torch path
            why = "; ".join(f"{k}: {v}" for k, v in fell_back.items())
            return {**res, "status": f"fails: transformers did not take FLA ({why})"}
        if not used:
            return {**res, "status": f"skipped: transformers' {type(model).__name__} has no FLA path"}
        res["note"] = f"{res['note']}: {', '.join(used)}"
    if row in ("3", *COMPILED):
        import fla_compile.hf as fh

        report = fh.patch(model)
        log.info("%s", report)
        if not report.ok or not report.layers_patched:
            return {**res, "status": f"fails: patch: {' '.join(str(report).split())}"}
        res["note"] = f"{report.layers_patched} layers patched"
    model.train()

    def loss_of(ids):
        # the loss alone: compiling ``model`` itself would return the logits too (its output), and
        # logits someone else reads are not fused away (the backend reports that as a near miss)
        return model(ids, labels=ids, use_cache=False).loss

    fwd = loss_of
    if row == "5":  # row 4 with the loss fused at any size: the A/B of the fused loss in the whole step
        import fla_compile.patterns.loss as fl

        fl.kept_reason = lambda cand, opts: ""
    options = {"cudagraphs": True} if row == "6" else None
    if row in COMPILED:
        import fla_compile.backend as fb

        fwd = torch.compile(loss_of, backend="fla", fullgraph=True, options=options)
        res["compile"] = "model + loss, fullgraph=True"

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if device.type == "cuda" else {}))

    def step():
        if row == "6":  # a new iteration: the trees may reuse the previous step's graph outputs
            torch.compiler.cudagraph_mark_step_begin()
        loss = fwd(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    _sync(device)
    t0 = time.perf_counter()
    try:
        loss = step()
    except Exception as e:
        if row not in COMPILED or not isinstance(e, (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)):
            raise
        # fullgraph could not hold the whole model (a graph break): the same with breaks allowed
        log.warning("%s: fullgraph=True failed, compiling with fullgraph=False: %s", arch, _short(e, 2000))
        torch._dynamo.reset()
        fb.REPORTS.clear()
        opt.zero_grad(set_to_none=True)
        fwd = torch.compile(loss_of, backend="fla", fullgraph=False, options=options)
        res["compile"] = f"model + loss, fullgraph=False (fullgraph=True failed: {_short(e, 200)})"
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
    _sync(device)
    res["first_s"] = time.perf_counter() - t0
    res["loss"] = loss.item()
    for _ in range(args.warmup - 1):
        step()
    if row in COMPILED:
        matches = [m for r in fb.REPORTS for m in r.matches]
        res["graphs"] = len(fb.REPORTS)
        res["matches"] = [str(m) for m in matches]
        loss_m = [m for m in matches if "linear_cross_entropy" in m.op]
        res["fused_loss"] = (
            ("yes" if not loss_m[0].kept else f"matched, {loss_m[0].kept}") if loss_m else "no (not matched)"
        )
        for m in matches:
            log.info("%s: fla match: %s", arch, m)
        for r in fb.REPORTS:
            for m in r.misses:
                log.info("%s: fla miss: %s", arch, m)
            for n in r.notes:
                log.info("%s: fla note: %s", arch, n)

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    res["step_ms"] = statistics.median(times) * 1e3
    res["tok_s"] = args.batch * args.seq / statistics.median(times)
    res["peak_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if args.profile:
        busy = _profile(step, device, f"{arch}_row{row}")
        if busy is not None:
            res["note"] = f"{res['note']}; kernels {busy:.1f} ms a profiled step".lstrip("; ")
    return res


def _profile(step, device, name: str) -> float | None:
    """Two more steps under torch.profiler: the kernels by total time, to the log and ``$OUT/profile_<name>.txt``.
    Returns the kernels' time per step in ms on CUDA (a step much longer than it waits on the host), else None."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
    log.info("profile of 2 steps, %s:\n%s", name, text)
    if os.environ.get("OUT"):
        (pathlib.Path(os.environ["OUT"]) / f"profile_{name}.txt").write_text(text)
    if device.type != "cuda":
        return None
    import torch

    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.self_device_time_total for e in prof.events() if e.device_type == cuda) / 2 / 1e3


def one_main(arch: str, row: str, args) -> None:
    """The ``--one`` process: run the row, print its JSON line (errors included) on stdout."""
    try:
        res = run_one(arch, row, args)
    except Exception as e:
        log.exception("%s row %s failed", arch, row)
        res = dict(arch=arch, row=row, name=ROWS[row], status=f"fails: {_short(e)}")
    print(RESULT + json.dumps(res), flush=True)


def _forward_flags(args) -> list[str]:
    keys = ("hidden", "layers", "batch", "seq", "vocab", "steps", "warmup", "dtype", "device")
    return [x for k in keys for x in (f"--{k}", str(getattr(args, k)))] + (["--profile"] if args.profile else [])


def spawn(arch: str, row: str, args) -> dict:
    """Run one (model, row) in a fresh process; a crash, a timeout or no JSON line is a failed row."""
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--one", arch, row, *_forward_flags(args)]
    log.info("%s row %s (%s): %s", arch, row, ROWS[row], " ".join(cmd[1:]))
    t0 = time.perf_counter()
    base = dict(arch=arch, row=row, name=ROWS[row])
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"fails: timed out after {args.timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT)]
    if not lines:
        tail = " ".join(p.stdout.split()[-40:])
        return {**base, "status": f"fails: exit code {p.returncode}, no result ({tail})"}
    res = json.loads(lines[-1][len(RESULT) :])
    log.info("%s row %s: %s in %.0f s", arch, row, res["status"], time.perf_counter() - t0)
    return res


def header(args) -> str:
    import torch

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "-"
    import transformers

    spec = importlib.util.find_spec("fla")
    fv = "not installed"
    if spec is not None:
        try:
            from importlib.metadata import version

            fv = version("flash-linear-attention")
        except Exception:
            fv = "importable"
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    return (
        f"Training step (forward + backward + AdamW), {dev}, {args.dtype}; torch {torch.__version__}, "
        f"triton {tv}, transformers {transformers.__version__}, fla {fv}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, B={args.batch}, T={args.seq}, "
        f"median of {args.steps} steps after {args.warmup}"
    )


COLUMNS = ("arch", "row", "name", "status", "tok_s", "step_ms", "peak_GiB", "first_s", "loss", "params_M")


def _fmt(v, nd=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    out = [
        "| model | row | status | tokens/s | step ms | peak GiB | first s | loss | compile | fused loss | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['arch']} | {r['row']} {r['name']} | {r['status']} | {_fmt(r.get('tok_s'), 0)} | "
            f"{_fmt(r.get('step_ms'))} | {_fmt(r.get('peak_GiB'), 2)} | {_fmt(r.get('first_s'), 2)} | "
            f"{_fmt(r.get('loss'), 4)} | {r.get('compile', '')} | {r.get('fused_loss', '')} | {r.get('note', '')} |"
        )
    return "\n".join(out)


def targets(rows: list[dict]) -> str:
    """Row 4 against rows 1 and 2 per model (the issue's target: row 4 / row 1 >= 5x), only where both ran."""
    lines = []
    by = {(r["arch"], r["row"]): r for r in rows}
    for arch in dict.fromkeys(r["arch"] for r in rows):
        r4 = by.get((arch, "4"), {})
        parts = []
        for base, target in (("1", " (target >= 5x)"), ("2", "")):
            rb = by.get((arch, base), {})
            if r4.get("status") == "ok" and rb.get("status") == "ok":
                x = r4["tok_s"] / rb["tok_s"]
                mem = rb["peak_GiB"] / r4["peak_GiB"] if r4.get("peak_GiB") and not math.isnan(r4["peak_GiB"]) else None
                mtxt = f", peak memory / {mem:.2f}" if mem else ""
                parts.append(f"row 4 / row {base}: {x:.2f}x tokens/s{mtxt}{target}")
            else:
                parts.append(
                    f"row 4 / row {base}: - (row {base}: {rb.get('status', 'not run')}; row 4: {r4.get('status', 'not run')})"
                )
        lines.append(f"- {arch}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--rows", default="1,2,3,4")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one is 'first s')")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--timeout", type=int, default=300, help="seconds per (model, row) process")
    p.add_argument("--profile", action="store_true", help="profile 2 more steps per row (kernels by time)")
    p.add_argument("--one", nargs=2, metavar=("ARCH", "ROW"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step is compilation for row 4)")
    if args.one:
        one_main(*args.one, args)
        return
    for a in args.archs.split(","):
        if a not in ARCHS:
            p.error(f"--archs: {a!r} is not one of {', '.join(ARCHS)}")
    for r in args.rows.split(","):
        if r not in ROWS:
            p.error(f"--rows: {r!r} is not one of {', '.join(ROWS)}")
    rows = [spawn(a, r, args) for a in args.archs.split(",") for r in args.rows.split(",")]
    text = f"{header(args)}\n\n{table(rows)}\n\n{targets(rows)}"
    for r in rows:
        if r.get("row") in COMPILED and r.get("matches") is not None:
            text += f"\n\n{r['arch']} row {r['row']}: {r.get('graphs')} graph(s) compiled; fla_compile matches:\n"
            text += "\n".join(f"  {m}" for m in r["matches"]) or "  (none)"
    print(text)
    if os.environ.get("OUT"):
        path = pathlib.Path(os.environ["OUT"]) / "train_throughput.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, [*COLUMNS, "compile", "fused_loss", "note"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
