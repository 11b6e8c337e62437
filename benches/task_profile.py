#!/usr/bin/env python3
"""Where a BQSKit child task's time goes (W1 of compare.py: one task maps N trivial children).

A map of 128 children or more runs them in chunks (docs/decisions.md, 63): W1 itself is printed
first, then the cost of one child *task* is taken apart on maps just below that threshold (the
path every child of a smaller map, and every task of W3's tree, takes). The parent claims most
of those children back and runs them in its own step (decision 64): such a child costs one
claim (a round trip through the pipes, the shape of `frames`) and no native task; the children
the other worker steals take the whole path (a step through the pipes and a native task).

    bash benches/with-bqskit.sh task_profile.py [--calls N] [--map N]

Measures, each as the median over N tasks on this machine, in this process:
  envelope   the parent's side of one child: `Task.child` pickling (fn, args, kwargs) and
             joining the shared header (python/bqrt_worker.py);
  start      the child's side: opening the envelope, unpickling the call, making the coroutine;
  step       stepping the coroutine to its end and pickling the result;
  result     the parent reading the child's result;
  frames     one step's frames through two pipes between two processes, as the rank and its
             Python process exchange them (a start frame of the real size out, a result back),
             the rank's side spinning for the reply as src/python/child.rs does, the other
             side woken from its sleep;
then, against `mpirun -n 3 bqrt serve` (server + 2 workers):
  W1         the measured time per child of a map of N noop children, in chunks;
  per task   the same children in maps of 127 (one task each, most claimed by their parent; 2
             workers, so per worker twice this);
  native     `bqrt run fanout N` on the same 3 ranks: a native task's cost (scheduling, MPI
             messages, the executor), per task;
and prints what is left of a worker's time per task once the parts are taken away, and the CPU
each part of the runtime spent per task during those maps (every thread, every Python process).
"""
from __future__ import annotations

import argparse
import os
import re
import select
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'benches'))

from parts import envelope, median_us, worker_module  # noqa: E402


# src/python/child.rs: how long the rank spins for its Python process's reply before it sleeps
REPLY_SPIN = 100e-6


