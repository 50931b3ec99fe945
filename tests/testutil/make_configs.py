"""Reference configs for tests/checkpoint/config_test.cc, made and read by transformers.

Usage:
  make_configs.py configs OUT_DIR
      Writes OUT_DIR/<case>/config.json for every case below (HF config classes
      through save_pretrained, plus hub-style legacy JSON) and prints, as one
      JSON list on stdout, what transformers makes of each: the config's
      attributes as AutoConfig.from_pretrained() reads them back, and what the
      modeling code builds from them. The model is instantiated on the meta
      device, so even the full-size defaults cost no memory: the list of MoE
      layers, expert shapes, head_dim, biases, RoPE scaling and the attention
      softmax scale all come from the modules themselves.
  make_configs.py tensors OUT_DIR
      Saves a tiny random model (2 layers, 4 experts) of each architecture with
      save_pretrained(), in the default per-expert layout and fused
      (save_original_format=False), and prints each checkpoint's config path
      and tensor names/shapes as read back by the safetensors library.

Only the final JSON goes to stdout; transformers' chatter goes to stderr.
"""

import contextlib
import json
import os
import sys

import torch
import transformers
from safetensors import safe_open

transformers.logging.set_verbosity_error()

# Configs written by the HF config classes: case name -> (model_type, kwargs).
HF_CONFIG_CASES = {
    # All defaults: what `Config()` writes. deepseek_v2's HF default top-k is
    # None, which its router cannot run with; that case is an expected error.
    "qwen3_moe_defaults": ("qwen3_moe", {}),
    "qwen2_moe_defaults": ("qwen2_moe", {}),
    "mixtral_defaults": ("mixtral", {}),
    "olmoe_defaults": ("olmoe", {}),
    "deepseek_v2_defaults_with_top_k": ("deepseek_v2", {"num_experts_per_tok": 6}),
    "deepseek_v3_defaults": ("deepseek_v3", {}),
    # Non-default values for every field the engine reads.
    "qwen3_moe_custom": ("qwen3_moe", dict(
        vocab_size=1000, hidden_size=96, intermediate_size=200, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=True,
        use_sliding_window=True, sliding_window=512, decoder_sparse_step=2, mlp_only_layers=[3],
        moe_intermediate_size=48, num_experts_per_tok=3, num_experts=12, norm_topk_prob=True,
        router_aux_loss_coef=0.01, bos_token_id=5, eos_token_id=[6, 7], pad_token_id=0,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                         "original_max_position_embeddings": 512},
        dtype="bfloat16")),
    "qwen2_moe_custom": ("qwen2_moe", dict(
        vocab_size=500, hidden_size=64, intermediate_size=100, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=256,
        max_window_layers=3, decoder_sparse_step=2, mlp_only_layers=[1], qkv_bias=False,
        shared_expert_intermediate_size=80, moe_intermediate_size=24, num_experts=6,
        num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
        dtype="float16")),
    "qwen2_moe_no_experts": ("qwen2_moe", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3,
        num_experts=0)),
    "mixtral_custom": ("mixtral", dict(
        vocab_size=300, hidden_size=64, intermediate_size=100, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=128,
        num_local_experts=6, num_experts_per_tok=3, router_aux_loss_coef=0.02,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4},
        bos_token_id=None, eos_token_id=[2, 3])),
    "olmoe_custom": ("olmoe", dict(
        vocab_size=300, hidden_size=64, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=4, clip_qkv=8.0, attention_bias=True,
        norm_topk_prob=True, num_experts=16, num_experts_per_tok=4, eos_token_id=[1, 2],
        pad_token_id=None, router_aux_loss_coef=0.05)),
    "deepseek_v2_custom": ("deepseek_v2", dict(
        vocab_size=300, hidden_size=128, intermediate_size=200, num_hidden_layers=4,
        num_attention_heads=8, first_k_dense_replace=2, q_lora_rank=None, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=16,
        num_experts_per_tok=4, n_group=4, topk_group=2, topk_method="group_limited_greedy",
        routed_scaling_factor=1.5, n_shared_experts=2, moe_intermediate_size=24, mlp_bias=True,
        attention_bias=True, norm_topk_prob=True, max_position_embeddings=4096,
        rope_parameters={"rope_type": "yarn", "factor": 8.0,
                         "original_max_position_embeddings": 512, "mscale": 0.707,
                         "mscale_all_dim": 0.707, "rope_theta": 1e4})),
    "deepseek_v3_custom": ("deepseek_v3", dict(
        vocab_size=300, hidden_size=128, intermediate_size=200, num_hidden_layers=5,
        num_attention_heads=8, num_key_value_heads=8, first_k_dense_replace=1, q_lora_rank=48,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=1.25, n_shared_experts=2, moe_intermediate_size=24,
        norm_topk_prob=False, rope_interleave=False, num_mtp_layers=2, tie_word_embeddings=True,
        max_position_embeddings=163840,
        rope_parameters={"rope_type": "yarn", "factor": 40.0,
                         "original_max_position_embeddings": 4096, "beta_fast": 32,
                         "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "rope_theta": 10000.0})),
}

# Hub-style legacy JSON, modelled on the real checkpoints' config.json (top-level
# rope_theta, rope_scaling with "type", torch_dtype, pre-v5 key spellings).
HUB_CASES = {
    "qwen3_moe_hub_30b_a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1,
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
        "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32,
        "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
        "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "qwen2_moe_hub_a2_7b": {
        "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632,
        "max_position_embeddings": 8192, "max_window_layers": 21, "model_type": "qwen2_moe",
        "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936, "decoder_sparse_step": 1,
        "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
        "num_experts_per_tok": 4, "num_experts": 60, "norm_topk_prob": False,
        "output_router_logits": False, "router_aux_loss_coef": 0.001,
    },
    "mixtral_hub_8x7b": {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
        "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_theta": 1e6, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 32000,
    },
    "olmoe_hub_1b_7b": {
        "architectures": ["OlmoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "clip_qkv": None, "eos_token_id": 50279, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 1024, "max_position_embeddings": 4096,
        "model_type": "olmoe", "norm_topk_prob": False, "num_attention_heads": 16,
        "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 16,
        "num_key_value_heads": 16, "output_router_logits": False, "pad_token_id": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01, "tie_word_embeddings": False, "torch_dtype": "float32",
        "use_cache": True, "vocab_size": 50304,
    },
    "deepseek_v2_hub_lite": {
        "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 100000,
        "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
        "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
        "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16,
        "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
        "pretraining_tp": 1, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
        "seq_aux": True, "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy",
        "torch_dtype": "bfloat16", "use_cache": True, "v_head_dim": 128, "vocab_size": 102400,
    },
    "deepseek_v3_hub_fp8": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1,
        "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
        "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
        "max_position_embeddings": 163840, "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
        "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "weight_block_size": [128, 128]},
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "seq_aux": True, "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": True,
        "v_head_dim": 128, "vocab_size": 129280,
    },
    # Only a model_type: every field takes the class default.
    "qwen3_moe_minimal": {"model_type": "qwen3_moe"},
    "qwen2_moe_minimal": {"model_type": "qwen2_moe"},
    "mixtral_minimal": {"model_type": "mixtral"},
    "olmoe_minimal": {"model_type": "olmoe"},
    "deepseek_v2_minimal_with_top_k": {"model_type": "deepseek_v2", "num_experts_per_tok": 6},
    "deepseek_v3_minimal": {"model_type": "deepseek_v3"},
    # Aliases and precedence: HF sets the attribute_map alias after the field.
    "qwen3_moe_both_expert_keys": {
        "model_type": "qwen3_moe", "num_experts": 8, "num_local_experts": 16,
        "num_hidden_layers": 2, "torch_dtype": "float16", "dtype": "bfloat16",
    },
    "mixtral_num_experts_alias": {
        "model_type": "mixtral", "num_local_experts": 16, "num_experts": 4, "num_hidden_layers": 2,
    },
    "deepseek_v3_alias_and_mtp": {
        "model_type": "deepseek_v3", "n_routed_experts": 256, "num_local_experts": 64,
        "num_mtp_layers": 3, "num_hidden_layers": 4,
    },
    # A rope_theta inside rope_parameters wins over the top-level one; a
    # non-empty legacy rope_scaling replaces rope_parameters.
    "qwen3_moe_rope_precedence": {
        "model_type": "qwen3_moe", "num_hidden_layers": 2, "rope_theta": 5e5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 3e4},
    },
    "qwen3_moe_rope_scaling_wins": {
        "model_type": "qwen3_moe", "num_hidden_layers": 2, "rope_theta": 5e5,
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "rope_parameters": {"rope_type": "default", "rope_theta": 7.0},
    },
    "qwen2_moe_explicit_layer_types": {
        "model_type": "qwen2_moe", "num_hidden_layers": 3, "use_sliding_window": True,
        "sliding_window": 64,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
    },
}


