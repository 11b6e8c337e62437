"""`bqrt compile` on a shipped circuit, with its own runtime and against a running one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bqskit.ir.circuit import Circuit

from conftest import BIN, mpi_env

CIRCUIT = Path(__file__).resolve().parents[1] / 'data' / 'circuits' / 'qft_6.qasm'


def run(args: list[str], tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / 'out.qasm'
    env = mpi_env()
    env['BQRT_PYTHON'] = sys.executable
    p = subprocess.run(
        [str(BIN), 'compile', str(CIRCUIT), '-o', str(out), '--seed', '3'] + args,
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert p.returncode == 0, p.stderr + p.stdout
    c_in, c_out = Circuit.from_file(str(CIRCUIT)), Circuit.from_file(str(out))
    assert c_out.get_unitary().get_distance_from(c_in.get_unitary(), 1) <= 1e-6
    return out, p.stdout


def test_compile_with_own_runtime(tmp_path: Path) -> None:
    _, stdout = run(['--ranks', '3'], tmp_path)
    assert 'before' in stdout and 'after' in stdout and 'total' in stdout


def test_compile_with_server(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, stdout = run(['--server', f'{runtime.host}:{runtime.port}', '-O', '2'], tmp_path)
    assert 'compiled' in stdout


def test_compile_missing_input(tmp_path: Path) -> None:
    p = subprocess.run([str(BIN), 'compile', str(tmp_path / 'nope.qasm'), '-o', 'x.qasm'],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and 'no such file' in p.stderr


def test_a_missing_or_wrong_python_environment_is_named(tmp_path: Path) -> None:
    env = mpi_env()
    env.pop('VIRTUAL_ENV', None)
    # an interpreter that does not exist
    p = subprocess.run([str(BIN), 'serve', '--listen', '127.0.0.1:0', '--token-file',
                        str(tmp_path / 'token'), '--python', str(tmp_path / 'nopython')],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert 'nopython' in p.stderr, p.stderr
    # an interpreter without bqskit (a bare venv)
    bare = tmp_path / 'bare'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(bare)], check=True)
    p = subprocess.run([str(BIN), 'serve', '--listen', '127.0.0.1:0',
                        '--token-file', str(tmp_path / 'token'),
                        '--python', str(bare / 'bin' / 'python')],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert 'bqskit' in p.stderr and str(bare) in p.stderr, p.stderr
    assert p.stderr.count('bqskit is not installed') == 1, p.stderr
