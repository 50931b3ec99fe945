#!/usr/bin/env bash
# peer_llamacpp.sh: premoe's engine against llama.cpp on the same checkpoint.
#
# Builds llama.cpp's llama-bench and llama-batched-bench from the PyPI sdist
# of llama-cpp-python (which vendors llama.cpp), converts engine_bench's
# random qwen3_moe checkpoint with llama.cpp's own convert_hf_to_gguf.py,
# then runs llama.cpp and premoe's engine_bench alternately, ROUNDS times,
# at the same thread count, and prints premoe / llama.cpp ratios for prefill,
# decode at batch 1 and 8, load time (page cache warm, and cold where the
# caches can be dropped) and peak RSS, with the load average beside each.
#
# Not in CI: building llama.cpp takes about 20 minutes on 2 cores.
#
# usage: bench/peer_llamacpp.sh   (after the build: needs build/bench/engine_bench)
# environment: THREADS (default: nproc), ROUNDS (3), PEER_DIR
#   (/tmp/premoe_peer: llama.cpp's sources, build and the GGUF file),
#   LLAMA_CPP_PYTHON_VERSION (0.3.36), ENGINE_BENCH (build/bench/engine_bench),
#   ENGINE_BENCH_ARGS (extra engine_bench flags, e.g. "--layers 4") with
#   PEER_MODEL_DIR (the checkpoint those flags make, which is converted).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
PEER_DIR=${PEER_DIR:-/tmp/premoe_peer}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
ENGINE_BENCH=${ENGINE_BENCH:-$ROOT/build/bench/engine_bench}
PY=$ROOT/.venv/bin/python
MODEL_DIR=${PEER_MODEL_DIR:-/tmp/premoe_bench_model/qwen3_moe_h2048_l16_e64_k4_i512_v32000_a16x4}
PROMPT=128
STEPS=16
BATCH=8
mkdir -p "$PEER_DIR"
[ -x "$ENGINE_BENCH" ] || { echo "peer_llamacpp: build $ENGINE_BENCH first" >&2; exit 1; }

echo "== premoe engine_bench (writes the checkpoint on first use)" >&2
"$ENGINE_BENCH" --threads "$THREADS" --dtypes bf16 --prompt $PROMPT --decode-steps $STEPS \
  --batch $BATCH ${ENGINE_BENCH_ARGS:-} | tee "$PEER_DIR/engine_bench.md"

# ---- llama.cpp, from the sdist ------------------------------------------------------
SRC=$PEER_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  echo "== downloading llama-cpp-python $VERSION (sdist)" >&2
  url=$(curl -fsSL https://pypi.org/simple/llama-cpp-python/ |
    grep -o "https://[^\"#]*llama_cpp_python-$VERSION.tar.gz" | head -1)
  [ -n "$url" ] || { echo "peer_llamacpp: no sdist of llama-cpp-python $VERSION" >&2; exit 1; }
  curl -fsSL -o "$PEER_DIR/sdist.tar.gz" "$url"
  tar xzf "$PEER_DIR/sdist.tar.gz" -C "$PEER_DIR"
fi
LLAMA_BUILD=$PEER_DIR/build
if [ ! -x "$LLAMA_BUILD/bin/llama-batched-bench" ] || [ ! -x "$LLAMA_BUILD/bin/llama-bench" ]; then
  echo "== building llama.cpp (about 20 minutes on 2 cores)" >&2
  cmake -S "$SRC" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >&2
  cmake --build "$LLAMA_BUILD" -j"$THREADS" --target llama-bench llama-batched-bench >&2
fi

