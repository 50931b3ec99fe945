"""Writes a tiny random checkpoint of a supported MoE architecture with
Hugging Face transformers (the reference implementation), in the Hugging Face
layout premoe serves: config.json, model.safetensors, tokenizer.json (a real
one from ../shared/tokenizers, whose vocabulary size the model takes).

usage: make_tiny_model.py --arch ARCH --out DIR [--seed N] [--layers L]
                          [--experts E] [--top-k K] [--hidden H]
ARCH: qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek_v2, deepseek_v3
"""
import argparse
import os
import shutil

import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZERS = os.path.join(HERE, "..", "..", "shared", "tokenizers")
TOKENIZER_OF = {"qwen3_moe": "qwen3", "qwen2_moe": "qwen3", "olmoe": "qwen3",
                "mixtral": "llama2", "deepseek_v2": "deepseek_v3", "deepseek_v3": "deepseek_v3"}


def config_for(arch, vocab, layers, experts, top_k, hidden):
    inter = hidden * 2
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  num_experts_per_tok=top_k, tie_word_embeddings=False)
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**common, intermediate_size=inter, head_dim=hidden // 4,
                                           moe_intermediate_size=hidden, num_experts=experts,
                                           norm_topk_prob=True)
    if arch == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**common, intermediate_size=inter,
                                           moe_intermediate_size=hidden, num_experts=experts,
                                           shared_expert_intermediate_size=inter)
    if arch == "mixtral":
        return transformers.MixtralConfig(**common, intermediate_size=hidden,
                                          num_local_experts=experts)
    if arch == "olmoe":
        return transformers.OlmoeConfig(**common, intermediate_size=hidden, num_experts=experts)
    cls = transformers.DeepseekV3Config if arch == "deepseek_v3" else transformers.DeepseekV2Config
    extra = dict(n_group=2, topk_group=1) if arch == "deepseek_v3" else {}
    common["num_key_value_heads"] = 4
    return cls(**common, intermediate_size=inter, moe_intermediate_size=hidden,
               n_routed_experts=experts, n_shared_experts=1, first_k_dense_replace=1,
               q_lora_rank=hidden, kv_lora_rank=hidden // 2, qk_nope_head_dim=8,
               qk_rope_head_dim=8, v_head_dim=8, **extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=sorted(TOKENIZER_OF))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    args = ap.parse_args()

    tokenizer = os.path.join(TOKENIZERS, TOKENIZER_OF[args.arch] + ".tokenizer.json")
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(tokenizer).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(args.seed)
    config = config_for(args.arch, vocab, args.layers, args.experts, args.top_k, args.hidden)
    model = transformers.AutoModelForCausalLM.from_config(config)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    shutil.copyfile(tokenizer, os.path.join(args.out, "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.arch} ({n / 1e6:.1f}M parameters, vocab {vocab}) to {args.out}")


if __name__ == "__main__":
    main()
