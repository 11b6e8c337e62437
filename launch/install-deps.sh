#!/usr/bin/env bash
# install-deps.sh - install the system packages bqrt needs on Debian 12 (bookworm), idempotently.
#
#   launch/install-deps.sh [--no-slurm]
#
# Installs: Open MPI (libopenmpi-dev openmpi-bin) and MPICH (mpich libmpich-dev; Open MPI keeps
# the generic mpicc/mpirun names, MPICH's are mpicc.mpich and mpiexec.hydra), hwloc
# (libhwloc-dev), libclang-dev (bindgen, used by the MPI bindings), pkg-config, and for the
# multi-node tests a local SLURM (slurm-wlm, munge). Packages already present are left alone and `apt-get update` is skipped when nothing is
# missing. Needs root (or passwordless sudo) when something is missing.
set -euo pipefail

slurm=1
for a in "$@"; do
  case "$a" in
    --no-slurm) slurm=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install-deps.sh: unknown argument '$a' (known: --no-slurm)" >&2; exit 2 ;;
  esac
done

pkgs=(pkg-config libhwloc-dev libclang-dev libopenmpi-dev openmpi-bin mpich libmpich-dev procps)
[ "$slurm" = 1 ] && pkgs+=(slurm-wlm munge)

missing=()
for p in "${pkgs[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} system packages present"
  exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: missing ${missing[*]}; run as root or install them with apt-get" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
log=$(mktemp /tmp/bqrt-install-deps.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  echo "install-deps: apt-get failed; last lines of $log:" >&2
  tail -30 "$log" >&2
  exit 1
fi
rm -f "$log"
echo "install-deps: done"
