"""Reference models and outputs for tests/model/engine_test.cc, made by transformers.

Usage:
  engine_reference.py OUT_DIR [CASE ...]

For each case (all by default) builds a tiny random model with transformers
itself (fp32, seeded, >= 2 MoE layers, >= 8 experts, top-k >= 2), saves it
with save_pretrained() into OUT_DIR/<case>/ (the case "olmoe" sharded), and
writes OUT_DIR/<case>/reference.safetensors holding, for each prompt p:
  prompt_<p>          I64 [len]        the token ids
  logits_<p>          F32 [len, V]     transformers' logits (eager attention)
  router_<p>_<l>      F32 [len, N]     raw gate logits of MoE layer l
  selected_<p>_<l>    I64 [len, K]     the experts transformers routed to
  rweights_<p>_<l>    F32 [len, K]     their routing weights
  greedy_<p>          I64 [8]          generate(do_sample=False, 8 new tokens, no eos)
  grad:<param>        F32              (qwen3_moe, deepseek_v3) the gradient of every parameter
                                       (transformers' named_parameters) of the mean
                                       next-token cross-entropy of prompt 2
Special cases:
  qwen3_moe_reduced   a model whose MoE layers hold only the experts listed in
                      "kept_<l>" (I64), built by slicing the weights of case
                      qwen3_moe (same seed): its logits are the reference for
                      masked and reduced runs of qwen3_moe.
  qwen3_moe_fp8       the weights of a larger qwen3_moe quantised to F8_E4M3
                      with 128x128 block scales (weight_scale_inv); the
                      reference holds each quantised tensor dequantised
                      independently here ("deq:<name>"), and logits of the
                      transformers model running those dequantised weights.
Prints the case names written, one per line.
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

transformers.logging.set_verbosity_error()

VOCAB = 256
PROMPT_LENS = [1, 5, 11]
GREEDY_NEW = 8


def common(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, num_experts_per_tok=2,
                tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    base.update(kw)
    return base


def config_of(case):
    if case in ("qwen3_moe", "qwen3_moe_reduced"):
        return transformers.Qwen3MoeConfig(**common(
            head_dim=16, intermediate_size=96, moe_intermediate_size=32, num_experts=8,
            norm_topk_prob=True, mlp_only_layers=[0], num_hidden_layers=4, rope_theta=10000.0))
    if case == "qwen3_moe_fp8":
        return transformers.Qwen3MoeConfig(**common(
            hidden_size=192, head_dim=48, intermediate_size=160, moe_intermediate_size=160,
            num_experts=8, norm_topk_prob=False, num_hidden_layers=2))
    if case == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**common(
            intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3,
            shared_expert_intermediate_size=48, norm_topk_prob=False, mlp_only_layers=[1]))
    if case == "mixtral":
        return transformers.MixtralConfig(**common(
            intermediate_size=32, num_local_experts=8, sliding_window=4, head_dim=16))
    if case == "olmoe":
        return transformers.OlmoeConfig(**common(
            intermediate_size=32, num_experts=10, num_experts_per_tok=3, clip_qkv=3.0,
            norm_topk_prob=False, num_key_value_heads=4))
    if case == "deepseek_v3":
        return transformers.DeepseekV3Config(**common(
            num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
            n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
            n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=48, kv_lora_rank=32,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=2.5,
            norm_topk_prob=True, max_position_embeddings=1024,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64, "mscale": 1.0,
                             "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}))
    if case == "deepseek_v2":
        return transformers.DeepseekV2Config(**common(
            num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
            n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
            topk_method="group_limited_greedy", n_shared_experts=2, first_k_dense_replace=1,
            q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
            v_head_dim=16, routed_scaling_factor=1.5, max_position_embeddings=1024,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64, "mscale": 0.707,
                             "mscale_all_dim": 0.707}))
    raise ValueError(case)


def randomise(model, seed):
    """Weights of unit-scale activations (HF's 0.02 init makes every logit ~0,
    which would make a 1e-4 comparison meaningless)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))


def moe_layers(model):
    return [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")
            and not isinstance(layer.mlp.gate, torch.nn.Linear)]


def run_reference(model, out, prompts):
    """Logits, router taps (through hooks on each router) and greedy tokens."""
    captured = {}
    hooks = []
    for l in moe_layers(model):
        def hook(mod, args, output, l=l):
            captured[l] = output
        hooks.append(model.model.layers[l].mlp.gate.register_forward_hook(hook))
    for p, ids in enumerate(prompts):
        captured.clear()
        with torch.no_grad():
            logits = model(ids.unsqueeze(0)).logits[0]
        out[f"prompt_{p}"] = ids.clone()
        out[f"logits_{p}"] = logits.float().contiguous()
        for l, (router_logits, weights, indices) in captured.items():
            out[f"router_{p}_{l}"] = router_logits.float().contiguous()
            out[f"selected_{p}_{l}"] = indices.long().contiguous()
            out[f"rweights_{p}_{l}"] = weights.float().contiguous()
    for h in hooks:
        h.remove()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    for p, ids in enumerate(prompts):
        with torch.no_grad():
            gen = model.generate(ids.unsqueeze(0), do_sample=False, max_new_tokens=GREEDY_NEW,
                                 min_new_tokens=GREEDY_NEW)
        out[f"greedy_{p}"] = gen[0, ids.numel():].long().contiguous()


