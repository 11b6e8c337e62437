#!/usr/bin/env bash
# with-bqskit.sh SCRIPT.py [ARGS] - run a benchmark script of benches/ against the BQSKit-enabled
# build: sets up .venv (bqskit 1.2.1), builds bqrt with --features python into target/py, then
# runs `.venv/bin/python benches/SCRIPT.py --bin target/py/release/bqrt ARGS`.
#
# BQRT_COMPARE_NO_BUILD=1 skips the build (uses target/py/release/bqrt as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:?usage: benches/with-bqskit.sh SCRIPT.py [ARGS]}
shift
bash launch/setup-python.sh >&2
. launch/env.sh
if [ -z "${BQRT_COMPARE_NO_BUILD:-}" ]; then
  echo "${script%.py}: cargo build --release --features python --target-dir target/py" >&2
  PYO3_PYTHON=$PWD/.venv/bin/python cargo build --release --features python \
    --target-dir target/py --quiet
fi
exec .venv/bin/python "benches/$script" --bin target/py/release/bqrt "$@"
