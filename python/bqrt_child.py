"""The supervised Python process of a worker rank (src/python/child.rs starts it).

A worker rank runs its BQSKit tasks here, not in its own address space, so that a task that
crashes the interpreter (a segfault in a C extension, ``os._exit``, the kernel's OOM killer)
takes down only this process: the rank fails the task that was running, restarts the others
and starts a fresh process. The rank talks to this process over two pipes, file descriptors 3
(rank to child) and 4 (child to rank), and shares two more things with it: a token table (fd 5,
see :class:`_Tokens`) and a bell (fd 6, see :func:`_send`). Every message is a frame::

    u32 little-endian length of the rest, then one kind byte, then the body

Rank to child: ``S`` start a task (u64 id, u32 depth, envelope), ``A`` resume with all results
of the awaited mailbox (u64 id, u8 single, u32 n, n x (u32 len, bytes)), ``N`` resume with the
next results (u64 id, u32 n, n x (u32 slot, u32 len, bytes)), ``X`` close a task (u64 id),
``G`` the reply to ``g`` (u32 n, n x (u32 len, bytes)), ``K`` the reply to ``k`` (u32 slot, or
0xFFFFFFFF for none; then u32 len, name, envelope), ``Q`` quit.

Child to rank, during a step of one task: ``s`` submit (u64 mailbox, u8 flags: 1 one task, 2
keep the children in the worker's queue, 8 tokens follow; u32 n, with flag 8 u32 n and n x u32
tokens, one per child; n x (u32 len, name, u32 len, envelope), and optionally u32 len, the
resources the children need, comma-separated), ``k`` claim a child of a mailbox back from the
worker's queue, to run it inside this step (u64 mailbox; a child with a token is taken back by
it instead, without a frame), ``c`` cancel (u64 mailbox; one freeing a box every child of
which ran in the step leaves with the next frame), ``m`` communicate (u64 mailbox,
message), ``g`` get the task's messages, ``l`` a log record (i32 level, u32 len, name, text);
then the step's end: ``d`` done (result), ``e`` failed (traceback text) or ``a`` awaits (u64
mailbox, u8 next). Once, before anything else: ``H`` ready.

The warm-up imports (BQSKit's compiler and passes) run after ``H``, one module at a time and
only while no frame waits on the pipe: a task that arrives meanwhile waits at most for the
import under way, and imports on its own what it needs first (a first job that needs only
``bqskit.compiler`` does not wait for ``bqskit.passes``). An import that fails is left to the
first task that needs it, which reports it with its traceback. Once the list is done, what the
imports made is frozen out of the cyclic garbage collector's reach (``gc.freeze``). Before the
warm-up, ``ctypes.util.find_library`` is made to remember what it found (BQSKit calls it, and
so runs ``ldconfig -p``, at every seeded instantiation).

Mailbox ids are chosen here, so a submit needs no reply. SIGUSR1 during a step raises
:class:`TaskCancelled` in the task (the rank's cooperative cancel; it kills this process if the
task does not end within its grace period). SIGINT is ignored: the rank decides when to stop.
"""
from __future__ import annotations

import gc
import os
import select
import signal
import struct
import sys
import traceback
import types
from typing import Any

_IN, _OUT = 3, 4
_buf = bytearray()
_pos = 0


def _fill(n: int) -> None:
    """Read until `n` unread bytes are buffered (an exception meanwhile, such as a cancel's
    TaskCancelled, loses nothing)."""
    global _buf, _pos
    while len(_buf) - _pos < n:
        if _pos:
            del _buf[:_pos]
            _pos = 0
        chunk = os.read(_IN, max(1 << 16, n - len(_buf)))
        if not chunk:
            os._exit(0)  # the rank is gone
        _buf += chunk


def _pending() -> bool:
    """Whether a frame (or part of one) from the rank waits to be read."""
    return len(_buf) > _pos or bool(select.select([_IN], [], [], 0)[0])


def _recv() -> bytes:
    """The next frame's body, taken from the buffer only once all of it arrived."""
    global _pos
    _fill(4)
    (n,) = struct.unpack_from('<I', _buf, _pos)
    _fill(4 + n)
    out = bytes(_buf[_pos + 4:_pos + 4 + n])
    _pos += 4 + n
    return out


# Frames sent in the middle of a step, which the rank reads within a millisecond; after any
# other frame (one this process then waits on, or a step's end) it rings the rank's bell (fd 6,
# an eventfd), so that a step that submits many children does not wake the rank at each one.
_QUIET = frozenset(b'scml')
_bell = True


_U32 = struct.Struct('<I').pack
_S_HEAD = struct.Struct('<cQBI').pack


