#!/usr/bin/env bash
# demo.sh - the main job: set up, then compile a circuit with BQSKit through bqrt on this
# machine (`bqrt compile` starts a server and one worker per core under mpiexec), then run a
# nested-task job under mpirun and print its result.
set -euo pipefail
cd "$(dirname "$0")/.."
BQRT_FEATURES=python bash launch/setup.sh
. launch/env.sh
bin=${CARGO_TARGET_DIR:-target}/release/bqrt
echo "demo: $bin compile tests/data/circuits/qft_8.qasm -o /tmp/qft_8.bqrt.qasm -O 2 --seed 1"
BQRT_PYTHON=$PWD/.venv/bin/python "$bin" compile tests/data/circuits/qft_8.qasm -o /tmp/qft_8.bqrt.qasm -O 2 --seed 1
n=$(( $(nproc) + 1 ))
echo "demo: mpirun -n $n $bin run fib 22  (28,657 nested tasks)"
mpirun -n "$n" "$bin" run fib 22 --stats 2>&1 | grep -E 'job_seconds|^[0-9]' 
