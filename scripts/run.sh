#!/usr/bin/env bash
# The main job on the embedded default: installs whatever is missing, builds,
# and runs premoe end to end.
#
# It inspects a tiny DeepSeek-V3-architecture checkpoint (written with
# transformers) and tokenizes with its real tokenizer; then, on the committed
# testbed model, it profiles every testbed task into an embedded pattern store
# (once: skipped when the store already holds them), starts the one-process
# server (store, router and worker; `premoe serve`) with its routed experts
# held as int4 (docs/quality.md: 99.5% of bf16's score at 27% of its bytes),
# and sends real gRPC queries of every task through it. For each query it
# prints the pattern the router matched and its similarity, the experts kept,
# the weights the request's model holds against the full int4 model's, and
# the answer with whether it is right; `premoe inspect` first prints those
# weights against the full bf16 model's.
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
store=out/store
tasks=$(build/cli/premoe tasks list --json | .venv/bin/python -c \
  'import json, sys; print(" ".join(t["name"] for t in json.load(sys.stdin)))')
have=$(build/cli/premoe patterns list --store "$store" --json 2>/dev/null |
  .venv/bin/python -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
# Patterns belong to the model they were profiled on (serve refuses others):
# a store made before the committed model was retrained is moved aside.
stamp=$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)
echo
if [ "$have" -gt 0 ] && [ "$(cat "$store.model" 2>/dev/null)" != "$stamp" ]; then
  echo "== $store holds patterns of an earlier testbed model: moved to $store.stale"
  rm -rf "$store.stale"
  mv "$store" "$store.stale"
  have=0
fi
if [ "$have" -eq 0 ]; then
  echo "== premoe profile: every testbed task into the embedded store $store (peu, 100 prompts each)"
  for task in $tasks; do
    build/cli/premoe --log-level warn profile --model "$model" --task "$task" \
      --testbed-task "$task" --samples 100 --store "$store" | sed 's/^/  /'
  done
  echo "$stamp" > "$store.model"
else
  echo "== the pattern store $store already holds $have patterns"
fi
build/cli/premoe patterns list --store "$store" | sed 's/^/  /'

echo
echo "== premoe inspect --model $model --budget 50% --quant none,int4   (weights as premoe holds them)"
build/cli/premoe inspect --model "$model" --budget 50% --quant none,int4 |
  sed -n '/as premoe holds it/,$p' | sed 's/^/  /'

echo
echo "== premoe serve --model $model --store-dir $store --quant int4 --cache 1MiB   (store, router"
echo "   and worker in one process; the worker holds at most 1 MiB of the model's experts: 1.59 MiB"
echo "   in int4, 6 MiB in bf16)"
port_file=$(mktemp -u)
http_port_file=$(mktemp -u)
build/cli/premoe --log-level warn serve --model "$model" --store-dir "$store" --dtype bf16 \
  --quant int4 --budget 50% --cache 1MiB --listen 127.0.0.1:0 --port-file "$port_file" \
  --http-listen 127.0.0.1:0 --http-port-file "$http_port_file" |
  sed -u "s/^/  /" &
trap 'pkill -f "premoe --log-level warn serve --model $model" 2>/dev/null || true; rm -f "$port_file" "$http_port_file"' EXIT
for _ in $(seq 300); do [ -s "$port_file" ] && [ -s "$http_port_file" ] && break; sleep 0.1; done
address=127.0.0.1:$(cat "$port_file")
http_address=127.0.0.1:$(cat "$http_port_file")

echo
echo "== premoe query --address $address --testbed all --samples 3   (real gRPC queries)"
build/cli/premoe query --address "$address" --testbed all --samples 3 --max-new-tokens 24 |
  sed 's/^/  /'
echo
echo "== premoe query --prompt ... --match-only   (which pattern a query gets, and the runners-up)"
build/cli/premoe query --address "$address" --prompt "Please add 17 and 25." --match-only |
  sed 's/^/  /'
echo
echo "== the OpenAI API on http://$http_address/v1   (the official openai client, one chat request)"
.venv/bin/python - "$http_address" "$model" <<'PY' | sed 's/^/  /'
import sys
import openai
client = openai.OpenAI(base_url=f"http://{sys.argv[1]}/v1", api_key="none")
question = "What is 17 + 25?"
reply = client.chat.completions.create(model=sys.argv[2], max_tokens=16,
                                       messages=[{"role": "user", "content": question}])
route = reply.model_extra["premoe"]
print(f"{question!r} -> {reply.choices[0].message.content!r} ({reply.usage.completion_tokens} tokens, "
      f"finish {reply.choices[0].finish_reason})")
print(f"route: task {route['task']!r} by {route['decision']} (similarity {route['similarity']:.3f}), "
      f"{route['kept_experts']} experts kept, {route['kept_bytes'] / 2**20:.2f} MiB, worker {route['worker']}")
PY
