#!/usr/bin/env bash
# demo.sh - the main job: set up, then run a nested-task job on this machine under mpirun
# (a server and one worker per core) and print its result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
. launch/env.sh
n=$(( $(nproc) + 1 ))
echo "demo: mpirun -n $n target/release/bqrt run fib 22  (28,657 nested tasks)"
mpirun -n "$n" target/release/bqrt run fib 22 --stats 2>&1 | grep -E 'job_seconds|^[0-9]' 
