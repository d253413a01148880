"""Tiny random-weight causal LMs of the Hugging Face families ess analyses (built from configs of the
installed transformers; never a hub download). ``build(family, impl)`` returns the model in eval mode."""

from __future__ import annotations

from typing import Any, Dict

VOCAB = 64
WINDOW = 4  # sliding windows shorter than the test sequences

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)

FAMILIES: Dict[str, Dict[str, Any]] = {
    "llama": dict(_COMMON),
    "gpt2": dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
    "qwen2": dict(_COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": dict(_COMMON, head_dim=8, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "mistral": dict(_COMMON, head_dim=8, sliding_window=WINDOW),
    "mixtral": dict(_COMMON, head_dim=8, sliding_window=WINDOW, num_local_experts=2, num_experts_per_tok=1),
    "gemma": dict(_COMMON, head_dim=8),
    "gemma2": dict(_COMMON, head_dim=8, sliding_window=WINDOW, attn_logit_softcapping=2.0, query_pre_attn_scalar=8),
    "gemma3_text": dict(
        _COMMON, head_dim=8, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]
    ),
    "phi": dict(_COMMON, qk_layernorm=True),
    "phi3": dict(_COMMON, sliding_window=WINDOW),
    "gpt_neox": dict(_COMMON),
    "gptj": dict(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, bos_token_id=0, eos_token_id=0
    ),
    "opt": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=48,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    ),
    "falcon": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "bloom": dict(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=0
    ),
    "olmo2": dict(_COMMON),
    "smollm3": dict(_COMMON, no_rope_layer_interval=2),
    "gpt_oss": dict(
        _COMMON,
        head_dim=8,
        sliding_window=WINDOW,
        num_local_experts=2,
        num_experts_per_tok=1,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "cohere": dict(_COMMON, use_qk_norm=True),
    "starcoder2": dict(_COMMON, sliding_window=WINDOW),
    # hybrids: only their attention layers are analysed here (recurrent mixers: issue 12)
    "jamba": dict(
        _COMMON,
        num_experts=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    ),
    "bamba": dict(
        _COMMON,
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_n_groups=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=8,
    ),
    "zamba2": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        layers_block_type=["mamba", "hybrid"],
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        mamba_d_state=8,
        n_mamba_heads=4,
        mamba_ngroups=1,
        chunk_size=8,
        max_position_embeddings=64,
        use_mamba_kernels=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "falcon_h1": dict(
        _COMMON,
        mamba_d_ssm=64,
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_n_groups=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=8,
        head_dim=8,
    ),
    "nemotron_h": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        layers_block_type=["mamba", "attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        ssm_state_size=8,
        mamba_num_heads=4,
        mamba_head_dim=16,
        n_groups=1,
        conv_kernel=4,
        expand=2,
        chunk_size=8,
        max_position_embeddings=64,
        use_mamba_kernels=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "granitemoehybrid": dict(
        _COMMON,
        layer_types=["mamba", "attention"],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_n_groups=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=8,
        num_local_experts=2,
        num_experts_per_tok=1,
        shared_intermediate_size=48,
    ),
    "lfm2": dict(_COMMON, layer_types=["conv", "full_attention"]),
    "qwen3_next": dict(
        _COMMON,
        head_dim=8,
        layer_types=["linear_attention", "full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
    ),
    "recurrent_gemma": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        lru_width=32,
        attention_window_size=WINDOW,
        conv1d_width=4,
        block_types=["recurrent", "attention"],
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
}

HYBRIDS = (
    "jamba",
    "bamba",
    "zamba2",
    "falcon_h1",
    "nemotron_h",
    "granitemoehybrid",
    "lfm2",
    "qwen3_next",
    "recurrent_gemma",
)


def build(family: str, impl: str = "eager", seed: int = 0, dtype: Any = None) -> Any:
    import torch
    import transformers

    cfg = transformers.CONFIG_MAPPING[family](**FAMILIES[family])
    cfg._attn_implementation = impl
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
