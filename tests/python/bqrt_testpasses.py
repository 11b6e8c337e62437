"""Passes and task functions the tests send to bqrt's workers (importable there through the
client's sys.path, which BQSKit ships on connect)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bqskit.compiler.basepass import BasePass
from bqskit.compiler.passdata import PassData
from bqskit.ir.circuit import Circuit
from bqskit.ir.gates import HGate
from bqskit.runtime import get_runtime


def identity(x: Any) -> Any:
    return x


def pair(i: int) -> int:
    return i


async def two(i: int) -> list[int]:
    return await get_runtime().map(pair, [2 * i, 2 * i + 1])


def square_after(i: int, delay: float = 0.0) -> int:
    if delay:
        time.sleep(delay)
    return i * i


async def square_async(i: int, delay: float = 0.0) -> int:
    return square_after(i, delay)


def read_after(delay: float) -> list[Any]:
    """Sleep `delay`, then return the messages this task has got."""
    time.sleep(delay)
    return get_runtime().get_messages()


def fail_at(i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f'child {i} fails')
    return i


async def tree(depth: int) -> int:
    """A binary tree of nested maps; every node counts itself."""
    if depth == 0:
        return 1
    left, right = await get_runtime().map(tree, [depth - 1, depth - 1])
    return 1 + left + right


# what `grow` kept of each call, as a worker's cache would
_kept: list[list[int]] = []


def grow(xs: list[int], tag: str) -> tuple[list[int], list[int], str]:
    """Change its argument, keep a list of its own and return both, with its (immutable) tag."""
    xs.append(1)
    mine = [5]
    _kept.append(mine)
    return xs, mine, tag


async def copies() -> tuple[list[int], list[Any], list[list[int]]]:
    """Map `grow` over one list twice, then change what came back: as on BQSKit, no side sees
    the other's changes (each child gets a copy of its argument, the parent of its result),
    wherever the children ran."""
    _kept.clear()
    xs = [0]
    got = await get_runtime().map(grow, [xs, xs], ['a', 'b'])
    for _, mine, _tag in got:
        mine.append(6)
    return xs, got, _kept


async def fail_in_map(n: int, bad: int) -> list[int]:
    return await get_runtime().map(fail_at, list(range(n)), [bad] * n)


def leave_and_read(i: int) -> list[Any]:
    """Submit a child it never awaits, then return the messages it got."""
    get_runtime().submit(square_after, i, 10.0)
    return get_runtime().get_messages()


async def submit_one(fn: Any, *args: Any) -> Any:
    return await get_runtime().submit(fn, *args)


def first_waits_for(i: int, log: str, others: int) -> int:
    """Child 0 blocks until `others` other children have run (each adds a byte to `log`; 30 s
    at most); the others return at once."""
    import os
    if i != 0 or others <= 0:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b'.')
        os.close(fd)
        return i
    deadline = time.monotonic() + 30
    while not os.path.exists(log) or os.path.getsize(log) < others:
        if time.monotonic() > deadline:
            raise RuntimeError('the other children did not run while child 0 ran')
        time.sleep(0.005)
    return i


def sleepy(t: float) -> float:
    time.sleep(t)
    return t


def boom(msg: str) -> None:
    raise ValueError(msg)


async def make_h() -> Circuit:
    c = Circuit(1)
    c.append_gate(HGate(), (0,))
    return c


def library_lookups(_: int) -> tuple[list[Any], int]:
    """What ``find_library('c')`` gives in this worker, 3 times and through BQSKit's own
    reference to it, and how many processes the lookups started."""
    import ctypes.util
    import subprocess

    from bqskit.utils import random as bqskit_random
    started = []
    start = subprocess.Popen.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        started.append(args[0] if args else kwargs.get('args'))
        start(self, *args, **kwargs)

    subprocess.Popen.__init__ = counting  # type: ignore[method-assign]
    try:
        names = [ctypes.util.find_library('c') for _ in range(3)]
        names += [bqskit_random.find_library('c') for _ in range(3)]
    finally:
        subprocess.Popen.__init__ = start  # type: ignore[method-assign]
    return names, len(started)


class LibraryLookupPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['out'] = await get_runtime().map(library_lookups, list(range(8)))


class MapPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['out'] = await get_runtime().map(identity, list(range(10)))


class TwoLevelMapPass(BasePass):
    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['out'] = await get_runtime().map(two, list(range(self.n)))


class CircuitChangePass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        new = await get_runtime().submit(make_h)
        circuit.become(new)


class GatePass(BasePass):
    def __init__(self, gate: Any) -> None:
        self.gate = gate

    async def run(self, circuit: Circuit, data: PassData) -> None:
        circuit.append_gate(self.gate, (0,))


class SleepPass(BasePass):
    def __init__(self, t: float) -> None:
        self.t = t

    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['slept'] = await get_runtime().submit(sleepy, self.t)


# next
class NoDuplicateResult(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().map(sleepy, [0.1, 0.2, 0.3])
        got = await get_runtime().next(fut)
        slots = [i for i, _ in got]
        assert len(got) > 0 and len(slots) == len(set(slots)), got


class NoDuplicateResultsInTwoNexts(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().map(sleepy, [0.1, 0.2, 0.3])
        seen: list[int] = []
        while len(seen) < 3:
            seen += [i for i, _ in await get_runtime().next(fut)]
        assert sorted(seen) == [0, 1, 2], seen


class FutureAwaitGivesAllResultsAfterNext(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().map(sleepy, [0.1, 0.2, 0.3])
        await get_runtime().next(fut)
        assert await fut == [0.1, 0.2, 0.3]


class NextOnCompleteTaskRaisesError(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().map(sleepy, [0.1, 0.2])
        await fut
        try:
            await get_runtime().next(fut)
        except RuntimeError:
            return
        raise AssertionError('next on a consumed future did not raise')


class NextNeverLosesResults(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().map(sleepy, [0.1, 0.5])
        first = await get_runtime().next(fut)
        time.sleep(1.0)  # the other result arrives while this task is blocked
        got = list(first)
        while len(got) < 2:
            got += await get_runtime().next(fut)
        assert sorted(got) == [(0, 0.1), (1, 0.5)], got


# cancel
def touch(path: str) -> None:
    """Leave a mark that this task ran."""
    with open(path, 'w') as f:
        f.write('ran')


class CancelPass(BasePass):
    """Cancels a map of marker tasks, then runs a round of work on every worker: a marker task
    that was not cancelled would have run by then."""

    def __init__(self, d: str) -> None:
        self.d = d

    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().map(touch, [f'{self.d}/mark{i}' for i in range(20)])
        get_runtime().cancel(fut)
        data['after'] = await get_runtime().map(sleepy, [0.05] * 16)


class DisconnectPass(BasePass):
    """Waits on a child, then leaves a mark: a job cancelled while it waits never marks."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def run(self, circuit: Circuit, data: PassData) -> None:
        await get_runtime().submit(sleepy, 1.0)
        await get_runtime().submit(touch, self.path)


class AwaitCancelledPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().submit(sleepy, 1.0)
        get_runtime().cancel(fut)
        await fut


class CancelTwicePass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().submit(sleepy, 0.1)
        get_runtime().cancel(fut)
        try:
            get_runtime().cancel(fut)
        except KeyError:
            data['keyerror'] = True


# cache
# communicate
def listen(limit: float) -> Any:
    """Wait (computing, not awaiting) for the first message sent with communicate."""
    end = time.time() + limit
    while time.time() < end:
        msgs = get_runtime().get_messages()
        if msgs:
            return msgs[0]
        time.sleep(0.005)
    return 'no message'


def listen_in(d: str, limit: float) -> dict[str, Any]:
    """Register in `d` (see `arrive`), then listen: what it heard, and where."""
    me = arrive(d)
    return {'rank': me['rank'], 'heard': listen(limit)}


class CommunicatePass(BasePass):
    """Maps `n` listeners, waits until all of them run (30 s at most), sends them one message,
    and records what each heard and where it ran, and where this task ran."""

    def __init__(self, n: int, d: str) -> None:
        self.n, self.d = n, d

    async def run(self, circuit: Circuit, data: PassData) -> None:
        rt = get_runtime()
        n = self.n
        fut = rt.map(listen_in, [self.d] * n, [30.0] * n)
        # A child claimed into this step at once sends the worker's report of its queue, so
        # idle workers steal the listeners now. Then this step waits without yielding: its
        # worker starts no listener itself (one there could hear nothing, as this task could
        # not send), so each listener runs on another worker, all at once, before the message.
        await rt.submit(identity, None)
        started = wait_for_arrivals(self.d, n, 30.0)
        if started < n:
            raise RuntimeError(f'{started} of {n} listeners started within 30 s')
        data['sender'] = worker_rank()
        rt.communicate(fut, {'hello': 1})
        data['heard'] = await fut


