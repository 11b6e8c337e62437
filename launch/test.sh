#!/usr/bin/env bash
# test.sh - set up, then run every check: formatting, lints, unit, simulation, in-process and
# mpirun integration tests, BQSKit's Compiler against bqrt, the main job, then the MPICH build's
# suites. Usage: bash launch/test.sh   (CI runs exactly this)
#
# One release build per MPI runs every suite: the tests' build has the features `python` (BQSKit
# support) and, through the dev-dependency on itself, `sim` and `fault`; a build without
# `python` is checked by clippy. Each stage line says the seconds since the start.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
stage() { echo "test: [$(( $(date +%s) - t0 )) s] $*"; }
bash launch/install-deps.sh
. launch/env.sh
stage "python environment (.venv with bqskit 1.2.1)"
bash launch/setup-python.sh
export PYO3_PYTHON=$PWD/.venv/bin/python
# BQSKit's own results for the compile tests, computed by the first pytest pass, reused by the second
export BQRT_PYTEST_REFERENCES=${CARGO_TARGET_DIR:-$PWD/target}/pytest-references.json
rm -f "$BQRT_PYTEST_REFERENCES"
stage "cargo fmt --check"
cargo fmt --check
stage "cargo clippy (default features, then --features python)"
cargo clippy --release --all-targets --quiet -- -D warnings
cargo clippy --release --all-targets --features python --quiet -- -D warnings
stage "cargo test --features python (unit, simulation, in-process, mpirun, fake hosts, local SLURM)"
cargo test --release --features python -- --test-threads=2
stage "pytest tests/python (BQSKit's Compiler against bqrt serve, 1 node and 2 fake nodes)"
BQRT_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/bqrt .venv/bin/python -m pytest -q -p no:cacheprovider --durations=12 tests/python
stage "launch/demo.sh (the README's first command)"
bash launch/demo.sh
stage "MPICH build (MPICC=mpicc.mpich, target/mpich): its own suite (Hydra, fake hosts, srun --mpi=pmi2), mpirun, gateway and launch suites"
(
  export MPICC=mpicc.mpich CARGO_TARGET_DIR=$PWD/target/mpich BQRT_TEST_MPI=mpich
  bash launch/seed-target.sh "$PWD/target" "$CARGO_TARGET_DIR"
  cargo test --release --features python --test mpich --test mpirun --test gateway --test launch -- --test-threads=2
  stage "pytest tests/python on the MPICH build (one node, mpiexec.hydra)"
  BQRT_BIN=$CARGO_TARGET_DIR/release/bqrt BQRT_PYTEST_TOPOLOGIES=flat BQRT_PYTEST_LAUNCHER=mpiexec.hydra \
    .venv/bin/python -m pytest -q -p no:cacheprovider --durations=12 tests/python
)
stage "all passed"
