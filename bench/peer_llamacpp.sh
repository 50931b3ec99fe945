#!/usr/bin/env bash
# peer_llamacpp.sh: premoe's engine against llama.cpp on the same checkpoint.
#
# Builds llama.cpp's llama-bench and llama-batched-bench from the PyPI sdist
# of llama-cpp-python (which vendors llama.cpp), converts engine_bench's
# random qwen3_moe checkpoint with llama.cpp's own convert_hf_to_gguf.py,
# quantizes it with llama-quantize (Q8_0, Q4_K_M), then runs llama.cpp and
# premoe's engine_bench alternately, ROUNDS times, at the same thread count,
# for each format pair (bf16 / bf16, Q8_0 / all=int8, Q4_K_M / all=int4),
# and prints premoe / llama.cpp ratios for prefill, decode at batch 1 and 8,
# load time (page cache warm, and cold where the caches can be dropped) and
# peak RSS, with the load average beside each; plus premoe's 50% pattern.
#
# Load time is one measurement for both: the wall time of a process that
# loads the model and decodes one token (llama.cpp maps the file and faults
# the weights in during its first evaluation, so a time to "loaded" alone
# would not compare).
#
# Not in CI: building llama.cpp takes about 20-35 minutes on 2 cores.
#
# usage: bench/peer_llamacpp.sh   (after the build: needs build/bench/engine_bench)
# environment: THREADS (default: nproc), ROUNDS (2), FORMATS ("bf16 q8_0
#   q4_k_m"), PEER_DIR (/tmp/premoe_peer: llama.cpp's sources, build and
#   the GGUF files), SKIP_ENGINE_BENCH (1: skip the whole engine_bench run
#   first; the checkpoint must exist), LLAMA_CPP_PYTHON_VERSION (0.3.36),
#   ENGINE_BENCH (build/bench/engine_bench),
#   ENGINE_BENCH_ARGS (extra engine_bench flags, e.g. "--layers 4") with
#   PEER_MODEL_DIR (the checkpoint those flags make, which is converted).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
FORMATS=${FORMATS:-bf16 q8_0 q4_k_m}
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

if [ "${SKIP_ENGINE_BENCH:-0}" != 1 ]; then
  echo "== premoe engine_bench (writes the checkpoint on first use)" >&2
  "$ENGINE_BENCH" --threads "$THREADS" --dtypes bf16 --quants none all=int8 all=int4 \
    --prompt $PROMPT --decode-steps $STEPS --batch $BATCH ${ENGINE_BENCH_ARGS:-} |
    tee "$PEER_DIR/engine_bench.md"
fi

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
if [ ! -x "$LLAMA_BUILD/bin/llama-batched-bench" ] || [ ! -x "$LLAMA_BUILD/bin/llama-bench" ] ||
  [ ! -x "$LLAMA_BUILD/bin/llama-quantize" ]; then
  echo "== building llama.cpp (about 20 minutes on 2 cores)" >&2
  cmake -S "$SRC" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >&2
  cmake --build "$LLAMA_BUILD" -j"$THREADS" --target llama-bench llama-batched-bench llama-quantize >&2
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

# llama-quantize from the same build, from the bf16 file.
gguf_of() { echo "$PEER_DIR/$(basename "$MODEL_DIR")_$1.gguf"; }
for fmt in $FORMATS; do
  out=$(gguf_of "$fmt")
  if [ ! -f "$out" ]; then
    echo "== llama-quantize $fmt" >&2
    "$LLAMA_BUILD/bin/llama-quantize" "$GGUF" "$out.tmp" "${fmt^^}" "$THREADS" >&2
    mv "$out.tmp" "$out"
  fi
done
# premoe's configuration at the same bits: every matrix in the format, the
# embedding and norms dense, as llama.cpp quantizes them.
premoe_of() {
  case $1 in
    bf16) echo bf16:full ;;
    q8_0) echo bf16:full+all=int8 ;;
    q4_k_m) echo bf16:full+all=int4 ;;
    *) echo "peer_llamacpp: no premoe format for $1" >&2; exit 1 ;;
  esac
}