def pipe_round_trip_us(out_size: int, back_size: int, n: int) -> float:
    """Median microseconds of one frame out and one back between two processes, the first
    side waiting as the rank does (spinning first), the other as the Python process does."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    frame_out = struct.pack('<I', out_size) + b'S' * out_size
    frame_back = struct.pack('<I', back_size) + b'd' * back_size
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(n + 1):
                (k,) = struct.unpack('<I', os.read(r1, 4))
                got = 0
                while got < k:
                    got += len(os.read(r1, k - got))
                os.write(w2, frame_back)
        finally:
            os._exit(0)

    os.set_blocking(r2, False)

    def read(k: int) -> bytes:
        # as the rank waits for its Python process: spin for REPLY_SPIN, then sleep
        while True:
            try:
                return os.read(r2, k)
            except BlockingIOError:
                if time.perf_counter() - sent < REPLY_SPIN:
                    os.sched_yield()
                else:
                    select.select([r2], [], [])

    sent = 0.0

    def once() -> None:
        nonlocal sent
        os.write(w1, frame_out)
        sent = time.perf_counter()
        (k,) = struct.unpack('<I', read(4))
        got = 0
        while got < k:
            got += len(read(k - got))
    once()
    out = median_us(once, n)
    os.waitpid(pid, 0)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return out


def native_per_task_us(binary: Path, n: int) -> float:
    """Job seconds per task of `bqrt run fanout n` on 3 ranks (median of 3, from --stats)."""
    import compare
    xs = []
    for _ in range(3):
        p = subprocess.run(
            ['mpirun', '-n', '3', str(binary), 'run', 'fanout', str(n), '--stats'],
            capture_output=True, text=True, env=compare.mpi_env(), timeout=300, check=True,
        )
        m = re.search(r'job_seconds=([0-9.]+)', p.stderr)
        if m is None:
            raise SystemExit(f'no job_seconds in the stats of `bqrt run`:\n{p.stderr[-2000:]}')
        xs.append(float(m.group(1)) / n * 1e6)
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser(prog='task_profile.py')
    ap.add_argument('--calls', type=int, default=2000)
    ap.add_argument('--map', type=int, default=10000)
    ap.add_argument('--bin', type=Path, default=REPO / 'target' / 'py' / 'release' / 'bqrt')
    args = ap.parse_args()
    n = args.calls

    import compare
    worker = worker_module()
    # the largest map python/bqrt_worker.py does not run in chunks
    unchunked = 2 * worker.CHUNK_LEAST - 1
    import pickle
    body = pickle.dumps((compare.noop, (), {}), protocol=pickle.HIGHEST_PROTOCOL)
    made = worker.start(envelope(b'P', body), 0)
    assert made[0] == 'task', made
    parent = made[1]
    calls = [(compare.noop, (i,), {}) for i in range(n)]
    it = iter(calls * 2)
    making = median_us(lambda: parent.child(next(it), {}), n)
    env = parent.child(calls[0], {})
    tasks: list[Any] = []
    start = median_us(lambda: tasks.append(worker.start(env, 1)[1]), n)
    results: list[bytes] = []
    step = median_us(lambda: results.append(tasks.pop().step(0, None)[1]), n)
    for t in [*tasks, parent]:
        t.close()
    res = results[0]
    result = median_us(lambda: worker._loads(res), n)
    frames = pipe_round_trip_us(8 + 4 + len(env), 1 + len(res), n)

    server = compare.BqrtServer(args.bin)
    server.start()
    try:
        c = server.connect()
        compare.run_pass(c, compare.MapNoop(args.map))
        chunked = []
        for _ in range(3):
            data = compare.run_pass(c, compare.MapNoop(args.map))
            chunked.append(data['seconds'] / args.map * 1e6)
        w1 = []
        maps = max(1, args.map // unchunked)
        before = thread_cpu(server)
        for _ in range(3):
            seconds = 0.0
            for _ in range(maps):
                seconds += compare.run_pass(c, compare.MapNoop(unchunked))['seconds']
            w1.append(seconds / (maps * unchunked) * 1e6)
        after = thread_cpu(server)
        c.close()
    finally:
        server.stop()
    cpu = {k: (after[k] - before.get(k, 0.0)) / (len(w1) * maps * unchunked) * 1e6 for k in after}
    w1_task = statistics.median(w1)
    nat = native_per_task_us(args.bin, args.map)
    per_worker = 2 * w1_task
    parts = [('envelope (parent: pickle the call, join the header)', making),
             ('start (child: open the envelope, unpickle, make the coroutine)', start),
             ('step (child: run to the end, pickle the result)', step),
             ('result (parent: read the result)', result),
             ('frames (one round trip through the two pipes, a step or a claim: one side '
              'spins, the other is woken)', frames),
             ('native task (scheduling, MPI messages, executor; only the stolen children)', nat)]
    rest = per_worker - sum(v for _, v in parts)
    w1_chunked = statistics.median(chunked)
    print(f'W1 map {args.map} (in chunks): {w1_chunked:.2f} us per child, '
          f'{1e6 / w1_chunked:,.0f} tasks/s')
    print(f'maps of {unchunked} (one task per child, most claimed by the parent): '
          f'{w1_task:.1f} us per task, '
          f'{1e6 / w1_task:,.0f} tasks/s; 2 workers, so {per_worker:.1f} us of a worker per task')
    print('| part | us per task (median) |')
    print('| --- | ---: |')
    for k, v in parts:
        print(f'| {k} | {v:.1f} |')
    print(f'| rest (the executor\'s step through the supervisor, frame parsing, '
          f'contention for the 2 cores) | {rest:.1f} |')
    print(f'| a worker per task (maps of {unchunked}) | {per_worker:.1f} |')
    total = sum(cpu.values())
    print()
    print(f'CPU per task during the maps of {unchunked} (every thread of every rank and Python '
          f'process, utime + stime over 3 rounds, the client excluded): {total:.1f} us; '
          f'all {CORES} cores busy would run at most {CORES / total * 1e6:,.0f} tasks/s')
    print('| where | CPU us per task |')
    print('| --- | ---: |')
    for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f'| {k} | {v:.1f} |')
    return 0


CORES = os.cpu_count() or 1


def thread_cpu(server: Any) -> dict[str, float]:
    """CPU seconds so far of the server's ranks and their Python processes, summed by part:
    the server rank, worker ranks' threads by name, the Python processes."""
    import compare
    roles = server.roles()
    out: dict[str, float] = {}
    for role in ('server', 'workers'):
        for pid in roles[role]:
            for task in Path(f'/proc/{pid}/task').glob('*'):
                try:
                    text = (task / 'stat').read_text()  # this thread's own times
                except OSError:
                    continue
                name = text[text.index('(') + 1:text.rindex(')')]
                f = text[text.rindex(')') + 2:].split()
                secs = (int(f[11]) + int(f[12])) / compare.CLK
                if name.startswith('python'):
                    key = 'Python processes (the parent\'s pickling included)'
                elif role == 'server':
                    key = 'server rank (all threads)'
                elif name.startswith('bqrt-exec'):
                    key = 'worker ranks: executor threads'
                elif name == 'bqrt':
                    key = 'worker ranks: transport threads'
                else:
                    key = 'worker ranks: other threads'
                out[key] = out.get(key, 0.0) + secs
    return out


if __name__ == '__main__':
    raise SystemExit(main())
