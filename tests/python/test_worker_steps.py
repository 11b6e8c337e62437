"""Steps of BQSKit tasks (python/bqrt_worker.py) taken here without a runtime: the chunks of a
large map (decision 63) and children run inside their parent's step (decision 64). The functions
the worker's process gives bqrt_worker are replaced by a recording fake, whose queue stands for
the worker's."""
from __future__ import annotations

import json
import logging
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import bqrt_testpasses as tp

WORKER = Path(__file__).resolve().parents[2] / 'python' / 'bqrt_worker.py'


class Fake:
    """The `_bqrt` calls: submits are recorded, messages come from `inbox`. Children submitted
    to the worker's queue wait in `queue` (box, slot, envelope, name), from which `claim` takes
    the last of a box when `claims` is on (off: every claim finds none, as if thieves took
    them all)."""

    def __init__(self) -> None:
        self.submits: list[list[tuple[bytes, str]]] = []
        self.inbox: list[bytes] = []
        self.boxes: set[int] = set()
        self.queue: list[tuple[int, int, bytes, str]] = []
        self.claims = False
        self.cancelled: list[int] = []

    def submit(
        self, children: list[tuple[bytes, str]], single: bool, needs: str = '',
        local: bool = False,
    ) -> int:
        self.submits.append(children)
        box = len(self.submits)
        self.boxes.add(box)
        if local:
            self.queue.extend((box, i, env, name) for i, (env, name) in enumerate(children))
        return box

    def claim(self, box: int) -> tuple[int, str, bytes] | None:
        assert box in self.boxes
        for i in range(len(self.queue) - 1, -1, -1):
            if self.claims and self.queue[i][0] == box:
                _, slot, env, name = self.queue.pop(i)
                return slot, name, env
        return None

    def steal(self) -> tuple[int, int, bytes, str]:
        """What a thief takes: the oldest queued child."""
        return self.queue.pop(0)

    def cancel(self, box: int) -> None:
        self.boxes.discard(box)
        self.cancelled.append(box)
        self.queue = [q for q in self.queue if q[0] != box]

    def release(self, box: int) -> None:
        """A box every child of which ran in the step: cancelled, as far as the rank sees."""
        self.cancel(box)

    def get_messages(self) -> list[bytes]:
        out, self.inbox = self.inbox, []
        return out

    def has_box(self, box: int) -> bool:
        return box in self.boxes


@pytest.fixture
def fake() -> Any:
    f = Fake()
    native = types.ModuleType('_bqrt')
    for name in ('submit', 'claim', 'cancel', 'release', 'get_messages', 'has_box'):
        setattr(native, name, getattr(f, name))
    native.log = lambda *a: None  # type: ignore[attr-defined]
    native.worker_id = lambda: 1  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ('_bqrt', 'bqrt_worker')}
    root_level = logging.getLogger().level
    sys.modules['_bqrt'] = native
    m = types.ModuleType('bqrt_worker')
    sys.modules['bqrt_worker'] = m
    exec(compile(WORKER.read_text(), str(WORKER), 'exec'), m.__dict__)
    # what its set-up does in a worker's process, without the logging set-up (this process's
    # logging is pytest's)
    import bqskit.runtime.worker as bw
    m._ready = True
    bw._worker = m.HANDLE
    f.worker = m  # type: ignore[attr-defined]
    yield f
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    logging.getLogger().setLevel(root_level)  # a task's step sets the root logger's level
    bw._worker = None


def task_of(fake: Any, fn: Any, *args: Any) -> Any:
    """The task running fn(*args), as the rank starts it."""
    w = fake.worker
    kind, body = w._dumps_call((fn, args, {}))
    made = w.start(kind + w._header_prefix({'path': [], 'level': 30, 'max_depth': -1,
                                            'context': {}}) + body, 1)
    assert made[0] == 'task', made
    return made[1]


def chunk_task(fake: Any, fn: Any, argsets: list[Any]) -> Any:
    return task_of(fake, fake.worker._chunk, fn, argsets, {}, fn.__name__, '')


def test_children_that_read_messages_share_them_and_keep_their_chunk_whole(fake) -> None:  # type: ignore[no-untyped-def]
    # Each child sleeps past the chunk's budget before reading: without its messages shared,
    # children 1-3 would read nothing, and the chunk would send them out where a communicate
    # to the map no longer reaches them.
    fake.inbox.append(pickle.dumps('stop'))
    task = chunk_task(fake, tp.read_after, [(0.003,)] * 4)
    end = task.step(0, None)
    assert end[0] == 'done', end
    out, seconds = pickle.loads(end[1])
    assert out == [['stop']] * 4
    assert fake.submits == []
    assert seconds >= 0.003


def test_a_chunk_past_its_budget_sends_the_rest_out_and_gives_every_result(fake) -> None:  # type: ignore[no-untyped-def]
    task = chunk_task(fake, tp.square_after, [(i, 0.003) for i in range(4)])
    end = task.step(0, None)
    assert end[0] == 'await', end
    assert len(fake.submits) == 1 and len(fake.submits[0]) == 3  # children 1-3, one task each
    results = [pickle.dumps(i * i) for i in range(1, 4)]
    end = task.step(1, (results, False))
    assert end[0] == 'done', end
    out, _ = pickle.loads(end[1])
    assert out == [0, 1, 4, 9]


