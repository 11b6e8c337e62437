"""Tasks of a BQSKit pass that need a resource (through the shipped bqrt_resources module) run
only on the worker group that offers it; the same pass runs unchanged on BQSKit's own runtime."""
from __future__ import annotations

import sys
from collections import Counter

import pytest
from bqskit.compiler import Compiler
from bqskit.ir.circuit import Circuit

import bqrt_testpasses as tp
from conftest import REPO, TOPOLOGIES, Runtime

# the client's sys.path reaches every worker (BQSKit's and bqrt's), and with it the module
sys.path.insert(0, str(REPO / 'python'))

GROUPS = [
    '--group', 'gpu workers=1 offers=gpu env.CUDA_VISIBLE_DEVICES=0',
    '--group', 'cpu workers=rest',
]


@pytest.fixture(scope='module', params=TOPOLOGIES)
def grouped(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    rt = Runtime(request.param, extra=GROUPS)
    yield rt
    rt.stop()


def test_tasks_that_need_a_gpu_run_on_the_gpu_group_only(grouped) -> None:  # type: ignore[no-untyped-def]
    with Compiler(grouped.host, grouped.port) as c:
        _, data = c.compile(Circuit(1), [tp.ResourcePass(300, 'gpu')], request_data=True)
    needing = Counter(data['needing'])
    assert set(needing) == {('gpu', '0')}, needing
    assert sum(needing.values()) == 300
    assert data['one'] == ('gpu', '0')
    free = Counter(g for g, _ in data['free'])
    assert 'cpu' in free, free
    assert sum(free.values()) == 300
    assert grouped.alive(), grouped.output()


def test_a_resource_nobody_offers_fails_the_job_naming_it(grouped) -> None:  # type: ignore[no-untyped-def]
    with Compiler(grouped.host, grouped.port) as c:
        with pytest.raises(Exception) as e:
            c.compile(Circuit(1), [tp.ResourcePass(3, 'tpu')])
    text = str(e.value)
    cause = e.value.__cause__ or e.value.__context__
    while cause is not None:
        text += '\n' + str(cause)
        cause = cause.__cause__ or cause.__context__
    assert '"tpu"' in text and 'offers=tpu' in text, text
    # the runtime serves on
    with Compiler(grouped.host, grouped.port) as c:
        _, data = c.compile(Circuit(1), [tp.ResourcePass(5, 'gpu')], request_data=True)
    assert set(data['needing']) == {('gpu', '0')}


def test_the_same_pass_runs_on_bqskits_own_runtime() -> None:
    with Compiler(num_workers=2) as c:
        _, data = c.compile(Circuit(1), [tp.ResourcePass(20, 'gpu')], request_data=True)
    assert len(data['needing']) == 20 and len(data['free']) == 20
    assert set(data['needing']) == {('', '')}, data['needing']