def make_prompts(seed):
    g = torch.Generator().manual_seed(seed + 7)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in PROMPT_LENS]


def build(case, seed=0):
    torch.manual_seed(seed)
    config = config_of(case)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()
    randomise(model, seed)
    return model


def reduce_qwen3(model, kept):
    """A qwen3_moe model holding only `kept[l]` experts in each MoE layer."""
    counts = {len(v) for v in kept.values()}
    assert len(counts) == 1
    config = config_of("qwen3_moe")
    config.num_experts = counts.pop()
    small = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    small.eval()
    sd = model.state_dict()
    new_sd = {}
    for name, t in sd.items():
        parts = name.split(".")
        if ".mlp." in name and "layers" in parts:
            l = int(parts[parts.index("layers") + 1])
            if l in kept:
                idx = torch.tensor(kept[l])
                if name.endswith("mlp.gate.weight") or name.endswith("experts.gate_up_proj") \
                        or name.endswith("experts.down_proj"):
                    t = t.index_select(0, idx)
        new_sd[name] = t
    small.load_state_dict(new_sd)
    return small


def quantise_fp8(w, block=128):
    """Block-wise e4m3 quantisation: returns (fp8 weight, fp32 scale_inv)."""
    rows, cols = w.shape
    br, bc = math.ceil(rows / block), math.ceil(cols / block)
    scale = torch.empty(br, bc)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantise(q, scale, block=128):
    out = q.to(torch.float32).clone()
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            out[i * block:(i + 1) * block, j * block:(j + 1) * block] *= scale[i, j]
    return out


def write_case(out_dir, case):
    d = os.path.join(out_dir, case)
    os.makedirs(d, exist_ok=True)
    ref = {}
    if case == "qwen3_moe_reduced":
        model = build("qwen3_moe")
        kept = {1: [0, 2, 3, 6, 7], 3: [1, 2, 4, 5, 7]}
        for l in (2,):
            kept[l] = [0, 1, 3, 5, 6]
        small = reduce_qwen3(model, kept)
        for l, v in kept.items():
            ref[f"kept_{l}"] = torch.tensor(v, dtype=torch.long)
        prompts = make_prompts(0)
        for p, ids in enumerate(prompts):
            with torch.no_grad():
                ref[f"logits_{p}"] = small(ids.unsqueeze(0)).logits[0].float().contiguous()
            ref[f"prompt_{p}"] = ids.clone()
        save_file(ref, os.path.join(d, "reference.safetensors"))
        return
    model = build(case)
    if case == "qwen3_moe_fp8":
        model.save_pretrained(d)
        path = os.path.join(d, "model.safetensors")
        tensors = load_file(path)
        out = {}
        for name, t in tensors.items():
            quantise = t.dim() == 2 and name.endswith("_proj.weight")
            if quantise:
                q, s = quantise_fp8(t)
                out[name] = q
                out[name[:-len("weight")] + "weight_scale_inv"] = s
                deq = dequantise(q, s)
                ref["deq:" + name] = deq
                tensors[name] = deq
            else:
                out[name] = t
        save_file(out, path, metadata={"format": "pt"})
        cfg_path = os.path.join(d, "config.json")
        cfg = json.load(open(cfg_path))
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                      "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}
        json.dump(cfg, open(cfg_path, "w"), indent=2)
        # The transformers model running the independently dequantised weights.
        deq_model = build(case)
        # Load hub-layout tensors through save/load round trip of a plain copy.
        tmp = os.path.join(d, "_deq")
        os.makedirs(tmp, exist_ok=True)
        deq_model.save_pretrained(tmp)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        deq_model = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, attn_implementation="eager", dtype=torch.float32)
        deq_model.eval()
        prompts = make_prompts(0)
        for p, ids in enumerate(prompts):
            with torch.no_grad():
                ref[f"logits_{p}"] = deq_model(ids.unsqueeze(0)).logits[0].float().contiguous()
            ref[f"prompt_{p}"] = ids.clone()
        shutil.rmtree(tmp)
        save_file(ref, os.path.join(d, "reference.safetensors"))
        return
    if case == "olmoe":
        model.save_pretrained(d, max_shard_size="100KB")
    else:
        model.save_pretrained(d)
    run_reference(model, ref, make_prompts(0))
    if case in ("qwen3_moe", "deepseek_v3"):
        add_gradients(model, ref, make_prompts(0)[2])
    save_file(ref, os.path.join(d, "reference.safetensors"))


def add_gradients(model, out, ids):
    """Gradients of the next-token loss: the reference for training through the engine."""
    model.zero_grad()
    logits = model(ids.unsqueeze(0)).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:])
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        out["grad:" + name] = p.grad.float().contiguous()
    model.zero_grad()


CASES = ["qwen3_moe", "qwen3_moe_reduced", "qwen2_moe", "mixtral", "olmoe", "deepseek_v3",
         "deepseek_v2", "qwen3_moe_fp8"]


def main():
    out_dir = sys.argv[1]
    cases = sys.argv[2:] or CASES
    for case in cases:
        write_case(out_dir, case)
        print(case)


if __name__ == "__main__":
    main()
