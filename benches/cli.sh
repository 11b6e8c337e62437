#!/usr/bin/env bash
# cli.sh - `bqrt compile` against a plain `bqskit.compile` script, whole process, interleaved
# (2 workers each); prints medians and ratios, exits 1 when a goal is missed.
#
#   bash benches/cli.sh              # 5 runs a side per circuit, a few minutes
#   bash benches/cli.sh --reps 3
#
# BQRT_COMPARE_NO_BUILD=1 skips the build (uses target/py/release/bqrt as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup-python.sh >&2
. launch/env.sh
if [ -z "${BQRT_COMPARE_NO_BUILD:-}" ]; then
  echo "cli: cargo build --release --features python --target-dir target/py" >&2
  PYO3_PYTHON=$PWD/.venv/bin/python cargo build --release --features python \
    --target-dir target/py --quiet
fi
exec .venv/bin/python benches/cli.py --bin target/py/release/bqrt "$@"
