"""Greedy decoding with each decode step replayed from one CUDA graph: ``fla_compile.hf.generate``.

transformers' ``generate`` drives every token from Python: hundreds of small kernel launches per
step, plus host round trips (the next token, stopping criteria). At small batch sizes that, not the
math, sets the speed. Here one whole decode step (the model on one token per row, the argmax, the
bookkeeping) is captured once in a ``torch.cuda.CUDAGraph`` and replayed:

- the cache is transformers' ``StaticCache``: softmax layers hold preallocated keys and values and a
  device-side length; linear-attention layers (ours after ``patch``) update their conv and recurrent
  states in place (``copy_``), so every replay reads and writes the same addresses;
- the step's inputs are static buffers it advances itself: the current token [B, 1] (the argmax is
  written back into it), the positions [B, 1] (``add_(1)``), the output buffer and its write index;
  the 2D attention mask [B, L] is the prompt's mask followed by ones, constant over the decode (the
  causal part of the mask hides the slots not written yet);
- mixture-of-experts layers run the decode steps with transformers' ``batched_mm`` experts where the
  model's own would read the routing on the host (``grouped_mm`` outside its CUDA fast path, bf16 on
  sm90/sm100: fp32 copies the group offsets to the host; ``eager`` loops over the experts hit), which
  a capture refuses; the prefill keeps the model's own (``sync_free_experts``);
- rows that produced an end-of-sequence token emit ``pad_token_id`` afterwards, as ``generate``
  does; the host looks at the tokens only every ``check_every`` steps (to stop early) and at the end.

The first ``warmup`` decode steps run eagerly (on a side stream, as capture wants): kernels compile
and any tuning happens then; capture itself runs nothing, and tuning never runs inside it
(``lowering.common.autotune.capturing``). The prefill runs eagerly, at any prompt length. Without
CUDA (or with ``cuda_graph=False``) the same step runs eagerly: the same tokens, slower.

Greedy only. A layer whose cache keeps host-side counters (transformers' static sliding-window
layers) would have them frozen by the capture: such models are not supported here.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable

import torch

log = logging.getLogger("fla_compile.hf")

CACHE_NAMES = ("cache", "past_key_values", "cache_params")  # what transformers versions call the cache argument
SYNC_FREE_EXPERTS = "batched_mm"  # transformers' experts implementation with no host read (gathers each pair's weights)
# models whose mixers multiply the hidden states by a 2D mask taken as the step's own [B, T] (Mamba1): their
# prepare_inputs_for_generation drops the mask once a state is cached, and so do the decode steps here
NO_STEP_MASK = ("mamba", "falcon_mamba")
# models this decoder cannot drive, and why
UNSUPPORTED = {
    "recurrent_gemma": "its recurrent blocks keep their state in module attributes, outside the cache (a captured "
    "step would replay reads of the first step's tensors), and its local attention's static cache keeps host-side "
    "counters",
}


def _params(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _experts_sync_on_host(model) -> bool:
    """Whether a MoE experts module of ``model`` would read the routing on the host (on CUDA) in a decode step."""
    for m in model.modules():
        if not hasattr(type(m), "_apply_gate") or not hasattr(m, "config"):  # transformers' @use_experts_implementation
            continue
        impl = getattr(m.config, "_experts_implementation", None)
        if impl in (None, "eager"):  # the model's loop over the experts hit (nonzero, then one matmul per expert)
            return True
        if impl == "grouped_mm":  # torch's fast path (no host read) is bf16 on sm90 / sm100 only
            w = next(m.parameters())
            fast = w.is_cuda and w.dtype == torch.bfloat16 and torch.cuda.get_device_capability(w.device)[0] in (9, 10)
            if not fast:
                return True
    return False


@contextlib.contextmanager
def sync_free_experts(model, swap: bool):
    """The model's experts implementation set to ``SYNC_FREE_EXPERTS`` inside (when ``swap``), restored after."""
    if not swap:
        yield
        return
    saved = model.get_experts_implementation()
    model.set_experts_implementation(SYNC_FREE_EXPERTS)
    try:
        yield
    finally:
        model.set_experts_implementation(saved)


