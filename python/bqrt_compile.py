"""Driver of `bqrt compile`: compile one circuit with BQSKit on a running bqrt runtime.

Run by the `bqrt` binary with the Python environment's interpreter:
    python -c <this file> IN OUT --server HOST:PORT [--level N] [--seed N] [--verbose]
It prints progress (the pass being run, elapsed time) to stderr and a summary to stdout.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time


def fail(msg: str, code: int = 2) -> None:
    print(f'bqrt compile: {msg}', file=sys.stderr)
    sys.exit(code)


class Progress(logging.Handler):
    """Shows the pass being run: one updating line on a terminal, else one line per pass."""

    def __init__(self, start: float, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.start = start
        self.verbose = verbose
        self.tty = sys.stderr.isatty()
        self.current = 'connecting'
        self.passes = 0
        self.mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.name == 'bqskit.compiler.workflow' and msg.startswith('Running '):
            name = msg[len('Running '):].split(' [wid=')[0]
            with self.mutex:
                self.passes += 1
                self.current = name
            if not self.tty:
                print(f'  [{time.time() - self.start:7.1f} s] pass {self.passes}: {name}',
                      file=sys.stderr, flush=True)
            else:
                self.draw()
        elif self.verbose and record.levelno >= logging.INFO:
            self.clear()
            print(f'  {record.levelname.lower()}: {record.name}: {msg}', file=sys.stderr)

    def draw(self) -> None:
        if self.tty:
            with self.mutex:
                line = f'  [{time.time() - self.start:7.1f} s] pass {self.passes}: {self.current}'
            sys.stderr.write('\r' + line[:100].ljust(100))
            sys.stderr.flush()

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write('\r' + ' ' * 100 + '\r')
            sys.stderr.flush()


def wait_for_server(path: str, limit: float = 130.0) -> str:
    """HOST:PORT, once the runtime has written its ready file."""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with open(path) as f:
                line = f.readline().strip()
            if line:
                return line
        except OSError:
            pass
        time.sleep(0.01)
    fail(f'the runtime did not write {path} within {limit:.0f} s')
    return ''


def counts(circuit) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {str(g): n for g, n in circuit.gate_counts.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog='bqrt compile')
    p.add_argument('input')
    p.add_argument('output')
    p.add_argument('--server', help='HOST:PORT of the runtime')
    p.add_argument('--server-file', help='wait for the runtime to write HOST:PORT here')
    p.add_argument('--level', type=int, default=1)
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--verbose', action='store_true')
    p.add_argument('--local-runtime', action='store_true')
    a = p.parse_args()
    if not a.server and not a.server_file:
        fail('--server HOST:PORT or --server-file PATH is required')
    try:
        import bqskit
        from bqskit import Circuit
        from bqskit.compiler import Compiler
    except ImportError as e:
        fail(f'bqskit is not installed for {sys.executable} ({e}): run '
             'bash launch/setup-python.sh, or pip install bqskit==1.2.1')
    try:
        circuit = Circuit.from_file(a.input)
    except Exception as e:
        fail(f'{a.input}: cannot read the circuit: {type(e).__name__}: {e}')
    if a.server_file:
        # the runtime starts beside this import and read; bqrt stops this process if it fails
        a.server = wait_for_server(a.server_file)
    host, _, port = a.server.rpartition(':')
    if not host or not port.isdigit():
        fail(f'--server {a.server}: expected HOST:PORT')

    start = time.time()
    progress = Progress(start, a.verbose)
    wf_logger = logging.getLogger('bqskit.compiler.workflow')
    wf_logger.setLevel(logging.DEBUG)
    wf_logger.addHandler(progress)
    wf_logger.propagate = False
    if a.verbose:
        bq = logging.getLogger('bqskit')
        bq.setLevel(logging.INFO)
        bq.addHandler(progress)

    class ProgressCompiler(Compiler):
        """Logs only from the passes themselves (depth 0), not from every subtask."""

        def compile(self, circuit, workflow, request_data=False,  # type: ignore[override]
                    logging_level=None, max_logging_depth=0, data=None):
            return super().compile(circuit, workflow, request_data,
                                   logging_level, max_logging_depth, data)

    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            progress.draw()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    print(f'bqrt compile: {a.input}: {circuit.num_qudits} qubits, {circuit.num_operations} '
          f'gates; BQSKit {bqskit.__version__}, optimization level {a.level}, '
          f'runtime {a.server}', file=sys.stderr, flush=True)
    try:
        with ProgressCompiler(host, int(port)) as compiler:
            out = bqskit.compile(circuit, optimization_level=a.level, seed=a.seed,
                                 compiler=compiler)
    except RuntimeError as e:
        stop.set()
        progress.clear()
        cause = e.__cause__ if e.__cause__ is not None else e
        fail(f'compilation failed: {cause}', 1)
    stop.set()
    progress.clear()
    elapsed = time.time() - start
    try:
        out.save(a.output)
    except Exception as e:
        fail(f'{a.output}: cannot write the circuit: {type(e).__name__}: {e}')

    before, after = counts(circuit), counts(out)
    print(f'compiled {a.input} -> {a.output} in {elapsed:.1f} s '
          f'({progress.passes} passes, level {a.level}'
          + (f', seed {a.seed}' if a.seed is not None else '') + ')')
    print(f'  {"gate":<14}{"before":>8}{"after":>8}')
    for g in sorted(set(before) | set(after)):
        print(f'  {g:<14}{before.get(g, 0):>8}{after.get(g, 0):>8}')
    print(f'  {"total":<14}{circuit.num_operations:>8}{out.num_operations:>8}')
    print(f'  {"depth":<14}{circuit.depth:>8}{out.depth:>8}')
    if circuit.num_qudits <= 10:
        try:
            dist = out.get_unitary().get_distance_from(circuit.get_unitary(), 1)
            print(f'  unitary distance to the input: {dist:.2e}')
        except Exception:
            pass


if __name__ == '__main__':
    main()
