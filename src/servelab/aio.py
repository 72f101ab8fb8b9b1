"""Run a coroutine from plain code, in a script or in Jupyter, and let Ctrl-C / "interrupt kernel" stop it.

Jupyter's kernel already runs an event loop, so ``asyncio.run`` raises there. :func:`run_sync` then
runs the coroutine on its own loop in a worker thread and waits for it. An interrupt reaches the
waiting thread, not the worker, so it is passed on through ``stop``: the coroutine receives the
event, checks it (the load generator stops sending new requests), and the interrupt is re-raised.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(make: Callable[[threading.Event], Coroutine[Any, Any, T]], thread_name: str = "servelab-aio") -> T:
    """Run ``make(stop)`` to completion and return its result.

    ``make`` builds the coroutine from a fresh :class:`threading.Event` that is set when the caller is
    interrupted; coroutines that ignore it are still awaited until they end (bound them by timeouts).
    """
    stop = threading.Event()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            return asyncio.run(make(stop))
        except KeyboardInterrupt:
            stop.set()
            raise
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name) as pool:
        future = pool.submit(lambda: asyncio.run(make(stop)))
        try:
            return future.result()
        except KeyboardInterrupt:
            stop.set()
            raise
