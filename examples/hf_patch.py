"""Patch a transformers linear-attention model with fla_compile, generate, and time it.

Builds a random Qwen3-Next-style model (3 gated-delta layers and 1 softmax layer in every 4),
a Mamba2, Mamba, FalconMamba, Jamba or RecurrentGemma model (no download), checks that patched and unpatched logits and greedy tokens
agree, prints the patch report and the speed-up of a prefill forward, a forward+backward
step and cached generation. On CPU our ops run their torch chunked path, like transformers'
own fallback, so expect about 1x there; the speed-up that matters is the GPU one (Triton).

    python examples/hf_patch.py --threads 1                       # tiny, CPU, a few seconds
    python examples/hf_patch.py --arch mamba2 --threads 1
    # the GPU measurement of the issue (about 4 layers, hidden 1024, B=4, T=2048, bf16):
    python examples/hf_patch.py --hidden 1024 --layers 4 --batch 4 --seq 2048 --dtype bfloat16 \\
        --train --gen-batch 16 --new-tokens 256
    python examples/hf_patch.py --arch mamba2 --hidden 1024 --layers 4 --batch 4 --seq 2048 \\
        --dtype bfloat16 --train --gen-batch 16 --new-tokens 256
    # Mamba1 / RG-LRU against transformers' token-by-token torch loop (--arch falcon_mamba, jamba too):
    python examples/hf_patch.py --arch mamba --hidden 1024 --layers 4 --batch 4 --seq 2048 \\
        --dtype bfloat16 --train --gen-batch 16 --new-tokens 64 --repeat 2
    python examples/hf_patch.py --arch recurrent_gemma --hidden 1024 --layers 3 --batch 4 --seq 2048 \\
        --dtype bfloat16 --train --gen-batch 16 --new-tokens 64 --repeat 2

Small CPU containers with a CPU quota can make every multi-threaded ATen op wait ~15 ms for
its worker threads (a one-row bmm included): ``--threads 1`` measures the code, not that.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import transformers

import fla_compile.hf as fh

VOCAB = 1000
ARCHS = ("qwen3_next", "mamba2", "mamba", "falcon_mamba", "jamba", "recurrent_gemma")


def build(arch: str, hidden: int, layers: int, device, dtype):
    tokens = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    heads = max(2, hidden // 64)
    if arch == "qwen3_next":
        config = transformers.Qwen3NextConfig(
            **tokens,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 4),
            head_dim=64,
            linear_num_key_heads=max(1, heads // 2),
            linear_num_value_heads=heads,
            linear_key_head_dim=64,
            linear_value_head_dim=64,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=hidden // 2,
            shared_expert_intermediate_size=hidden // 2,
            layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        )
        cls = transformers.Qwen3NextForCausalLM
    elif arch in ("mamba", "falcon_mamba"):
        name = "Mamba" if arch == "mamba" else "FalconMamba"
        config = getattr(transformers, f"{name}Config")(
            **tokens, hidden_size=hidden, num_hidden_layers=layers, expand=2, state_size=16
        )
        cls = getattr(transformers, f"{name}ForCausalLM")
    elif arch == "jamba":  # Mamba layers, one softmax layer in every 4, MoE MLPs in every other layer
        config = transformers.JambaConfig(
            **tokens,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 4),
            attn_layer_period=4,
            attn_layer_offset=3,
            num_experts=4,
            num_experts_per_tok=2,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=16,
            mamba_expand=2,
        )
        cls = transformers.JambaForCausalLM
    elif arch == "recurrent_gemma":  # two RG-LRU blocks, then a local-attention block
        config = transformers.RecurrentGemmaConfig(
            **tokens,
            hidden_size=hidden,
            intermediate_size=3 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            lru_width=hidden,
            attention_window_size=2048,
        )
        cls = transformers.RecurrentGemmaForCausalLM
    else:
        config = transformers.Mamba2Config(
            **tokens,
            hidden_size=hidden,
            num_hidden_layers=layers,
            expand=2,
            head_dim=64,
            num_heads=2 * hidden // 64,
            state_size=128,
            n_groups=1,
            chunk_size=256,
        )
        cls = transformers.Mamba2ForCausalLM
    torch.manual_seed(0)
    return cls(config).to(device=device, dtype=dtype).eval()


def timed(fn, repeat: int, device) -> float:
    fn()  # warm up (and compile the kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def measure(model, ids, prompt, args, device) -> dict:
    gen = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        attention_mask=torch.ones_like(prompt),
    )
    out = {}
    with torch.no_grad():
        out["logits"] = model(ids).logits.float()
        out["tokens"] = model.generate(prompt, **gen)
        out["fwd"] = timed(lambda: model(ids, use_cache=False), args.repeat, device)
        out["gen"] = timed(lambda: model.generate(prompt, **gen), 1, device)
    if args.train:

        def step():
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids, use_cache=False).loss.backward()

        model.train()
        out["train"] = timed(step, args.repeat, device)
        model.eval()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen3_next", choices=[*ARCHS])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=1, help="batch of the timed forward / training step")
    p.add_argument("--seq", type=int, default=512, help="length of the timed forward / training step")
    p.add_argument("--train", action="store_true", help="also time a forward+backward step")
    p.add_argument("--gen-batch", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args.arch, args.hidden, args.layers, device, getattr(torch, args.dtype))

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (args.batch, args.seq), generator=g).to(device)
    prompt = torch.randint(3, VOCAB, (args.gen_batch, 16), generator=g).to(device)

    judge = None
    if args.dtype != "float32":  # low precision: both runs are judged against the unpatched model in fp32
        import copy

        with torch.no_grad():
            judge = copy.deepcopy(model).float()(ids).logits.float()
    ref = measure(model, ids, prompt, args, device)
    report = fh.patch(model)
    print(report)
    new = measure(model, ids, prompt, args, device)
    fh.unpatch(model)

    err = ((new["logits"] - ref["logits"]).norm() / ref["logits"].norm()).item()
    same = torch.equal(new["tokens"], ref["tokens"])
    print(f"logits rel err patched vs unpatched: {err:.2e}; same {args.new_tokens} greedy tokens: {same}")
    if judge is not None:  # each low-precision run's own rounding, against fp32 (the patched one must not be worse)
        e_ref = ((ref["logits"] - judge).norm() / judge.norm()).item()
        e_new = ((new["logits"] - judge).norm() / judge.norm()).item()
        print(f"logits rel err against the unpatched model in fp32: unpatched {e_ref:.2e}, patched {e_new:.2e}")
    print(f"generated: {new['tokens'][0, 16:].tolist()}")
    where = f"{device.type}, {args.dtype}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    ntok = args.batch * args.seq
    rows = [("prefill forward", "fwd", ntok, f"B={args.batch} T={args.seq}")]
    if args.train:
        rows.append(("forward+backward", "train", ntok, f"B={args.batch} T={args.seq}"))
    rows.append(("generation", "gen", args.gen_batch * args.new_tokens, f"B={args.gen_batch}, {args.new_tokens} new"))
    for label, key, n, shape in rows:
        print(
            f"{label} ({shape}; {where}): unpatched {n / ref[key]:.0f} tok/s, patched {n / new[key]:.0f} tok/s, "
            f"speed-up {ref[key] / new[key]:.2f}x"
        )


if __name__ == "__main__":
    main()
