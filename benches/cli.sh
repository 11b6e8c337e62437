#!/usr/bin/env bash
# cli.sh - `bqrt compile` against a plain `bqskit.compile` script, whole process, interleaved
# (2 workers each); prints medians and ratios, exits 1 when a goal is missed.
#
#   bash benches/cli.sh              # 5 runs a side per circuit, a few minutes
#   bash benches/cli.sh --reps 3
#
# BQRT_COMPARE_NO_BUILD=1 skips the build (see benches/with-bqskit.sh).
exec bash "$(dirname "$0")/with-bqskit.sh" cli.py "$@"
