"""bqrt's side of BQSKit tasks on a worker rank (loaded into the embedded interpreter).

A BQSKit task reaches a worker as an *envelope* of bytes::

    kind (1 byte: b'R' root job, b'C' child task pickled with dill, b'P' child task pickled with
          pickle, b'J' a native client's call of a Python function)
    u32 little-endian length of the header, then the header: JSON
        {"path": [...client sys.path...], "level": int, "max_depth": int, "context": {...},
         "depth": int (a child's: its depth in the job's tree, which the rank's count misses
         for children of children claimed into a step; decision 64)}
    body: b'R' the client's SUBMIT frame, a pickled (RuntimeMessage.SUBMIT, CompilationTask);
          b'C' the dill bytes of (fn, args, kwargs), exactly as BQSKit ships them; b'P' the same
          tuple pickled with pickle, used when pickle can (module-level functions and plain
          data: ~30x cheaper to write than dill and ~3x cheaper to read), dill otherwise;
          b'J' JSON {"call": "module.function", "args": [...], "kwargs": {...}}, whose result
          goes back as JSON.

The Rust side (src/python/task.rs) creates a :class:`Task` per envelope and calls
:meth:`Task.step` until the coroutine finishes. A step either finishes (the pickled result),
fails (a traceback text) or awaits a :class:`bqskit.runtime.future.RuntimeFuture`, whose mailbox
the Rust side then polls. ``bqskit.runtime.get_runtime()`` returns :data:`HANDLE`, which has the
surface of BQSKit's ``Worker``: submit, map, next, cancel, get_cache, communicate, get_messages.
"""
from __future__ import annotations

import inspect
import json
import logging
import pickle
import sys
import time
import traceback
import types
from typing import Any

import _bqrt  # the Rust functions (src/python/task.rs)

# Results that go back to a BQSKit client are pickled with protocol 3: no frames, so the
# gateway can splice them into its own frame without unpickling them.
ROOT_RESULT_PROTOCOL = 3

_cache: dict[str, Any] = {}
_active: Task | None = None
_applied_path: list[str] | None = None
_ready = False
# Parsed envelope headers by their bytes: the children of a task share one header. Each is
# (path, level, max_depth, context, depth or None), shared by its tasks and never changed.
_headers: dict[bytes, tuple[list[str], int, int, dict[str, str], int | None]] = {}
# Length and header of children's envelopes: by their parent's header, its depth and their log
# context.
_prefixes: dict[tuple[bytes, int, tuple[tuple[str, str], ...]], bytes] = {}
# What a task's containers are until their first entry: empty, and read-only so that a write
# meant for a task's own container fails loudly.
_EMPTY: Any = types.MappingProxyType({})
# Values no one can change, so that a copy (the pickle an argument or a result takes through the
# rank) would be the same: see `_frozen`.
_ATOMS = frozenset({int, float, bool, str, bytes, type(None), complex})


def _frozen(value: Any, depth: int = 0) -> bool:
    """Whether `value` is one of _ATOMS, or a plain tuple or frozenset of such values (nested
    up to 4 deep: a tuple of tuples)."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    if (kind is not tuple and kind is not frozenset) or depth >= 4:
        return False
    for v in value:
        if type(v) not in _ATOMS and not _frozen(v, depth + 1):
            return False
    return True


def _setup() -> None:
    """Once per worker: record factory, quiet root logger, bqskit's get_runtime()."""
    global _ready
    if _ready:
        return
    logging.lastResort = logging.NullHandler()
    logging.getLogger().handlers.clear()
    old_factory = logging.getLogRecordFactory()

    def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        task = _active
        if task is None or record.name.startswith('bqskit.runtime'):
            return record
        if task.level <= record.levelno:
            if task.level <= logging.DEBUG:
                items = ', '.join(f'{k}={v}' for k, v in task.context.items())
                extra = f' [wid={_bqrt.worker_id()}' + (', ' + items if items else '') + ']'
                try:
                    record.msg = record.msg + extra
                except TypeError:
                    record.msg = str(record.msg) + extra
            try:
                text = record.getMessage()
            except Exception:  # a bad format string still reaches the client as text
                text = f'{record.msg} {record.args!r}'
            _bqrt.log(record.levelno, record.name, text)
        return record

    logging.setLogRecordFactory(record_factory)
    import bqskit.runtime.worker as bw
    bw._worker = HANDLE
    _ready = True