class CachePut(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        import numpy as np
        get_runtime().get_cache()['bqrt-test'] = np.arange(12).reshape(3, 4)


class CacheGet(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['cached'] = get_runtime().get_cache()['bqrt-test']


# futures
class FutureDonePass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().submit(sleepy, 0.2)
        data['before'] = fut._done
        await fut
        data['after'] = fut._done


class FutureSendPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        fut = get_runtime().submit(sleepy, 0.1)
        await get_runtime().submit(identity, fut)


class AwaitNonFuturePass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        class NotAFuture:
            def __await__(self):  # type: ignore[no-untyped-def]
                return (yield self)
        await NotAFuture()


# errors
class ErrorPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        boom('bqrt-test-pass-error')


class NestedErrorPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        await get_runtime().submit(boom, 'bqrt-test-nested-error')


# logging
def log_all(depth: int = 0) -> None:
    logging.getLogger('bqskit').info(f'bqskit info {depth}')
    logging.getLogger('bqskit').debug(f'bqskit debug {depth}')
    logging.getLogger('bqskit.dummy').info(f'dummy info {depth}')
    logging.getLogger('bqskit.dummy').debug(f'dummy debug {depth}')
    logging.getLogger('dummy2').info(f'dummy2 info {depth}')
    logging.getLogger('dummy2').debug(f'dummy2 debug {depth}')


class LogPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        log_all()


class LogArgsPass(BasePass):
    async def run(self, circuit: Circuit, data: PassData) -> None:
        logging.getLogger('dummy2').info('int %d', 1)
        logging.getLogger('dummy2').info('lock %s', threading.Lock())


async def nested_log(depth: int, logger: str) -> None:
    logging.getLogger(logger).info(f'depth {depth}')
    if depth < 3:
        await get_runtime().submit(nested_log, depth + 1, logger)


class NestedLogPass(BasePass):
    def __init__(self, logger: str) -> None:
        self.logger = logger

    async def run(self, circuit: Circuit, data: PassData) -> None:
        await nested_log(0, self.logger)


# supervision: passes that crash, spin, swallow the cancel, allocate too much
def worker_rank() -> int:
    """The rank of the worker running this task (bqrt only)."""
    import sys
    return int(sys.modules['_bqrt'].worker_id())


def mark_rank(path: str) -> None:
    """Write "RANK PID": this task's worker rank and its Python process."""
    import os
    with open(path + '.tmp', 'w') as f:
        f.write(f'{worker_rank()} {os.getpid()}')
    os.replace(path + '.tmp', path)


# barriers: tasks that run at the same time, each holding its worker (computing, not
# awaiting), so n of them that met ran on n distinct workers
def arrive(d: str) -> dict[str, Any]:
    """Register in the directory `d` as a task running now: its worker's rank, its Python
    process and the time (one file each, written whole)."""
    import json
    import os
    import uuid
    me = {'rank': worker_rank(), 'pid': os.getpid(), 'at': time.time()}
    name = uuid.uuid4().hex
    with open(os.path.join(d, f'.{name}'), 'w') as f:
        json.dump(me, f)
    os.replace(os.path.join(d, f'.{name}'), os.path.join(d, f'{name}.json'))
    return me


def arrivals(d: str) -> int:
    import os
    return sum(1 for name in os.listdir(d) if name.endswith('.json'))


def wait_for_arrivals(d: str, n: int, limit: float) -> int:
    """Wait, without yielding, until `n` tasks arrived in `d` or `limit` seconds passed;
    returns how many arrived."""
    end = time.monotonic() + limit
    while True:
        got = arrivals(d)
        if got >= n or time.monotonic() > end:
            return got
        time.sleep(0.005)


def meet(d: str, n: int, limit: float) -> dict[str, Any]:
    """Arrive in `d`, then wait until `n` tasks did (`limit` seconds at most): where it ran,
    when it arrived, and how many tasks it met (`n` unless the limit passed)."""
    me = arrive(d)
    me['met'] = wait_for_arrivals(d, n, limit)
    return me


async def meet_everywhere(n: int, d: str, limit: float = 30.0) -> list[dict[str, Any]]:
    """`n` children that wait for each other: with `n` workers, every worker runs one."""
    return await get_runtime().map(meet, [d] * n, [n] * n, [limit] * n)


class MeetPass(BasePass):
    def __init__(self, n: int, d: str, limit: float = 30.0) -> None:
        self.n, self.d, self.limit = n, d, limit

    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['met'] = await meet_everywhere(self.n, self.d, self.limit)


class CrashPass(BasePass):
    """Takes its worker's Python process down: 'exit' (os._exit(3)), 'segfault' (reads address
    0 through ctypes), 'abort' (os.abort()); 'raise' is a plain exception for comparison."""

    def __init__(self, how: str) -> None:
        self.how = how

    async def run(self, circuit: Circuit, data: PassData) -> None:
        import os
        if self.how == 'raise':
            raise ValueError('bqrt-test-crash-raise')
        if self.how == 'exit':
            os._exit(3)
        if self.how == 'abort':
            os.abort()
        import ctypes
        ctypes.string_at(0)


async def hold(i: int, naps: int, t: float, d: str) -> int:
    """Waits on `naps` children one after the other (a coroutine suspended most of the time)."""
    touch(f'{d}/held-{i}')
    for _ in range(naps):
        await get_runtime().submit(sleepy, t)
    return i * i


class BystanderPass(BasePass):
    """Work that keeps coroutines suspended on every worker for a while."""

    def __init__(self, n: int, naps: int, t: float, d: str) -> None:
        self.n, self.naps, self.t, self.d = n, naps, t, d

    async def run(self, circuit: Circuit, data: PassData) -> None:
        n = self.n
        data['squares'] = await get_runtime().map(
            hold, list(range(n)), [self.naps] * n, [self.t] * n, [self.d] * n,
        )


def spin_forever(path: str) -> None:
    mark_rank(path)
    while True:
        pass


def swallow_forever(path: str) -> None:
    mark_rank(path)
    while True:
        try:
            time.sleep(0.01)
        except BaseException:  # swallows every cancel it can see
            pass


class SpinPass(BasePass):
    """A child that never yields ('spin': a Python loop; 'swallow': one that swallows every
    exception raised into it)."""

    def __init__(self, how: str, path: str) -> None:
        self.how, self.path = how, path

    async def run(self, circuit: Circuit, data: PassData) -> None:
        fn = spin_forever if self.how == 'spin' else swallow_forever
        await get_runtime().submit(fn, self.path)


def rank_after(t: float) -> int:
    time.sleep(t)
    return worker_rank()


class RanksPass(BasePass):
    """Many short tasks; records the ranks that ran them."""

    def __init__(self, n: int, t: float) -> None:
        self.n, self.t = n, t

    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['ranks'] = await get_runtime().map(rank_after, [self.t] * self.n)


def allocate(mib: int) -> int:
    block = bytearray(mib << 20)
    return len(block)


class AllocatePass(BasePass):
    def __init__(self, mib: int) -> None:
        self.mib = mib

    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['allocated'] = await get_runtime().submit(allocate, self.mib)


def where(_i: int) -> tuple[str, str]:
    """The worker group and GPU of the worker a task ran on ('' on BQSKit's own runtime)."""
    import os
    return os.environ.get('BQRT_GROUP', ''), os.environ.get('CUDA_VISIBLE_DEVICES', '')


def where_slowly(i: int) -> tuple[str, str]:
    """`where`, after 5 ms: long enough that a parent cannot run all of a map of them itself
    before idle workers steal some (children it takes back by token cost microseconds)."""
    time.sleep(0.005)
    return where(i)


class ResourcePass(BasePass):
    """Maps `n` tasks that need `needs` (through bqrt_resources) and `n` that need nothing."""

    def __init__(self, n: int, needs: str) -> None:
        self.n = n
        self.needs = needs

    async def run(self, circuit: Circuit, data: PassData) -> None:
        import bqrt_resources
        data['needing'] = await bqrt_resources.map(where, list(range(self.n)), needs=self.needs)
        data['one'] = await bqrt_resources.submit(where, 0, needs=[self.needs])
        data['free'] = await get_runtime().map(where_slowly, list(range(self.n)))


class LogThenBlockPass(BasePass):
    """Logs a warning, then blocks its worker without yielding until `release` exists (the
    test creates it when the record reaches the client) or 30 s passed."""

    def __init__(self, release: str) -> None:
        self.release = release

    async def run(self, circuit: Circuit, data: PassData) -> None:
        import os
        logging.getLogger('bqskit.dummy').warning('about to block')
        end = time.time() + 30
        while not os.path.exists(self.release) and time.time() < end:
            time.sleep(0.001)
        data['released'] = os.path.exists(self.release)


class BlobPass(BasePass):
    """Makes the job's result (with its data) `n` bytes larger."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, circuit: Circuit, data: PassData) -> None:
        data['blob'] = bytes(self.n)


class SquaresPass(BasePass):
    """Two maps of `n` children: the first quick (the process learns the function is, so the
    second runs in chunks: decision 63), the second sleeping `delay` in each child."""

    def __init__(self, n: int, delay: float = 0.0, of_async: bool = False) -> None:
        self.n, self.delay, self.of_async = n, delay, of_async

    async def run(self, circuit: Circuit, data: PassData) -> None:
        fn = square_async if self.of_async else square_after
        data['first'] = await get_runtime().map(fn, list(range(self.n)))
        data['out'] = await get_runtime().map(fn, list(range(self.n)), delay=self.delay)


class SquaresByNextPass(BasePass):
    """The same map read with ``next``: every (index, value) pair as it arrives."""

    def __init__(self, n: int, delay: float = 0.0) -> None:
        self.n, self.delay = n, delay

    async def run(self, circuit: Circuit, data: PassData) -> None:
        rt = get_runtime()
        await rt.map(square_after, list(range(self.n)))  # learnt quick: the next map in chunks
        fut = rt.map(square_after, list(range(self.n)), delay=self.delay)
        got: list[tuple[int, int]] = []
        while len(got) < self.n:
            got.extend(await rt.next(fut))
        data['out'] = got


class FailInMapPass(BasePass):
    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad = n, bad

    async def run(self, circuit: Circuit, data: PassData) -> None:
        n = self.n
        data['first'] = await get_runtime().map(fail_at, list(range(n)), [-1] * n)
        data['out'] = await get_runtime().map(fail_at, list(range(n)), [self.bad] * n)


class SlowFirstChildPass(BasePass):
    """A map whose child 0 blocks until every child outside its chunk has run."""

    def __init__(self, n: int, log: str) -> None:
        self.n, self.log = n, log

    async def run(self, circuit: Circuit, data: PassData) -> None:
        n = self.n
        rt = get_runtime()
        learn = self.log + '.first'  # a quick map first: the next runs in chunks
        await rt.map(first_waits_for, list(range(n)), [learn] * n, [0] * n)
        others = n - 64  # 64: the most children a chunk holds, child 0's included
        data['out'] = await rt.map(first_waits_for, list(range(n)), [self.log] * n, [others] * n)
