"""Encode throughput of the Hugging Face `tokenizers` library on one thread,
the reference that bench/tokenizer_bench.cc runs in the same run: the same
text, line by line, no special tokens, in one encode_batch call on one thread
(so Python's per-call overhead does not count against it).

usage: tokenizer_reference.py TOKENIZER_JSON TEXT_FILE SECONDS
prints: {"mb_per_s": ..., "tokens": ...}
"""
import json
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

tok = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8", newline="") as f:
    lines = f.read().split("\n")[:-1]
total_bytes = sum(len(l.encode("utf-8")) for l in lines)
budget = float(sys.argv[3])
best = 0.0
tokens = 0
start_all = time.perf_counter()
while True:
    t0 = time.perf_counter()
    # encode_batch: one call, so Python's per-call overhead does not count.
    tokens = sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
    dt = time.perf_counter() - t0
    best = max(best, total_bytes / dt / 1e6)
    if time.perf_counter() - start_all > budget:
        break
print(json.dumps({"mb_per_s": best, "tokens": tokens}))
