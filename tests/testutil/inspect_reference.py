"""Reference numbers for tests/checkpoint/inspect_test.cc, counted by transformers.

Usage:
  inspect_reference.py OUT_DIR
      Saves tiny random models with save_pretrained() under OUT_DIR/<case>/ and
      prints, as one JSON list on stdout, what each model holds according to
      its nn.Module (never according to the checkpoint's header, which is what
      premoe reads): layers, MoE layers, expert counts, and parameter counts
      and byte sizes per category.

  inspect_reference.py deepseek_v3_full OUT_DIR
      Writes OUT_DIR/config.json (DeepSeek-V3's hub config, FP8) and a sparse
      ~690 GB checkpoint in the hub's layout: 63 shards and an index, per-expert
      tensors, F8_E4M3 linear weights with F32 [ceil(rows/128), ceil(cols/128)]
      weight_scale_inv companions, and the multi-token-prediction layer 61.
      Only the headers hold data; the files are truncated to their full size
      without writing the tensor bytes (holes). Prints one JSON object: the
      main model's parameter counts from the nn.Module (instantiated on the
      meta device), the bytes per category of what was written, and the MTP
      layer's parameters and bytes.

Cases of the first mode: every architecture of make_configs.py's tiny models
in the per-expert (hub) layout and the fused layout (save_original_format=False),
plus models with dense layers between MoE layers, tied embeddings, 16-bit
dtypes and sharded checkpoints (save_pretrained's max_shard_size).

The categories are taken from the module tree, as the modeling code builds it:
  embeddings      model.embed_tokens, lm_head (once when tied)
  norms           model.norm, each layer's input/post_attention_layernorm
  attention       each layer's self_attn (q/k norms included)
  dense_mlp       the mlp of a layer without routed experts
  routed_experts  mlp.experts of a MoE layer
  routers         mlp.gate of a MoE layer (with persistent buffers such as
                  deepseek_v3's e_score_correction_bias)
  shared_experts  mlp.shared_expert(s) and mlp.shared_expert_gate
  other           anything in the state dict not in the above (expected 0)
Counts are over the state dict (parameters plus persistent buffers), each
tensor once (tied weights share one); bytes are numel * element_size.

Only the final JSON goes to stdout; transformers' chatter goes to stderr.
"""

import contextlib
import json
import os
import re
import struct
import sys

import torch
import transformers
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_configs  # noqa: E402  (TINY, TINY_MOE: the shared tiny configs)

transformers.logging.set_verbosity_error()

CATEGORIES = ("embeddings", "norms", "attention", "dense_mlp", "routed_experts", "routers",
              "shared_experts", "other")


def tiny_kwargs(model_type, **overrides):
    kwargs = dict(make_configs.TINY)
    kwargs.update(make_configs.TINY_MOE[model_type])
    kwargs.update(overrides)
    return kwargs


# Case name -> (model_type, config kwargs, dtype, save_pretrained kwargs).
CASES = {}
for _model_type in make_configs.TINY_MOE:
    CASES[f"{_model_type}_per_expert"] = (_model_type, tiny_kwargs(_model_type), torch.float32, {})
    CASES[f"{_model_type}_fused"] = (_model_type, tiny_kwargs(_model_type), torch.float32,
                                     {"save_original_format": False})
CASES.update({
    # MoE only in layer 1 (sparse step 2, layer 3 forced dense), tied
    # embeddings (no lm_head.weight in the file), bf16.
    "qwen3_moe_dense_layers_tied_bf16": (
        "qwen3_moe",
        tiny_kwargs("qwen3_moe", num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[3],
                    tie_word_embeddings=True, num_experts=8, num_experts_per_tok=2),
        torch.bfloat16, {}),
    # Sharded, per-expert, bf16, 8 experts top-2 (default budgets 8, 4, 2).
    "qwen2_moe_sharded_bf16": (
        "qwen2_moe", tiny_kwargs("qwen2_moe", num_experts=8, num_hidden_layers=3),
        torch.bfloat16, {"max_shard_size": "24KB"}),
    # Sharded, fused, fp16.
    "mixtral_fused_sharded_fp16": (
        "mixtral", tiny_kwargs("mixtral", num_local_experts=6), torch.float16,
        {"max_shard_size": "40KB", "save_original_format": False}),
    # Two dense layers before the MoE layers, 16 experts top-4, bf16.
    "deepseek_v3_wide_bf16": (
        "deepseek_v3",
        tiny_kwargs("deepseek_v3", num_hidden_layers=4, first_k_dense_replace=2,
                    n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                    n_shared_experts=2),
        torch.bfloat16, {}),
})


