"""Log records from tasks reach the client's loggers with BQSKit's filters and depth limit."""
from __future__ import annotations

import logging

import pytest
from bqskit.ir.circuit import Circuit

import bqrt_testpasses as tp


@pytest.fixture(autouse=True)
def quiet_loggers():  # type: ignore[no-untyped-def]
    names = ['bqskit', 'bqskit.dummy', 'dummy2']
    yield
    for n in names:
        logging.getLogger(n).setLevel(logging.NOTSET)


def messages(caplog) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.getMessage().split(' [wid=')[0] for r in caplog.records]


def test_enable_logging_info(compiler, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger='bqskit')
    compiler.compile(Circuit(1), [tp.LogPass()])
    m = messages(caplog)
    assert 'bqskit info 0' in m and 'dummy info 0' in m
    assert not any('debug' in x for x in m)
    assert not any('dummy2' in x for x in m)


def test_enable_logging_debug(compiler, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger='bqskit')
    compiler.compile(Circuit(1), [tp.LogPass()])
    m = messages(caplog)
    for x in ['bqskit info 0', 'bqskit debug 0', 'dummy info 0', 'dummy debug 0']:
        assert x in m
    assert not any('dummy2' in x for x in m)


def test_specific_logger(compiler, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger='bqskit.dummy')
    compiler.compile(Circuit(1), [tp.LogPass()])
    m = messages(caplog)
    assert 'dummy info 0' in m and 'dummy debug 0' in m
    assert 'bqskit info 0' not in m and not any('dummy2' in x for x in m)


def test_external_logger(compiler, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger='dummy2')
    compiler.compile(Circuit(1), [tp.LogPass()])
    m = messages(caplog)
    assert 'dummy2 info 0' in m and 'dummy2 debug 0' in m
    assert not any(x.startswith('bqskit') or x.startswith('dummy ') for x in m)


def test_external_logging_with_args(compiler, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger='dummy2')
    compiler.compile(Circuit(1), [tp.LogArgsPass()])
    m = messages(caplog)
    assert 'int 1' in m
    assert any(x.startswith('lock <unlocked _thread.lock') for x in m), m


@pytest.mark.parametrize('depth', [-1, 0, 1, 2, 3, 4])
@pytest.mark.parametrize('logger', ['bqskit', 'dummy2'])
def test_depth_limit(compiler, caplog, depth, logger) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger=logger)
    compiler.compile(Circuit(1), [tp.NestedLogPass(logger)], max_logging_depth=depth)
    m = [x for x in messages(caplog) if x.startswith('depth ')]
    top = 3 if depth < 0 else min(3, depth)
    assert sorted(m) == [f'depth {d}' for d in range(top + 1)]


def test_a_record_arrives_while_its_pass_still_blocks(compiler, caplog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """BQSKit forwards a record at once: one logged before a long computation must not wait for
    the computation's end. The pass blocks until the record has reached this client."""
    release = tmp_path / 'release'

    class Release(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if 'about to block' in record.getMessage():
                release.touch()

    handler = Release()
    logging.getLogger('bqskit.dummy').addHandler(handler)
    caplog.set_level(logging.WARNING, logger='bqskit')
    try:
        _, data = compiler.compile(
            Circuit(1), [tp.LogThenBlockPass(str(release))], request_data=True,
        )
    finally:
        logging.getLogger('bqskit.dummy').removeHandler(handler)
    assert data['released'], 'the record came only when the pass ended by itself (30 s)'
