"""Decoding of BQSKit client frames on rank 0 (loaded into the embedded interpreter).

A frame is a pickled ``(RuntimeMessage, payload)``. Rank 0 needs only a few fields from it
(message type, task UUID, logging level and depth), so it unpickles with a *restricted*
unpickler: every class resolves to an inert stub except ``uuid.UUID``. Nothing from the client
is imported or executed here, so rank 0 needs neither bqskit nor the client's modules. The
frame's bytes go to a worker untouched, which unpickles them for real.

This module defines what rank 0 reads; src/python/unpickle.rs reads the same in Rust wherever it
is sure to agree (all of BQSKit's own frames), so this runs only for the frames it leaves here.
"""
from __future__ import annotations

import io
import pickle
import sys
import uuid
from typing import Any

_MESSAGES = {
    'CONNECT': 0, 'DISCONNECT': 1, 'STARTED': 2, 'SHUTDOWN': 3, 'ERROR': 4,
    'REQUEST': 5, 'RESULT': 6, 'SUBMIT': 7, 'SUBMIT_BATCH': 8, 'STATUS': 9,
    'LOG': 10, 'CANCEL': 11, 'WAITING': 12, 'UPDATE': 13, 'IMPORTPATH': 14,
    'READY': 15, 'COMMUNICATE': 16,
}


class _Stub:
    """Any object of a class rank 0 does not load: keeps its state, runs no code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        obj = object.__new__(cls)
        object.__setattr__(obj, '_bqrt_args', args)
        object.__setattr__(obj, '_bqrt_state', None)
        object.__setattr__(obj, '_bqrt_items', [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, '_bqrt_state', state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._bqrt_items.append((key, value))

    def append(self, value: Any) -> None:
        self._bqrt_items.append(value)

    def extend(self, values: Any) -> None:
        self._bqrt_items.extend(values)

    def add(self, value: Any) -> None:
        self._bqrt_items.append(value)

    def __setattr__(self, name: str, value: Any) -> None:
        pass

    def fields(self) -> dict[str, Any]:
        state = self._bqrt_state
        if isinstance(state, tuple) and len(state) == 2:
            out: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    out.update(part)
            return out
        return state if isinstance(state, dict) else {}


class _MessageType:
    """Stands for bqskit.runtime.message.RuntimeMessage: calling it gives the plain int."""

    def __new__(cls, value: Any, *rest: Any) -> Any:  # type: ignore[misc]
        return int(value)


for _name, _value in _MESSAGES.items():
    setattr(_MessageType, _name, _value)

_stubs: dict[tuple[str, str], type] = {}

# A malformed frame can make CPython report an error it cannot raise (a bytearray freed while a
# view of it lives prints "SystemError: deallocated bytearray object has exported buffers"
# through sys.excepthook; others go to sys.unraisablehook); by default each is printed on rank
# 0's stderr, so a client could flood the operator's log. Rank 0's interpreter runs only this
# module, so count them instead; the frame itself is refused as usual.
unraisable = 0


def _quiet(*_: Any) -> None:
    global unraisable
    unraisable += 1


sys.unraisablehook = _quiet
sys.excepthook = _quiet


def _safe_getattr(obj: Any, name: str, *default: Any) -> Any:
    try:
        return getattr(obj, name)
    except Exception:
        return _Stub()


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == 'bqskit.runtime.message' and name == 'RuntimeMessage':
            return _MessageType
        if module == 'uuid' and name in ('UUID', 'SafeUUID'):
            return getattr(uuid, name)
        if module == 'builtins' and name == 'getattr':
            return _safe_getattr
        key = (module, name)
        if key not in _stubs:
            _stubs[key] = type(name, (_Stub,), {'__module__': 'bqrt_stub.' + module})
        return _stubs[key]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError('persistent ids are not part of the BQSKit protocol')


def _uuid(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise ValueError(f'expected a task UUID, got {type(value).__name__}')


def decode(frame: bytes) -> tuple[int, Any]:
    """(message number, what rank 0 needs of the payload) or ValueError with the reason."""
    try:
        obj = _Restricted(io.BytesIO(frame)).load()
    except Exception as e:
        raise ValueError(f'frame does not unpickle: {type(e).__name__}: {e}') from None
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], int)):
        raise ValueError('frame is not a (RuntimeMessage, payload) pair')
    msg, payload = obj
    if msg == 0:  # CONNECT: the client's sys.path
        if not isinstance(payload, list):
            raise ValueError('CONNECT payload is not a list of paths')
        return msg, [p for p in payload if isinstance(p, str)]
    if msg == 7:  # SUBMIT: a CompilationTask
        if not isinstance(payload, _Stub):
            raise ValueError('SUBMIT payload is not a CompilationTask')
        f = payload.fields()
        level = f.get('logging_level')
        depth = f.get('max_logging_depth', -1)
        return msg, (
            _uuid(f.get('task_id')),
            int(level) if isinstance(level, int) else 0,
            int(depth) if isinstance(depth, int) else -1,
        )
    if msg in (5, 9, 11):  # REQUEST, STATUS, CANCEL: a task UUID
        return msg, _uuid(payload)
    return msg, None
