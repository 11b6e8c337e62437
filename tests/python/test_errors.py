"""Failing passes, and status/cancel of unknown or finished jobs (BQSKit's defects, fixed)."""
from __future__ import annotations

import time
import uuid

import pytest
from bqskit.compiler import Compiler
from bqskit.compiler.status import CompilationStatus
from bqskit.ir.circuit import Circuit

import bqrt_testpasses as tp
from conftest import top
from test_runtime import error_text


@pytest.mark.parametrize('pass_, text', [
    (tp.ErrorPass, 'bqrt-test-pass-error'),
    (tp.NestedErrorPass, 'bqrt-test-nested-error'),
])
def test_pass_error_reaches_client(runtime, pass_, text) -> None:  # type: ignore[no-untyped-def]
    with Compiler(runtime.host, runtime.port) as c:
        with pytest.raises(RuntimeError) as e:
            c.compile(Circuit(1), [pass_()])
    msg = error_text(e.value)
    assert text in msg and 'Traceback' in msg and 'ValueError' in msg
    # the runtime goes on serving
    with Compiler(runtime.host, runtime.port) as c:
        _, data = c.compile(Circuit(1), [tp.MapPass()], request_data=True)
        assert data['out'] == list(range(10))


def test_failed_job_does_not_affect_other_clients(runtime) -> None:  # type: ignore[no-untyped-def]
    with Compiler(runtime.host, runtime.port) as a, Compiler(runtime.host, runtime.port) as b:
        slow = a.submit(Circuit(1), [tp.SleepPass(1.5)], request_data=True)
        with pytest.raises(RuntimeError):
            b.compile(Circuit(1), [tp.ErrorPass()])
        _, data = a.result(slow)
        assert data['slept'] == 1.5


def test_status_of_unknown_job(compiler) -> None:  # type: ignore[no-untyped-def]
    assert compiler.status(uuid.uuid4()) == CompilationStatus.UNKNOWN
    assert compiler.cancel(uuid.uuid4())
    compiler.compile(Circuit(1), [tp.MapPass()])


def test_status_and_cancel_after_fetch(compiler) -> None:  # type: ignore[no-untyped-def]
    job = compiler.submit(Circuit(1), [tp.MapPass()])
    compiler.result(job)
    assert compiler.status(job) == CompilationStatus.UNKNOWN
    assert compiler.cancel(job)
    assert compiler.status(job) == CompilationStatus.UNKNOWN
    compiler.compile(Circuit(1), [tp.MapPass()])


def test_status_running_done(compiler) -> None:  # type: ignore[no-untyped-def]
    job = compiler.submit(Circuit(1), [tp.SleepPass(1.0)])
    assert compiler.status(job) == CompilationStatus.RUNNING
    deadline = time.time() + 60
    while compiler.status(job) != CompilationStatus.DONE:
        assert time.time() < deadline, 'job did not finish within 60 s'
        time.sleep(0.1)
    compiler.result(job)


def test_cancel_running_job(compiler) -> None:  # type: ignore[no-untyped-def]
    job = compiler.submit(Circuit(1), [tp.SleepPass(2.0)])
    assert compiler.cancel(job)
    assert compiler.status(job) == CompilationStatus.UNKNOWN
    compiler.compile(Circuit(1), [tp.MapPass()])


def test_failed_job_status_is_done_and_result_raises(runtime) -> None:  # type: ignore[no-untyped-def]
    with Compiler(runtime.host, runtime.port) as c:
        job = c.submit(Circuit(1), [tp.ErrorPass()])
        deadline = time.time() + 60
        while c.status(job) != CompilationStatus.DONE:
            assert time.time() < deadline, 'failed job never reported DONE'
            time.sleep(0.1)
        with pytest.raises(RuntimeError):
            c.result(job)


def test_disconnect_cancels_jobs(runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mark = tmp_path / 'mark'
    c = Compiler(runtime.host, runtime.port)
    c.submit(Circuit(1), [tp.DisconnectPass(str(mark))])
    c.close()
    # the job's record is freed and the runtime is idle again: had the job not been cancelled,
    # it would still be running (its pass resumes after its child only to leave the mark)
    # (idle on three looks in a row: a result in flight between two workers is no idle runtime)
    deadline = time.time() + 30
    quiet = 0
    while quiet < 3:
        t = top(runtime)
        idle = t['jobs'] == 0 and t['idle'] == t['workers'] and t['queued'] == 0
        quiet = quiet + 1 if idle else 0
        assert time.time() < deadline, f'not idle within 30 s: {t}'
        time.sleep(0.05)
    assert not mark.exists(), 'the disconnected client\'s job went on'
    with Compiler(runtime.host, runtime.port) as d:
        d.compile(Circuit(1), [tp.MapPass()])
