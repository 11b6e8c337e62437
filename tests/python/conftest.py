"""Fixtures: a bqrt runtime under mpirun (one node, or two fake nodes with managers) that
BQSKit's own Compiler connects to.

Settings: BQRT_BIN (default target/release/bqrt, built with --features python),
BQRT_PYTEST_TOPOLOGIES (default "flat,cluster"; "flat" = mpirun -n 4 bqrt serve,
"cluster" = launch/cluster.sh 2 3 -- bqrt serve), BQRT_PYTEST_LAUNCHER (default "mpirun": the
launcher of "flat", e.g. "mpiexec.hydra" for a build against MPICH).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get('BQRT_BIN', REPO / 'target' / 'release' / 'bqrt'))
TOPOLOGIES = [
    t for t in os.environ.get('BQRT_PYTEST_TOPOLOGIES', 'flat,cluster').split(',') if t
]


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    if os.geteuid() == 0:
        env['OMPI_ALLOW_RUN_AS_ROOT'] = '1'
        env['OMPI_ALLOW_RUN_AS_ROOT_CONFIRM'] = '1'
    env['OMPI_MCA_rmaps_base_oversubscribe'] = '1'
    env.setdefault('PMIX_MCA_psec', 'native')
    env['OMPI_MCA_hwloc_base_binding_policy'] = 'none'
    env.setdefault('UCX_LOG_LEVEL', 'error')  # MPICH over UCX: warnings go to stdout
    return env


class Runtime:
    """`bqrt serve` under a launcher, on a free loopback port."""

    def __init__(self, topology: str, extra: list[str] | None = None, ranks: int = 4,
                 python: str = sys.executable) -> None:
        if not BIN.exists():
            pytest.fail(f'{BIN} is missing: cargo build --release --features python')
        self.dir = Path(tempfile.mkdtemp(prefix=f'bqrt-pytest-{topology}-'))
        ready = self.dir / 'ready'
        serve = [
            str(BIN), 'serve', '--listen', '127.0.0.1:0', '--ready-file', str(ready),
            '--token-file', str(self.dir / 'token'), '--python', python,
        ] + (extra or [])
        if topology == 'flat':
            cmd = os.environ.get('BQRT_PYTEST_LAUNCHER', 'mpirun').split() + ['-n', str(ranks)] + serve
        elif topology == 'cluster':
            cmd = ['bash', str(REPO / 'launch' / 'cluster.sh'), '2', '3', '--'] + serve
        else:
            pytest.fail(f'unknown topology {topology!r}')
        self.log = open(self.dir / 'runtime.log', 'wb')
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=mpi_env(),
            start_new_session=True,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if ready.exists() and ready.read_text().strip():
                host, _, port = ready.read_text().strip().rpartition(':')
                self.host, self.port = host, int(port)
                return
            if self.proc.poll() is not None:
                pytest.fail(f'runtime exited early:\n{self.output()}')
            time.sleep(0.05)
        self.stop()
        pytest.fail(f'runtime not ready within 90 s:\n{self.output()}')

    def output(self) -> str:
        self.log.flush()
        return (self.dir / 'runtime.log').read_text(errors='replace')

    def alive(self) -> bool:
        return self.proc.poll() is None

    def python_processes(self) -> list[int]:
        """The pids of the workers' Python processes (descendants running bqrt's child)."""
        return [p for p in descendants(self.proc.pid) if b'bqrt_child' in cmdline(p)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def top(rt: Runtime) -> dict[str, int]:
    """`bqrt top --once`'s counts: workers, busy, idle, queued, jobs, clients."""
    p = subprocess.run(
        [str(BIN), 'top', '--once', '--server', f'{rt.host}:{rt.port}',
         '--token-file', str(rt.dir / 'token')],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    line = p.stdout.splitlines()[1].replace('(', ' ').replace(')', ' ').replace(',', ' ')
    words = line.split()
    return {k: int(words[words.index(k) + 1]) for k in
            ('workers', 'busy', 'idle', 'queued', 'jobs', 'clients')}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f'/proc/{pid}/cmdline').read_bytes()
    except OSError:
        return b''


def descendants(root: int) -> list[int]:
    """Every live process below `root`."""
    children: dict[int, list[int]] = {}
    for d in Path('/proc').iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / 'stat').read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(')')[2].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat.rpartition(')')[2].split()[0] != 'Z'


def wait_for(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll `cond` until it is true (returns its value) or fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    pytest.fail(f'{what}: not within {timeout} s')


@pytest.fixture(scope='session', params=TOPOLOGIES)
def runtime(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    rt = Runtime(request.param)
    yield rt
    alive = rt.alive()
    rt.stop()
    assert alive, f'the runtime died during the tests:\n{rt.output()}'


@pytest.fixture
def compiler(runtime: Runtime):  # type: ignore[no-untyped-def]
    from bqskit.compiler import Compiler
    c = Compiler(runtime.host, runtime.port)
    yield c
    c.close()
    assert runtime.alive(), runtime.output()
