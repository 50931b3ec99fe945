#!/usr/bin/env bash
# The main job on the embedded default: installs whatever is missing, builds,
# and runs premoe end to end on a small MoE checkpoint.
#
# Until the profiler and server land (see README "Status"), the job is the
# part that exists: it writes a tiny DeepSeek-V3-architecture checkpoint with
# transformers, inspects it (layers, experts, memory at expert budgets),
# tokenizes a few prompts with the model's real tokenizer, then scores the
# committed testbed model on its tasks, full and with half its experts, and
# answers a few prompts with it.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target premoe -j"$JOBS"

model=out/tiny-deepseek-v3
if [ ! -f "$model/config.json" ]; then
  .venv/bin/python scripts/make_tiny_model.py --arch deepseek_v3 --out "$model" \
    --layers 4 --experts 32 --top-k 4 2>/dev/null
fi

echo
echo "== premoe inspect --model $model"
build/cli/premoe inspect --model "$model"

echo
echo "== premoe tokenize --tokenizer $model/tokenizer.json   (prompt -> ids -> text)"
prompts=$(printf '%s\n' \
  "What is 12 + 35? Answer with a number." \
  "Reverse the string 'premoe' and print it." \
  "<｜begin▁of▁sentence｜>你好，世界！")
ids=$(build/cli/premoe tokenize --tokenizer "$model/tokenizer.json" <<<"$prompts")
back=$(build/cli/premoe tokenize --decode --tokenizer "$model/tokenizer.json" <<<"$ids")
paste -d'\n' <(echo "$prompts") <(echo "$ids") <(echo "$back") | sed 's/^/  /'

model=testbed/model
echo
echo "== premoe eval --model $model --samples 50   (the full model)"
build/cli/premoe eval --model "$model" --samples 50 2>/dev/null
echo
echo "== premoe eval --model $model --samples 50 --keep 2/8   (the first 8 of 16 experts per layer: no pattern yet, so a blind cut)"
build/cli/premoe eval --model "$model" --samples 50 --keep 2/8 2>/dev/null
echo
echo "== premoe generate --model $model   (greedy)"
for prompt in "What is 47 + 38?" "Reverse: planet" "Sort: 5 3 9 1" "ROT3 this: hello"; do
  printf '  %-20s -> ' "$prompt"
  build/cli/premoe generate --model "$model" --dtype fp32 --prompt "$prompt" --max-new-tokens 16
  echo
done
