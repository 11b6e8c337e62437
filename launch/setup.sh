#!/usr/bin/env bash
# setup.sh - install what is missing (system packages) and build bqrt in release mode.
# Idempotent; safe to run again.
#
#   bash launch/setup.sh                  # against Open MPI: target/release/bqrt
#   BQRT_MPI=mpich bash launch/setup.sh   # against MPICH: target/mpich/release/bqrt
#   BQRT_FEATURES=python bash launch/setup.sh   # with BQSKit support (sets up .venv first)
#
# The MPI a build is linked against decides its launcher (Open MPI: mpirun; MPICH: mpiexec.hydra,
# or srun --mpi=pmi2); `bqrt --version` names it. Each MPI gets its own target directory (the
# MPI bindings do not notice a switch).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }
bash launch/install-deps.sh
case "${BQRT_MPI:-openmpi}" in
  openmpi) ;;
  mpich) export MPICC=mpicc.mpich CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/mpich} ;;
  *) echo "setup: BQRT_MPI=$BQRT_MPI: must be openmpi or mpich" >&2; exit 2 ;;
esac
features=()
case ",${BQRT_FEATURES:-}," in
  ,,) ;;
  *,python,*)
    bash launch/setup-python.sh
    export PYO3_PYTHON=${PYO3_PYTHON:-$PWD/.venv/bin/python}
    features=(--features "$BQRT_FEATURES") ;;
  *) features=(--features "$BQRT_FEATURES") ;;
esac
echo "setup: building bqrt (release, ${BQRT_MPI:-openmpi}${BQRT_FEATURES:+, features $BQRT_FEATURES})"
cargo build --release --quiet --bins --examples "${features[@]}"
echo "setup: built ${CARGO_TARGET_DIR:-target}/release/bqrt ($("${CARGO_TARGET_DIR:-target}"/release/bqrt --version))"