def test_a_parent_learns_a_quick_function_and_then_maps_it_in_chunks(fake) -> None:  # type: ignore[no-untyped-def]
    w = fake.worker
    key = w._fn_key(tp.square_after)
    assert w._chunk_size(tp.square_after, 127) == 0  # small maps: one task per child
    assert w._chunk_size(tp.square_after, 4096) == 1  # not seen yet: one child per chunk
    w._learn(key, [2e-6])
    assert w._chunk_size(tp.square_after, 4096) == 64
    assert w._chunk_size(tp.square_after, 256) == 4  # at least 64 chunks per map
    w._learn(key, [0.01])
    assert w._chunk_size(tp.square_after, 4096) == 1  # (2 us + 10 ms) / 2: one per chunk
    # only plain functions of importable modules: an async one may run anything (BQSKit's
    # block workflows all run as one async function)
    assert w._chunk_size(tp.square_async, 4096) == 0
    assert w._chunk_size(lambda x: x, 4096) == 0
    assert w._chunk_size(tp.SquaresPass(1).run, 4096) == 0


def test_a_tree_whose_children_are_all_claimed_runs_in_one_step(fake) -> None:  # type: ignore[no-untyped-def]
    fake.claims = True
    end = task_of(fake, tp.tree, 4).step(0, None)
    assert end[0] == 'done', end
    assert pickle.loads(end[1]) == 31
    assert fake.queue == []
    # each box was released once every child of it ran here
    assert sorted(fake.cancelled) == list(range(1, 16))


def test_a_child_run_in_its_parents_step_gets_and_gives_copies(fake) -> None:  # type: ignore[no-untyped-def]
    # what BQSKit's pickles guarantee, kept where the process passes calls and results without
    # them (decision 69): only what cannot change is shared
    fake.claims = True
    end = task_of(fake, tp.copies).step(0, None)
    assert end[0] == 'done', end
    xs, got, kept = pickle.loads(end[1])
    assert xs == [0]
    assert got == [([0, 1], [5, 6], 'a'), ([0, 1], [5, 6], 'b')]
    assert kept == [[5], [5]]
    assert fake.queue == []


def test_only_values_no_one_can_change_pass_without_a_copy(fake) -> None:  # type: ignore[no-untyped-def]
    import collections
    frozen = fake.worker._frozen
    assert all(frozen(v) for v in [1, 2.5, 1j, 'text', b'raw', True, None, (1, ('a', 2.0)),
                                    frozenset({1, 2}), ()])
    point = collections.namedtuple('point', 'x y')
    # mutable, holding something mutable, a subclass (which may add state), or nested too deep
    assert not any(frozen(v) for v in [[1], {'a': 1}, {1}, (1, [2]), point(1, 2),
                                        ((((((1,),),),),),), bytearray(b'x')])


def test_children_a_thief_took_are_awaited_through_the_rank(fake) -> None:  # type: ignore[no-untyped-def]
    fake.claims = True
    claim = fake.claim
    stolen = []

    def thief_first(box: int) -> Any:
        if not stolen:
            stolen.append(fake.steal())  # the oldest child: slot 0 of the first map
        return claim(box)

    fake.claim = thief_first
    fake.worker._bqrt.claim = thief_first
    task = task_of(fake, tp.tree, 2)
    end = task.step(0, None)
    assert [s[:2] for s in stolen] == [(1, 0)]
    assert end == ('await', 1, False), end
    # the thief's result comes back; slot 1 ran here (the rank sends an empty value for it)
    end = task.step(1, ([pickle.dumps(3), b''], False))
    assert end[0] == 'done', end
    assert pickle.loads(end[1]) == 7


def test_a_failing_child_run_in_its_parents_step_fails_the_step_with_its_error(fake) -> None:  # type: ignore[no-untyped-def]
    fake.claims = True
    end = task_of(fake, tp.fail_in_map, 3, 1).step(0, None)
    assert end[0] == 'error', end
    assert 'ValueError: child 1 fails' in end[1]
    assert "child task 'fail_at'" in end[1]


def test_a_child_run_in_its_parents_step_reads_none_of_its_messages(fake) -> None:  # type: ignore[no-untyped-def]
    fake.claims = True
    fake.inbox.append(pickle.dumps('for the parent'))
    end = task_of(fake, tp.submit_one, tp.leave_and_read, 5).step(0, None)
    assert end[0] == 'done', end
    assert pickle.loads(end[1]) == []
    assert fake.inbox == [pickle.dumps('for the parent')]
    # what the child submitted and never awaited is cancelled as it ends, as the rank does
    assert 2 in fake.cancelled and 2 not in fake.boxes


def test_without_claims_every_await_ends_the_step(fake) -> None:  # type: ignore[no-untyped-def]
    task = task_of(fake, tp.tree, 1)
    assert task.step(0, None) == ('await', 1, False)
    end = task.step(1, ([pickle.dumps(1), pickle.dumps(1)], False))
    assert end[0] == 'done' and pickle.loads(end[1]) == 3


def test_children_of_a_claimed_child_carry_their_true_depth(fake) -> None:  # type: ignore[no-untyped-def]
    # the rank counts what a claimed child submits as its host's children; the envelope says
    # how deep they really are, for the job's max_depth log filter where they run
    def depth(envelope: bytes) -> int:
        n = int.from_bytes(envelope[1:5], 'little')
        return int(json.loads(envelope[5:5 + n])['depth'])

    fake.claims = True
    claim = fake.claim
    fake.worker._bqrt.claim = lambda box: claim(box) if box == 1 else None
    task = task_of(fake, tp.tree, 2)  # the rank starts it at depth 1
    assert task.step(0, None) == ('await', 2, False)
    assert [depth(e) for e, _ in fake.submits[0]] == [2, 2]
    assert [depth(e) for e, _ in fake.submits[1]] == [3, 3]
