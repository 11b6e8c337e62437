"""BQSKit's runtime behaviour (its tests/runtime checklist) on bqrt, through BQSKit's own
Compiler in detached mode."""
from __future__ import annotations

import pytest
from bqskit.ir.circuit import Circuit
from bqskit.ir.gates import HGate, XGate

import bqrt_testpasses as tp
from conftest import top


def compile_data(compiler, passes, circuit=None, **kw):  # type: ignore[no-untyped-def]
    out, data = compiler.compile(circuit or Circuit(1), passes, request_data=True, **kw)
    return out, data


def error_text(e: BaseException) -> str:
    parts = []
    while e is not None:
        parts.append(str(e))
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return '\n'.join(parts)


def test_simple_map(compiler) -> None:  # type: ignore[no-untyped-def]
    _, data = compile_data(compiler, [tp.MapPass()])
    assert data['out'] == list(range(10))


def test_workers_remember_the_libraries_they_looked_up(compiler) -> None:  # type: ignore[no-untyped-def]
    """BQSKit looks up libc at every seeded instantiation, and each lookup runs ``ldconfig
    -p`` in a subprocess: a worker remembers the answer (the same one)."""
    import ctypes.util
    libc = ctypes.util.find_library('c')
    assert libc
    _, data = compile_data(compiler, [tp.LibraryLookupPass()])
    for names, started in data['out']:
        assert names == [libc] * 6, names
        assert started <= 1, started  # the first lookup of a fresh process, at most


def test_2level_map(compiler) -> None:  # type: ignore[no-untyped-def]
    _, data = compile_data(compiler, [tp.TwoLevelMapPass(1000)])
    assert data['out'] == [[2 * i, 2 * i + 1] for i in range(1000)]


@pytest.mark.parametrize('n, delay, of_async', [
    (1000, 0.0, False), (4096, 0.0, False), (256, 0.003, False), (129, 0.0, False),
    (1000, 0.0, True), (256, 0.003, True),
])
def test_a_large_map_gives_every_result_in_order(compiler, n, delay, of_async) -> None:  # type: ignore[no-untyped-def]
    # Large maps of a plain function run in chunks once the process has seen it is quick
    # (decision 63); with a delay past the chunk's budget, every chunk sends the rest of its
    # children out as tasks of their own. Maps of an async function stay one task per child.
    _, data = compile_data(compiler, [tp.SquaresPass(n, delay, of_async)])
    assert data['first'] == [i * i for i in range(n)]
    assert data['out'] == [i * i for i in range(n)]


@pytest.mark.parametrize('n, delay', [(1000, 0.0), (256, 0.003)])
def test_next_on_a_large_map_gives_each_index_once(compiler, n, delay) -> None:  # type: ignore[no-untyped-def]
    _, data = compile_data(compiler, [tp.SquaresByNextPass(n, delay)])
    got = data['out']
    assert sorted(i for i, _ in got) == list(range(n))
    assert all(v == i * i for i, v in got)


def test_a_failing_child_of_a_large_map_fails_the_job_with_its_error(compiler) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as e:
        compile_data(compiler, [tp.FailInMapPass(1000, 637)])
    assert 'child 637 fails' in error_text(e.value)


def test_a_blocked_child_of_a_large_map_holds_back_only_its_own_chunk(compiler, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Child 0 blocks its worker until every child outside child 0's chunk has run: if a chunk
    # queued on that worker waited behind it, this would run into child 0's 30 s.
    n = 4096
    _, data = compile_data(compiler, [tp.SlowFirstChildPass(n, str(tmp_path / 'ran'))])
    assert data['out'] == list(range(n))
    assert (tmp_path / 'ran').stat().st_size == n - 1


def test_circuit_change(compiler) -> None:  # type: ignore[no-untyped-def]
    out = compiler.compile(Circuit(1), [tp.CircuitChangePass()])
    assert out.num_operations == 1
    assert HGate() in out.gate_set


def test_reuse(compiler) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):
        _, data = compile_data(compiler, [tp.MapPass()])
        assert data['out'] == list(range(10))


def test_parallel(compiler) -> None:  # type: ignore[no-untyped-def]
    a = compiler.submit(Circuit(1), [tp.GatePass(HGate())])
    b = compiler.submit(Circuit(1), [tp.GatePass(XGate())])
    ra, rb = compiler.result(a), compiler.result(b)
    assert ra.gate_set == {HGate()} and rb.gate_set == {XGate()}


@pytest.mark.parametrize('pass_', [
    tp.NoDuplicateResult, tp.NoDuplicateResultsInTwoNexts,
    tp.FutureAwaitGivesAllResultsAfterNext, tp.NextOnCompleteTaskRaisesError,
    tp.NextNeverLosesResults,
])
def test_next(compiler, pass_) -> None:  # type: ignore[no-untyped-def]
    compiler.compile(Circuit(1), [pass_()])


def test_simple_cancel(compiler, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out, data = compiler.compile(Circuit(1), [tp.CancelPass(str(tmp_path))], True)
    assert data['after'] == [0.05] * 16, 'the work after the cancel ran'
    assert list(tmp_path.iterdir()) == [], 'a cancelled task ran'


def test_cant_await_cancel(runtime) -> None:  # type: ignore[no-untyped-def]
    from bqskit.compiler import Compiler
    with Compiler(runtime.host, runtime.port) as c:
        with pytest.raises(RuntimeError) as e:
            c.compile(Circuit(1), [tp.AwaitCancelledPass()])
    assert 'Cannot await on a canceled task.' in error_text(e.value)


def test_cancel_consumed_future_raises_keyerror(compiler) -> None:  # type: ignore[no-untyped-def]
    _, data = compile_data(compiler, [tp.CancelTwicePass()])
    assert data['keyerror']


def test_communicate_reaches_running_tasks(runtime, compiler, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a listener on every worker but the sender's, all running when the one message is sent
    n = top(runtime)['workers'] - 1
    assert n >= 1, 'needs 2 workers or more'
    _, data = compile_data(compiler, [tp.CommunicatePass(n, str(tmp_path))])
    assert [h['heard'] for h in data['heard']] == [{'hello': 1}] * n, data['heard']
    ranks = {h['rank'] for h in data['heard']} | {data['sender']}
    assert len(ranks) == n + 1, data


def test_cache(compiler) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    _, data = compile_data(compiler, [tp.CachePut(), tp.CacheGet()])
    assert np.array_equal(data['cached'], np.arange(12).reshape(3, 4))


def test_future_done(compiler) -> None:  # type: ignore[no-untyped-def]
    _, data = compile_data(compiler, [tp.FutureDonePass()])
    assert data['before'] is False and data['after'] is True


def test_future_cannot_send(runtime) -> None:  # type: ignore[no-untyped-def]
    from bqskit.compiler import Compiler
    with Compiler(runtime.host, runtime.port) as c:
        with pytest.raises(RuntimeError):
            c.compile(Circuit(1), [tp.FutureSendPass()])


def test_await_non_future(runtime) -> None:  # type: ignore[no-untyped-def]
    from bqskit.compiler import Compiler
    with Compiler(runtime.host, runtime.port) as c:
        with pytest.raises(RuntimeError) as e:
            c.compile(Circuit(1), [tp.AwaitNonFuturePass()])
    assert 'Can only await on a BQSKit RuntimeFuture.' in error_text(e.value)
