#!/usr/bin/env bash
# test.sh - set up, then run every check: formatting, lints, unit, simulation, in-process and
# mpirun integration tests. Usage: bash launch/test.sh   (CI runs exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash launch/install-deps.sh
. launch/env.sh
echo "test: cargo fmt --check"
cargo fmt --check
echo "test: cargo clippy"
cargo clippy --release --all-targets --quiet -- -D warnings
echo "test: cargo test"
cargo test --release -- --test-threads=2
echo "test: all passed in $(( $(date +%s) - t0 )) s"
