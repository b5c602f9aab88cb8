"""Tiny configs of every architecture ``fla_compile.hf`` knows: hidden 64, 2-4 layers, vocab 100.

``packed`` names how the model is told about packed sequences: "cu_seq_lens_q" (the
FlashAttentionKwargs offsets the gated-delta / KDA / lightning layers read) or "seq_idx" (what
the Mamba2-family mixers read); position_ids restart per sequence for the softmax layers. None:
the model passes no packing to its layers (Mamba1's blocks drop **kwargs), nothing to test.
"""

from __future__ import annotations

import dataclasses

TOKENS = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
HYBRID = ["linear_attention", "full_attention"]
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
GDN = dict(
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_conv_kernel_dim=4,
)
ATTN = dict(hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str  # human name, used in skips
    config: str  # transformers config class
    model: str  # transformers causal LM class
    layer: str  # the layer class we patch
    kind: str
    kwargs: dict
    packed: str | None = "cu_seq_lens_q"
    composite: dict | None = None  # a multimodal config: kwargs go to text_config, these to vision_config
    # layer_types of the packed-sequence test, where the model's softmax layers ignore packing
    packed_layer_types: tuple[str, ...] | None = None
    # the submodule that takes packed-sequence kwargs, where the causal LM drops them
    packed_module: str | None = None


ARCHS = [
    Arch(
        "Qwen3-Next",
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        "Qwen3NextGatedDeltaNet",
        "gated_delta",
        dict(**ATTN, **GDN, **MOE, num_hidden_layers=2, layer_types=HYBRID),
    ),
    Arch(
        "Qwen3.5",
        "Qwen3_5TextConfig",
        "Qwen3_5ForCausalLM",
        "Qwen3_5GatedDeltaNet",
        "gated_delta",
        dict(**ATTN, **GDN, num_hidden_layers=2, layer_types=HYBRID),
    ),
    Arch(
        "Qwen3.5-MoE",
        "Qwen3_5MoeTextConfig",
        "Qwen3_5MoeForCausalLM",
        "Qwen3_5MoeGatedDeltaNet",
        "gated_delta",
        dict(
            **{k: v for k, v in ATTN.items() if k != "intermediate_size"},
            **GDN,
            **MOE,
            num_hidden_layers=2,
            layer_types=HYBRID,
        ),
    ),
    Arch(
        "OLMo-hybrid",
        "OlmoHybridConfig",
        "OlmoHybridForCausalLM",
        "OlmoHybridGatedDeltaNet",
        "gated_delta",
        dict(**{k: v for k, v in ATTN.items() if k != "head_dim"}, **GDN, num_hidden_layers=2, layer_types=HYBRID),
    ),
    Arch(
        "Qwen4-exp",
        "Qwen4ExpTextConfig",
        "Qwen4ExpForCausalLM",
        "Qwen4ExpTextGatedDeltaNet",
        "gated_delta",
        dict(
            **{k: v for k, v in ATTN.items() if k != "intermediate_size"},
            **GDN,
            **MOE,
            num_hidden_layers=2,
            layer_types=HYBRID,
            hc_count=2,
            hc_lowrank=8,
            indexer_n_heads=2,
            indexer_kv_heads=1,
            indexer_head_dim=16,
            indexer_budget=16,
            indexer_compress_ratio=4,
        ),
    ),
    Arch(
        "Kimi-Linear",
        "KimiLinearConfig",
        "KimiLinearForCausalLM",
        "KimiLinearDeltaAttention",
        "kda",
        dict(
            hidden_size=64,
            intermediate_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            linear_head_dim=16,
            linear_num_heads=4,
            layer_types=HYBRID,
        ),
    ),
    Arch(
        "Bailing-hybrid",
        "BailingHybridConfig",
        "BailingHybridForCausalLM",
        "BailingHybridDeltaAttention",
        "kda",
        dict(
            hidden_size=64,
            intermediate_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            layer_types=HYBRID,
        ),
    ),
    Arch(
        "GLM5-next",
        "Glm5NextConfig",
        "Glm5NextForConditionalGeneration",
        "Glm5NextTextLinearAttention",
        "kda",
        dict(
            hidden_size=64,
            intermediate_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_routed_experts=4,
            num_experts_per_tok=2,
            kv_lora_rank=16,
            q_lora_rank=32,
            qk_rope_head_dim=0,
            qk_nope_head_dim=16,
            v_head_dim=16,
            linear_head_dim=16,
            linear_num_heads=4,
            index_head_dim=16,
            index_n_heads=2,
            index_topk=16,
            index_kpool=4,
            layer_types=HYBRID,
        ),
        composite=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=32, out_hidden_size=64),
        packed_layer_types=("linear_attention", "linear_attention"),  # its DSA attention does not pack
    ),
    Arch(
        "MiniMax",
        "MiniMaxConfig",
        "MiniMaxForCausalLM",
        "MiniMaxLightningAttention",
        "lightning",
        dict(**ATTN, num_hidden_layers=2, num_local_experts=2, num_experts_per_tok=1, block_size=8, layer_types=HYBRID),
    ),
    Arch(
        "Mamba2",
        "Mamba2Config",
        "Mamba2ForCausalLM",
        "Mamba2Mixer",
        "ssd",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_heads=8,
            head_dim=16,
            state_size=16,
            n_groups=2,
            expand=2,
            chunk_size=16,
        ),
        packed="seq_idx",
        packed_module="backbone",  # Mamba2ForCausalLM does not pass **kwargs on
    ),
    Arch(
        "Bamba",
        "BambaConfig",
        "BambaForCausalLM",
        "BambaMixer",
        "ssd",
        dict(
            **ATTN,
            num_hidden_layers=2,
            attn_layer_indices=[1],
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=16,
            mamba_chunk_size=16,
        ),
        packed="seq_idx",
    ),
    Arch(
        "FalconH1",
        "FalconH1Config",
        "FalconH1ForCausalLM",
        "FalconH1Mixer",
        "ssd",
        dict(
            **ATTN,
            num_hidden_layers=2,
            mamba_d_ssm=128,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=16,
            mamba_chunk_size=16,
        ),
        packed="seq_idx",
    ),
    Arch(
        "NemotronH",
        "NemotronHConfig",
        "NemotronHForCausalLM",
        "NemotronHMamba2Mixer",
        "ssd",
        dict(
            **ATTN,
            layers_block_type=["mamba", "attention", "mamba", "mlp"],
            ssm_state_size=16,
            mamba_num_heads=8,
            mamba_head_dim=16,
            n_groups=2,
            chunk_size=16,
        ),
        packed="seq_idx",
    ),
    Arch(
        "GraniteMoeHybrid",
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        "GraniteMoeHybridMambaLayer",
        "ssd",
        dict(
            **{k: v for k, v in ATTN.items() if k != "head_dim"},
            num_hidden_layers=2,
            layer_types=["mamba", "attention"],
            num_local_experts=4,
            num_experts_per_tok=2,
            shared_intermediate_size=32,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=16,
            mamba_chunk_size=16,
        ),
        packed="seq_idx",
        packed_layer_types=("mamba", "mamba"),  # its attention does not split packed rows
    ),
    Arch(
        "Zamba2",
        "Zamba2Config",
        "Zamba2ForCausalLM",
        "Zamba2MambaMixer",
        "ssd",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            layers_block_type=["mamba", "hybrid"],
            num_attention_heads=4,
            num_key_value_heads=4,
            n_mamba_heads=8,
            mamba_headdim=16,
            mamba_ngroups=2,
            mamba_d_state=16,
            chunk_size=16,
            num_mem_blocks=1,
            intermediate_size=64,
        ),
        packed="seq_idx",
    ),
    Arch(
        "Mamba",
        "MambaConfig",
        "MambaForCausalLM",
        "MambaMixer",
        "mamba",
        dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, time_step_rank=8, tie_word_embeddings=False),
        packed=None,
    ),
    Arch(
        "FalconMamba",
        "FalconMambaConfig",
        "FalconMambaForCausalLM",
        "FalconMambaMixer",
        "mamba",
        dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, time_step_rank=8, tie_word_embeddings=False),
        packed=None,
    ),
    Arch(
        "Jamba",
        "JambaConfig",
        "JambaForCausalLM",
        "JambaMambaMixer",
        "mamba",
        dict(
            **ATTN,
            num_hidden_layers=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            num_experts=4,
            num_experts_per_tok=2,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=16,
            mamba_expand=2,
            mamba_dt_rank=8,
            use_mamba_kernels=False,
        ),
        packed=None,
    ),
    Arch(
        "RecurrentGemma",
        "RecurrentGemmaConfig",
        "RecurrentGemmaForCausalLM",
        "RecurrentGemmaRglru",
        "rglru",
        dict(
            **{k: v for k, v in ATTN.items() if k != "head_dim"},
            num_hidden_layers=2,
            block_types=["recurrent", "attention"],
            lru_width=64,
            attention_window_size=64,
            tie_word_embeddings=False,
        ),
        packed=None,
    ),
]
