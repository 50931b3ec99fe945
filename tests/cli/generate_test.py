"""`premoe generate` against Hugging Face transformers.

For tiny random checkpoints written by transformers itself
(scripts/make_tiny_model.py), greedy `premoe generate` must print exactly
the text that the `tokenizers` library decodes from transformers' greedy
`generate` tokens for the same prompt (encoded with add_special_tokens=True).
Also checked: --keep (mask file and first:M), --stop (text stop strings),
--dump-router-logits, and that bad input exits 1 with a message.

usage: generate_test.py --premoe PATH [--arch ARCH ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_TINY = os.path.join(HERE, "..", "..", "scripts", "make_tiny_model.py")
ARCHS = ["qwen3_moe", "mixtral", "deepseek_v3", "qwen2_moe", "olmoe", "deepseek_v2"]
# Architectures that also get the --keep, --stop and dump checks (the others
# only the greedy parity: those flags' code paths do not depend on the
# architecture, and each premoe run loads libtorch).
FULL = {"qwen3_moe", "mixtral", "deepseek_v3"}
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Grüße aus Zürich: 東京 ✓"]
EXPERTS, TOP_K, NEW_TOKENS = 8, 2, 8

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL {what}", flush=True)


def run(binary, model, prompt, *flags, greedy_fp32=True):
    base = ["--temperature", "0", "--max-new-tokens", str(NEW_TOKENS), "--dtype", "fp32"]
    return subprocess.run([binary, "generate", "--model", model, "--prompt", prompt,
                           *(base if greedy_fp32 else []), *flags], capture_output=True, timeout=300)


def moe_layers(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    layers = c["num_hidden_layers"]
    if c["model_type"] in ("deepseek_v2", "deepseek_v3"):
        return [l for l in range(layers) if l >= c.get("first_k_dense_replace", 0)
                and l % c.get("moe_layer_freq", 1) == 0]
    if c["model_type"] == "qwen2_moe":
        step = c.get("decoder_sparse_step", 1)
        return [l for l in range(layers) if l not in c.get("mlp_only_layers", [])
                and (l + 1) % step == 0]
    return list(range(layers))


def reference(model_dir, prompt):
    """Text of transformers' greedy completion, eos and what follows cut."""
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    ids = tok.encode(prompt, add_special_tokens=True).ids
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS,
                             pad_token_id=model.config.eos_token_id or 0)
    new = out[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    for i, t in enumerate(new):
        if t in eos:
            new = new[:i]
            break
    return tok.decode(new, skip_special_tokens=False), ids


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def test_arch(binary, arch, tmp):
    model = os.path.join(tmp, arch)
    subprocess.run([sys.executable, MAKE_TINY, "--arch", arch, "--out", model, "--layers", "2",
                    "--experts", str(EXPERTS), "--top-k", str(TOP_K), "--hidden", "32"],
                   check=True, capture_output=True)
    layers = moe_layers(model)
    for n, prompt in enumerate(PROMPTS):
        want, prompt_ids = reference(model, prompt)
        proc = run(binary, model, prompt)
        got = proc.stdout.decode("utf-8")
        check(proc.returncode == 0, f"{arch} prompt {n}: exit {proc.returncode}: {proc.stderr.decode()}")
        check(got == want, f"{arch} prompt {n}: premoe printed {got!r}, transformers {want!r}")
        print(f"{arch} prompt {n}: {got!r}", flush=True)
        if n > 0 or arch not in FULL:
            continue

        # A mask file keeping every expert, and first:M keeping all M=N, change nothing.
        all_file = write_json(os.path.join(tmp, f"{arch}_all.json"),
                              {"layers": {str(l): list(range(EXPERTS)) for l in layers}})
        for spec in (all_file, f"first:{EXPERTS}"):
            proc = run(binary, model, prompt, "--keep", spec)
            check(proc.returncode == 0 and proc.stdout.decode("utf-8") == want,
                  f"{arch} --keep {spec}: {proc.returncode} {proc.stdout!r} {proc.stderr.decode()}")

        # Fewer kept experts than top-k is refused.
        few_file = write_json(os.path.join(tmp, f"{arch}_few.json"),
                              {"layers": {str(layers[0]): [0]}})
        proc = run(binary, model, prompt, "--keep", few_file)
        check(proc.returncode == 1 and b"fewer than top-k" in proc.stderr and proc.stdout == b"",
              f"{arch} --keep fewer than top-k: {proc.returncode} {proc.stderr.decode()}")

        # A reduced model routes only to its kept experts; the dump has one
        # line per MoE layer per forward (prefill + NEW_TOKENS - 1 decodes,
        # fewer if eos came first).
        dump = os.path.join(tmp, f"{arch}_router.jsonl")
        proc = run(binary, model, prompt, "--keep", "first:4", "--dump-router-logits", dump)
        check(proc.returncode == 0, f"{arch} --keep first:4: {proc.stderr.decode()}")
        with open(dump) as f:
            events = [json.loads(line) for line in f]
        forwards = max(e["forward"] for e in events) + 1
        check(len(events) == forwards * len(layers) and forwards <= NEW_TOKENS,
              f"{arch} dump: {len(events)} lines for {forwards} forwards")
        first = [e for e in events if e["forward"] == 0]
        check([e["layer"] for e in first] == layers, f"{arch} dump layers {[e['layer'] for e in first]}")
        for e in events:
            t = len(e["position"])
            ok = (len(e["gate_logits"]) == t and len(e["selected_experts"]) == t and
                  all(len(r) == EXPERTS for r in e["gate_logits"]) and
                  all(len(r) == TOP_K and all(0 <= x < 4 for x in r) for r in e["selected_experts"]) and
                  all(all(v is None for v in r[4:]) for r in e["gate_logits"]))
            check(ok, f"{arch} dump forward {e['forward']} layer {e['layer']} malformed")
        check(first[0]["position"] == list(range(len(prompt_ids))), f"{arch} dump prefill positions")

        # Text stop strings: matched in the decoded text, the stop string and
        # everything after it left out.
        if len(want) >= 4:
            stop = want[2:4]
            proc = run(binary, model, prompt, "--stop", stop)
            got = proc.stdout.decode("utf-8")
            check(proc.returncode == 0 and got == want[:want.find(stop)],
                  f"{arch} --stop {stop!r}: got {got!r}, want {want[:want.find(stop)]!r}")


def test_errors(binary, tmp):
    model = os.path.join(tmp, "qwen3_moe")
    cases = [
        ("missing model", [os.path.join(tmp, "no_such_model"), "hi"], b"NOT_FOUND"),
        ("empty prompt", [model, ""], b"prompt is empty"),
        ("bad first:M", [model, "hi", "--keep", "first:99"], b"want first:M"),
        ("first:M below top-k", [model, "hi", "--keep", "first:1"], b"top-k 2 <= M <= 8"),
        ("a budget is no --keep", [model, "hi", "--keep", "2/8"], b"is a budget"),
        ("missing mask file", [model, "hi", "--keep", os.path.join(tmp, "nope.json")], b"nope.json"),
        ("bad mask file", [model, "hi", "--keep", write_json(os.path.join(tmp, "bad.json"), [1])],
         b"\"layers\""),
        ("bad dtype", [model, "hi", "--dtype", "fp16"], b"dtype"),
        ("bad temperature", [model, "hi", "--temperature", "-1"], b"temperature"),
    ]
    for name, (m, prompt, *flags), needle in cases:
        proc = run(binary, m, prompt, *flags, greedy_fp32=False)
        err = proc.stderr
        check(proc.returncode == 1 and err.startswith(b"premoe generate: ") and needle in err,
              f"error case {name}: exit {proc.returncode}, stderr {err.decode()!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--premoe", required=True)
    ap.add_argument("--arch", action="append", choices=ARCHS)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        archs = args.arch or ARCHS
        for arch in archs:
            test_arch(args.premoe, arch, tmp)
        if "qwen3_moe" in archs:
            test_errors(args.premoe, tmp)
    if failures:
        print(f"{len(failures)} failures")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