def rope_expectation(config, rotary):
    rp = config.rope_parameters
    rope_type = rp.get("rope_type", "default")
    out = {
        "rope_type": rotary.rope_type,
        "rope_theta": float(rp["rope_theta"]),
        # The RoPE initialiser's own post-processing scale (1 except yarn).
        "rope_attention_factor": float(rotary.attention_scaling),
        # Rotary width: inv_freq holds one frequency per pair.
        "rotary_dim": 2 * int(rotary.inv_freq.shape[0]),
    }
    if rope_type != "default":
        out["rope_factor"] = float(rp["factor"])
    if rope_type == "yarn":
        out["rope_original_max_position_embeddings"] = int(rp["original_max_position_embeddings"])
        out["rope_beta_fast"] = float(rp.get("beta_fast") or 32)
        out["rope_beta_slow"] = float(rp.get("beta_slow") or 1)
        out["rope_mscale"] = float(rp.get("mscale") or 0)
        out["rope_mscale_all_dim"] = float(rp.get("mscale_all_dim") or 0)
    return out


def describe(model_type, config, model):
    """What transformers does with `config`, in the C++ ModelConfig's terms."""
    base = model.model
    layers = base.layers
    num_layers = len(layers)
    deepseek = model_type.startswith("deepseek")
    moe_layers = [i for i, layer in enumerate(layers) if hasattr(layer.mlp, "experts")]
    dense_layers = [i for i in range(num_layers) if i not in moe_layers]
    attn = layers[0].self_attn

    e = {
        "architecture": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": float(config.rms_norm_eps),
        "hidden_act": config.hidden_act,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "bos_token_id": config.bos_token_id,
        "pad_token_id": config.pad_token_id,
        "eos_token_ids": ([] if config.eos_token_id is None else
                          list(config.eos_token_id) if isinstance(config.eos_token_id, list)
                          else [config.eos_token_id]),
        "dtype": None if config.dtype is None else str(config.dtype).replace("torch.", ""),
        "moe_layers": moe_layers,
        "attention_scale": float(attn.scaling),
        "layer_sliding_windows": [],
    }
    e.update(rope_expectation(config, base.rotary_emb))
    qc = getattr(config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict):
        qc = qc.to_dict()
    e["quantization_config"] = qc
    if hasattr(config, "router_aux_loss_coef"):
        e["router_aux_loss_coef"] = float(config.router_aux_loss_coef)

    # Attention projections.
    if deepseek:
        e["head_dim"] = config.head_dim
        e["q_lora_rank"] = attn.q_a_proj.out_features if attn.q_a_proj is not None else None
        e["kv_lora_rank"] = attn.kv_a_layernorm.weight.shape[0]
        e["qk_nope_head_dim"] = attn.qk_nope_head_dim
        e["qk_rope_head_dim"] = attn.qk_rope_head_dim
        e["v_head_dim"] = attn.v_head_dim
        e["attention_bias"] = attn.o_proj.bias is not None
        # v3 reads config.rope_interleave; v2 always rotates complex pairs.
        e["rope_interleave"] = bool(getattr(config, "rope_interleave", True))
        e["first_k_dense_replace"] = config.first_k_dense_replace
    else:
        e["head_dim"] = attn.head_dim
        e["attention_bias"] = attn.o_proj.bias is not None
        e["qkv_bias"] = attn.q_proj.bias is not None
        if hasattr(attn, "q_norm"):
            e["qk_norm"] = "per_head" if attn.q_norm.weight.shape[0] == attn.head_dim else "full"
        else:
            e["qk_norm"] = "none"
    if model_type == "olmoe":
        e["clip_qkv"] = config.clip_qkv
    if model_type == "deepseek_v2" and dense_layers:
        e["mlp_bias"] = layers[dense_layers[0]].mlp.gate_proj.bias is not None
    if model_type == "deepseek_v3":
        e["num_nextn_predict_layers"] = config.num_nextn_predict_layers

    # Sliding windows, per layer, as the attention/mask code picks them.
    for i, layer in enumerate(layers):
        if model_type == "qwen2_moe":
            w = config.sliding_window if config.layer_types[i] == "sliding_attention" else None
        elif model_type == "qwen3_moe":
            w = layer.self_attn.sliding_window
        elif model_type == "mixtral":
            w = config.sliding_window
        else:
            w = None
        e["layer_sliding_windows"].append(w)

    # Dense MLP width, from a dense layer if there is one.
    if dense_layers:
        e["dense_intermediate_size"] = layers[dense_layers[0]].mlp.gate_proj.out_features

    # Experts and router, from the first MoE layer.
    if moe_layers:
        mlp = layers[moe_layers[0]].mlp
        gate = mlp.gate
        num_experts, two_i, hidden = mlp.experts.gate_up_proj.shape
        e["num_routed_experts"] = int(num_experts)
        e["moe_intermediate_size"] = int(two_i) // 2
        e["num_experts_per_tok"] = gate.top_k
        # Mixtral's router renormalises unconditionally and deepseek_v2's never
        # does; the others keep the flag on the router module.
        e["norm_topk_prob"] = bool(getattr(gate, "norm_topk_prob",
                                           model_type == "mixtral"))
        e["scoring_func"] = "sigmoid" if hasattr(gate, "e_score_correction_bias") else "softmax"
        if hasattr(gate, "e_score_correction_bias"):
            e["topk_method"] = "noaux_tc"
        else:
            e["topk_method"] = getattr(gate, "topk_method", "greedy")
        e["routed_scaling_factor"] = float(getattr(gate, "routed_scaling_factor", 1.0))
        if deepseek:
            e["n_group"] = gate.num_group
            e["topk_group"] = gate.topk_group
        if hasattr(mlp, "shared_expert"):
            e["shared_intermediate_size"] = mlp.shared_expert.gate_proj.out_features
        elif hasattr(mlp, "shared_experts"):
            e["shared_intermediate_size"] = mlp.shared_experts.gate_proj.out_features
        else:
            e["shared_intermediate_size"] = 0
    if model_type in ("qwen3_moe", "qwen2_moe"):
        e["decoder_sparse_step"] = config.decoder_sparse_step
        e["mlp_only_layers"] = list(config.mlp_only_layers)
    return e


