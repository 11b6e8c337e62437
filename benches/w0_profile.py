#!/usr/bin/env python3
"""Where the client round trip of an empty BQSKit job goes (W0 of compare.py), part by part.

    bash benches/with-bqskit.sh w0_profile.py [--calls N]

Measures, each as the median of N calls on this machine:
  client   BQSKit's own client work: its process's CPU time per round trip, measured around
           the round trips themselves (building the CompilationTask, pickling it, its socket
           calls, reading the result); the pickling and unpickling alone are shown beside it;
  gateway  rank 0 decoding the two frames with bqrt's restricted unpickler (python/bqrt_codec.py);
  python   a worker's Python process running the job: opening the envelope, unpickling the
           CompilationTask, stepping its coroutine to the end, pickling the result
           (python/bqrt_worker.py, without the pipe);
  total    the whole round trip against `mpirun -n 3 bqrt serve` (submit, then result);
and prints the rest (total minus the client's CPU and the other parts: the runtime's
messages, scheduling, the pipe to the worker's process, TCP) as `runtime`.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'benches'))

from parts import envelope, load, median_us, worker_module  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(prog='w0_profile.py')
    ap.add_argument('--calls', type=int, default=200)
    ap.add_argument('--bin', type=Path, default=REPO / 'target' / 'py' / 'release' / 'bqrt')
    args = ap.parse_args()
    n = args.calls

    from bqskit.compiler import CompilationTask
    from bqskit.ir.circuit import Circuit
    from bqskit.runtime.message import RuntimeMessage

    import compare
    task = CompilationTask(Circuit(1), [compare.Nothing()])
    submit = pickle.dumps((RuntimeMessage.SUBMIT, task))
    request = pickle.dumps((RuntimeMessage.REQUEST, task.task_id))
    client = median_us(lambda: pickle.dumps((RuntimeMessage.SUBMIT, task)), n)
    client += median_us(lambda: pickle.dumps((RuntimeMessage.REQUEST, task.task_id)), n)
    result_frame = pickle.dumps((RuntimeMessage.RESULT, (Circuit(1), {})), protocol=3)
    client += median_us(lambda: pickle.loads(result_frame), n)

    codec = load('bqrt_codec', REPO / 'python' / 'bqrt_codec.py')
    gateway = median_us(lambda: codec.decode(submit), n) + median_us(
        lambda: codec.decode(request), n)

    # the worker's side, with the calls of python/bqrt_child.py replaced by no-ops
    worker = worker_module()
    job = envelope(b'R', submit)

    def run_job() -> None:
        made = worker.start(job, 0)
        assert made[0] == 'task', made
        r = made[1].step(0, None)
        assert r[0] == 'done', r
    run_job()
    python = median_us(run_job, n)

    server = compare.BqrtServer(args.bin)
    server.start()
    try:
        c = server.connect()
        compare.run_pass(c, compare.Nothing())
        compare.client_round_trips(c, 20)
        cpu0 = time.process_time()
        total = statistics.median(compare.client_round_trips(c, n)) * 1e3
        client_cpu = (time.process_time() - cpu0) / n * 1e6
        c.close()
    finally:
        server.stop()
    rest = total - client_cpu - gateway - python
    rows = [('client (BQSKit): its CPU per round trip (mean over the loop)', client_cpu),
            ('  of which pickling SUBMIT and REQUEST, reading RESULT', client),
            ('gateway decode', gateway),
            ('worker Python', python), ('runtime (messages, scheduling, pipe, TCP)', rest),
            ('total round trip', total)]
    print('| part | us (median) |')
    print('| --- | ---: |')
    for k, v in rows:
        print(f'| {k} | {v:.0f} |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
