#!/usr/bin/env bash
# cluster.sh - run a program as if on a cluster of several nodes, on this one machine.
#
#   launch/cluster.sh NODES RANKS_PER_NODE -- PROGRAM [ARGS...]
#
# Starts NODES * RANKS_PER_NODE ranks of PROGRAM with Open MPI's mpirun over the fake hosts
# n1..nNODES, RANKS_PER_NODE ranks on each (ranks 0..R-1 on n1, R..2R-1 on n2, ...). The hosts
# are reached through launch/fakessh, which gives each its own hostname, so MPI sees NODES
# separate nodes (one shared-memory group per host) joined by TCP over loopback.
#
# Examples:
#   launch/cluster.sh 3 2 -- hostname                      # n1 n1 n2 n2 n3 n3 (in any order)
#   launch/cluster.sh 2 3 -- target/release/bqrt run fib 20 --stats
#   MPIRUN_ARGS="--tag-output" launch/cluster.sh 2 2 -- hostname
#
# Settings: as root it allows mpirun to run as root; ranks may outnumber cores (--oversubscribe);
# Open MPI does not bind ranks (--bind-to none: bqrt pins its own workers). Extra mpirun options
# go in MPIRUN_ARGS (split on spaces). The exit status is mpirun's.
#
# Needs Open MPI's mpirun and root (fakessh uses `unshare --uts`).
set -euo pipefail

usage() {
  echo "usage: $0 NODES RANKS_PER_NODE -- PROGRAM [ARGS...]" >&2
  exit 2
}
die() {
  echo "cluster.sh: $*" >&2
  exit 2
}

[ $# -ge 4 ] && [ "$3" = "--" ] || usage
nodes=$1
per_node=$2
shift 3
for n in "$nodes" "$per_node"; do
  [[ $n =~ ^[1-9][0-9]{0,3}$ ]] || die "NODES and RANKS_PER_NODE must be whole numbers from 1 to 9999, got '$n'"
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
agent=$here/fakessh
[ -x "$agent" ] || die "$agent is missing or not executable"
command -v mpirun >/dev/null || die "mpirun not found: install openmpi-bin (launch/install-deps.sh)"
mpirun --version 2>/dev/null | grep -q "Open MPI" || die "mpirun is not Open MPI's; cluster.sh drives Open MPI only"
[ "$(id -u)" = 0 ] || die "fake hosts need root (unshare --uts in launch/fakessh)"

hosts=$(seq -f "n%g:$per_node" 1 "$nodes" | paste -sd, -)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of words on purpose
exec mpirun \
  --mca plm_rsh_agent "$agent" \
  --mca btl_tcp_if_include lo \
  --mca oob_tcp_if_include lo \
  --oversubscribe \
  --bind-to none \
  --host "$hosts" \
  -n $((nodes * per_node)) \
  ${MPIRUN_ARGS:-} \
  "$@"
