#!/usr/bin/env bash
# Regenerates the testbed's committed figures from the committed model:
#   testbed/model/eval_ci.json         what CI checks the model's scores against
#   docs/testbed_eval.json             the full eval split, every task
#   docs/testbed_specialisation.{json,md,png}
# usage: scripts/testbed_figures.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
premoe=${1:-build}/cli/premoe
model=testbed/model

"$premoe" eval --model "$model" --samples 50 --json > "$model/eval_ci.json"
"$premoe" eval --model "$model" --samples 0 --json-out docs/testbed_eval.json
"$premoe" testbed specialisation --model "$model" --samples 200 \
  --json-out docs/testbed_specialisation.json | tee docs/testbed_specialisation.md
.venv/bin/python scripts/plot_specialisation.py docs/testbed_specialisation.json \
  docs/testbed_specialisation.png