def cuda_graph_capture(step: Callable[[], None]) -> tuple[Callable[[], None], bool]:
    """Capture ``step`` in a CUDA graph (nothing runs during capture); returns (replay, False)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay, False


class GraphDecoder:
    """Greedy decoding of a causal LM for ``batch_size`` rows of up to ``max_len`` tokens (prompt included).

    The cache, the step's buffers and the captured graph are made once and reused by every
    ``generate`` call of this decoder (the cache is reset in place between calls), so repeated calls
    capture nothing.

    cuda_graph: replay the step from a CUDA graph (default: when the model is on CUDA); else eager steps.
    warmup: eager decode steps before the capture (kernels compile, tuning happens, during these).
    eos_token_id / pad_token_id: as ``generate``'s (None / []: no end of sequence; pad defaults to the
    first eos id, else 0). check_every: steps between the host's looks at whether every row ended.
    capture: ``capture(step) -> (replay, ran)`` in place of the CUDA graph capture; ``ran`` says whether
    capturing ran the step once for real (a tracer does; a CUDA graph capture does not).
    """

    def __init__(
        self,
        model,
        batch_size: int,
        max_len: int,
        *,
        cuda_graph: bool | None = None,
        warmup: int = 2,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        check_every: int = 32,
        capture: Callable | None = None,
    ):
        import transformers

        params = _params(model)
        self.cache_arg = next((n for n in CACHE_NAMES if n in params), None)
        if self.cache_arg is None:
            raise TypeError(f"fla_compile.hf.generate: {type(model).__name__}.forward takes no cache argument")
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in UNSUPPORTED:
            raise ValueError(
                f"fla_compile.hf.generate: {type(model).__name__} is not supported: {UNSUPPORTED[model_type]}; "
                "use model.generate"
            )
        self.step_mask = model_type not in NO_STEP_MASK
        self.model, self.B, self.L = model, batch_size, max_len
        self.device = model.get_input_embeddings().weight.device
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"fla_compile.hf.generate: cuda_graph=True needs a model on CUDA, got {self.device}")
        self.capture = capture or (cuda_graph_capture if cuda_graph else None)
        self.cuda = cuda_graph and capture is None
        self.warmup, self.check_every = max(1, warmup), max(1, check_every)
        self.pass_positions = "position_ids" in params
        self.keep_logits = "logits_to_keep" in params
        self.cache = transformers.StaticCache(config=model.config, max_cache_len=max_len)
        # every decode step (eager or captured, on any device: the same tokens) runs sync-free experts
        self.swap_experts = hasattr(model, "set_experts_implementation") and _experts_sync_on_host(model)
        if self.swap_experts:
            log.info("fla_compile.hf.generate: decode steps of %s use the %s experts (the model's read the routing "
                     "on the host)", type(model).__name__, SYNC_FREE_EXPERTS)  # fmt: skip
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        dev, long = self.device, dict(dtype=torch.long, device=self.device)
        self.eos = torch.tensor(eos, **long)
        self.pad = torch.tensor(pad_token_id if pad_token_id is not None else (eos[0] if eos else 0), **long)
        self.tok = torch.zeros(batch_size, 1, **long)
        self.pos = torch.zeros(batch_size, 1, **long)
        self.mask = torch.ones(batch_size, max_len, **long)
        self.out = torch.zeros(batch_size, max_len, **long)
        self.i = torch.zeros(1, **long)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=dev)
        self.replay = None
        self.steps_run = dict(eager=0, replayed=0)

    # the step: every tensor it reads or writes is one of the buffers above, the cache or the weights
    def _step(self) -> None:
        kw = {self.cache_arg: self.cache, "use_cache": True, "attention_mask": self.mask if self.step_mask else None}
        if self.pass_positions:
            kw["position_ids"] = self.pos
        logits = self.model(input_ids=self.tok, **kw).logits[:, -1]
        self._advance(logits.argmax(-1))
        self.pos.add_(1)

    def _advance(self, nxt: torch.Tensor) -> None:
        """Record the next token of each row [B] (pad after the row's end), make it the next input."""
        if self.eos.numel():
            nxt = torch.where(self.done, self.pad, nxt)
            self.done |= (nxt[:, None] == self.eos).any(-1)
        self.tok.copy_(nxt[:, None])
        self.out.index_copy_(1, self.i, nxt[:, None])
        self.i.add_(1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, attention_mask=None) -> torch.Tensor:
        """[B, T] prompt (left-padded where ``attention_mask`` has zeros) -> [B, T + n] tokens, n <= max_new_tokens
        (fewer when every row ended with an eos token; as ``model.generate(do_sample=False)``)."""
        B, T = input_ids.shape
        if B != self.B or T + max_new_tokens > self.L:
            raise ValueError(
                f"fla_compile.hf.generate: this decoder takes {self.B} rows of prompt + new tokens <= {self.L}, "
                f"got input_ids {tuple(input_ids.shape)} and max_new_tokens={max_new_tokens}"
            )
        if max_new_tokens < 1:
            return input_ids
        ids = input_ids.to(self.device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device, torch.long)
        self.cache.reset()
        self.done.zero_()
        self.i.zero_()
        self.mask.fill_(1)
        self.mask[:, :T].copy_(mask)
        # prefill, eager: positions count the prompt's real tokens (left padding at position 1, as generate)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        kw = {self.cache_arg: self.cache, "use_cache": True, "attention_mask": mask}
        if self.pass_positions:
            kw["position_ids"] = pos
        if self.keep_logits:
            kw["logits_to_keep"] = 1
        logits = self.model(input_ids=ids, **kw).logits[:, -1]
        self.pos.copy_(mask.sum(-1, keepdim=True))
        self._advance(logits.argmax(-1))
        with sync_free_experts(self.model, self.swap_experts):
            self._decode(max_new_tokens - 1)
        return torch.cat([ids, self.out[:, : self._length(max_new_tokens)]], 1)

    def _decode(self, todo: int) -> None:
        """``todo`` more steps: warm-up and capture on the first call, replays (or eager steps) after."""
        if self.replay is None and self.capture is not None:  # warm up (over calls), then capture once
            n = min(todo, self.warmup - self.steps_run["eager"])
            self._eager_steps(n)
            todo -= n
            if todo > 0:
                self.replay, ran = self._capture()
                todo -= int(ran)
        while todo > 0:
            n = min(todo, self.check_every)
            if self.replay is None:
                self._eager_steps(n)
            else:
                for _ in range(n):
                    self.replay()
                self.steps_run["replayed"] += n
            todo -= n
            if todo and self.eos.numel() and bool(self.done.all()):  # one host sync per check_every steps
                break

    def _eager_steps(self, n: int) -> None:
        if self.cuda:  # warm-up before capture goes on a side stream (as torch.cuda.graph wants)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(n):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            for _ in range(n):
                self._step()
        self.steps_run["eager"] += n

    def _capture(self):
        log.info("fla_compile.hf.generate: capturing the decode step of %s (B=%d, L=%d)", type(self.model).__name__,
                 self.B, self.L)  # fmt: skip
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return self.capture(self._step)

    def _length(self, max_new_tokens: int) -> int:
        """Tokens to return: all steps run, cut after the step where the last row ended (as generate)."""
        n = min(int(self.i.item()), max_new_tokens)
        if not self.eos.numel():
            return n
        ended = (self.out[:, :n, None] == self.eos).any(-1)
        if not bool(ended.any(-1).all()):
            return n
        return int(ended.int().argmax(-1).max().item()) + 1


def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    *,
    cuda_graph: bool | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy ``model.generate`` with the decode step replayed from a CUDA graph (on CUDA; eager elsewhere).

    Returns [B, T + n] token ids, as ``model.generate(input_ids, attention_mask=..., do_sample=False,
    max_new_tokens=...)`` does. ``eos_token_id`` / ``pad_token_id`` default to the model's generation
    config. One call builds a ``GraphDecoder`` (a static cache and one capture); to generate repeatedly,
    build a ``GraphDecoder`` once and call its ``generate``.
    """
    cfg = getattr(model, "generation_config", None)
    if eos_token_id is None:
        eos_token_id = getattr(cfg, "eos_token_id", None)
    if pad_token_id is None:
        pad_token_id = getattr(cfg, "pad_token_id", None)
    dec = GraphDecoder(
        model,
        input_ids.shape[0],
        input_ids.shape[1] + max_new_tokens,
        cuda_graph=cuda_graph,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return dec.generate(input_ids, max_new_tokens, attention_mask)
