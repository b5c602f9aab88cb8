"""Train a patched Qwen3-Next-style model with FSDP2, save it with DCP, load it into plain transformers.

A random-init Qwen3-Next-style causal LM (gated delta net layers, one softmax attention layer in
every four; about 0.5B parameters, or a ~1M ``--tiny`` one) is patched with
``fla_compile.hf.patch``, sharded per decoder layer with FSDP2 (``fully_shard``) and trained for
``--steps`` steps on a synthetic Markov-chain language (learnable: the loss falls below
log(vocab)). The global batch is the same at any world size: each rank takes ``global / world``
rows of it, so the losses of a 1-process and a 2-process run agree up to rounding. At the end the
model is saved with torch.distributed.checkpoint (DCP, sharded, one file per rank), with its
config and the logits of a probe batch, and rank 0 loads the checkpoint into an *unpatched*
transformers model (:func:`load_unpatched`) and compares its logits with the trained model's.

    # 1 or 2 GPUs (NCCL), ~0.5B parameters, bf16 compute (fp32 master weights), T=2048
    torchrun --nproc_per_node 1 examples/train_fsdp.py --steps 20
    torchrun --nproc_per_node 2 examples/train_fsdp.py --steps 20
    torchrun --nproc_per_node 2 examples/train_fsdp.py --steps 20 --compile   # torch.compile(backend="fla") per layer
    # CPU processes (gloo), the tiny config
    torchrun --nproc_per_node 2 examples/train_fsdp.py --tiny --device cpu --dtype float32 --steps 5

The MLPs are dense (``mlp_only_layers``; ``--moe`` keeps Qwen3-Next's experts): transformers' expert
loop is data dependent (a graph break per layer under torch.compile), and the linear-attention
layers are what this example exercises.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import transformers
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import fla_compile.backend  # noqa: F401  (registers "fla" where the package is not pip-installed)
import fla_compile.hf as fh

log = logging.getLogger("train_fsdp")

PROBE_FILE = "probe.pt"  # ids and the trained (patched) model's logits on them, next to the checkpoint


def build_config(tiny: bool, moe: bool = False) -> transformers.Qwen3NextConfig:
    """Qwen3-Next-style: 3 gated-delta layers, then 1 gated softmax attention layer, repeated."""
    if tiny:  # ~1M parameters: the tests' size
        hidden, layers, vocab, head, k_heads, v_heads, heads, inter = 128, 4, 512, 32, 2, 4, 4, 256
    else:  # ~0.5B
        hidden, layers, vocab, head, k_heads, v_heads, heads, inter = 1024, 24, 32000, 128, 8, 16, 16, 3072
    return transformers.Qwen3NextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        head_dim=head,
        linear_num_key_heads=k_heads,
        linear_num_value_heads=v_heads,
        linear_key_head_dim=head,
        linear_value_head_dim=head,
        linear_conv_kernel_dim=4,
        num_experts=8 if moe else 0,
        num_experts_per_tok=2,
        moe_intermediate_size=inter // 8,  # 8 experts, 2 active: ~0.5B in all with --moe too
        shared_expert_intermediate_size=inter // 8,
        mlp_only_layers=[] if moe else list(range(layers)),
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        tie_word_embeddings=False,
        initializer_range=0.02,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def global_batch(step: int, rows: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    """The step's global batch [rows, seq]: a Markov chain that follows a fixed random permutation of the
    vocabulary with probability 0.8 and jumps uniformly otherwise (entropy well below log(vocab))."""
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    jump = torch.rand(rows, seq, generator=g) >= 0.8
    noise = torch.randint(vocab, (rows, seq), generator=g)
    ids = torch.empty(rows, seq, dtype=torch.long)
    ids[:, 0] = noise[:, 0]
    for t in range(1, seq):
        ids[:, t] = torch.where(jump[:, t], noise[:, t], perm[ids[:, t - 1]])
    return ids


def setup(device: str):
    """(rank, world, device) of this process; initializes the default process group (NCCL on CUDA, else gloo)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    cuda = dev.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, device_id=dev if cuda else None)
    return rank, world, dev


