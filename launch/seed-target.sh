#!/usr/bin/env bash
# seed-target.sh SRC DST - start a second target directory (another MPI's build) from SRC's
# release artifacts, hard-linked, leaving out everything linked against MPI (mpi-sys, mpi and
# bqrt itself), which cargo then builds for the MPI that MPICC names. Saves rebuilding the
# dependencies that do not touch MPI. Does nothing when DST already has a release build.
set -euo pipefail
src=$1/release dst=$2/release
[ -d "$src" ] || exit 0
[ -e "$dst" ] && exit 0
mpi_linked() { case "$1" in mpi-*|mpi_sys-*|libmpi-*|libmpi_sys-*|bqrt-*|libbqrt-*) return 0 ;; esac; return 1; }
mkdir -p "$dst/.fingerprint" "$dst/build" "$dst/deps"
for d in "$src"/.fingerprint/* "$src"/build/*; do
  name=$(basename "$d")
  mpi_linked "$name" && continue
  cp -al "$d" "$dst/$(basename "$(dirname "$d")")/$name"
done
# the libraries kept and their dependency-info files (.d); test and binary executables are not
for f in "$src"/deps/*; do
  name=$(basename "$f")
  mpi_linked "$name" && continue
  case "$name" in
    lib*.rlib|lib*.rmeta|lib*.so) ;;
    *.d) stem=${name%.d}
         [ -e "$src/deps/lib$stem.rlib" ] || [ -e "$src/deps/lib$stem.rmeta" ] || [ -e "$src/deps/lib$stem.so" ] || continue ;;
    *) continue ;;
  esac
  ln "$f" "$dst/deps/$name"
done
echo "seed-target: $dst started from $src (MPI-linked crates left to build)"
