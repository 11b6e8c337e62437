"""`bqrt compile` on a shipped circuit, with its own runtime and against a running one: the
output implements the input, with BQSKit's own gate counts for the same seed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bqskit.ir.circuit import Circuit

from conftest import BIN, Runtime, mpi_env
from test_compile import SEED, reference, two_qubit

CIRCUIT = Path(__file__).resolve().parents[1] / 'data' / 'circuits' / 'qft_6.qasm'


def compile_cli(args: list[str], tmp_path: Path, circuit: Path = CIRCUIT,
                out: str = 'out.qasm') -> subprocess.CompletedProcess[str]:
    env = mpi_env()
    env['BQRT_PYTHON'] = sys.executable
    return subprocess.run(
        [str(BIN), 'compile', str(circuit), '-o', str(tmp_path / out), '--seed', str(SEED)]
        + args, capture_output=True, text=True, env=env, timeout=600,
    )


def run(args: list[str], tmp_path: Path, level: int) -> str:
    p = compile_cli(args + ['-O', str(level)], tmp_path)
    assert p.returncode == 0, p.stderr + p.stdout
    out = tmp_path / 'out.qasm'
    c_in, c_out = Circuit.from_file(str(CIRCUIT)), Circuit.from_file(str(out))
    assert c_out.get_unitary().get_distance_from(c_in.get_unitary(), 1) <= 1e-6
    # the same compile as bqskit.compile on BQSKit's own runtime, with the same seed
    assert (two_qubit(c_out), c_out.num_operations) == reference(CIRCUIT, level), p.stdout
    assert f'{c_out.num_operations:>8}' in p.stdout.splitlines()[-3], p.stdout
    return p.stdout


def server_args(runtime) -> list[str]:  # type: ignore[no-untyped-def]
    return ['--server', f'{runtime.host}:{runtime.port}', '--token-file',
            str(runtime.dir / 'token')]


def test_compile_with_own_runtime(tmp_path: Path) -> None:
    stdout = run(['--ranks', '3'], tmp_path, 1)
    assert 'before' in stdout and 'after' in stdout and 'total' in stdout
    assert 'unitary distance to the input' in stdout


def test_compile_with_server(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stdout = run(server_args(runtime), tmp_path, 2)
    assert 'compiled' in stdout


def test_compile_errors_name_the_cause(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / 'bad.qasm'
    bad.write_text('OPENQASM 2.0;\nthis is not a circuit;\n')
    p = compile_cli(server_args(runtime), tmp_path, circuit=bad)
    assert p.returncode == 1 and 'cannot read the circuit' in p.stderr, p.stderr
    p = compile_cli(server_args(runtime), tmp_path, out='out.nosuchformat')
    assert p.returncode == 1 and "writes no circuits of format 'nosuchformat'" in p.stderr, \
        p.stderr
    p = compile_cli(server_args(runtime), tmp_path, out='noextension')
    assert p.returncode == 2 and 'needs an extension' in p.stderr, p.stderr
    p = compile_cli(['--server', f'{runtime.host}:{runtime.port}', '--token-file',
                     str(tmp_path / 'missing-token')], tmp_path)
    assert p.returncode == 2 and 'token' in p.stderr, p.stderr
    # the runtime is unharmed: the next compile works
    run(server_args(runtime), tmp_path, 1)


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


def test_compile_against_a_runtime_without_bqskit_says_so(tmp_path: Path) -> None:
    rt = Runtime('flat', extra=['--no-python'], ranks=2)
    try:
        p = compile_cli(['--server', f'{rt.host}:{rt.port}', '--token-file',
                         str(rt.dir / 'token')], tmp_path)
        assert p.returncode == 2 and 'no BQSKit support' in p.stderr, p.stderr
    finally:
        rt.stop()
