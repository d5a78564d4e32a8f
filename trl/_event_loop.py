"""One asyncio event loop on a daemon thread, shared by everything that runs user coroutines from synchronous code
(async reward functions, async tools and environment methods)."""

from __future__ import annotations

import asyncio
import os
import threading

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_PID: int | None = None
_LOOP_LOCK = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop, started on first use and kept for the life of the process (a forked child starts its own, since the
    thread does not survive the fork).

    Example:
        ```python
        >>> asyncio.run_coroutine_threadsafe(asyncio.sleep(0, result=1), event_loop()).result()
        1
        ```
    """
    global _LOOP, _LOOP_PID
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP_PID != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="trl-event-loop", daemon=True).start()
            _LOOP, _LOOP_PID = loop, os.getpid()
        return _LOOP
