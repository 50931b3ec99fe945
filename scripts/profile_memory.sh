#!/usr/bin/env bash
# Measures what layer streaming buys: profiles one task on a random qwen3_moe
# checkpoint much larger than the testbed model (about 2.2 GB fp32), resident
# and then --streamed, and prints each run's peak RSS and calibration
# tokens/s as premoe profile reports them, plus the ratios, in one run. The
# two patterns must come out identical (their kept sets are compared).
# usage: scripts/profile_memory.sh [BUILD_DIR]   (needs ~3 GB of free disk)
set -euo pipefail
cd "$(dirname "$0")/.."
premoe=$(realpath "${1:-build}")/cli/premoe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/python scripts/make_tiny_model.py --arch qwen3_moe --out "$work/model" \
  --layers 8 --experts 64 --top-k 4 --hidden 512 >/dev/null
"$premoe" tasks export c_headers --split calibration --n 64 --out "$work/calib.jsonl"

run() {  # mode flag...
  local mode=$1; shift
  "$premoe" profile --model "$work/model" --task c_headers --data "$work/calib.jsonl" \
    --samples 64 --batch 0 --out "$work/$mode.pb" "$@" | tail -n 1
}
resident=$(run resident)
streamed=$(run streamed --streamed)
echo "$resident"
echo "$streamed"
for mode in resident streamed; do
  "$premoe" select --pattern "$work/$mode.pb" --budget 25% --model "$work/model" --json \
    > "$work/$mode.json"
done
cmp -s "$work/resident.json" "$work/streamed.json" ||
  { echo "streamed and resident patterns differ" >&2; exit 1; }
python3 - "$resident" "$streamed" <<'PY'
import re, sys
def parse(line):
    m = re.search(r"\(([\d.]+) tokens/s\); peak RSS ([\d.]+) MiB for a ([\d.]+) MiB", line)
    return float(m[1]), float(m[2]), float(m[3])
(rt, rr, ck), (st, sr, _) = parse(sys.argv[1]), parse(sys.argv[2])
print(f"checkpoint {ck:.0f} MiB; peak RSS resident {rr:.0f} MiB, streamed {sr:.0f} MiB "
      f"(streamed/resident {sr / rr:.2f}); tokens/s streamed/resident {st / rt:.2f}; "
      "patterns identical")
PY
