"""Resource requirements for BQSKit tasks, on bqrt and on BQSKit's own runtime alike.

Inside a pass's ``async def run``::

    from bqrt_resources import submit, map

    results = await map(instantiate_on_gpu, blocks, needs='gpu')
    one = await submit(fn, arg, needs=['gpu'], task_name='big block')

On bqrt these tasks run only on workers whose group offers every resource named
(``bqrt serve --group 'gpu workers=2 offers=gpu ...'``); a resource no worker offers fails the
task that submits them, with an error naming it. On BQSKit's own runtime, which has no
resources, they are BQSKit's own ``submit`` and ``map``, so a pass written with them runs on
both. Every other argument is passed on unchanged.
"""
from __future__ import annotations

from typing import Any, Iterable

from bqskit.runtime import get_runtime

__all__ = ['submit', 'map']


def _names(needs: str | Iterable[str]) -> str:
    if isinstance(needs, str):
        names = [n.strip() for n in needs.split(',')]
    else:
        names = [str(n).strip() for n in needs]
    return ','.join(n for n in names if n)


def _call(method: str, needs: str | Iterable[str], fn: Any, args: Any, kwargs: Any) -> Any:
    rt = get_runtime()
    names = _names(needs)
    needing = getattr(rt, 'needing', None)
    if not names or needing is None:
        return getattr(rt, method)(fn, *args, **kwargs)
    with needing(names):
        return getattr(rt, method)(fn, *args, **kwargs)


def submit(fn: Any, *args: Any, needs: str | Iterable[str] = (), **kwargs: Any) -> Any:
    """``get_runtime().submit(fn, *args, **kwargs)``, on workers that offer ``needs``."""
    return _call('submit', needs, fn, args, kwargs)


def map(fn: Any, *args: Any, needs: str | Iterable[str] = (), **kwargs: Any) -> Any:  # noqa: A001
    """``get_runtime().map(fn, *args, **kwargs)``, on workers that offer ``needs``."""
    return _call('map', needs, fn, args, kwargs)
