#!/usr/bin/env python3
"""bqrt against BQSKit's own runtime: the same BQSKit workloads on both, interleaved, in one run.

    bash benches/compare.sh [--quick] [--reps N] [--only W0,W6] [--bin PATH]

Both runtimes get 2 workers: BQSKit's attached ``Compiler(num_workers=2)``, and ``mpirun -n 3
bqrt serve`` (server + 2 workers) reached with ``Compiler('127.0.0.1', port)``. Every workload is
a BQSKit pass (or BQSKit's own ``compile``) whose ``run`` uses ``get_runtime()``, defined once in
this module and imported on the workers of both runtimes. Runs alternate bqrt, BQSKit, bqrt, ...
after a warm-up round. Each figure is printed as min / median / max over the repetitions with the
ratio bqrt/BQSKit of the medians; everything goes to ``target/bench-compare.json`` and the ratios
to ``docs/bench-ratios.png``.

Workloads:
  W0  in-task ``await get_runtime().submit(noop)`` (200 sequential calls): ms per call;
      client round trip of an empty job (``Compiler.submit`` + ``Compiler.result``): ms.
  W1  one task maps N trivial children and awaits them (N = 1,000 and 10,000): tasks/s.
  W2  nested chain of depth 200 (each level submits one child and awaits it): ms per level.
  W3  binary tree of depth 12 (8,191 tasks): tasks/s.
  W4  start-up until the first trivial job's result (and until ready): s.
  W5  CPU time of all the runtime's processes while idle for 10 s: % of one core.
  W6  ``bqskit.compile(c, optimization_level=1|2, seed=0)`` of tests/data/circuits/*.qasm, each in
      a fresh Compiler session: runtime wall time (submit to result; the fixed sleep BQSKit's
      ``Compiler.compile`` adds after the result is left out on both sides), 2-qubit gate count,
      output verified against the input unitary.

Timing of W0 (in-task), W1, W2 and W3 is taken inside the running pass, so it excludes the client.
"""
from __future__ import annotations

import time
from typing import Any

from bqskit.compiler.basepass import BasePass
from bqskit.compiler.passdata import PassData
from bqskit.ir.circuit import Circuit
from bqskit.runtime import get_runtime

# --------------------------------------------------------------------------------------------
# Workloads: imported on the workers of both runtimes as module `compare` (keep this part light)
# --------------------------------------------------------------------------------------------


def noop(*_args: Any) -> None:
    return None


async def chain(depth: int) -> int:
    if depth == 0:
        return 0
    return 1 + await get_runtime().submit(chain, depth - 1)


async def tree(depth: int) -> int:
    if depth == 0:
        return 1
    left, right = await get_runtime().map(tree, [depth - 1, depth - 1])
    return 1 + left + right


class Nothing(BasePass):
    """The trivial workflow: does nothing."""

    async def run(self, circuit: Circuit, data: PassData) -> None:
        return None


class SubmitLoop(BasePass):
    """W0: n sequential `await submit(noop)`."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, circuit: Circuit, data: PassData) -> None:
        rt = get_runtime()
        t0 = time.perf_counter()
        for _ in range(self.n):
            if await rt.submit(noop) is not None:
                raise RuntimeError('noop returned a value')
        data['seconds'] = time.perf_counter() - t0
        data['check'] = self.n


class MapNoop(BasePass):
    """W1: map n trivial children, await them all."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, circuit: Circuit, data: PassData) -> None:
        t0 = time.perf_counter()
        out = await get_runtime().map(noop, list(range(self.n)))
        data['seconds'] = time.perf_counter() - t0
        data['check'] = len(out) if all(x is None for x in out) else -1


class Chain(BasePass):
    """W2: a chain of nested submits."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    async def run(self, circuit: Circuit, data: PassData) -> None:
        t0 = time.perf_counter()
        out = await get_runtime().submit(chain, self.depth)
        data['seconds'] = time.perf_counter() - t0
        data['check'] = out


class Tree(BasePass):
    """W3: a binary tree of nested maps; every node counts itself."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    async def run(self, circuit: Circuit, data: PassData) -> None:
        t0 = time.perf_counter()
        out = await get_runtime().map(tree, [self.depth - 1, self.depth - 1])
        data['seconds'] = time.perf_counter() - t0
        data['check'] = 1 + sum(out)


# --------------------------------------------------------------------------------------------
# The harness (client side only)
# --------------------------------------------------------------------------------------------


