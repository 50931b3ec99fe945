#!/usr/bin/env bash
# The main job on the embedded default: installs whatever is missing, builds,
# and runs premoe end to end on a small MoE checkpoint.
#
# Until the profiler and server land (see README "Status"), the job is the
# part that exists: it writes a tiny DeepSeek-V3-architecture checkpoint with
# transformers, inspects it (layers, experts, memory at expert budgets),
# tokenizes a few prompts with the model's real tokenizer, then scores the
# committed testbed model on its tasks, profiles a few tasks into expert
# patterns and scores each with only its pattern's half of the experts, and
# answers a few prompts with the full model.
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
build/cli/premoe eval --model "$model" --samples 50
echo
echo "== premoe profile + select + eval: each task's own pattern (peu) at half the experts"
patterns=out/patterns
mkdir -p "$patterns"
for task in add reverse caesar licenses; do
  build/cli/premoe profile --model "$model" --task "$task" --testbed-task "$task" --samples 50 \
    --out "$patterns/$task.pattern" >/dev/null
  build/cli/premoe select --pattern "$patterns/$task.pattern" --budget 2/8 --model "$model" \
    --mask-out "$patterns/$task.mask.json" | tail -1 | sed "s/^/  $task: /"
  build/cli/premoe eval --model "$model" --tasks "$task" --samples 50 \
    --mask "$patterns/$task.mask.json" | sed -n 2p | sed 's/^/    pruned: /'
done
echo
echo "== premoe generate --model $model   (greedy)"
for prompt in "What is 47 + 38?" "Reverse: planet" "Sort: 5 3 9 1" "ROT3 this: hello"; do
  printf '  %-20s -> ' "$prompt"
  build/cli/premoe generate --model "$model" --dtype fp32 --prompt "$prompt" --max-new-tokens 16
  echo
done
echo
echo "== premoe worker: one process, an expert cache of 7.5 MiB of the model's 12 MiB of experts"
port_file=$(mktemp -u)
build/cli/premoe --log-level warn worker serve --model "$model" --dtype fp32 --cache 7.5MiB \
  --port-file "$port_file" >/dev/null &
worker_pid=$!
trap 'kill $worker_pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$port_file" ] && break; sleep 0.1; done
address=127.0.0.1:$(cat "$port_file")
for task in add reverse caesar; do
  build/cli/premoe worker prepare --address "$address" --pattern "$patterns/$task.pattern" \
    --budget 2/8 | sed 's/^/  /'
done
for pair in "add|What is 47 + 38?" "reverse|Reverse: planet" "caesar|ROT3 this: hello"; do
  task=${pair%%|*} prompt=${pair#*|}
  printf '  %-8s %-20s -> ' "$task" "$prompt"
  build/cli/premoe worker generate --address "$address" --task "$task" --prompt "$prompt" \
    --max-new-tokens 16 2>/dev/null
  echo
done
build/cli/premoe worker status --address "$address" | sed 's/^/  /'
kill "$worker_pid"
wait "$worker_pid" 2>/dev/null || true
rm -f "$port_file"