# ---- Alternating rounds --------------------------------------------------------------
# Each command runs under a Python parent that reports the child's wall time,
# peak RSS (ru_maxrss) and the 1-minute load average when it started.
run_measured() {
  "$PY" - "$@" <<'PYEOF'
import resource, subprocess, sys, time
load = open("/proc/loadavg").read().split()[0]
start = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.monotonic() - start
sys.stdout.write(r.stdout)
sys.stdout.write(r.stderr)
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} LOAD {load} WALL {wall}")
sys.exit(r.returncode)
PYEOF
}
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }
# Reads files into the page cache: the machine cannot hold every file at
# once, so each warm run reads its own first.
warm() { cat "$@" >/dev/null; }

llama_speed() {  # format
  run_measured "$LLAMA_BUILD/bin/llama-batched-bench" -m "$(gguf_of "$1")" -t "$THREADS" -c 2048 \
    -b 2048 -ub 512 -npp $PROMPT -ntg $STEPS -npl 1,$BATCH --output-format jsonl 2>&1 |
    "$PY" -c '
import json, re, sys
text = sys.stdin.read()
rows = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
if not rows:
    sys.exit("peer_llamacpp: llama-batched-bench printed no results:\n" + text[-2000:])
peak, avg = re.search(r"PEAK_RSS_KB (\d+) LOAD (\S+)", text).groups()
b1 = [r for r in rows if r["pl"] == 1][0]
bn = [r for r in rows if r["pl"] > 1][0]
prefill, d1, dn = b1["speed_pp"], b1["speed_tg"], bn["speed_tg"]
print(f"llama.cpp {sys.argv[1]} speed prefill {prefill} d1 {d1} dn {dn} "
      f"peak_gb {int(peak) / 1e6} load {avg}")
' "$1"
}
premoe_speed() {  # label config
  run_measured "$ENGINE_BENCH" --child "$2" --threads "$THREADS" --prompt $PROMPT \
    --decode-steps $STEPS --batch $BATCH ${ENGINE_BENCH_ARGS:-} 2>&1 | "$PY" -c '
import re, sys
text = sys.stdin.read()
m = re.search(r"^RESULT (\S+) (.*)$", text, re.M)
if not m:
    sys.exit("peer_llamacpp: engine_bench printed no result:\n" + text[-2000:])
f = m.group(2).split()
peak, avg = re.search(r"PEAK_RSS_KB (\d+) LOAD (\S+)", text).groups()
print(f"premoe {sys.argv[1]} speed prefill {f[4]} d1 {f[5]} dn {f[7]} peak_gb {int(peak) / 1e6} "
      f"weights_gb {int(f[0]) / 1e9} load {avg}")
' "$1"
}
# The wall time of a process that loads the model and decodes one token.
load_run() {  # engine label cache command...
  local engine=$1 label=$2 cache=$3
  shift 3
  run_measured "$@" 2>&1 | "$PY" -c '
import re, sys
text = sys.stdin.read()
m = re.search(r"PEAK_RSS_KB (\d+) LOAD (\S+) WALL (\S+)", text)
print(f"{sys.argv[1]} {sys.argv[2]} load_{sys.argv[3]} s {m.group(3)} load {m.group(2)}")
' "$engine" "$label" "$cache"
}
llama_load() {  # format cache
  load_run llama.cpp "$1" "$2" "$LLAMA_BUILD/bin/llama-batched-bench" -m "$(gguf_of "$1")" \
    -t "$THREADS" -c 256 -npp 1 -ntg 1 -npl 1 --output-format jsonl
}
premoe_load() {  # label config cache
  load_run premoe "$1" "$3" "$ENGINE_BENCH" --child "$2" --threads "$THREADS" --prompt 1 \
    --decode-steps 1 --batch 1 ${ENGINE_BENCH_ARGS:-}
}