def _send(data: bytes) -> None:
    global _bell
    frame = _U32(len(data)) + data
    if _later:
        frame = b''.join(_later) + frame
        _later.clear()
    n = os.write(_OUT, frame)
    if n < len(frame):
        view = memoryview(frame)[n:]
        while view:
            view = view[os.write(_OUT, view):]
    if _bell and data[0] not in _QUIET:
        try:
            os.eventfd_write(6, 1)
        except OSError:  # no bell: the rank then reads every frame as it comes
            _bell = False


# Frames that may wait for the next one (see _release), each with its length
_later: list[bytes] = []
_C_FRAME = struct.Struct('<IcQ').pack


def _blobs(items: list[bytes]) -> bytes:
    return b''.join(struct.pack('<I', len(b)) + b for b in items)


def _parse_blobs(body: bytes, at: int, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        (k,) = struct.unpack_from('<I', body, at)
        out.append(body[at + 4:at + 4 + k])
        at += 4 + k
    return out


class TaskCancelled(BaseException):
    """Raised in a task whose job was cancelled (a BaseException, so ``except Exception`` does
    not swallow it)."""


class _Running:
    """What the ``_bqrt`` calls of the task being stepped reach."""

    def __init__(self) -> None:
        self.boxes: dict[int, set[int]] = {}  # task id -> its live mailboxes
        self.tid: int | None = None


_run = _Running()
_next_box = 0
_rank = 0


def _boxes() -> set[int]:
    if _run.tid is None:
        raise RuntimeError('bqrt: no BQSKit task is running in this process')
    return _run.boxes[_run.tid]


class _Tokens:
    """The token table this process shares with its rank (fd 5; src/python/tokens.rs): one
    spin lock per token, taken once by whichever side gets it first, then one byte per token
    the rank sets once it holds no reference to it. A child submitted with a token is taken
    back here without a message (decision 67)."""

    def __init__(self) -> None:
        import ctypes
        import mmap
        size = os.fstat(5).st_size
        lock = ctypes.sizeof(ctypes.c_int)
        count, rest = divmod(size, lock + 1)
        if count == 0 or rest:
            raise OSError(f'a token table of {size} bytes')
        self.mm = mm = mmap.mmap(5, size)
        os.close(5)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        libc = ctypes.CDLL(None)
        self.trylock = libc.pthread_spin_trylock
        self.trylock.argtypes = [ctypes.c_void_p]
        self.trylock.restype = ctypes.c_int
        # what a free lock looks like in this C library (the rank made every lock free)
        self.unlocked = mm[0:lock]
        self.lock = lock
        self.released = count * lock
        self.free = list(range(count - 1, -1, -1))
        self.pending: list[int] = []  # done with here, maybe still referenced by the rank

    def alloc(self, k: int) -> list[int] | None:
        """`k` free tokens, each set free to take, or None when too few are."""
        free = self.free
        if len(free) < k:
            mm, rel, still = self.mm, self.released, []
            for t in self.pending:
                (free if mm[rel + t] else still).append(t)
            self.pending = still
            if len(free) < k:
                return None
        toks = free[-k:]
        del free[-k:]
        mm, lock, unlocked, rel = self.mm, self.lock, self.unlocked, self.released
        for t in toks:
            mm[t * lock:t * lock + lock] = unlocked
            mm[rel + t] = 0
        return toks


_tokens: _Tokens | None = None
_counted: dict[int, struct.Struct] = {}  # packers of a count and that many u32, by count
_tokens_tried = False
# Boxes whose first children have tokens: [children, tokens, the next slot to try]
_taking: dict[int, list[Any]] = {}


def _token_table() -> _Tokens | None:
    global _tokens, _tokens_tried
    if not _tokens_tried:
        _tokens_tried = True
        try:
            _tokens = _Tokens()
        except Exception:  # no table (or not one this process can use): claims go by message
            _tokens = None
    return _tokens


def _forget(box: int) -> None:
    """Done with `box` here: its tokens may be reused once the rank released them."""
    rec = _taking.pop(box, None)
    if rec is not None and _tokens is not None:
        _tokens.pending.extend(rec[1])


def _submit(
    children: list[tuple[bytes, str]], single: bool, needs: str = '', local: bool = False,
) -> int:
    global _next_box
    boxes = _boxes()
    _next_box += 1
    box = _next_box
    flags = (1 if single else 0) | (2 if local else 0)
    k = len(children)
    # children that need resources go by message: this worker may not offer them, and only the
    # rank knows (it sends them to its boss)
    toks = None
    if local and not needs:
        table = _tokens if _tokens_tried else _token_table()
        if table is not None:
            toks = table.alloc(k)
    if toks is not None:
        flags |= 8
        _taking[box] = [children, toks, k - 1]
    parts = [_S_HEAD(b's', box, flags, k)]
    if toks is not None:
        packer = _counted.get(k)
        if packer is None:
            packer = struct.Struct(f'<I{k}I')
            if k <= 64:
                _counted[k] = packer
        parts.append(packer.pack(k, *toks))
    last, label = None, b''
    for envelope, name in children:
        if name is not last:  # a map's children share one name
            last = name
            b = name.encode('utf-8', 'replace')
            label = _U32(len(b)) + b
        parts += (label, _U32(len(envelope)), envelope)
    if needs:
        spec = needs.encode('utf-8', 'replace')
        parts.append(struct.pack('<I', len(spec)) + spec)
    _send(b''.join(parts))
    boxes.add(box)
    return box


def _claim(box: int) -> tuple[int, str, bytes] | None:
    """(slot, name, envelope) of a child of `box` taken back from the worker's queue to run
    here, or None when none waits there: by its token when it has one, last first, else by
    asking the rank."""
    rec = _taking.get(box)
    if rec is None and box not in _boxes():
        raise KeyError(box)
    if rec is not None:
        children, toks, i = rec
        trylock, base, lock = _tokens.trylock, _tokens.base, _tokens.lock
        while i >= 0:
            if trylock(base + toks[i] * lock) == 0:
                rec[2] = i - 1
                envelope, name = children[i]
                return i, name, envelope
            i -= 1
        _forget(box)  # the others are the rank's: awaited through it
        return None
    _send(struct.pack('<cQ', b'k', box))
    body = _recv()
    if body[:1] != b'K':
        raise RuntimeError(f'bqrt: unexpected reply {body[:1]!r} to a claim')
    (slot,) = struct.unpack_from('<I', body, 1)
    if slot == 0xFFFFFFFF:
        return None
    (n,) = struct.unpack_from('<I', body, 5)
    return slot, body[9:9 + n].decode('utf-8', 'replace'), body[9 + n:]


def _unbox(box: int) -> None:
    """`box` of the running task is done with here (cancelled, or every child ran here)."""
    boxes = _boxes()
    if box not in boxes:
        raise KeyError(box)
    boxes.discard(box)
    _forget(box)


def _cancel(box: int) -> None:
    _unbox(box)
    _send(struct.pack('<cQ', b'c', box))


def _release(box: int) -> None:
    """Cancel `box`, every child of which ran here: there is nothing left to stop, so the frame
    leaves with the next one (at the latest the step's end) instead of a write of its own."""
    _unbox(box)
    _later.append(_C_FRAME(9, b'c', box))


def _communicate(box: int, msg: bytes) -> None:
    if box not in _boxes():
        raise KeyError(box)
    _send(struct.pack('<cQ', b'm', box) + msg)


def _get_messages() -> list[bytes]:
    _boxes()
    _send(b'g')
    body = _recv()
    if body[:1] != b'G':
        raise RuntimeError(f'bqrt: unexpected reply {body[:1]!r} to get_messages')
    (n,) = struct.unpack_from('<I', body, 1)
    return _parse_blobs(body, 5, n)


def _has_box(box: int) -> bool:
    return _run.tid is not None and box in _run.boxes.get(_run.tid, ())


def _log(levelno: int, name: str, message: str) -> None:
    n = name.encode('utf-8', 'replace')
    m = message.encode('utf-8', 'replace')
    _send(struct.pack('<ciI', b'l', int(levelno), len(n)) + n + m)


def _worker_id() -> int:
    return _rank


def _module(name: str, source: str, filename: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__file__ = filename
    sys.modules[name] = m
    exec(compile(source, filename, 'exec'), m.__dict__)
    return m


def _on_usr1(_sig: int, _frame: Any) -> None:
    if _run.tid is not None:
        raise TaskCancelled('bqrt: the task was cancelled')


def _remember_libraries() -> None:
    """Make ``ctypes.util.find_library`` remember what it found, for this process's life.

    On Linux each call runs ``ldconfig -p`` in a subprocess (about 1 ms), and BQSKit calls it
    at every seeded instantiation (``bqskit.utils.random.seed_random_sources``, to seed libc's
    ``rand``): 237 processes in one ``qft_8`` compile at -O1. The libraries a name resolves to
    do not change under a running worker; a name not found is looked up again next time.
    Modules that imported the function by name before (``from ctypes.util import
    find_library``, as BQSKit does) get the remembering one too."""
    import ctypes.util
    look_up = ctypes.util.find_library
    found: dict[str, str] = {}

    def find_library(name: str) -> str | None:
        hit = found.get(name)
        if hit is None:
            hit = look_up(name)
            if hit is not None:
                found[name] = hit
        return hit

    find_library.__doc__ = look_up.__doc__
    ctypes.util.find_library = find_library
    for m in list(sys.modules.values()):
        try:
            if getattr(m, 'find_library', None) is look_up:
                m.find_library = find_library  # type: ignore[union-attr]
        except Exception:  # a module with its own attribute access; not one that imported it
            pass


def main(worker_source: str, compile_source: str, warm: list[str], rank: int) -> None:
    global _rank
    _rank = rank
    signal.signal(signal.SIGUSR1, _on_usr1)
    native = types.ModuleType('_bqrt')
    for f, name in [
        (_submit, 'submit'), (_claim, 'claim'), (_cancel, 'cancel'), (_release, 'release'),
        (_communicate, 'communicate'),
        (_get_messages, 'get_messages'), (_has_box, 'has_box'), (_log, 'log'),
        (_worker_id, 'worker_id'),
    ]:
        setattr(native, name, f)
    sys.modules['_bqrt'] = native
    worker = _module('bqrt_worker', worker_source, '<bqrt>/bqrt_worker.py')
    _module('bqrt_compile', compile_source, '<bqrt>/bqrt_compile.py')
    _send(b'H')
    warming = list(warm)

    tasks: dict[int, Any] = {}
    awaiting: dict[int, int] = {}

    def step(tid: int, kind: int, payload: Any) -> None:
        task = tasks.get(tid)
        if task is None:
            _send(b'e' + f'bqrt: task {tid} is not in this process'.encode())
            return
        _run.tid = tid
        try:
            r = task.step(kind, payload)
        except BaseException:
            r = ('error', ''.join(traceback.format_exception(*sys.exc_info())))
        finally:
            _run.tid = None
        if r[0] == 'await':
            awaiting[tid] = r[1]
            _send(struct.pack('<cQB', b'a', r[1], 1 if r[2] else 0))
            return
        del tasks[tid]
        for box in _run.boxes.pop(tid, ()):
            _forget(box)
        awaiting.pop(tid, None)
        if r[0] == 'done':
            _send(b'd' + r[1])
        else:
            _send(b'e' + str(r[1]).encode('utf-8', 'replace'))

    remembering = False
    while True:
        if not remembering and not _pending():
            # ctypes.util takes ~25 ms to import: while no frame waits, like the warm-up
            _remember_libraries()
            remembering = True
        while warming and not _pending():
            try:
                __import__(warming.pop(0))
            except BaseException:  # the first task that needs it reports it properly
                pass
            if not warming:
                # What the imports made (~80,000 objects with BQSKit's passes) lives as long as
                # the process: frozen, the cyclic collector no longer walks it, which was a
                # ~40 ms pause at each full collection a task's allocations triggered. No
                # collection first: that would be the same pause, before a task that may wait.
                gc.freeze()
        body = _recv()
        kind = body[:1]
        if kind == b'S':
            tid, depth = struct.unpack_from('<QI', body, 1)
            _run.boxes[tid] = set()
            _run.tid = tid
            try:
                made = worker.start(body[13:], depth)
            except BaseException:
                made = ('error', ''.join(traceback.format_exception(*sys.exc_info())))
            finally:
                _run.tid = None
            if made[0] != 'task':
                _run.boxes.pop(tid, None)
                _send(b'e' + str(made[1]).encode('utf-8', 'replace'))
                continue
            tasks[tid] = made[1]
            step(tid, 0, None)
        elif kind == b'A':
            tid, single, n = struct.unpack_from('<QBI', body, 1)
            box = awaiting.pop(tid, None)
            if box is not None:
                _run.boxes.get(tid, set()).discard(box)
                _forget(box)
            step(tid, 1, (_parse_blobs(body, 14, n), bool(single)))
        elif kind == b'N':
            tid, n = struct.unpack_from('<QI', body, 1)
            pairs = []
            at = 13
            for _ in range(n):
                slot, k = struct.unpack_from('<II', body, at)
                pairs.append((slot, body[at + 8:at + 8 + k]))
                at += 8 + k
            step(tid, 2, pairs)
        elif kind == b'X':
            (tid,) = struct.unpack_from('<Q', body, 1)
            task = tasks.pop(tid, None)
            for box in _run.boxes.pop(tid, ()):
                _forget(box)
            awaiting.pop(tid, None)
            if task is not None:
                try:
                    task.close()
                except BaseException:
                    pass
        elif kind in (b'G', b'K'):
            pass  # the reply to a get_messages or a claim whose task was cancelled meanwhile
        elif kind == b'Q':
            os._exit(0)
        else:
            sys.stderr.write(f'bqrt: the Python process got an unknown frame {kind!r}\n')
            os._exit(70)
