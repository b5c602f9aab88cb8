"""Patch a Qwen3-Next-style transformers model with fla_compile, generate, and time it.

Builds a small random Qwen3-Next model (3 gated-delta layers and 1 softmax layer per 4, no
download), checks that patched and unpatched logits and greedy tokens agree, prints the patch
report and the speed-up of a prefill forward and of cached generation. Runs on CPU (the
torch chunked path of our ops) or on a GPU (our Triton kernels). On CPU both sides run
chunked torch code, so expect about 1x there; the speed-up that matters is the GPU one.
Small CPU containers with a CPU quota can make every multi-threaded ATen op wait ~15 ms for
its worker threads (bmm of a single row included): ``--threads 1`` measures the code, not that.

    python examples/hf_patch.py --threads 1        # tiny, CPU, a few seconds
    python examples/hf_patch.py --hidden 1024 --layers 4 --seq 2048 --batch 4 --dtype bfloat16   # GPU
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

import fla_compile.hf as fh


def build(hidden: int, layers: int, device, dtype) -> Qwen3NextForCausalLM:
    heads = max(2, hidden // 64)
    config = Qwen3NextConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        head_dim=64,
        linear_num_key_heads=heads // 2,
        linear_num_value_heads=heads,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=hidden // 2,
        shared_expert_intermediate_size=hidden // 2,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return Qwen3NextForCausalLM(config).to(device=device, dtype=dtype).eval()


def timed(fn, repeat: int, device) -> float:
    fn()  # warm up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=512, help="prefill length of the timed forward")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    model = build(args.hidden, args.layers, device, dtype)

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (args.batch, args.seq), generator=g).to(device)
    prompt = ids[:, :16]
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    with torch.no_grad():
        ref_logits = model(ids).logits.float()
        ref_tokens = model.generate(prompt, attention_mask=torch.ones_like(prompt), **gen)
        t_fwd_ref = timed(lambda: model(ids, use_cache=False), args.repeat, device)
        t_gen_ref = timed(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), **gen), 1, device)

    report = fh.patch(model)
    print(report)
    with torch.no_grad():
        logits = model(ids).logits.float()
        tokens = model.generate(prompt, attention_mask=torch.ones_like(prompt), **gen)
        t_fwd = timed(lambda: model(ids, use_cache=False), args.repeat, device)
        t_gen = timed(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), **gen), 1, device)

    err = ((logits - ref_logits).norm() / ref_logits.norm()).item()
    print(
        f"logits rel err patched vs unpatched: {err:.2e}; same {args.new_tokens} greedy tokens: {torch.equal(tokens, ref_tokens)}"
    )
    print(f"generated: {tokens[0, 16:].tolist()}")
    ntok = args.batch * args.seq
    print(
        f"prefill forward B={args.batch} T={args.seq} on {device.type} ({torch.get_num_threads()} threads): unpatched {t_fwd_ref * 1e3:.1f} ms, "
        f"patched {t_fwd * 1e3:.1f} ms ({ntok / t_fwd:.0f} tok/s), speed-up {t_fwd_ref / t_fwd:.2f}x"
    )
    print(
        f"generate {args.new_tokens} tokens: unpatched {t_gen_ref:.2f} s, patched {t_gen:.2f} s, "
        f"speed-up {t_gen_ref / t_gen:.2f}x"
    )
    fh.unpatch(model)


if __name__ == "__main__":
    main()
