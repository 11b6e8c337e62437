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
echo "test: python environment (.venv with bqskit 1.2.1)"
bash launch/setup-python.sh
export PYO3_PYTHON=$PWD/.venv/bin/python
echo "test: cargo clippy --features python"
cargo clippy --release --all-targets --features python --quiet -- -D warnings
echo "test: cargo test --features python (python module unit tests)"
cargo test --release --features python --lib -- --test-threads=2 python::
echo "test: cargo build --features python"
cargo build --release --features python --quiet
echo "test: pytest tests/python (BQSKit's Compiler against bqrt serve, 1 node and 2 fake nodes)"
BQRT_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/bqrt .venv/bin/python -m pytest -q -p no:cacheprovider tests/python
echo "test: launch/demo.sh (the README's first command)"
bash launch/demo.sh
echo "test: MPICH build (MPICC=mpicc.mpich, target/mpich): its own suite (Hydra, fake hosts, srun --mpi=pmi2), mpirun, gateway and launch suites"
(
  export MPICC=mpicc.mpich CARGO_TARGET_DIR=$PWD/target/mpich BQRT_TEST_MPI=mpich
  unset PYO3_PYTHON
  cargo test --release --test mpich --test mpirun --test gateway --test launch -- --test-threads=2
  export PYO3_PYTHON=$PWD/.venv/bin/python
  cargo build --release --features python --quiet
  echo "test: pytest tests/python on the MPICH build (one node, mpiexec.hydra)"
  BQRT_BIN=$CARGO_TARGET_DIR/release/bqrt BQRT_PYTEST_TOPOLOGIES=flat BQRT_PYTEST_LAUNCHER=mpiexec.hydra \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/python
)
echo "test: all passed in $(( $(date +%s) - t0 )) s"
