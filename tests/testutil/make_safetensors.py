"""Reference safetensors files for tests/checkpoint/safetensors_test.cc.

Everything here goes through the real `safetensors` library (and
huggingface_hub's shard splitting), so the C++ reader and writer are checked
against the implementation everyone else uses, not against our own reading of
the spec.

Subcommands (paths are absolute):
  reference OUT_DIR      write OUT_DIR/all_dtypes.safetensors (torch backend:
                         one tensor of every premoe dtype, a 0-d tensor and
                         empty ones), OUT_DIR/numpy.safetensors (numpy
                         backend) and a sharded checkpoint OUT_DIR/sharded/;
                         prints {"weight_map": {tensor: shard file}}
  dump PATH              read a .safetensors file, a directory or an index
                         with safe_open and print
                         {"metadata": {...}, "tensors": {name: {"dtype", "shape", "hex"}}}
  resave IN OUT          load IN with the library and save it again to OUT
                         (same tensors, same metadata)
  corpus OUT_DIR         write the fuzz seed corpus files
"""

import json
import os
import struct
import sys

import numpy as np
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

INDEX_NAME = "model.safetensors.index.json"


def all_dtype_tensors():
    # Values are exactly representable in their dtype, so the C++ test can
    # compute the expected bytes independently (bit patterns, memcpy).
    return {
        "f32": torch.tensor([[0.0, 1.5, -2.0], [3.25, 1024.0, -0.125]], dtype=torch.float32),
        "f16": torch.tensor([1.0, -2.0, 0.5, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.bfloat16),
        "f8_e4m3": torch.tensor([1.0, -2.0, 0.5, 448.0]).to(torch.float8_e4m3fn),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([[0, 1], [254, 255]], dtype=torch.uint8),
        "i32": torch.tensor([-(2**31), 7, 2**31 - 1], dtype=torch.int32),
        "i64": torch.tensor([-(2**63), 1234567890123], dtype=torch.int64),
        "scalar": torch.tensor(42.5, dtype=torch.float32),
        "empty": torch.zeros(0, dtype=torch.float32),
        "empty_2d": torch.zeros(2, 0, dtype=torch.int64),
        "empty_bf16": torch.zeros(0, 3, dtype=torch.bfloat16),
    }


def numpy_tensors():
    return {
        "a.f32": np.arange(6, dtype=np.float32).reshape(2, 3) * np.float32(0.25),
        "b.f16": np.array([1.0, -2.0, 0.5], dtype=np.float16),
        "c.i8": np.array([-1, 2], dtype=np.int8),
        "d.u8": np.array([7], dtype=np.uint8),
        "e.i32": np.array([[-5], [6]], dtype=np.int32),
        "f.i64": np.array(-3, dtype=np.int64),
    }


def sharded_state_dict():
    # Names as in a small MoE; values are small integers times powers of two,
    # exact in f32 and bf16.
    return {
        "model.embed_tokens.weight": torch.arange(32, dtype=torch.float32).reshape(8, 4) * 0.5,
        "model.layers.0.mlp.gate.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4) - 4,
        "model.layers.0.mlp.experts.0.w1": torch.arange(16, dtype=torch.bfloat16).reshape(4, 4),
        "model.layers.1.mlp.experts.0.w1": -torch.arange(16, dtype=torch.bfloat16).reshape(4, 4),
        "model.norm.weight": torch.ones(4, dtype=torch.float32),
        "lm_head.weight": torch.arange(32, dtype=torch.float32).reshape(8, 4) * -0.25,
    }


def write_sharded(directory, state_dict, max_shard_size):
    # What transformers' save_pretrained does for safetensors checkpoints.
    os.makedirs(directory, exist_ok=True)
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size)
    assert split.is_sharded, "the test checkpoint should need several shards"
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state_dict[name].contiguous() for name in names}
        save_file(shard, os.path.join(directory, filename), metadata={"format": "pt"})
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    with open(os.path.join(directory, INDEX_NAME), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return split.tensor_to_filename


def reference(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    save_file(all_dtype_tensors(), os.path.join(out_dir, "all_dtypes.safetensors"),
              metadata={"format": "pt", "source": "make_safetensors.py"})
    save_numpy(numpy_tensors(), os.path.join(out_dir, "numpy.safetensors"))
    weight_map = write_sharded(os.path.join(out_dir, "sharded"), sharded_state_dict(),
                               max_shard_size=200)
    print(json.dumps({"weight_map": weight_map}, sort_keys=True))


def files_of(path):
    """The .safetensors files of a file, a directory or an index path."""
    if os.path.isdir(path):
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(single):
            return [single]
        path = os.path.join(path, INDEX_NAME)
    if path.endswith(".json"):
        with open(path) as f:
            index = json.load(f)
        directory = os.path.dirname(path)
        return [os.path.join(directory, s) for s in sorted(set(index["weight_map"].values()))]
    return [path]


def raw_bytes(tensor):
    # reshape(-1) first: view(uint8) refuses 0-d tensors of wider dtypes.
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def dump(path):
    out = {"metadata": {}, "tensors": {}}
    for file in files_of(path):
        with safe_open(file, framework="pt") as f:
            out["metadata"].update(f.metadata() or {})
            for name in f.keys():
                s = f.get_slice(name)
                out["tensors"][name] = {
                    "dtype": s.get_dtype(),
                    "shape": list(s.get_shape()),
                    "hex": raw_bytes(f.get_tensor(name)).hex(),
                }
    print(json.dumps(out, sort_keys=True))


def resave(src, dst):
    with safe_open(src, framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(src), dst, metadata=metadata)


def corpus(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    save_file({"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([3], dtype=torch.int8)},
              os.path.join(out_dir, "valid_two_tensors.safetensors"), metadata={"format": "pt"})
    save_file({"s": torch.tensor(1.0, dtype=torch.bfloat16),
               "e": torch.zeros(0, 2, dtype=torch.float16)},
              os.path.join(out_dir, "valid_scalar_and_empty.safetensors"))

    def raw(header, data):
        h = header.encode()
        return struct.pack("<Q", len(h)) + h + data

    with open(os.path.join(out_dir, "invalid_hole.safetensors"), "wb") as f:
        f.write(raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}', b"\0" * 4))
    with open(os.path.join(out_dir, "invalid_overlap.safetensors"), "wb") as f:
        f.write(raw('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
                    '"b":{"dtype":"I8","shape":[2],"data_offsets":[2,4]}}', b"\0" * 4))


def main(argv):
    commands = {"reference": reference, "dump": dump, "resave": resave, "corpus": corpus}
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
