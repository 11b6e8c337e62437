"""The chunks of a large map (python/bqrt_worker.py, decision 63), stepped here without a
runtime: the functions the worker's process gives bqrt_worker are replaced by a recording fake."""
from __future__ import annotations

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
    """The `_bqrt` calls: submits are recorded, messages come from `inbox`."""

    def __init__(self) -> None:
        self.submits: list[list[tuple[bytes, str]]] = []
        self.inbox: list[bytes] = []
        self.boxes: set[int] = set()

    def submit(self, children: list[tuple[bytes, str]], single: bool, needs: str = '') -> int:
        self.submits.append(children)
        self.boxes.add(len(self.submits))
        return len(self.submits)

    def get_messages(self) -> list[bytes]:
        out, self.inbox = self.inbox, []
        return out

    def has_box(self, box: int) -> bool:
        return box in self.boxes


@pytest.fixture
def fake() -> Any:
    f = Fake()
    native = types.ModuleType('_bqrt')
    for name in ('submit', 'get_messages', 'has_box'):
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


def chunk_task(fake: Any, fn: Any, argsets: list[Any]) -> Any:
    w = fake.worker
    call = (w._chunk, (fn, argsets, {}, fn.__name__, ''), {})
    kind, body = w._dumps_call(call)
    made = w.start(kind + w._header_prefix({'path': [], 'level': 30, 'max_depth': -1,
                                            'context': {}}) + body, 1)
    assert made[0] == 'task', made
    return made[1]


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