def shard(model, dtype: torch.dtype, compile_layers: bool):
    """FSDP2 per decoder layer and at the root; with ``compile_layers`` each layer is first wrapped in
    ``torch.compile(backend="fla")`` (the checkpoint's names stay those of the plain model: DCP's
    state-dict helpers drop the ``_orig_mod`` prefix)."""
    low = dtype != torch.float32  # then fp32 master weights and gradient reduction, low-precision compute
    mp = MixedPrecisionPolicy(param_dtype=dtype if low else None, reduce_dtype=torch.float32 if low else None)
    layers = model.model.layers
    for i, layer in enumerate(layers):
        if compile_layers:
            layer = torch.compile(layer, backend="fla")
            layers[i] = layer
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def train(args) -> dict:
    rank, world, device = setup(args.device)
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} must be divisible by the world size {world}")
    micro = args.global_batch // world
    dtype = getattr(torch, args.dtype)
    config = build_config(args.tiny, args.moe)
    torch.manual_seed(args.seed)  # the same initial weights on every rank, before sharding
    with device:  # initialized where it trains (a CPU init of 0.5B parameters takes a while)
        model = transformers.Qwen3NextForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    report = fh.patch(model, verify=not args.no_verify)
    if rank == 0:
        log.info("%s, %.1fM parameters, world %d, micro-batch %d x %d", type(model).__name__, n_params / 1e6, world,
                 micro, args.seq)  # fmt: skip
        log.info("%s", report)
    shard(model, dtype, args.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, foreach=True)
    rows = slice(rank * micro, (rank + 1) * micro)
    losses, speeds = [], []
    model.train()
    for step in range(args.steps):
        ids = global_batch(step, args.global_batch, args.seq, config.vocab_size, args.seed)[rows].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)  # the same micro-batch size on every rank: the mean of means is the global mean
        mean = mean.item() / world  # (a host sync; it also ends the step for the timing)
        dt = time.perf_counter() - t0
        losses.append(mean)
        speeds.append(args.global_batch * args.seq / dt)
        if rank == 0:
            log.info("step %d/%d  loss %.4f  %.0f tokens/s (global)", step + 1, args.steps, mean, speeds[-1])
    out = dict(world=world, losses=losses, tokens_per_s=speeds, params=n_params)
    if args.ckpt:
        out["probe_err"] = save_and_check(model, config, args, rank, device, dtype)
    dist.barrier()
    dist.destroy_process_group()
    return out


def save_and_check(model, config, args, rank: int, device, dtype) -> float | None:
    """DCP checkpoint (every rank writes its shards), config.json and the probe logits; then rank 0 loads
    it into an unpatched model and returns the probe's relative logit error (None on other ranks)."""
    path = pathlib.Path(args.ckpt)
    probe = global_batch(10**6, 2, min(args.seq, 64), config.vocab_size, args.seed + 1)
    model.eval()
    with torch.no_grad():  # every rank runs the forward (FSDP gathers the weights)
        logits = model(input_ids=probe.to(device), use_cache=False).logits.float().cpu()
    dcp.save(get_model_state_dict(model), checkpoint_id=str(path))
    if rank == 0:
        config.save_pretrained(path)
        torch.save({"ids": probe, "logits": logits}, path / PROBE_FILE)
    dist.barrier()
    if rank != 0:
        return None
    plain = load_unpatched(path, dtype=dtype, device=device)
    with torch.no_grad():
        ref = plain(input_ids=probe.to(device), use_cache=False).logits.float().cpu()
    err = ((ref - logits).norm() / logits.norm()).item()
    log.info("checkpoint %s loaded into an unpatched %s: probe logits rel err %.2e", path, type(plain).__name__, err)
    return err


def load_unpatched(path, dtype=torch.float32, device="cpu") -> transformers.PreTrainedModel:
    """The causal LM saved by this script at ``path`` (DCP shards + config.json), as a plain transformers
    model: no fla_compile, no process group, any number of processes at save time."""
    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device(device):  # the random init is overwritten below; doing it on the device is quicker
        model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    state = model.state_dict()
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=True)  # in place, into the model's own tensors
    model.load_state_dict(state)
    return model.eval()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a ~1M-parameter config (tests)")
    p.add_argument("--moe", action="store_true", help="Qwen3-Next's sparse MoE MLPs instead of dense ones")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=16, help="sequences per step, over all ranks")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--lr", type=float, default=None, help="default: 3e-4 (1e-3 with --tiny)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--compile", action="store_true", help='torch.compile(backend="fla") each decoder layer')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default="ckpt_fsdp", help="DCP checkpoint directory ('' to skip saving)")
    p.add_argument("--metrics", default="", help="write the losses and speeds here as JSON (rank 0)")
    p.add_argument("--no-verify", action="store_true", help="patch without the numeric proofs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-3 if args.tiny else 3e-4
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = train(args)
    if int(os.environ.get("RANK", 0)) == 0:
        tail = out["tokens_per_s"][1:] or out["tokens_per_s"]
        log.info("done: loss %.4f -> %.4f (log vocab %.2f); median %.0f tokens/s after the first step", out["losses"][0],
                 out["losses"][-1], math.log(build_config(args.tiny).vocab_size), sorted(tail)[len(tail) // 2])  # fmt: skip
        if args.metrics:
            pathlib.Path(args.metrics).write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