def _apply_path(path: list[str]) -> None:
    global _applied_path
    if path == _applied_path:
        return
    for p in path:
        if p not in sys.path:
            sys.path.append(p)
    _applied_path = path


def _header_prefix(header: dict[str, Any]) -> bytes:
    """length + JSON of a header: an envelope is kind + this + body."""
    h = json.dumps(header).encode()
    return len(h).to_bytes(4, 'little') + h


def _parse_header(raw: bytes) -> tuple[list[str], int, int, dict[str, str], int | None]:
    settings = _headers.get(raw)
    if settings is None:
        if len(_headers) >= 256:
            _headers.clear()
        h = json.loads(raw)
        depth = h.get('depth')
        settings = _headers[raw] = (
            h.get('path') or [], int(h.get('level') or 0), int(h.get('max_depth', -1)),
            h.get('context') or {}, None if depth is None else int(depth),
        )
    return settings


def _dumps_call(fnargs: tuple[Any, Any, Any]) -> tuple[bytes, bytes]:
    """(kind, body) of a child's (fn, args, kwargs): pickle when it stores everything by
    reference to importable modules, else dill (lambdas, closures, anything of __main__)."""
    fn = fnargs[0]
    if getattr(fn, '__module__', None) != '__main__':
        try:
            body = pickle.dumps(fnargs, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        else:
            if b'__main__' not in body:
                return b'P', body
    import dill
    return b'C', dill.dumps(fnargs)


async def _run(fn: Any, args: Any, kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    return fn(*args, **kwargs)


def _coroutine(fn: Any, args: Any, kwargs: Any) -> Any:
    """The coroutine of a task running fn(*args, **kwargs): an `async def` function's own (the
    common case, made without a wrapper), else a wrapper that calls `fn`."""
    if type(fn) is types.FunctionType and fn.__code__.co_flags & inspect.CO_COROUTINE:
        return fn(*args, **kwargs)
    return _run(fn, args, kwargs)


def _resolve(call: str) -> Any:
    """The function named 'package.module.function' (or 'package.module:Class.method')."""
    import importlib
    if ':' in call:
        module, _, attrs = call.partition(':')
        obj: Any = importlib.import_module(module)
    else:
        module, _, last = call.rpartition('.')
        if not module:
            raise ValueError(f"bqrt: 'call' must name a module's function, like 'json.dumps': {call!r}")
        obj = importlib.import_module(module)
        attrs = last
    for a in attrs.split('.'):
        obj = getattr(obj, a)
    return obj


def _error() -> tuple[str, str]:
    return ('error', ''.join(traceback.format_exception(*sys.exc_info())))


class Task:
    """One BQSKit task: its coroutine and its job-wide settings."""

    # Defaults of what few tasks change (class attributes: a task costs microseconds, and
    # every attribute set at creation counts).
    waiting = 0  # the mailbox of the last await
    # When this task is a chunk (see _chunk): the messages it got so far (set there), where the
    # child running now has read to, and whether a child read any
    in_chunk = False
    read_to = 0
    listened = False
    # Of a child running inside its parent's step (see `step`): its slot in the box its parent
    # awaits, and its name
    slot = -1
    name = ''
    # the length and header of its children's envelopes, when they keep its log context
    child_prefix: bytes | None = None
    # Made at their first entry (read-only and empty until then; a leaf of a tree of small tasks
    # needs none of them):
    # Mailboxes of this task's maps in chunks: [children per chunk, the function's key,
    # chunks whose results `next` has not given yet]
    chunked: Any = _EMPTY
    # Boxes this task submitted to its worker's queue: (children, one task?, their calls, their
    # envelopes' header, their log context; the last three None unless every child has the same
    # context and its own task). The task may claim them back to run inside the step (see
    # `step`); what it claimed of the box it awaits: their results by slot.
    local: Any = _EMPTY
    claimed: Any = _EMPTY
    # On the task the rank steps: the children running inside its step, innermost last.
    inline: Any = ()

    def __init__(self, envelope: bytes, depth: int) -> None:
        n = int.from_bytes(envelope[1:5], 'little')
        # shared with every task of the same header (_headers), never changed
        self.path, self.level, self.max_depth, self.context, true_depth = _parse_header(
            envelope[5:5 + n])
        # the length and header of this task's envelope
        self.prefix = envelope[1:5 + n]
        # the true depth (the rank's count misses the children claimed on the way)
        self.depth = depth if true_depth is None else true_depth
        if self.path is not _applied_path:
            _apply_path(self.path)
        if not _ready:
            _setup()
        kind = envelope[:1]
        if kind == b'P':
            fn, args, kwargs = pickle.loads(envelope[5 + n:])
            self.coro = _coroutine(fn, args, kwargs)
            return
        body = envelope[5 + n:]
        if kind == b'R':
            self.root = True
            _msg, comp_task = pickle.loads(body)
            self.coro = comp_task.run()
        elif kind == b'C':
            import dill
            fn, args, kwargs = dill.loads(body)
            self.coro = _coroutine(fn, args, kwargs)
        elif kind == b'J':
            self.json = True
            spec = json.loads(body)
            fn = _resolve(spec['call'])
            self.coro = _run(fn, spec.get('args', []), spec.get('kwargs', {}))
        else:
            raise RuntimeError(f'bqrt: unknown BQSKit task envelope kind {kind!r}')

    root = False  # a client's job (kind b'R')
    json = False  # a native client's call (kind b'J')

    def child_head(self, context: dict[str, str]) -> bytes:
        """The length and header of the envelope of a child with this log context."""
        own = context is self.context
        if own and self.child_prefix is not None:
            return self.child_prefix
        key = (self.prefix, self.depth, tuple(context.items()))
        prefix = _prefixes.get(key)
        if prefix is None:
            if len(_prefixes) >= 256:
                _prefixes.clear()
            # the child's depth: the rank counts a child submitted by a child claimed in this
            # step as this task's (decision 64)
            prefix = _prefixes[key] = _header_prefix({
                'path': self.path, 'level': self.level, 'max_depth': self.max_depth,
                'context': context, 'depth': self.depth + 1,
            })
        if own:
            self.child_prefix = prefix
        return prefix

    def child(self, fnargs: tuple[Any, Any, Any], context: dict[str, str]) -> bytes:
        """The envelope of a child task running fn(*args, **kwargs)."""
        kind, body = _dumps_call(fnargs)
        return kind + self.child_head(context) + body

    def step(self, kind: int, payload: Any) -> tuple[Any, ...]:
        """Advance the task: kind 0 start, 1 all results (values, single), 2 next pairs.

        A full await on a box this task (or a child running inside its step) queued on its own
        worker claims the box's children back from the queue, one at a time, and runs each inside
        this step, on top of the awaiting coroutine, instead of ending the step: a tree of small
        tasks then runs without a step through the rank per task, while idle workers steal what
        is still queued. Only what was not claimed is awaited through the rank (decision 64)."""
        inline = self.inline
        task = inline[-1] if inline else self
        claim = _bqrt.claim
        try:
            value = None if kind == 0 else task._resume(kind, payload)
            while True:
                r = task._advance(value)
                what = r[0]
                if what == 'await':
                    box = r[1]
                    record = task.local.get(box)
                    if record is None or r[2]:
                        return r
                elif task is self:
                    return r
                else:
                    # a child that ran inside this step ended
                    inline.pop()
                    if what == 'value':
                        result = r[1]
                    elif what == 'done':
                        result = _loads(r[1])
                    else:
                        return ('error', f"{r[1]}bqrt: raised by child task '{task.name}', "
                                "which ran inside its parent's step\n")
                    if task.local:
                        task._drop_boxes()
                    parent = inline[-1] if inline else self
                    if parent.claimed is _EMPTY:
                        parent.claimed = {task.slot: result}
                    else:
                        parent.claimed[task.slot] = result
                    task = parent
                    box = task.waiting
                    record = task.local[box]
                n = record[0]
                claimed = task.claimed
                if len(claimed) < n:
                    got = claim(box)
                    if got is None:
                        return ('await', box, False)
                    slot, name, envelope = got
                    child = _shared(task, record, slot, envelope)
                    if child is None:
                        child = Task(envelope, task.depth + 1)
                    child.slot, child.name = slot, name
                    if not inline:
                        inline = self.inline = []
                    inline.append(child)
                    task, value = child, None
                    continue
                # every child ran here: the box is released, its results are at hand
                _bqrt.release(box)
                del task.local[box]
                task.claimed = _EMPTY
                values = [claimed[i] for i in range(n)]
                if task.chunked and box in task.chunked:
                    value = _unchunk(task.chunked.pop(box), values)
                else:
                    value = values[0] if record[1] else values
        except BaseException:
            return _error()

    def _resume(self, kind: int, payload: Any) -> Any:
        """What the coroutine's await gives: kind 1 all results, 2 next pairs."""
        box = self.waiting
        if kind == 1:
            raw, single = payload
            claimed = self.claimed
            if box in self.local:
                del self.local[box]
            if claimed:
                # what ran inside the step is at hand already
                self.claimed = _EMPTY
                values = [claimed[i] if i in claimed else _loads(b) for i, b in enumerate(raw)]
            else:
                values = [_loads(b) for b in raw]
            if self.chunked and box in self.chunked:
                return _unchunk(self.chunked.pop(box), values)
            return values[0] if single else values
        value = [(i, _loads(b)) for i, b in payload]
        chunked = self.chunked.get(box)
        if chunked is not None:
            c = chunked[0]
            _learn(chunked[1], [secs for _, (_, secs) in value])
            chunked[2] -= len(value)
            if chunked[2] <= 0:
                del self.chunked[box]
            value = [(i * c + j, v) for i, (part, _) in value for j, v in enumerate(part)]
        return value

    def _advance(self, value: Any) -> tuple[Any, ...]:
        """Send `value` into the coroutine: ('done', bytes), ('value', v) (a child inside its
        parent's step that returned a value `_frozen` accepts), ('error', text) or ('await',
        mailbox, next)."""
        global _active
        # The root logger's level is the job's while its task steps. Setting a level clears
        # every logger's cache (over a hundred loggers once bqskit is imported: ~6 us), so it is
        # set only when it changes; between steps it keeps the last task's level, which nothing
        # outside a step reads (records outside a task go nowhere).
        want = self.level if self.max_depth < 0 or self.depth <= self.max_depth else 100
        if _ROOT.level != want:
            _ROOT.setLevel(want)
        _active = self
        try:
            future = self.coro.send(value)
        except StopIteration as e:
            if self.slot >= 0 and _frozen(e.value):
                return ('value', e.value)
            return self._finish(e.value)
        except BaseException:
            return _error()
        finally:
            _active = None
        try:
            if not isinstance(future, _future_class or _runtime_future()):
                raise RuntimeError('Can only await on a BQSKit RuntimeFuture.')
            box = future.mailbox_id
            if box not in self.local and not _bqrt.has_box(box):
                raise RuntimeError('Cannot await on a canceled task.')
        except RuntimeError:
            return _error()
        self.waiting = box
        return ('await', box, bool(future._next_flag))

    def _drop_boxes(self) -> None:
        """A child that ran inside its parent's step ended: what it submitted and did not
        await is cancelled, as the rank does for a task that finishes."""
        for box in self.local:
            if _bqrt.has_box(box):
                _bqrt.cancel(box)

    def _finish(self, value: Any) -> tuple[Any, ...]:
        try:
            if self.json:
                try:
                    return ('done', json.dumps(value).encode())
                except (TypeError, ValueError) as e:
                    return ('error', f'bqrt: the result is not JSON ({e}): {value!r:.200}')
            if self.root:
                return ('done', pickle.dumps(value, protocol=ROOT_RESULT_PROTOCOL))
            try:
                return ('done', pickle.dumps(value))
            except Exception:
                import dill
                return ('done', dill.dumps(value))
        except BaseException:
            return _error()

    def close(self) -> None:
        for task in reversed(self.inline):
            task.close()
        try:
            self.coro.close()
        except (ValueError, RuntimeError):
            pass


_ROOT = logging.getLogger()
_future_class: Any = None


def _runtime_future() -> Any:
    global _future_class
    if _future_class is None:
        from bqskit.runtime.future import RuntimeFuture
        _future_class = RuntimeFuture
    return _future_class


def _loads(b: bytes) -> Any:
    """A child's result: pickle wrote most (see Task._finish), and reads them ~10x faster than
    dill; what only dill can read fails in pickle and goes to dill."""
    try:
        return pickle.loads(b)
    except Exception:
        import dill
        return dill.loads(b)


def _shared(parent: Task, record: tuple[Any, ...], slot: int, envelope: bytes) -> Task | None:
    """The child in `slot` of a box its parent submitted (`record`, its entry in the parent's
    `local`), made from the parent's own (fn, args, kwargs) instead of its envelope, when they
    are the same: a plain function (pickled by reference) and arguments no one can change (so
    a copy is the same); else None. Saves reading the envelope back."""
    fnargs = record[2]
    if fnargs is None or envelope[:1] != b'P':
        return None
    fn, args, kwargs = fnargs[slot]
    if type(fn) is not types.FunctionType or kwargs:
        return None
    for a in args:
        if type(a) not in _ATOMS and not _frozen(a):
            return None
    child = _new_task(Task)
    child.path, child.level, child.max_depth = parent.path, parent.level, parent.max_depth
    child.context, child.prefix, child.depth = record[4], record[3], parent.depth + 1
    child.coro = _coroutine(fn, args, kwargs)
    return child


_new_task = object.__new__


def _unchunk(chunked: list[Any], values: list[Any]) -> list[Any]:
    """The results of a chunked map, from its chunks' (results, seconds per child)."""
    _learn(chunked[1], [secs for _, secs in values])
    return [v for part, _ in values for v in part]


def start(envelope: bytes, depth: int) -> tuple[Any, ...]:
    """Build a task; ('task', Task) or ('error', traceback text)."""
    try:
        return ('task', Task(envelope, depth))
    except BaseException:
        return _error()


def _require_task() -> Task:
    if _active is None:
        raise RuntimeError(
            'bqrt: the BQSKit runtime handle can only be used inside a running task.',
        )
    return _active


def _check_context(context: Any) -> None:
    if not isinstance(context, dict):
        raise RuntimeError('log_context must be a dictionary.')
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise RuntimeError(
                'log_context must be a map from strings to strings.',
            )


def _name(fn: Any, task_name: str | None) -> str:
    if task_name is not None:
        return task_name
    return getattr(fn, '__name__', type(fn).__name__)


class _BoxView:
    def __init__(self, box: int) -> None:
        self.box = box

    @property
    def ready(self) -> bool:
        # bqrt cannot peek at a mailbox without consuming it; a live one reads as not ready.
        return False


class _Mailboxes:
    """What RuntimeFuture._done looks at: live mailboxes of the running task."""

    def __contains__(self, box: object) -> bool:
        return isinstance(box, int) and _bqrt.has_box(box)

    def __getitem__(self, box: int) -> _BoxView:
        if not (isinstance(box, int) and _bqrt.has_box(box)):
            raise KeyError(box)
        return _BoxView(box)


_needs = ''


class _Needing:
    """Sets the resources submits need for the extent of a ``with`` block."""

    def __init__(self, needs: str) -> None:
        self.needs = needs
        self.before = ''

    def __enter__(self) -> None:
        global _needs
        self.before, _needs = _needs, self.needs

    def __exit__(self, *_: Any) -> None:
        global _needs
        _needs = self.before


# A map of many children runs them in chunks: one task per chunk, so that the runtime's cost per
# task (a scheduled task, a step through the Python process: ~30 us) is paid once per chunk.
# How many children a chunk takes depends on how long one child of that function took before,
# in this process: a function not seen yet runs one child per task (each task reporting its
# time), a quick one up to CHUNK_MOST per task, as many as fill half of CHUNK_BUDGET, and a map
# keeps at least CHUNK_LEAST tasks; only plain functions of importable modules (see _fn_key). A
# chunk runs its children one after the other; once it has run CHUNK_BUDGET, the rest go out as
# tasks of their own (unless a child read messages: those reach only the chunk), which idle
# workers take while the chunk waits for them. Decision 63.
CHUNK_MOST = 64
CHUNK_LEAST = 64
CHUNK_BUDGET = 0.002  # seconds
# Seconds one child of a function took in its last chunks, by (module, qualified name).
_child_seconds: dict[tuple[str, str], float] = {}


def _fn_key(fn: Any) -> tuple[str, str] | None:
    """What a function's children are known by, if they may run in chunks: only a plain
    function of an importable module (not `async`, not a lambda, a local function, a method, a
    partial or a callable object, whose calls may cost anything: the same `async` function
    runs BQSKit's cheap and costly block workflows alike)."""
    if not inspect.isfunction(fn) or inspect.iscoroutinefunction(fn):
        return None
    module, name = getattr(fn, '__module__', None), fn.__qualname__
    if not module or module == '__main__' or '<' in name:
        return None
    return (module, name)


def _learn(key: tuple[str, str] | None, seconds: list[float]) -> None:
    """Chunks of the function `key` reported these seconds per child."""
    if key is None or not seconds:
        return
    new = sum(seconds) / len(seconds)
    old = _child_seconds.get(key)
    if old is None and len(_child_seconds) >= 1024:
        _child_seconds.clear()
    _child_seconds[key] = new if old is None else (old + new) / 2


def _chunk_size(fn: Any, n: int) -> int:
    """Children per chunk of a map of `n` children of `fn`; 0: no chunks at all."""
    if n < 2 * CHUNK_LEAST:
        return 0
    key = _fn_key(fn)
    if key is None:
        return 0
    seconds = _child_seconds.get(key)
    if seconds is None:
        return 1
    fill = int(CHUNK_BUDGET / 2 / max(seconds, 1e-7))
    return max(1, min(CHUNK_MOST, n // CHUNK_LEAST, fill))


async def _chunk(
    fn: Any, argsets: list[Any], kwargs: Any, name: str, needs: str,
) -> tuple[list[Any], float]:
    """The task of one chunk: `fn(*args, **kwargs)` for each args in order; their results and
    the seconds one child took, on average."""
    task = _require_task()
    task.in_chunk = True
    task.messages = []
    out: list[Any] = []
    began = time.perf_counter()
    last = len(argsets) - 1

    def spread(first: int) -> Any:
        rest = [(fn, a, kwargs) for a in argsets[first:]]
        return _submit(task, rest, [name] * len(rest), [task.context] * len(rest), needs, 0)

    for i, args in enumerate(argsets):
        task.read_to = 0  # a child reads every message its chunk got (decision 63)
        out.append(fn(*args, **kwargs))
        if i < last and not task.listened and time.perf_counter() - began > CHUNK_BUDGET:
            seconds = (time.perf_counter() - began) / (i + 1)
            out.extend(await spread(i + 1))
            return out, seconds
    return out, (time.perf_counter() - began) / len(argsets)


def _children(
    task: Task, fnargs: list[tuple[Any, Any, Any]], names: Any, contexts: Any,
) -> list[tuple[bytes, str]]:
    """(envelope, name) of each child: `names` and `contexts` one for each, or one name (a
    str) and one context (a dict) for all."""
    if type(names) is not str or type(contexts) is not dict:
        return [(task.child(fa, contexts[i]), names[i]) for i, fa in enumerate(fnargs)]
    head = task.child_head(contexts)
    if getattr(fnargs[0][0], '__module__', None) == '__main__':
        return [(task.child(fa, contexts), names) for fa in fnargs]
    # the common case: `_dumps_call`'s first branch once per map, not per child (its function
    # check holds for every child: they share the function)
    out = []
    dumps, most, head_p = pickle.dumps, pickle.HIGHEST_PROTOCOL, b'P' + head
    for fa in fnargs:
        try:
            body = dumps(fa, most)
        except Exception:
            out.append((task.child(fa, contexts), names))
            continue
        if b'__main__' in body:
            out.append((task.child(fa, contexts), names))
        else:
            out.append((head_p + body, names))
    return out


def _submitted(
    task: Task, box: int, n: int, single: bool, fnargs: Any, context: dict[str, str] | None,
) -> Any:
    """Record the box `task` submitted to its worker's queue (see `Task.local`; `fnargs` and
    `context` None unless every child has that context and its own task); its future."""
    if task.local is _EMPTY:
        task.local = {}
    if context is None:
        task.local[box] = (n, single, None, None, None)
    else:
        task.local[box] = (n, single, fnargs, task.child_head(context), context)
    return (_future_class or _runtime_future())(box)


def _submit(
    task: Task, fnargs: list[tuple[Any, Any, Any]], names: Any, contexts: Any, needs: str,
    chunk: int,
) -> Any:
    """Submit `fnargs` as children of `task` (names and log contexts as `_children` takes
    them), in chunks of `chunk` (0: each child a task of its own; a chunk takes its first
    child's name and context); the RuntimeFuture of the map."""
    if chunk <= 0:
        children = _children(task, fnargs, names, contexts)
        box = _bqrt.submit(children, False, needs, True)
        # what `_shared` needs: the children's calls, header and context
        one_context = contexts if type(contexts) is dict else None
        return _submitted(task, box, len(children), False, fnargs, one_context)
    fn, kwargs = fnargs[0][0], fnargs[0][2]
    uniform = type(names) is str and type(contexts) is dict
    children = []
    for k in range(0, len(fnargs), chunk):
        argsets = [fa[1] for fa in fnargs[k:k + chunk]]
        name = names if uniform else names[k]
        call = (_chunk, (fn, argsets, kwargs, name, needs), {})
        children.append((task.child(call, contexts if uniform else contexts[k]), name))
    box = _bqrt.submit(children, False, needs, True)
    if task.chunked is _EMPTY:
        task.chunked = {}
    task.chunked[box] = [chunk, _fn_key(fn), len(children)]
    return _submitted(task, box, len(children), False, None, None)


class Handle:
    """``bqskit.runtime.get_runtime()`` inside a task running on bqrt."""

    _mailboxes = _Mailboxes()

    def submit(
        self, fn: Any, *args: Any, task_name: str | None = None,
        log_context: dict[str, str] = {}, **kwargs: Any,
    ) -> Any:
        """Submit `fn(*args, **kwargs)` as a child task; await the future for its result."""
        task = _require_task()
        if task_name is not None and not isinstance(task_name, str):
            raise RuntimeError('task_name must be a string.')
        _check_context(log_context)
        context = {**task.context, **log_context} if log_context else task.context
        fnargs = (fn, args, kwargs)
        envelope = task.child(fnargs, context)
        box = _bqrt.submit([(envelope, _name(fn, task_name))], True, _needs, True)
        return _submitted(task, box, 1, True, [fnargs], context)

    def map(
        self, fn: Any, *args: Any, task_name: Any = None,
        log_context: Any = {}, **kwargs: Any,
    ) -> Any:
        """Map `fn` over the arguments; one future gives every result in input order."""
        task = _require_task()
        if len(args) == 0:
            raise RuntimeError('Unable to map 0 tasks.')
        n = len(args[0])
        # one name (a str) and one context (a dict) for all children, or a list of each
        names: Any
        contexts: Any
        if task_name is None or isinstance(task_name, str):
            names = _name(fn, task_name)
        else:
            if len(task_name) != n:
                raise RuntimeError(
                    'task_name must be a string or a list of strings equal'
                    'in length to the number of tasks.',
                )
            first = task_name[0] if n else None
            if all(t == first for t in task_name):
                names = _name(fn, first)
            else:
                names = [_name(fn, t) for t in task_name]
        base = task.context
        if isinstance(log_context, dict):
            _check_context(log_context)
            contexts = {**base, **log_context} if log_context else base
        else:
            if len(log_context) != n:
                raise RuntimeError(
                    'log_context must be a dictionary or a list of dictionaries'
                    ' equal in length to the number of tasks.',
                )
            for context in log_context:
                _check_context(context)
            contexts = [{**base, **c} if c else base for c in log_context]
        if len(args) == 1:
            fnargs = [(fn, (a,), kwargs) for a in args[0]]
        else:
            fnargs = [(fn, sub, kwargs) for sub in zip(*args)]
        if len(fnargs) == 0:
            raise RuntimeError('Unable to map 0 tasks.')
        if type(names) is str and type(contexts) is dict:
            chunk = _chunk_size(fn, n)
        else:
            chunk = 0
            if type(names) is str:
                names = [names] * n
            if type(contexts) is dict:
                contexts = [contexts] * n
        return _submit(task, fnargs, names, contexts, _needs, chunk)

    def needing(self, needs: str) -> Any:
        """Within ``with get_runtime().needing('gpu'):``, submit and map place their tasks
        only on workers that offer these resources (comma-separated names); what
        ``bqrt_resources`` uses."""
        return _Needing(needs)

    def cancel(self, future: Any) -> None:
        """Cancel the future's tasks and their descendants; returns at once."""
        task = _require_task()
        box = future.mailbox_id
        _bqrt.cancel(box)
        if box in task.chunked:
            del task.chunked[box]
        if box in task.local:
            del task.local[box]

    async def next(self, future: Any) -> list[tuple[int, Any]]:
        """Results that arrived since the last call, as (index, value) pairs."""
        if not _bqrt.has_box(future.mailbox_id):
            raise RuntimeError('Cannot wait on an already completed result.')
        future._next_flag = True
        try:
            return await future
        finally:
            future._next_flag = False

    def get_cache(self) -> dict[str, Any]:
        """This worker's cache: persists across tasks and jobs on this worker."""
        return _cache

    def communicate(self, future: Any, msg: Any) -> None:
        """Send ``msg`` to the started tasks of ``future``, wherever they run. As on BQSKit,
        tasks not started yet or already finished miss it."""
        _require_task()
        from bqskit.runtime.future import RuntimeFuture

        if not isinstance(future, RuntimeFuture) or not _bqrt.has_box(future.mailbox_id):
            raise RuntimeError('Cannot communicate with a canceled or finished future.')
        _bqrt.communicate(future.mailbox_id, pickle.dumps(msg))

    def get_messages(self) -> list[Any]:
        """Messages sent to this task with ``communicate`` since the last call (they arrive
        even while the task computes)."""
        task = _require_task()
        if task.slot >= 0:
            # a child running inside its parent's step: the runtime never started it as a task
            # of its own, so nothing could send it a message (decision 64)
            return []
        if not task.in_chunk:
            return [pickle.loads(m) for m in _bqrt.get_messages()]
        # A chunk's children share its messages: each reads all of them (decision 63).
        task.listened = True
        task.messages.extend(_bqrt.get_messages())
        new, task.read_to = task.messages[task.read_to:], len(task.messages)
        return [pickle.loads(m) for m in new]


HANDLE = Handle()