def walk(model):
    """Yields (category, module) over the module tree; see the categories above."""
    base = model.model
    yield "embeddings", base.embed_tokens
    yield "embeddings", model.lm_head
    yield "norms", base.norm
    for layer in base.layers:
        yield "attention", layer.self_attn
        yield "norms", layer.input_layernorm
        yield "norms", layer.post_attention_layernorm
        mlp = layer.mlp
        if getattr(mlp, "experts", None) is None:
            yield "dense_mlp", mlp
            continue
        yield "routed_experts", mlp.experts
        yield "routers", mlp.gate
        for name in ("shared_expert", "shared_experts", "shared_expert_gate"):
            if getattr(mlp, name, None) is not None:
                yield "shared_experts", getattr(mlp, name)
    # Whatever the walk above did not reach.
    yield "other", model


class Tally:
    """Parameter and byte counts per category, each tensor counted once."""

    def __init__(self):
        self.params = {c: 0 for c in CATEGORIES}
        self.bytes = {c: 0 for c in CATEGORIES}
        self.seen = set()

    def add(self, category, module):
        for tensor in module.state_dict(keep_vars=True).values():
            if id(tensor) in self.seen:
                continue
            self.seen.add(id(tensor))
            self.params[category] += tensor.numel()
            self.bytes[category] += tensor.numel() * tensor.element_size()


