#!/usr/bin/env bash
# README command 1 as a first-time user runs it: a fresh clone, a fresh virtual environment,
# `pip install --no-compile .` and `bids-ketamine-demo`, timed (install, demo, total) with the
# machine's load before and after.  Usage: benchmarks/first_run.sh [SCRATCH] (default a new
# temporary folder; removed at the end unless KEEP=1).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-$(mktemp -d)}
mkdir -p "$scratch"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
git clone -q "$repo" "$scratch/clone"
python3 -m venv "$scratch/venv"
start=$(date +%s.%N)
(cd "$scratch/clone" && "$scratch/venv/bin/python" -m pip install -q --no-compile .)
installed=$(date +%s.%N)
(cd "$scratch" && "$scratch/venv/bin/bids-ketamine-demo" demo_output)
done_at=$(date +%s.%N)
python3 - "$start" "$installed" "$done_at" <<'PY'
import sys
start, installed, done = map(float, sys.argv[1:])
print(f"install {installed - start:.0f} s, demo {done - installed:.0f} s, total {done - start:.0f} s "
      f"({(done - start) / 60:.1f} min; target <= 5 min)")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "${KEEP:-0}" = 1 ] || rm -rf "$scratch"
