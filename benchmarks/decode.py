"""Greedy decoding speed, patched vs unpatched, transformers' generate vs the CUDA-graph decoder.

For a Qwen3-Next-style model (3 gated-delta layers, 1 softmax layer) and a Mamba2 model, random
weights (``examples/hf_patch.py``'s configs, hidden 1024 and 4 layers by default), at B=1 and
B=16: tokens/s of a whole greedy generation (prompt of ``--prompt`` tokens, ``--new`` new ones,
prefill included), median of ``--repeat`` timed calls after one warm-up call, for

- ``generate``: transformers' ``model.generate(do_sample=False)`` (its dynamic cache, one Python
  step per token);
- ``graph``: ``fla_compile.hf.GraphDecoder`` (static cache, the decode step replayed from one CUDA
  graph; eager steps without CUDA),

each on the unpatched model (transformers' own path) and the patched one (``fla_compile.hf.patch``).
``same`` is the fraction of generated tokens equal to unpatched ``generate``'s: bf16 greedy decoding parts
ways after a near tie (random weights give near-flat logits), and every later token differs with it.
``top-1`` does not compound: the fraction of generated tokens that are the unpatched model's own greedy choice
given the same prefix (one teacher-forced forward of the unpatched model over each run's tokens).

    python benchmarks/decode.py                                      # GPU: the issue's table, bf16
    python benchmarks/decode.py --hidden 64 --new 8 --repeat 1 --dtype float32   # CPU smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

import fla_compile.hf as fh  # noqa: E402

log = logging.getLogger("bench_decode")


def _build():
    """examples/hf_patch.py's ``build(arch, hidden, layers, device, dtype)``: the same configs."""
    spec = importlib.util.spec_from_file_location("hf_patch", ROOT / "examples" / "hf_patch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build, mod.VOCAB


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeat: int, device) -> tuple[float, torch.Tensor]:
    """(median seconds of ``repeat`` calls after a warm-up call, the last output)."""
    out = fn()
    ts = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def measure(model, prompt, args, device) -> dict:
    """{variant: (seconds, tokens)} for transformers' generate and our graph decoder on ``model`` as it is."""
    B, T = prompt.shape
    res = {}
    with torch.no_grad():
        res["generate"] = timed(
            lambda: model.generate(prompt, max_new_tokens=args.new, do_sample=False, pad_token_id=0),
            args.repeat,
            device,
        )
        try:  # transformers' own decode path may not be capturable (e.g. a kernel that syncs)
            dec = fh.GraphDecoder(model, B, T + args.new, eos_token_id=None, pad_token_id=0)
            res["graph"] = timed(lambda: dec.generate(prompt, args.new), args.repeat, device)
        except Exception as e:
            log.warning("graph decoder failed on %s: %s: %s", type(model).__name__, type(e).__name__, e)
            res["graph"] = (float("nan"), None)
    return res


def top1_agreement(model, toks: torch.Tensor, prompt_len: int) -> float:
    """The fraction of ``toks``' generated tokens that are ``model``'s argmax given the tokens before them."""
    with torch.no_grad():
        logits = model(toks).logits[:, prompt_len - 1 : -1]
    return (logits.argmax(-1) == toks[:, prompt_len:]).float().mean().item()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="qwen3_next,mamba2")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    build, vocab = _build()
    graph_label = "graph (CUDA graph)" if device.type == "cuda" else "graph (eager steps: no CUDA)"
    rows = []
    for arch in args.archs.split(","):
        model = build(arch, args.hidden, args.layers, device, dtype)
        model.generation_config.eos_token_id = None  # every call runs all --new steps
        for B in (int(b) for b in args.batches.split(",")):
            prompt = torch.randint(3, vocab, (B, args.prompt), generator=torch.Generator().manual_seed(B)).to(device)
            log.info("%s B=%d: unpatched", arch, B)
            ref = measure(model, prompt, args, device)
            fh.patch(model)
            log.info("%s B=%d: patched", arch, B)
            new = measure(model, prompt, args, device)
            fh.unpatch(model)
            base = ref["generate"][1][:, args.prompt :]
            for patched, res in (("no", ref), ("yes", new)):
                for variant, (sec, toks) in res.items():
                    same = float("nan") if toks is None else (toks[:, args.prompt :] == base).float().mean().item()
                    top1 = float("nan") if toks is None else top1_agreement(model, toks, args.prompt)
                    tps = B * args.new / sec
                    label = "generate" if variant == "generate" else graph_label
                    speedup = tps / (B * args.new / ref["generate"][0])
                    rows.append((arch, B, patched, label, tps, speedup, same, top1))
        del model
    where = f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {args.dtype}"
    print(
        f"\nGreedy decoding, hidden {args.hidden}, {args.layers} layers, prompt {args.prompt} + {args.new} new ({where})"
    )
    print("| model | B | patched | decoder | tokens/s | vs unpatched generate | same tokens | top-1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch, B, patched, label, tps, speedup, same, top1 in rows:
        print(f"| {arch} | {B} | {patched} | {label} | {tps:.0f} | {speedup:.2f}x | {same:.3f} | {top1:.3f} |")


if __name__ == "__main__":
    main()