import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIRCUITS = REPO / 'tests' / 'data' / 'circuits'
# BQSKit's default synthesis_epsilon is 1e-8 per block; a few blocks add up (as in the tests).
THRESHOLD = 1e-6
SEED = 0
CLK = os.sysconf('SC_CLK_TCK')
W0_CALLS = 200
RTT_CALLS = 20
CHAIN_DEPTH = 200
TREE_DEPTH = 12
IDLE_SECONDS = 10.0
# bqrt; BQSKit's attached runtime (`Compiler(num_workers=2)`, a fresh one per W6 compile, as a
# script does); BQSKit's detached runtime kept warm across compiles (`bqskit-manager -n 2`, then
# `bqskit-server`), the peer of a long-lived bqrt server.
NAMES = ('bqrt', 'bqskit', 'warm')
LABELS = {'bqrt': 'bqrt', 'bqskit': 'BQSKit', 'warm': 'BQSKit warm'}


class BenchError(Exception):
    pass


def say(msg: str) -> None:
    print(f'compare: {msg}', file=sys.stderr, flush=True)


# ---- processes ------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    return text[text.rindex(')') + 2:].split()  # fields from 3 (state) on


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            f = _stat(int(d))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each live process in `pids`."""
    out = {}
    for p in pids:
        f = _stat(p)
        if f is not None:
            out[p] = (int(f[11]) + int(f[12])) / CLK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before[p] for p in after if p in before)


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    if os.geteuid() == 0:
        env['OMPI_ALLOW_RUN_AS_ROOT'] = '1'
        env['OMPI_ALLOW_RUN_AS_ROOT_CONFIRM'] = '1'
    env['OMPI_MCA_rmaps_base_oversubscribe'] = '1'
    env.setdefault('PMIX_MCA_psec', 'native')  # as launch/env.sh: no 2.2 s munge retries
    env['OMPI_MCA_hwloc_base_binding_policy'] = 'none'
    return env


# ---- the two runtimes -----------------------------------------------------------------------

class BqrtServer:
    """`mpirun -n 3 bqrt serve`: a server and 2 workers, on a free loopback port."""

    name = 'bqrt'

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start; seconds until the ready file appears."""
        self.dir = Path(tempfile.mkdtemp(prefix='bqrt-compare-'))
        ready = self.dir / 'ready'
        cmd = [
            'mpirun', '-n', '3', str(self.binary), 'serve', '--listen', '127.0.0.1:0',
            '--ready-file', str(ready), '--token-file', str(self.dir / 'token'),
            '--python', sys.executable,
        ]
        self.log = open(self.dir / 'serve.log', 'wb')
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=mpi_env(),
            start_new_session=True,
        )
        while time.perf_counter() - t0 < 120:
            if ready.exists():
                text = ready.read_text().strip()
                if text:
                    t = time.perf_counter() - t0
                    host, _, port = text.rpartition(':')
                    self.host, self.port = host, int(port)
                    return t
            if self.proc.poll() is not None:
                raise BenchError(f'bqrt serve exited early:\n{self.output()}')
            time.sleep(0.002)
        self.stop()
        raise BenchError(f'bqrt serve not ready within 120 s:\n{self.output()}')

    def output(self) -> str:
        self.log.flush()
        return (self.dir / 'serve.log').read_text(errors='replace')[-4000:]

    def connect(self) -> Any:
        from bqskit.compiler import Compiler
        return Compiler(self.host, self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def roles(self) -> dict[str, list[int]]:
        """pids: 'launcher' (mpirun), 'server' (rank 0), 'workers'."""
        assert self.proc is not None
        out: dict[str, list[int]] = {'launcher': [self.proc.pid], 'server': [], 'workers': []}
        for p in descendants(self.proc.pid)[1:]:
            try:
                env = Path(f'/proc/{p}/environ').read_bytes().split(b'\0')
            except OSError:
                continue
            rank = next(
                (e.split(b'=', 1)[1] for e in env if e.startswith(b'OMPI_COMM_WORLD_RANK=')),
                None,
            )
            if rank is None:
                out['launcher'].append(p)
            else:
                out['server' if rank == b'0' else 'workers'].append(p)
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.proc is not None:
            self.log.close()
        self.proc = None


def bqskit_roles(compiler: Any) -> dict[str, list[int]]:
    """pids of an attached BQSKit runtime: 'server' (its process), 'workers' (below it)."""
    if compiler.p is None:
        raise BenchError('not an attached BQSKit Compiler')
    below = descendants(compiler.p.pid)
    return {'launcher': [], 'server': [compiler.p.pid], 'workers': below[1:]}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


class BqskitDetached:
    """BQSKit's detached runtime, started as its docs say (manager first, then the server) on
    free loopback ports, kept up across compiles: 2 workers under one manager (the entry points
    of `bqskit-manager` and `bqskit-server`, run with this interpreter)."""

    name = 'warm'

    def start(self) -> float:
        self.stop()
        """Start; seconds until the server accepts clients."""
        import socket
        self.dir = Path(tempfile.mkdtemp(prefix='bqskit-detached-'))
        mport, wport, self.port = free_port(), free_port(), free_port()
        self.log = open(self.dir / 'runtime.log', 'wb')
        t0 = time.perf_counter()
        self.manager = subprocess.Popen(
            [sys.executable, '-c', 'from bqskit.runtime.manager import start_manager as m; m()',
             '-n', '2', '-p', str(mport), '-w', str(wport)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.server = subprocess.Popen(
            [sys.executable, '-c', 'from bqskit.runtime.detached import start_server as s; s()',
             f'localhost:{mport}', '-p', str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        while time.perf_counter() - t0 < 120:
            for p in (self.manager, self.server):
                if p.poll() is not None:
                    raise BenchError(f'BQSKit detached runtime exited early:\n{self.output()}')
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.01)
                continue
            # the server accepts only once its managers reported their workers
            return time.perf_counter() - t0
        raise BenchError(f'BQSKit detached runtime not ready within 120 s:\n{self.output()}')

    def output(self) -> str:
        self.log.flush()
        return (self.dir / 'runtime.log').read_text(errors='replace')[-4000:]

    def connect(self) -> Any:
        from bqskit.compiler import Compiler
        return Compiler('localhost', self.port)

    def alive(self) -> bool:
        return self.manager.poll() is None and self.server.poll() is None

    def roles(self) -> dict[str, list[int]]:
        """pids: 'server' (server and manager), 'workers' (the manager's children)."""
        return {'launcher': [], 'server': [self.server.pid, self.manager.pid],
                'workers': descendants(self.manager.pid)[1:]}

    def stop(self) -> None:
        if not hasattr(self, 'server'):
            return  # not started, or stopped already
        for p in (self.server, self.manager):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in (self.server, self.manager):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        self.log.close()
        del self.server, self.manager


def bqskit_compiler() -> Any:
    from bqskit.compiler import Compiler
    return Compiler(num_workers=2)


# ---- one run of each workload on a session --------------------------------------------------

def run_pass(compiler: Any, p: BasePass) -> PassData:
    tid = compiler.submit(Circuit(1), [p], request_data=True)
    _circuit, data = compiler.result(tid)
    return data


def in_task(compiler: Any, p: BasePass, expect: int) -> float:
    data = run_pass(compiler, p)
    if data.get('check') != expect:
        raise BenchError(f'{type(p).__name__}: wrong result {data.get("check")!r}, want {expect}')
    return float(data['seconds'])


def client_round_trips(compiler: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        tid = compiler.submit(Circuit(1), [Nothing()])
        compiler.result(tid)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def two_qubit(c: Circuit) -> int:
    return sum(n for g, n in c.gate_counts.items() if g.num_qudits == 2)


def timed_compile(compiler: Any, roles: dict[str, list[int]], path: Path, level: int) -> dict:
    """bqskit.compile on `compiler`, timing submit..result (without Compiler.compile's sleep)."""
    import bqskit
    circuit = Circuit.from_file(str(path))
    rec: dict[str, Any] = {}
    pids = [p for ps in roles.values() for p in ps]

    def compile_(circ: Any, workflow: Any, request_data: bool = False,
                 logging_level: Any = None, max_logging_depth: int = -1, data: Any = None) -> Any:
        before = cpu_seconds(pids)
        t0 = time.perf_counter()
        tid = compiler.submit(circ, workflow, request_data, logging_level, max_logging_depth, data)
        out = compiler.result(tid)
        rec['seconds'] = time.perf_counter() - t0
        after = cpu_seconds(pids)
        for role, ps in roles.items():
            rec[f'cpu_{role}'] = cpu_delta(
                {p: before[p] for p in ps if p in before}, after,
            )
        return out

    compiler.compile = compile_
    out = bqskit.compile(circuit, optimization_level=level, seed=SEED, compiler=compiler)
    dist = float(out.get_unitary().get_distance_from(circuit.get_unitary(), 1))
    if not dist <= THRESHOLD:
        raise BenchError(f'{path.name} -O{level}: output distance {dist} > {THRESHOLD}')
    rec.update(two_qubit_in=two_qubit(circuit), two_qubit=two_qubit(out),
               gates=out.num_operations, distance=dist)
    return rec


# ---- statistics and output ------------------------------------------------------------------

class Figures:
    def __init__(self) -> None:
        self.figs: dict[str, dict[str, Any]] = {}

    def add(self, key: str, unit: str, better: str, side: str, value: float) -> None:
        f = self.figs.setdefault(key, {'unit': unit, 'better': better, **{s: [] for s in NAMES}})
        f[side].append(value)

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key, f in self.figs.items():
            row = dict(f)
            for side in NAMES:
                xs = f[side]
                row[f'{side}_stats'] = (
                    [min(xs), statistics.median(xs), max(xs)] if xs else None
                )
            a, b, w = row['bqrt_stats'], row['bqskit_stats'], row['warm_stats']
            row['ratio'] = a[1] / b[1] if a and b and b[1] else None
            row['ratio_warm'] = a[1] / w[1] if a and w and w[1] else None
            # speed-up of bqrt over BQSKit (> 1: bqrt better)
            r = row['ratio']
            row['speedup'] = None if not r else (r if f['better'] == 'higher' else 1 / r)
            out[key] = row
        return out


def fmt(x: float | None) -> str:
    if x is None:
        return '-'
    a = abs(x)
    if a >= 1000:
        return f'{x:,.0f}'
    if a >= 100:
        return f'{x:.0f}'
    if a >= 10:
        return f'{x:.1f}'
    if a >= 1:
        return f'{x:.2f}'
    return f'{x:.3f}'


def table(summary: dict[str, dict[str, Any]], targets: dict[str, tuple[str, bool]]) -> str:
    head = ['workload', 'unit'] + [f'{LABELS[s]} min / median / max' for s in NAMES] + [
        'bqrt/BQSKit', 'bqrt/warm', 'target']
    rows = []
    for key, r in summary.items():
        mmm = [' / '.join(fmt(v) for v in r[f'{s}_stats']) if r[f'{s}_stats'] else '-'
               for s in NAMES]
        goals = [targets[k] for k in (key, f'{key} vs warm') if k in targets]
        rows.append([key, r['unit'], *mmm, fmt(r['ratio']), fmt(r['ratio_warm']),
                     '; '.join(f'{t[0]}: {"met" if t[1] else "MISSED"}' for t in goals)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ['| ' + ' | '.join(h.ljust(w) for h, w in zip(head, widths)) + ' |',
             '| ' + ' | '.join('-' * w for w in widths) + ' |']
    for row in rows:
        lines.append('| ' + ' | '.join(str(c).ljust(w) for c, w in zip(row, widths)) + ' |')
    return '\n'.join(lines)


def check_targets(summary: dict[str, dict[str, Any]], compiles: dict[str, Any]
                  ) -> dict[str, tuple[str, bool]]:
    t: dict[str, tuple[str, bool]] = {}

    def med(key: str, side: str) -> float | None:
        r = summary.get(key)
        return r[f'{side}_stats'][1] if r and r[f'{side}_stats'] else None

    k = 'W0 in-task submit'
    if med(k, 'bqrt') is not None:
        t[k] = ('<= 0.2 ms', med(k, 'bqrt') <= 0.2)
    k = 'W0 client round trip'
    if med(k, 'bqrt') is not None:
        t[k] = ('<= 1 ms', med(k, 'bqrt') <= 1.0)
    k = 'W4 start-up to ready'
    if k in summary and summary[k]['ratio'] is not None:
        t[k] = ('no slower than BQSKit', summary[k]['ratio'] <= 1.0)
    k = 'W4 start-up to 1st result'
    if med(k, 'bqrt') is not None:
        t[k] = ('<= 1.5 s', med(k, 'bqrt') <= 1.5)
    for k in summary:
        if k.startswith('W5 idle CPU') and med(k, 'bqrt') is not None:
            t[k] = ('<= 2% of a core', med(k, 'bqrt') <= 2.0)
    for k in ('W1 map 10000', 'W3 tree 12'):
        if k in summary and summary[k]['ratio'] is not None:
            t[k] = ('>= 15x', summary[k]['ratio'] >= 15)
    for k, c in compiles.items():
        r = summary[k]
        if r['ratio'] is None:
            continue
        lim = 0.8 if r['bqskit_stats'][1] < 1.0 else 1.0
        gates_ok = c['two_qubit_within_5pct']
        t[k] = (f'<= {lim}x, 2q within 5%', r['ratio'] <= lim and gates_ok)
    for k, c in compiles.items():
        r = summary[k]
        if r['ratio_warm'] is None:
            continue
        same = sorted(set(c['two_qubit']['bqrt'])) == sorted(set(c['two_qubit']['warm']))
        t[f'{k} vs warm'] = ('<= 0.9x warm, same 2q', r['ratio_warm'] <= 0.9 and same)
    return t


# ---- plot: a bar chart of bqrt's speed-up per workload, as a PNG, without dependencies -----

_FONT = {  # 5x7, column-major, bit 0 at the top
    ' ': '0000000000', '%': '2313086462', '(': '001c224100', ')': '0041221c00',
    '+': '08083e0808', ',': '0050300000', '-': '0808080808', '.': '0060600000',
    '/': '2010080402', ':': '0036360000', '<': '0008142241', '=': '1414141414',
    '>': '4122140800', '_': '4040404040', '0': '3e5149453e', '1': '00427f4000',
    '2': '4261514946', '3': '2141454b31', '4': '1814127f10', '5': '2745454539',
    '6': '3c4a494930', '7': '0171090503', '8': '3649494936', '9': '064949291e',
    'A': '7e1111117e', 'B': '7f49494936', 'C': '3e41414122', 'D': '7f4141221c',
    'E': '7f49494941', 'F': '7f09090101', 'G': '3e41415132', 'H': '7f0808087f',
    'I': '00417f4100', 'J': '2040413f01', 'K': '7f08142241', 'L': '7f40404040',
    'M': '7f0204027f', 'N': '7f0408107f', 'O': '3e4141413e', 'P': '7f09090906',
    'Q': '3e4151215e', 'R': '7f09192946', 'S': '4649494931', 'T': '01017f0101',
    'U': '3f4040403f', 'V': '1f2040201f', 'W': '7f2018207f', 'X': '6314081463',
    'Y': '0304780403', 'Z': '6151494543',
}


class Canvas:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.px = bytearray(b'\xff' * (w * h * 3))

    def rect(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.w, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.h, max(y0, y1))
        row = bytes(rgb) * (x1 - x0)
        for y in range(y0, y1):
            i = (y * self.w + x0) * 3
            self.px[i:i + len(row)] = row

    def text(self, x: int, y: int, s: str, scale: int = 2,
             rgb: tuple[int, int, int] = (0, 0, 0)) -> int:
        for ch in s.upper():
            cols = _FONT.get(ch, _FONT[' '])
            for c in range(5):
                bits = int(cols[2 * c:2 * c + 2], 16)
                for r in range(7):
                    if bits >> r & 1:
                        self.rect(x + c * scale, y + r * scale,
                                  x + (c + 1) * scale, y + (r + 1) * scale, rgb)
            x += 6 * scale
        return x

    def png(self, path: Path) -> None:
        import struct
        import zlib
        raw = b''.join(
            b'\0' + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))
        path.write_bytes(
            b'\x89PNG\r\n\x1a\n'
            + chunk(b'IHDR', struct.pack('>IIBBBBB', self.w, self.h, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(raw, 9)) + chunk(b'IEND', b''),
        )


def plot(summary: dict[str, dict[str, Any]], path: Path, subtitle: str) -> None:
    import math
    rows = [(k, r['speedup']) for k, r in summary.items() if r['speedup']]
    if not rows:
        return
    label_w, bar_w, row_h, top = 330, 560, 26, 80
    c = Canvas(label_w + bar_w + 110, top + row_h * len(rows) + 50)
    c.text(10, 10, 'bqrt speed-up over BQSKit runtime (2 workers, log scale)', 2)
    c.text(10, 36, subtitle, 1, (80, 80, 80))
    c.text(10, 50, '> 1: bqrt faster or cheaper;  median of bqrt / median of BQSKit', 1,
           (80, 80, 80))
    lo = math.floor(math.log10(min(v for _, v in rows + [('', 1.0)])))
    hi = math.ceil(math.log10(max(v for _, v in rows + [('', 1.0)])))
    lo, hi = min(lo, -1), max(hi, 1)

    def x(v: float) -> int:
        return label_w + int((math.log10(v) - lo) / (hi - lo) * bar_w)
    bottom = top + row_h * len(rows)
    for e in range(lo, hi + 1):
        c.rect(x(10.0 ** e), top - 4, x(10.0 ** e) + 1, bottom, (200, 200, 200))
        c.text(x(10.0 ** e) - 10, bottom + 8, f'{10.0 ** e:g}', 1, (80, 80, 80))
    for i, (k, v) in enumerate(rows):
        y = top + i * row_h
        c.text(10, y + 6, k[:27], 2)
        color = (60, 150, 60) if v >= 1 else (200, 60, 50)
        c.rect(min(x(1), x(v)), y + 4, max(x(1), x(v)) + 1, y + row_h - 4, color)
        c.text(max(x(1), x(v)) + 6, y + 9, f'{v:.2f}X' if v < 10 else f'{v:.0f}X', 1)
    c.rect(x(1), top - 4, x(1) + 2, bottom, (0, 0, 0))
    c.png(path)


# ---- the run --------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
        mem = Path('/proc/meminfo').read_text().split()[1]
        mem_gib = round(int(mem) / 2**20, 1)
    except OSError:
        mem_gib = None
    try:
        mpi = subprocess.run(['mpirun', '--version'], capture_output=True, text=True,
                             timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        mpi = ''
    import bqskit
    return {'cpu': cpu, 'cores': os.cpu_count(), 'mem_gib': mem_gib,
            'os': platform.platform(), 'python': platform.python_version(),
            'bqskit': bqskit.__version__, 'mpi': mpi}


def interleaved(reps: int, warmup: int) -> Any:
    """(rep, recorded, sides in this rep's order): alternate which side goes first."""
    for rep in range(warmup + reps):
        order = NAMES if rep % 2 == 0 else NAMES[::-1]
        yield rep, rep >= warmup, order


def phase_tasks(figs: Figures, bqrt: BqrtServer, warm: BqskitDetached, reps: int, warmup: int,
                maps: list[int]) -> None:
    """W0..W3 on one long-lived session per runtime."""
    sessions = {'bqrt': bqrt.connect(), 'bqskit': bqskit_compiler(), 'warm': warm.connect()}
    try:
        # BQSKit's workers import bqskit on their first task: out of every timing
        for s in sessions.values():
            run_pass(s, Nothing())
        for rep, keep, order in interleaved(reps, warmup):
            say(f'W0-W3 round {rep + 1}/{reps + warmup}' + ('' if keep else ' (warm-up)'))
            for side in order:
                c = sessions[side]
                t = in_task(c, SubmitLoop(W0_CALLS), W0_CALLS)
                if keep:
                    figs.add('W0 in-task submit', 'ms/call', 'lower', side, t / W0_CALLS * 1e3)
                rtts = client_round_trips(c, RTT_CALLS)
                if keep:
                    figs.add('W0 client round trip', 'ms', 'lower', side,
                             statistics.median(rtts))
                for n in maps:
                    t = in_task(c, MapNoop(n), n)
                    if keep:
                        figs.add(f'W1 map {n}', 'tasks/s', 'higher', side, n / t)
                t = in_task(c, Chain(CHAIN_DEPTH), CHAIN_DEPTH)
                if keep:
                    figs.add(f'W2 chain {CHAIN_DEPTH}', 'ms/level', 'lower', side,
                             t / CHAIN_DEPTH * 1e3)
                n = 2 ** (TREE_DEPTH + 1) - 1
                t = in_task(c, Tree(TREE_DEPTH), n)
                if keep:
                    figs.add(f'W3 tree {TREE_DEPTH}', 'tasks/s', 'higher', side, (n - 1) / t)
    finally:
        for s in sessions.values():
            s.close()


def phase_start_idle(figs: Figures, binary: Path, reps: int, idle: float) -> None:
    """W4 start-up and W5 idle CPU: a fresh runtime per run, nothing else running."""
    for rep, keep, order in interleaved(reps, 0):
        say(f'W4/W5 round {rep + 1}/{reps}')
        for side in order:
            server: Any = {'bqrt': lambda: BqrtServer(binary), 'warm': BqskitDetached,
                           'bqskit': lambda: None}[side]()
            compiler = None
            try:
                t0 = time.perf_counter()
                if server is not None:
                    server.start()
                    ready = time.perf_counter() - t0
                    compiler = server.connect()
                else:
                    compiler = bqskit_compiler()
                    ready = time.perf_counter() - t0
                run_pass(compiler, Nothing())
                first = time.perf_counter() - t0
                figs.add('W4 start-up to ready', 's', 'lower', side, ready)
                figs.add('W4 start-up to 1st result', 's', 'lower', side, first)
                time.sleep(1.0)
                roles = server.roles() if server is not None else bqskit_roles(compiler)
                pids = [p for ps in roles.values() for p in ps]
                before = cpu_seconds(pids)
                t1 = time.perf_counter()
                time.sleep(idle)
                used = cpu_delta(before, cpu_seconds(pids))
                figs.add(f'W5 idle CPU {idle:g} s', '% core', 'lower', side,
                         used / (time.perf_counter() - t1) * 100)
            finally:
                if compiler is not None:
                    compiler.close()
                if server is not None:
                    server.stop()


def phase_compile(figs: Figures, bqrt: BqrtServer, warm: BqskitDetached, reps: int,
                  levels: list[int], circuits: list[Path]) -> dict[str, Any]:
    """W6: every circuit and level, a fresh Compiler session per compile on every side (a
    fresh attached runtime for 'bqskit'; the long-lived servers for 'bqrt' and 'warm')."""
    servers: dict[str, Any] = {'bqrt': bqrt, 'warm': warm}
    compiles: dict[str, Any] = {}
    runs = []
    for rep, keep, order in interleaved(reps, 0):
        for path in circuits:
            for level in levels:
                key = f'W6 {path.stem} -O{level}'
                say(f'W6 round {rep + 1}/{reps}: {path.name} -O{level}')
                for side in order:
                    t0 = time.perf_counter()
                    server = servers.get(side)
                    c = server.connect() if server is not None else bqskit_compiler()
                    try:
                        run_pass(c, Nothing())  # a fresh BQSKit runtime imports bqskit here
                        session = time.perf_counter() - t0
                        roles = server.roles() if server is not None else bqskit_roles(c)
                        rec = timed_compile(c, roles, path, level)
                    finally:
                        c.close()
                    rec.update(side=side, circuit=path.stem, level=level, rep=rep,
                               session_seconds=session)
                    runs.append(rec)
                    figs.add(key, 's', 'lower', side, rec['seconds'])
                    e = compiles.setdefault(key, {'two_qubit': {s: [] for s in NAMES}})
                    e['two_qubit'][side].append(rec['two_qubit'])
                    e['two_qubit_in'] = rec['two_qubit_in']
    for e in compiles.values():
        a = statistics.median(e['two_qubit']['bqrt'])
        b = statistics.median(e['two_qubit']['bqskit'])
        e['two_qubit_within_5pct'] = abs(a - b) <= 0.05 * b
    # what the runtime adds, over all compiles of the last round
    split = {}
    for side in NAMES:
        rs = [r for r in runs if r['side'] == side]
        wall = sum(r['seconds'] for r in rs)
        work = sum(r['cpu_workers'] for r in rs)
        split[side] = {
            'compiles': len(rs), 'wall_s': wall, 'worker_cpu_s': work,
            'worker_idle_s': 2 * wall - work,
            'worker_idle_pct': (2 * wall - work) / (2 * wall) * 100 if wall else 0.0,
            'server_cpu_s': sum(r['cpu_server'] for r in rs),
            'launcher_cpu_s': sum(r.get('cpu_launcher', 0.0) for r in rs),
            'session_start_s': sum(r['session_seconds'] for r in rs),
        }
    return {'compiles': compiles, 'runs': runs, 'split': split}


def main() -> int:
    ap = argparse.ArgumentParser(
        prog='compare.py', description='bqrt against BQSKit\'s runtime, interleaved.')
    ap.add_argument('--quick', action='store_true', help='fewer repetitions (about 3 minutes)')
    ap.add_argument('--reps', type=int, help='repetitions of W0..W3 (default 5; quick 2)')
    ap.add_argument('--only', default='W0,W1,W2,W3,W4,W5,W6',
                    help='comma-separated workloads to run (default all)')
    ap.add_argument('--bin', type=Path, default=REPO / 'target' / 'py' / 'release' / 'bqrt',
                    help='bqrt binary built with --features python')
    ap.add_argument('--json', type=Path, default=REPO / 'target' / 'bench-compare.json')
    ap.add_argument('--png', type=Path, default=REPO / 'docs' / 'bench-ratios.png')
    args = ap.parse_args()
    only = {w.strip().upper() for w in args.only.split(',') if w.strip()}
    bad = only - {f'W{i}' for i in range(7)}
    if bad:
        ap.error(f'unknown workload(s) {", ".join(sorted(bad))}; choose from W0..W6')
    if args.reps is not None and args.reps < 1:
        ap.error('--reps must be at least 1')
    if not args.bin.is_file() or not os.access(args.bin, os.X_OK):
        ap.error(f'{args.bin} is not an executable; build it with: PYO3_PYTHON=$PWD/.venv/bin/'
                 'python cargo build --release --features python --target-dir target/py')
    circuits = sorted(CIRCUITS.glob('*.qasm'))
    if 'W6' in only and not circuits:
        ap.error(f'no circuits in {CIRCUITS}')
    quick = args.quick
    reps = args.reps or (2 if quick else 5)
    plan = {
        'reps_tasks': reps, 'warmup_tasks': 1,
        'reps_start_idle': 1 if quick else 3, 'idle_seconds': 5.0 if quick else IDLE_SECONDS,
        'reps_compile': 1 if quick else 3,
        'levels': [1] if quick else [1, 2], 'circuits': [p.name for p in circuits],
        'maps': [1000, 10000],
    }
    t_start = time.perf_counter()
    figs = Figures()
    result: dict[str, Any] = {
        'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'machine': machine(),
        'command': ' '.join([sys.executable, 'benches/compare.py'] + sys.argv[1:]),
        'plan': plan, 'workers': 2,
    }
    say(f'bqrt: mpirun -n 3 {args.bin} serve; BQSKit: Compiler(num_workers=2); BQSKit warm: '
        f'bqskit-manager -n 2 + bqskit-server, kept up; plan {plan}')
    bqrt = BqrtServer(args.bin)
    warm = BqskitDetached()
    w6: dict[str, Any] = {'compiles': {}}
    try:
        if only & {'W0', 'W1', 'W2', 'W3'}:
            bqrt.start()
            warm.start()
            phase_tasks(figs, bqrt, warm, plan['reps_tasks'], plan['warmup_tasks'], plan['maps'])
            bqrt.stop()
            warm.stop()
        if only & {'W4', 'W5'}:
            phase_start_idle(figs, args.bin, plan['reps_start_idle'], plan['idle_seconds'])
        if 'W6' in only:
            bqrt.start()
            warm.start()
            w6 = phase_compile(figs, bqrt, warm, plan['reps_compile'], plan['levels'], circuits)
            if not bqrt.alive():
                raise BenchError(f'bqrt serve died:\n{bqrt.output()}')
            if not warm.alive():
                raise BenchError(f'BQSKit detached runtime died:\n{warm.output()}')
            bqrt.stop()
            warm.stop()
    except BenchError as e:
        say(f'error: {e}')
        return 1
    finally:
        bqrt.stop()
        warm.stop()
    keep = {f'W{i}' for i in range(7)} & only
    summary = {k: v for k, v in figs.summary().items() if k.split()[0] in keep}
    targets = check_targets(summary, w6['compiles'])
    result.update(
        seconds=time.perf_counter() - t_start, figures=summary,
        targets={k: {'target': t, 'met': ok} for k, (t, ok) in targets.items()}, w6=w6,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(table(summary, targets))
    if w6['compiles']:
        print()
        print('| compile | 2q gates in | bqrt 2q | BQSKit 2q | BQSKit warm 2q |')
        print('| --- | ---: | ---: | ---: | ---: |')
        for k, e in w6['compiles'].items():
            print(f'| {k[3:]} | {e["two_qubit_in"]} | '
                  + ' | '.join('/'.join(map(str, e['two_qubit'][s])) for s in NAMES) + ' |')
        print()
        print('| all compiles, every round | wall s | worker CPU s | worker idle s (%) | '
              'server CPU s | session start s |')
        print('| --- | ---: | ---: | ---: | ---: | ---: |')
        for side, s in w6['split'].items():
            print(f'| {LABELS[side]} | {s["wall_s"]:.2f} | {s["worker_cpu_s"]:.2f} | '
                  f'{s["worker_idle_s"]:.2f} ({s["worker_idle_pct"]:.0f}%) | '
                  f'{s["server_cpu_s"]:.2f} | {s["session_start_s"]:.2f} |')
    args.png.parent.mkdir(parents=True, exist_ok=True)
    plot(summary, args.png, f'{result["date"]}, {result["machine"]["cpu"]}, '
         f'{result["machine"]["cores"]} cores')
    say(f'done in {result["seconds"]:.0f} s: {args.json}, {args.png}')
    missed = [k for k, (_t, ok) in targets.items() if not ok]
    if missed:
        say(f'targets missed: {", ".join(missed)}')
        return 2
    return 0


if __name__ == '__main__':
    # Run as `compare`, so that the workloads above pickle by reference to an importable module
    # (the workers of both runtimes import it through the client's sys.path).
    import compare
    raise SystemExit(compare.main())
