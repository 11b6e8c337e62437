#!/usr/bin/env bash
# setup.sh - install what is missing (system packages) and build bqrt in release mode.
# Idempotent; safe to run again. Usage: bash launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }
bash launch/install-deps.sh
echo "setup: building bqrt (release)"
cargo build --release --quiet --bins --examples
echo "setup: built target/release/bqrt"
