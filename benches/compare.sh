#!/usr/bin/env bash
# compare.sh - bqrt against BQSKit's own runtime on the same BQSKit workloads, interleaved, in
# one run (2 workers each). Sets up .venv (bqskit 1.2.1), builds the BQSKit-enabled binary into
# target/py, runs benches/compare.py: prints a table, writes target/bench-compare.json and
# docs/bench-ratios.png.
#
#   bash benches/compare.sh            # about 10 minutes
#   bash benches/compare.sh --quick    # about 3 minutes
#   bash benches/compare.sh --only W0,W1 --reps 3    # see: .venv/bin/python benches/compare.py -h
#
# BQRT_COMPARE_NO_BUILD=1 skips the build (see benches/with-bqskit.sh).
exec bash "$(dirname "$0")/with-bqskit.sh" compare.py "$@"
