"""A shared node's other users and hostile clients against BQSKit's port: another local user is
refused while the owner compiles; the connection cap, idle and frame timeouts and the receive
budget hold on BQSKit connections; the owner's native clients still get in."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Client as MpClient
from pathlib import Path

import pytest
from bqskit import compile
from bqskit.compiler import Compiler
from bqskit.ir.circuit import Circuit
from bqskit.runtime.message import RuntimeMessage

from conftest import BIN, Runtime

CIRCUIT = Path(__file__).resolve().parents[1] / 'data' / 'circuits' / 'ghz_8.qasm'

# A BQSKit client in the standard library only, for a user who cannot run the project's venv:
# it sends a CONNECT-shaped frame and prints the reply frame's bytes.
RAW_CLIENT = r'''
import pickle, socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
body = pickle.dumps((0, list(sys.path)), protocol=4)
s.sendall(struct.pack('>I', len(body)) + body)
data = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
'''


def can_switch_user() -> bool:
    if os.geteuid() != 0 or shutil.which('runuser') is None:
        return False
    return subprocess.run(['runuser', '-u', 'nobody', '--', 'true']).returncode == 0


def connect(rt: Runtime):  # type: ignore[no-untyped-def]
    """A raw BQSKit connection past CONNECT/READY."""
    conn = MpClient((rt.host, rt.port))
    conn.send((RuntimeMessage.CONNECT, sys.path))
    msg, _ = conn.recv()
    assert msg == RuntimeMessage.READY, msg
    return conn


def native(rt: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args, '--server', f'{rt.host}:{rt.port}',
         '--token-file', str(rt.dir / 'token')],
        capture_output=True, text=True, timeout=60,
    )


def rank0(rt: Runtime) -> int:
    """Rank 0's pid: the launcher's descendant with rank 0 (Open MPI's or Hydra's variable)."""
    todo, seen = [rt.proc.pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        try:
            children = Path(f'/proc/{p}/task/{p}/children').read_text().split()
        except OSError:
            children = []
        todo.extend(int(c) for c in children)
    for p in seen:
        try:
            env = Path(f'/proc/{p}/environ').read_bytes().split(b'\0')
        except OSError:
            continue
        if b'OMPI_COMM_WORLD_RANK=0' in env or b'PMI_RANK=0' in env:
            return p
    pytest.fail('rank 0 not found')


def rss(pid: int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS')


@pytest.mark.skipif(not can_switch_user(), reason='needs root and runuser (CI runs as root)')
def test_another_local_user_is_refused_while_the_owner_compiles(runtime) -> None:  # type: ignore[no-untyped-def]
    d = Path(tempfile.mkdtemp(prefix='bqrt-other-user-'))
    d.chmod(0o755)
    script = d / 'client.py'
    script.write_text(RAW_CLIENT)
    script.chmod(0o644)
    other: dict[str, subprocess.CompletedProcess[bytes]] = {}

    def other_user() -> None:
        other['run'] = subprocess.run(
            ['runuser', '-u', 'nobody', '--', '/usr/bin/python3', str(script),
             runtime.host, str(runtime.port)],
            capture_output=True, timeout=60,
        )

    t = threading.Thread(target=other_user)
    t.start()
    c = Circuit.from_file(str(CIRCUIT))
    with Compiler(runtime.host, runtime.port) as comp:
        out = compile(c, optimization_level=1, seed=7, compiler=comp)
    t.join(timeout=120)
    shutil.rmtree(d, ignore_errors=True)
    run = other['run']
    said = run.stdout.decode('latin-1')
    assert 'refuses this BQSKit client' in said and 'uid' in said, (run.returncode, said, run.stderr)
    assert out.get_unitary().get_distance_from(c.get_unitary(), 1) <= 1e-6
    assert 'refused' in runtime.output(), 'no log line on the server'


@pytest.fixture(scope='module')
def strict():  # type: ignore[no-untyped-def]
    rt = Runtime('flat', ['--max-connections', '4', '--idle-timeout', '2',
                          '--frame-timeout', '1', '--receive-budget', '32'])
    yield rt
    rt.stop()


def test_past_the_cap_bqskit_clients_are_refused_and_the_owner_still_gets_in(strict) -> None:  # type: ignore[no-untyped-def]
    held = [connect(strict) for _ in range(4)]
    extra = MpClient((strict.host, strict.port))
    extra.send((RuntimeMessage.CONNECT, sys.path))
    msg, payload = extra.recv()
    assert msg == RuntimeMessage.ERROR and 'too many connections' in payload, (msg, payload)
    top = native(strict, 'top', '--once')
    assert top.returncode == 0, top.stderr
    for c in held:
        c.close()


def test_with_the_cap_full_of_bqskit_clients_the_owner_can_still_shut_down() -> None:
    rt = Runtime('flat', ['--max-connections', '2'])
    try:
        held = [connect(rt) for _ in range(2)]
        extra = MpClient((rt.host, rt.port))
        extra.send((RuntimeMessage.CONNECT, sys.path))
        msg, payload = extra.recv()
        assert msg == RuntimeMessage.ERROR and 'too many connections' in payload, (msg, payload)
        down = native(rt, 'shutdown')
        assert down.returncode == 0, down.stderr
        rt.proc.wait(timeout=30)
        assert rt.proc.returncode == 0, rt.output()
        for c in held:
            c.close()
    finally:
        rt.stop()


def test_an_idle_bqskit_connection_is_closed_after_the_idle_timeout(strict) -> None:  # type: ignore[no-untyped-def]
    conn = connect(strict)
    start = time.time()
    assert conn.poll(10), 'not closed within 10 s'
    msg, payload = conn.recv()
    took = time.time() - start
    assert msg == RuntimeMessage.ERROR and 'no job' in payload, (msg, payload)
    assert 1.5 <= took <= 6, took
    with pytest.raises(EOFError):
        conn.recv()


def test_a_trickling_bqskit_sender_is_dropped_within_the_frame_timeout(strict) -> None:  # type: ignore[no-untyped-def]
    for first in (True, False):
        s = socket.create_connection((strict.host, strict.port), timeout=20)
        if not first:  # after CONNECT: the session's own reader
            body = b'\x80' + bytes(10)
            conn_frame = __import__('pickle').dumps((RuntimeMessage.CONNECT, sys.path))
            s.sendall(struct.pack('>I', len(conn_frame)) + conn_frame)
            n = struct.unpack('>I', s.recv(4))[0]
            while n > 0:
                n -= len(s.recv(n))
        s.sendall(struct.pack('>I', 1000) + b'\x80')
        start = time.time()
        closed = False
        for _ in range(100):  # a byte every 100 ms would take 10 s
            try:
                s.sendall(b'\x00')
            except OSError:
                closed = True
                break
            s.settimeout(0.1)
            try:
                if s.recv(65536) == b'':
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
        took = time.time() - start
        assert closed and took < 4, (first, took)
        s.close()


def test_huge_bqskit_frames_stay_within_the_receive_budget(strict) -> None:  # type: ignore[no-untyped-def]
    pid = rank0(strict)
    before = rss(pid)
    peak = before
    # a first frame announcing 256 MiB: over the first-frame limit, refused with BQSKit's ERROR
    s = socket.create_connection((strict.host, strict.port), timeout=20)
    s.sendall(struct.pack('>I', 256 << 20) + b'\x80')
    data = s.recv(65536)
    assert b'first frame' in data and b'limit' in data, data
    s.close()
    # then 3 sessions (the cap is 4) each sending 24 MiB of a 200 MiB frame: 72 MiB without the
    # budget of 32
    def flood() -> None:
        conn = connect(strict)
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            sock.sendall(struct.pack('>I', 200 << 20) + b'\x80')
            chunk = bytes(1 << 20)
            for _ in range(24):
                sock.sendall(chunk)
        except OSError:
            pass
        finally:
            sock.close()
            conn.close()

    threads = [threading.Thread(target=flood) for _ in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss(pid))
        time.sleep(0.01)
    grew = peak - before
    assert grew <= (32 + 24) << 20, f'rank 0 grew by {grew >> 20} MiB (budget 32 MiB)'
    top = native(strict, 'top', '--once')
    assert top.returncode == 0, top.stderr


def test_a_small_frame_cannot_make_rank_0_allocate_gigabytes(strict) -> None:  # type: ignore[no-untyped-def]
    """A pickle's memo index past its end would make an unpickler grow its memo table to twice
    that index (a 150-byte frame: gigabytes, seconds of CPU): refused at once, rank 0 unmoved,
    and the runtime keeps serving."""
    import pickle
    pid = rank0(strict)
    before = rss(pid)
    for op in (b'r\x94\x5d\x94\x28', b'p999999999\n'):  # LONG_BINPUT, PUT
        head = pickle.dumps((RuntimeMessage.STATUS, None), protocol=2)[:-1]
        conn = connect(strict)
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        frame = head + op + b'.'
        start = time.time()
        sock.sendall(struct.pack('>I', len(frame)) + frame)
        msg, payload = conn.recv()
        assert msg == RuntimeMessage.ERROR and 'memo index' in payload, (msg, payload)
        assert time.time() - start < 5
        sock.close()
        conn.close()
    assert rss(pid) - before < 64 << 20, f'rank 0 grew by {(rss(pid) - before) >> 20} MiB'
    top = native(strict, 'top', '--once')
    assert top.returncode == 0, top.stderr


def test_a_client_that_reads_no_replies_cannot_make_rank_0_buffer_its_requests(strict) -> None:  # type: ignore[no-untyped-def]
    """A BQSKit connection reads a client's next frame only once it handled the last, so a
    client that sends without reading its replies fills TCP's buffers, not rank 0's memory."""
    import fcntl
    import pickle
    import termios

    from bqskit.compiler import CompilationTask

    import bqrt_testpasses as tp
    pid = rank0(strict)
    conn = connect(strict)
    task = CompilationTask(Circuit(1), [tp.BlobPass(64 << 20)])
    task.request_data = True
    conn.send((RuntimeMessage.SUBMIT, task))
    conn.send((RuntimeMessage.REQUEST, task.task_id))

    def unread() -> int:
        return struct.unpack('i', fcntl.ioctl(conn.fileno(), termios.FIONREAD, b'\0' * 4))[0]
    # the 64 MiB result is not read: once part of it waits here, the connection is blocked
    # writing the rest (TCP holds a few MiB of it: a receive buffer grows only when read)
    deadline = time.time() + 60
    while unread() < 64 << 10:
        assert time.time() < deadline, 'the result never started to arrive'
        time.sleep(0.01)
    before = rss(pid)
    # meanwhile 1 MiB requests, up to 256 of them, each decoding into 1 MiB if queued
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.settimeout(2.0)
    body = pickle.dumps((RuntimeMessage.CONNECT, ['x' * (1 << 20)]))
    frame = struct.pack('>I', len(body)) + body
    sent = 0
    try:
        for _ in range(256):
            sock.sendall(frame)
            sent += 1
    except OSError:  # stalled for 2 s: the server reads no more
        pass
    grew = rss(pid) - before
    sock.close()
    conn.close()
    # what TCP may hold on this path: the server's receive buffer and the client's send buffer
    # at their largest (a few MiB on most hosts; a host tuned for far more checks memory only)
    tcp = sum(int(Path(f'/proc/sys/net/ipv4/{n}').read_text().split()[2]) >> 20
              for n in ('tcp_rmem', 'tcp_wmem'))
    if tcp + 16 < 256:
        assert sent < tcp + 16, f'the server took {sent} MiB of requests while their sender read nothing'
    assert grew < 64 << 20, f'rank 0 grew by {grew >> 20} MiB'
    top = native(strict, 'top', '--once')
    assert top.returncode == 0, top.stderr
