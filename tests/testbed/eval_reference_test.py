"""premoe eval against an independent computation with transformers and
tokenizers, and the committed model's scores against its committed figures.

usage: eval_reference_test.py MODEL_DIR FIGURES_JSON SAMPLES

1. `premoe eval --model MODEL_DIR --samples SAMPLES --json` (the harness);
2. the same samples (`premoe tasks export`) scored here with transformers:
   greedy generation for exact-match tasks, next-token accuracy and
   perplexity for text tasks; the two must agree;
3. the harness's figures must equal FIGURES_JSON, the committed output of
   the same command (exact match to one sample per task, text metrics to
   1e-3): a change that moves the committed model's scores fails here.
"""
import json
import math
import os
import subprocess
import sys

import torch
import transformers
from tokenizers import Tokenizer

BOS, EOS = 256, 257


def premoe(*args):
    exe = os.path.join(os.environ["PREMOE_BINARY_DIR"], "cli", "premoe")
    return subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout


def reference_scores(model_dir, samples):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tasks = json.loads(premoe("tasks", "list", "--json"))
    out = {}
    for task in tasks:
        name = task["name"]
        lines = premoe("tasks", "export", name, "--split", "eval", "--n",
                       str(samples)).splitlines()
        rows = [json.loads(l) for l in lines]
        if task["kind"] == "exact_match":
            right = 0
            longest = max(len(r["completion"].encode()) for r in rows)
            for r in rows:
                ids = tok.encode(r["prompt"]).ids
                assert ids[0] == BOS
                with torch.no_grad():
                    gen = model.generate(torch.tensor([ids]), do_sample=False,
                                         max_new_tokens=longest + 4, eos_token_id=EOS,
                                         pad_token_id=EOS)
                new = gen[0, len(ids):].tolist()
                if EOS in new and tok.decode(new[:new.index(EOS)]) == r["completion"]:
                    right += 1
            out[name] = {"exact_match": right / len(rows), "samples": len(rows)}
        else:
            nll, right, n = 0.0, 0, 0
            for r in rows:
                ids = torch.tensor([tok.encode(r["text"]).ids])
                with torch.no_grad():
                    logits = model(ids).logits[0, :-1].double()
                target = ids[0, 1:]
                nll -= torch.log_softmax(logits, -1).gather(1, target[:, None]).sum().item()
                right += (logits.argmax(-1) == target).sum().item()
                n += target.numel()
            out[name] = {"token_accuracy": right / n, "perplexity": math.exp(nll / n),
                         "tokens": n}
    return out


def main():
    model_dir, figures_path, samples = sys.argv[1], sys.argv[2], int(sys.argv[3])
    harness = json.loads(premoe("eval", "--model", model_dir, "--samples", str(samples),
                                "--json"))
    ref = reference_scores(model_dir, samples)
    failures = []
    for t in harness["tasks"]:
        r = ref[t["task"]]
        if t["kind"] == "exact_match":
            # One sample of slack: fp32 reductions may order differently and
            # flip a near-tie argmax.
            if abs(t["exact_match"] - r["exact_match"]) * t["samples"] > 1 + 1e-9:
                failures.append(f"{t['task']}: harness {t['exact_match']} vs transformers "
                                f"{r['exact_match']}")
        else:
            if t["tokens"] != r["tokens"] or abs(t["token_accuracy"] - r["token_accuracy"]) > 2e-3 \
                    or abs(t["perplexity"] / r["perplexity"] - 1) > 1e-4:
                failures.append(f"{t['task']}: harness {t} vs transformers {r}")
    committed = json.load(open(figures_path))
    now = {t["task"]: t for t in harness["tasks"]}
    for t in committed["tasks"]:
        h = now.get(t["task"])
        if h is None:
            failures.append(f"{t['task']}: in the committed figures, not in the harness output")
        elif t["kind"] == "exact_match":
            if abs(h["exact_match"] - t["exact_match"]) * t["samples"] > 1 + 1e-9:
                failures.append(f"{t['task']}: exact match {h['exact_match']} now, committed "
                                f"{t['exact_match']}")
        elif abs(h["token_accuracy"] - t["token_accuracy"]) > 1e-3 or \
                abs(h["perplexity"] / t["perplexity"] - 1) > 1e-3:
            failures.append(f"{t['task']}: {h} now, committed {t}")
    print(json.dumps({"harness": harness, "transformers": ref}, indent=1))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"ok: harness == transformers on {len(ref)} tasks x {samples} samples, "
          f"and == the committed figures")


if __name__ == "__main__":
    main()