RESULTS=$PEER_DIR/rounds.txt
: >"$RESULTS"
cold_ok=1
drop_caches || cold_ok=0
for round in $(seq 1 "$ROUNDS"); do
  for fmt in $FORMATS; do
    echo "== round $round/$ROUNDS: $fmt" >&2
    config=$(premoe_of "$fmt")
    warm "$(gguf_of "$fmt")"
    llama_speed "$fmt" >>"$RESULTS"
    llama_load "$fmt" warm >>"$RESULTS"
    warm "$MODEL_DIR"/*.safetensors
    premoe_speed "$fmt" "$config" >>"$RESULTS"
    premoe_load "$fmt" "$config" warm >>"$RESULTS"
    if [ $cold_ok = 1 ]; then
      drop_caches && llama_load "$fmt" cold >>"$RESULTS"
      drop_caches && premoe_load "$fmt" "$config" cold >>"$RESULTS"
    fi
  done
  # A task's reduced model: half of every layer's experts, every matrix in int4.
  warm "$MODEL_DIR"/*.safetensors
  premoe_speed half_int4 bf16:half+all=int4 >>"$RESULTS"
  # The quick llama-bench cross-check of prefill and batch-1 decode.
  run_measured "$LLAMA_BUILD/bin/llama-bench" -m "$GGUF" -t "$THREADS" -p $PROMPT -n $STEPS \
    -r 3 -o md >>"$PEER_DIR/llama_bench.md" 2>&1 || true
done

# ---- The table ---------------------------------------------------------------------
echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs; flags with" \
  "$(grep -o -w -E 'avx512_bf16|avx512_vnni|avx512f|avx2' /proc/cpuinfo | sort -u | xargs)"
"$PY" - "$RESULTS" "$THREADS" "$BATCH" "$FORMATS" <<'PYEOF'
import collections, statistics, sys
rows = collections.defaultdict(list)  # (engine, label, kind) -> [dict]
for line in open(sys.argv[1]):
    p = line.split()
    rows[(p[0], p[1], p[2])].append(dict(zip(p[3::2], p[4::2])))
threads, batch, formats = sys.argv[2], sys.argv[3], sys.argv[4].split()
def med(engine, label, kind, key):
    v = [float(r[key]) for r in rows.get((engine, label, kind), []) if key in r]
    return statistics.median(v) if v else None
def loads(engine, label, kind):
    return "/".join(r["load"] for r in rows.get((engine, label, kind), []))
names = {"bf16": ("bf16", "bf16"), "q8_0": ("all=int8", "Q8_0"), "q4_k_m": ("all=int4", "Q4_K_M")}
n = len(rows[("premoe", formats[0], "speed")])
print(f"\nqwen3_moe (the engine_bench checkpoint), {threads} threads each, medians of {n} "
      "alternating rounds; load averages at the start of each run (premoe; llama.cpp). Load: the "
      "wall time of a process that loads the model and decodes one token.\n")
print("| premoe / llama.cpp | | premoe | llama.cpp | ratio | load avg |")
print("|---|---|---:|---:|---:|---|")
for fmt in formats:
    ours, theirs = names.get(fmt, (fmt, fmt))
    for label, key, kind in [
            ("prefill, 128 tokens (tok/s)", "prefill", "speed"),
            ("decode, batch 1 (tok/s)", "d1", "speed"),
            (f"decode, batch {batch} (tok/s)", "dn", "speed"),
            ("load, page cache warm (s)", "s", "load_warm"),
            ("load, page cache cold (s)", "s", "load_cold"),
            ("peak RSS (GB)", "peak_gb", "speed")]:
        a, b = med("premoe", fmt, kind, key), med("llama.cpp", fmt, kind, key)
        if a is None or b is None:
            print(f"| {ours} / {theirs} | {label} | not measured | | | |")
            continue
        print(f"| {ours} / {theirs} | {label} | {a:.2f} | {b:.2f} | {a / b:.2f} | "
              f"{loads('premoe', fmt, kind)}; {loads('llama.cpp', fmt, kind)} |")
h = "half_int4"
if rows.get(("premoe", h, "speed")) and "q4_k_m" in formats:
    a = med("premoe", h, "speed", "peak_gb")
    b = med("llama.cpp", "q4_k_m", "speed", "peak_gb")
    print(f"\npremoe with a 50% pattern, every matrix in int4: decode "
          f"{med('premoe', h, 'speed', 'd1'):.2f} tok/s at batch 1, "
          f"{med('premoe', h, 'speed', 'dn'):.2f} at batch {batch}; peak RSS {a:.2f} GB, "
          f"{a / b:.2f} of llama.cpp's Q4_K_M whole model ({b:.2f} GB).")
PYEOF
