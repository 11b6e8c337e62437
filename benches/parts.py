"""Helpers of the profiles in benches/ (w0_profile.py, task_profile.py)."""
from __future__ import annotations

import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any


def median_us(f: Any, n: int) -> float:
    """Median microseconds of `n` calls of `f`."""
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        xs.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(xs)


def load(name: str, path: Path, extra: dict[str, Any] | None = None) -> types.ModuleType:
    """Run the source at `path` as module `name` (bqrt's Python modules, outside a worker)."""
    m = types.ModuleType(name)
    m.__dict__.update(extra or {})
    sys.modules[name] = m
    exec(compile(path.read_text(), str(path), 'exec'), m.__dict__)
    return m


REPO = Path(__file__).resolve().parent.parent


def worker_module() -> types.ModuleType:
    """python/bqrt_worker.py with the calls of python/bqrt_child.py replaced by no-ops."""
    native = types.ModuleType('_bqrt')
    native.has_box = lambda box: False  # type: ignore[attr-defined]
    native.worker_id = lambda: 1  # type: ignore[attr-defined]
    native.log = lambda *a: None  # type: ignore[attr-defined]
    sys.modules['_bqrt'] = native
    return load('bqrt_worker', REPO / 'python' / 'bqrt_worker.py')


def envelope(kind: bytes, body: bytes) -> bytes:
    """A task's envelope as a worker gets it: kind, the shared header (this sys.path), body."""
    import json
    header = json.dumps({'path': sys.path, 'level': 30, 'max_depth': -1, 'context': {}}).encode()
    return kind + len(header).to_bytes(4, 'little') + header + body