def describe(model, config):
    base = model.model
    tally = Tally()
    for category, module in walk(model):
        tally.add(category, module)
    moe_layers, dense_layers, expert_layers = [], [], []
    num_experts = 0
    shared_intermediate = 0
    for index, layer in enumerate(base.layers):
        mlp = layer.mlp
        experts = getattr(mlp, "experts", None)
        if experts is None:
            dense_layers.append(index)
            continue
        moe_layers.append(index)
        tensors = list(experts.state_dict(keep_vars=True).values())
        count = tensors[0].shape[0]
        assert all(t.shape[0] == count for t in tensors), [t.shape for t in tensors]
        num_experts = count
        expert_params = sum(t.numel() for t in tensors)
        expert_bytes = sum(t.numel() * t.element_size() for t in tensors)
        assert expert_params % count == 0 and expert_bytes % count == 0
        expert_layers.append({"layer": index, "num_experts": count,
                              "params_per_expert": expert_params // count,
                              "bytes_per_expert": expert_bytes // count})
        for name in ("shared_expert", "shared_experts"):
            shared = getattr(mlp, name, None)
            if shared is not None:
                shared_intermediate = shared.gate_proj.out_features

    if config.model_type.startswith("deepseek"):
        num_shared = config.n_shared_experts if moe_layers else 0
    else:
        num_shared = 1 if shared_intermediate > 0 else 0
    params, nbytes = tally.params, tally.bytes
    total_params, total_bytes = sum(params.values()), sum(nbytes.values())
    non_expert = {"params": total_params - params["routed_experts"],
                  "bytes": total_bytes - nbytes["routed_experts"]}
    return {
        "architecture": config.model_type,
        "num_layers": len(base.layers),
        "moe_layers": moe_layers,
        "dense_layers": dense_layers,
        "num_routed_experts": num_experts,
        "top_k": config.num_experts_per_tok,
        "num_shared_experts": num_shared,
        "shared_expert_intermediate_size": shared_intermediate,
        "hidden_size": base.embed_tokens.embedding_dim,
        "vocab_size": base.embed_tokens.num_embeddings,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "params": dict(params, total=total_params, non_expert=non_expert["params"]),
        "bytes": dict(nbytes, total=total_bytes, non_expert=non_expert["bytes"]),
        "expert_layers": expert_layers,
    }


def checkpoint_files(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    num_tensors = 0
    for file in files:
        with safe_open(os.path.join(path, file), "pt") as f:
            num_tensors += len(list(f.keys()))
    return {"files": files, "num_tensors": num_tensors,
            "sharded": os.path.exists(os.path.join(path, "model.safetensors.index.json"))}


def make_cases(out_dir):
    result = []
    for name, (model_type, kwargs, dtype, save_kwargs) in CASES.items():
        config = transformers.CONFIG_MAPPING[model_type](**kwargs)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
        path = os.path.join(out_dir, name)
        model.save_pretrained(path, **save_kwargs)
        result.append({"name": name, "path": path, "dtype": str(dtype).removeprefix("torch."),
                       "expect": describe(model, config), "checkpoint": checkpoint_files(path)})
    return result


DTYPE_SIZE = {"F8_E4M3": 1, "BF16": 2, "F32": 4}


def block_scale_shape(shape):
    return [-(-shape[0] // 128), -(-shape[1] // 128)]


def hub_tensors(prefix, local, tensor, category):
    """The hub checkpoint's tensors for one state-dict entry of DeepSeek-V3:
    (name, dtype, shape, category). Fused experts are split per expert; 2-D
    projection weights are FP8 with a block-wise scale."""
    shape = list(tensor.shape)
    if category == "routed_experts":
        assert local in ("gate_up_proj", "down_proj"), local
        count = shape[0]
        if local == "gate_up_proj":
            parts = [("gate_proj", [shape[1] // 2, shape[2]]),
                     ("up_proj", [shape[1] // 2, shape[2]])]
        else:
            parts = [("down_proj", shape[1:])]
        out = []
        for e in range(count):
            for proj, part in parts:
                name = f"{prefix}.{e}.{proj}"
                out.append((f"{name}.weight", "F8_E4M3", part, category))
                out.append((f"{name}.weight_scale_inv", "F32", block_scale_shape(part), category))
        return out
    name = f"{prefix}.{local}" if prefix else local
    if local.endswith("e_score_correction_bias"):
        return [(name, "F32", shape, category)]
    if local.endswith("_proj.weight") and len(shape) == 2:
        return [(name, "F8_E4M3", shape, category),
                (name + "_scale_inv", "F32", block_scale_shape(shape), category)]
    return [(name, "BF16", shape, category)]


def write_sparse_shards(path, shards):
    """Writes each shard's safetensors header and extends the file to its full
    size with a hole; writes model.safetensors.index.json."""
    weight_map = {}
    total = 0
    count = len(shards)
    for index, tensors in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
        header = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, _ in tensors:
            size = DTYPE_SIZE[dtype]
            for d in shape:
                size *= d
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = file
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(os.path.join(path, file), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + offset)
        total += offset
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def make_deepseek_v3_full(path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(make_configs.HUB_CASES["deepseek_v3_hub_fp8"], f, indent=2)
    config = transformers.AutoConfig.from_pretrained(path)
    del config.quantization_config  # the module structure is the same
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    expect = describe(model, config)
    del expect["bytes"]  # of the meta model's dtype; the written bytes follow

    names = {id(m): n for n, m in model.named_modules()}
    tensors, seen = [], set()
    for category, module in walk(model):
        prefix = names[id(module)]
        for local, tensor in module.state_dict(keep_vars=True).items():
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            tensors.extend(hub_tensors(prefix, local, tensor, category))

    # The MTP layer (61): a copy of the last decoder layer's tensors plus its
    # own embedding, norms, projection and head, as in the hub checkpoint.
    layers = config.num_hidden_layers
    last = f"model.layers.{layers - 1}."
    mtp = f"model.layers.{layers}."
    h, v = config.hidden_size, config.vocab_size
    mtp_tensors = [(mtp + n[len(last):], d, s, "mtp") for n, d, s, _ in tensors
                   if n.startswith(last)]
    mtp_tensors += [(mtp + "embed_tokens.weight", "BF16", [v, h], "mtp"),
                    (mtp + "enorm.weight", "BF16", [h], "mtp"),
                    (mtp + "hnorm.weight", "BF16", [h], "mtp"),
                    (mtp + "eh_proj.weight", "BF16", [h, 2 * h], "mtp"),
                    (mtp + "shared_head.norm.weight", "BF16", [h], "mtp"),
                    (mtp + "shared_head.head.weight", "BF16", [v, h], "mtp")]

    # One shard per decoder layer, one for the rest, one for the MTP layer.
    shards = {}
    for t in tensors:
        match = re.match(r"model\.layers\.(\d+)\.", t[0])
        shards.setdefault(int(match.group(1)) if match else -1, []).append(t)
    ordered = [shards[k] for k in sorted(shards)] + [mtp_tensors]
    write_sparse_shards(path, ordered)

    def numel(shape):
        n = 1
        for d in shape:
            n *= d
        return n

    params = {c: 0 for c in CATEGORIES + ("mtp",)}
    nbytes = {c: 0 for c in CATEGORIES + ("mtp",)}
    for name, dtype, shape, category in tensors + mtp_tensors:
        if not name.endswith("_scale_inv"):
            params[category] += numel(shape)
        nbytes[category] += numel(shape) * DTYPE_SIZE[dtype]
    # The checkpoint holds exactly the module's parameters (scales aside).
    for c in CATEGORIES:
        assert params[c] == expect["params"][c], (c, params[c], expect["params"][c])
    expert_bytes = sum(numel(s) * DTYPE_SIZE[d] for n, d, s, _ in tensors
                       if n.startswith(f"model.layers.{layers - 1}.mlp.experts.0."))
    return {"path": path, "expect": expect, "mtp_params": params["mtp"],
            "bytes": dict(nbytes, total=sum(nbytes.values()),
                          non_expert=sum(nbytes.values()) - nbytes["routed_experts"]
                          - nbytes["mtp"]),
            "bytes_per_expert": expert_bytes,
            "num_tensors": len(tensors) + len(mtp_tensors), "num_files": len(ordered)}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "deepseek_v3_full":
        make = lambda: make_deepseek_v3_full(sys.argv[2])  # noqa: E731
    elif len(sys.argv) == 2:
        make = lambda: make_cases(sys.argv[1])  # noqa: E731
    else:
        raise SystemExit(f"usage: {sys.argv[0]} [deepseek_v3_full] OUT_DIR")
    with contextlib.redirect_stdout(sys.stderr):
        result = make()
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