def reference(path, model_type):
    config = transformers.AutoConfig.from_pretrained(path)
    assert config.model_type == model_type, (config.model_type, model_type)
    # Quantized weights are irrelevant to the module structure.
    if getattr(config, "quantization_config", None) is not None:
        qc = config.quantization_config
        del config.quantization_config
    else:
        qc = None
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    if qc is not None:
        config.quantization_config = qc
    return describe(model_type, config, model)


def make_configs(out_dir):
    cases = []
    for name, (model_type, kwargs) in HF_CONFIG_CASES.items():
        path = os.path.join(out_dir, name)
        transformers.CONFIG_MAPPING[model_type](**kwargs).save_pretrained(path)
        cases.append({"name": name, "path": os.path.join(path, "config.json"),
                      "expect": reference(path, model_type)})
    for name, data in HUB_CASES.items():
        path = os.path.join(out_dir, name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(data, f, indent=2)
        cases.append({"name": name, "path": os.path.join(path, "config.json"),
                      "expect": reference(path, data["model_type"])})
    # What Config() writes for deepseek_v2: a null top-k.
    path = os.path.join(out_dir, "deepseek_v2_hf_defaults")
    transformers.DeepseekV2Config().save_pretrained(path)
    cases.append({"name": "deepseek_v2_hf_defaults", "path": os.path.join(path, "config.json"),
                  "expect_error": "\"num_experts_per_tok\" must be an integer, got null"})
    return cases


# eos and bos set: some architectures' defaults (olmoe's eos 50279) lie
# outside a 64-id vocabulary, which premoe refuses.
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2)
TINY_MOE = {
    "qwen3_moe": dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, head_dim=8),
    "qwen2_moe": dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                      shared_expert_intermediate_size=24),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "deepseek_v2": dict(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
                        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4,
                        v_head_dim=8, first_k_dense_replace=1, n_shared_experts=1,
                        num_key_value_heads=4),
    "deepseek_v3": dict(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
                        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4,
                        v_head_dim=8, first_k_dense_replace=1, n_shared_experts=1, n_group=2,
                        topk_group=1, num_key_value_heads=4),
}


def list_tensors(path):
    tensors = {}
    for file in sorted(os.listdir(path)):
        if file.endswith(".safetensors"):
            with safe_open(os.path.join(path, file), "pt") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    tensors[key] = {"dtype": s.get_dtype(), "shape": list(s.get_shape())}
    return tensors


def make_tensors(out_dir):
    result = []
    for model_type, extra in TINY_MOE.items():
        kwargs = dict(TINY)
        kwargs.update(extra)
        config = transformers.CONFIG_MAPPING[model_type](**kwargs)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        for layout, original in (("per_expert", True), ("fused", False)):
            path = os.path.join(out_dir, f"{model_type}_{layout}")
            model.save_pretrained(path, save_original_format=original)
            result.append({"architecture": model_type, "layout": layout,
                           "path": os.path.join(path, "config.json"),
                           "tensors": list_tensors(path)})
    return result


def main():
    mode, out_dir = sys.argv[1], sys.argv[2]
    with contextlib.redirect_stdout(sys.stderr):
        if mode == "configs":
            result = make_configs(out_dir)
        elif mode == "tensors":
            result = make_tensors(out_dir)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
