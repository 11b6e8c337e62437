#!/usr/bin/env python3
"""`bqrt compile` against a plain BQSKit script, whole process, interleaved, in one run.

    bash benches/cli.sh [--reps N] [--bin PATH]

Each side compiles the same circuit at the same level with the same seed and 2 workers, as a
new process from nothing, the way a user runs it once:

  bqrt:   bqrt compile CIRCUIT -o OUT -O LEVEL --seed 0 --ranks 3   (a server and 2 workers)
  BQSKit: python -c "bqskit.compile(Circuit.from_file(CIRCUIT), optimization_level=LEVEL,
          seed=0, num_workers=2).save(OUT)"

Runs alternate bqrt, BQSKit, bqrt, ... (no warm-up: the first command is what is measured).
Prints min / median / max wall seconds per side, the ratio of the medians, the time from
`bqrt compile`'s report to its exit, and whether each goal is met; exits 1 when one is missed:
  ghz_8 -O1: bqrt <= 0.5x BQSKit;  qft_8 -O2: bqrt <= 0.8x BQSKit;  exit <= 0.3 s after the report.
Both outputs are checked against the input's unitary (distance < 1e-8).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIRCUITS = ROOT / "tests" / "data" / "circuits"
CASES = [("ghz_8", 1, 0.5), ("qft_8", 2, 0.8)]
EXIT_GOAL = 0.3

PLAIN = """
import sys
from bqskit import compile
from bqskit.ir.circuit import Circuit
c = Circuit.from_file(sys.argv[1])
out = compile(c, optimization_level=int(sys.argv[3]), seed=0, num_workers=2)
out.save(sys.argv[2])
"""

CHECK = """
import sys
from bqskit.ir.circuit import Circuit
a, b = Circuit.from_file(sys.argv[1]), Circuit.from_file(sys.argv[2])
print(a.get_unitary().get_distance_from(b.get_unitary(), 1))
"""


def run_bqrt(binary: str, circuit: Path, out: Path, level: int) -> tuple[float, float]:
    """Whole-process seconds, and seconds from the compile's report to the exit."""
    cmd = [binary, "compile", str(circuit), "-o", str(out), "-O", str(level), "--seed", "0",
           "--ranks", "3"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reported = None
    lines = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line)
        if "unitary distance" in line:
            reported = time.perf_counter()
    code = p.wait()
    end = time.perf_counter()
    if code != 0 or reported is None:
        sys.exit(f"cli: bqrt compile failed ({code}):\n{''.join(lines)}")
    return end - t0, end - reported


def run_plain(python: str, circuit: Path, out: Path, level: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([python, "-c", PLAIN, str(circuit), str(out), str(level)],
                       capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"cli: the plain BQSKit script failed ({r.returncode}):\n{r.stderr}")
    return took


def check(python: str, circuit: Path, out: Path) -> None:
    r = subprocess.run([python, "-c", CHECK, str(circuit), str(out)], capture_output=True,
                       text=True)
    if r.returncode != 0 or float(r.stdout.strip() or "1") > 1e-8:
        sys.exit(f"cli: {out} does not implement {circuit}: {r.stdout}{r.stderr}")


def fmt(v: list[float]) -> str:
    return f"{min(v):6.2f} {statistics.median(v):6.2f} {max(v):6.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bin", default=str(ROOT / "target" / "py" / "release" / "bqrt"))
    args = ap.parse_args()
    python = sys.executable
    os.environ.setdefault("BQRT_PYTHON", python)
    missed = 0
    print(f"{'case':12} {'side':7} {'min':>6} {'median':>6} {'max':>6}   ratio bqrt/BQSKit")
    with tempfile.TemporaryDirectory() as d:
        for name, level, goal in CASES:
            circuit = CIRCUITS / f"{name}.qasm"
            bq, plain, exits = [], [], []
            for _ in range(args.reps):
                out_b, out_p = Path(d) / f"{name}.bqrt.qasm", Path(d) / f"{name}.plain.qasm"
                took, after = run_bqrt(args.bin, circuit, out_b, level)
                bq.append(took)
                exits.append(after)
                plain.append(run_plain(python, circuit, out_p, level))
                check(python, circuit, out_b)
                check(python, circuit, out_p)
            ratio = statistics.median(bq) / statistics.median(plain)
            ok = ratio <= goal
            exit_ok = statistics.median(exits) <= EXIT_GOAL
            missed += (not ok) + (not exit_ok)
            case = f"{name} -O{level}"
            print(f"{case:12} {'bqrt':7} {fmt(bq)}   {ratio:.2f} (goal <= {goal}: "
                  f"{'met' if ok else 'missed'})")
            print(f"{'':12} {'BQSKit':7} {fmt(plain)}")
            print(f"{'':12} {'exit':7} {fmt(exits)}   after the report (goal <= {EXIT_GOAL} s: "
                  f"{'met' if exit_ok else 'missed'})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