# ---- The GGUF file ----------------------------------------------------------------
# convert_hf_to_gguf.py needs a tokenizer, and engine_bench's checkpoint has
# none: train a small byte-level BPE on this repository's docs (its ids stay
# below the model's 32000; the converter pads the rest). The converter
# identifies pre-tokenizers by hashing how they split a test text, and a new
# tokenizer has no known hash, so the conversion records Qwen2's (the
# byte-level regex this tokenizer also uses). Both engines are fed token ids,
# never text, so the vocabulary does not touch the measurement.
GGUF=$PEER_DIR/$(basename "$MODEL_DIR")_bf16.gguf
if [ ! -f "$GGUF" ]; then
  echo "== converting to GGUF (bf16)" >&2
  HF=$PEER_DIR/hf
  rm -rf "$HF" && mkdir -p "$HF"
  for f in "$MODEL_DIR"/*.safetensors "$MODEL_DIR"/*.json; do ln -s "$f" "$HF/"; done
  "$PY" - "$HF" "$ROOT" <<'EOF'
import glob, json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
out, root = sys.argv[1], sys.argv[2]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|bos|>", "<|eos|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train(sorted(glob.glob(f"{root}/docs/*.md")) + [f"{root}/README.md"], trainer)
tok.save(f"{out}/tokenizer.json")
json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
           "eos_token": "<|eos|>"}, open(f"{out}/tokenizer_config.json", "w"))
EOF
  PYTHONPATH=$SRC/gguf-py:$SRC "$PY" - "$HF" "$GGUF" <<'EOF'
import sys
sys.argv = ["convert_hf_to_gguf.py", sys.argv[1], "--outtype", "bf16", "--outfile", sys.argv[2]]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
import convert_hf_to_gguf
convert_hf_to_gguf.main()
EOF
fi

# ---- Alternating rounds --------------------------------------------------------------
# Each command runs under a Python parent that reports the child's peak RSS
# (ru_maxrss) and the 1-minute load average when it started.
run_measured() {
  "$PY" - "$@" <<'EOF'
import resource, subprocess, sys
load = open("/proc/loadavg").read().split()[0]
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr[-4000:] if r.returncode else "")
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} LOAD {load}")
sys.exit(r.returncode)
EOF
}
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }

RESULTS=$PEER_DIR/rounds.txt
: >"$RESULTS"
cold_ok=1
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS" >&2
  for cache in warm cold; do
    if [ $cache = cold ] && { [ $cold_ok = 0 ] || ! drop_caches; }; then
      cold_ok=0
      continue
    fi
    out=$(run_measured "$LLAMA_BUILD/bin/llama-batched-bench" -m "$GGUF" -t "$THREADS" -c 2048 \
      -b 2048 -ub 512 -npp $PROMPT -ntg $STEPS -npl 1,$BATCH --output-format jsonl 2>&1)
    # (jsonl for the speeds; "load time" is parsed when llama_perf prints it)
    echo "$out" | "$PY" -c '
import json, re, sys
text = sys.stdin.read()
rows = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
# batched-bench prints the llama_perf load time in its md output only.
m = re.search(r"load time =\s*([0-9.]+) ms", text)
load_ms = float(m.group(1)) if m else float("nan")
peak, avg = re.search(r"PEAK_RSS_KB (\d+) LOAD (\S+)", text).groups()
b1 = [r for r in rows if r["pl"] == 1][0]; bn = [r for r in rows if r["pl"] > 1][0]
prefill, d1, dn = b1["speed_pp"], b1["speed_tg"], bn["speed_tg"]
print(f"llama.cpp {sys.argv[1]} prefill {prefill} d1 {d1} dn {dn} load_s {load_ms / 1000} "
      f"peak_gb {int(peak) / 1e6} load {avg}")
' $cache >>"$RESULTS"
    [ $cache = cold ] && drop_caches
    out=$(run_measured "$ENGINE_BENCH" --child bf16:full --threads "$THREADS" --prompt $PROMPT \
      --decode-steps $STEPS --batch $BATCH ${ENGINE_BENCH_ARGS:-} 2>&1)
    echo "$out" | "$PY" -c '
import re, sys
text = sys.stdin.read()
f = re.search(r"^RESULT (\S+) (.*)$", text, re.M).group(2).split()
peak, avg = re.search(r"PEAK_RSS_KB (\d+) LOAD (\S+)", text).groups()
print(f"premoe {sys.argv[1]} prefill {f[4]} d1 {f[5]} dn {f[7]} load_s {f[11]} "
      f"peak_gb {int(peak) / 1e6} load {avg}")
' $cache >>"$RESULTS"
  done
  # The quick llama-bench cross-check of prefill and batch-1 decode.
  run_measured "$LLAMA_BUILD/bin/llama-bench" -m "$GGUF" -t "$THREADS" -p $PROMPT -n $STEPS \
    -r 3 -o md >>"$PEER_DIR/llama_bench.md" 2>&1 || true
done

# ---- The table ---------------------------------------------------------------------
"$PY" - "$RESULTS" "$THREADS" "$BATCH" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    kv = dict(zip(p[2::2], p[3::2]))
    rows[(p[0], p[1])].append(kv)
threads, batch = sys.argv[2], sys.argv[3]
def med(engine, cache, key):
    v = [float(r[key]) for r in rows.get((engine, cache), [])]
    return statistics.median(v) if v else None
def loads(engine, cache):
    return "/".join(r["load"] for r in rows.get((engine, cache), []))
print(f"\nqwen3_moe bf16 (the engine_bench checkpoint), {threads} threads each, "
      f"medians of {len(rows[('premoe', 'warm')])} alternating rounds; load averages at the start "
      "of each run (premoe; llama.cpp).\n")
print("| | premoe | llama.cpp | premoe / llama.cpp | load avg |")
print("|---|---:|---:|---:|---|")
for label, key, cache, higher in [
        ("prefill, 128 tokens (tok/s)", "prefill", "warm", True),
        ("decode, batch 1 (tok/s)", "d1", "warm", True),
        (f"decode, batch {batch} (tok/s)", "dn", "warm", True),
        ("load, page cache warm (s)", "load_s", "warm", False),
        ("load, page cache cold (s)", "load_s", "cold", False),
        ("peak RSS (GB)", "peak_gb", "warm", False)]:
    a, b = med("premoe", cache, key), med("llama.cpp", cache, key)
    if a is None or b is None or a != a or b != b:
        print(f"| {label} | not measured | | | |")
        continue
    print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f} | {loads('premoe', cache)}; "
          f"{loads('llama.cpp', cache)} |")
EOF
