"""Polling for a message instead of sleeping until it comes, and the threads that stop it.

Sleeping in epoll and being woken costs a VM like ours ~40-50 us a side: a TCP round
trip on loopback between two processes that sleep takes ~118 us, between two that
poll ~16 us, and a 9P exchange is one such round trip plus the work. So a side that
expects a message soon (a client with requests out, a server that has just answered)
polls a while first (docs/mount.md, "Polling instead of sleeping").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["in_thread", "poll_until"]

T = TypeVar("T")

_POLLING: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("ninep_polling", default=False)
_THREADS: trio.lowlevel.RunVar[int] = trio.lowlevel.RunVar("ninep_threads", default=0)  # (in_thread)


async def poll_until(ready: Callable[[], bool], until: float) -> bool:
    """Keep the loop polling, not sleeping in epoll, until `ready()` (True) or until
    time.perf_counter() reaches `until` (False).

    Each pass yields the CPU (a process woken on ours, such as the program our answer
    woke, runs first), then makes a checkpoint: the loop runs its other tasks, and its
    epoll, with a task to run, has no timeout and serves every other file. So one task
    polling is enough for the whole loop: while one does, another returns at once (False
    unless ready) and waits as usual, seen without a sleep. Nobody polls while a thread
    of ours runs (in_thread).
    """
    if ready():
        return True
    if _POLLING.get() or _THREADS.get():
        return False
    _POLLING.set(True)
    try:
        while time.perf_counter() < until and not _THREADS.get():
            os.sched_yield()
            await trio.lowlevel.checkpoint()
            if ready():
                return True
        return False
    finally:
        _POLLING.set(False)


async def in_thread(fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
    """trio.to_thread.run_sync(fn, *args), and nobody polls while it runs (poll_until).

    A loop that polls holds the GIL but for moments too short for a thread that waits
    for it to take it, so the thread's call returns only when the interpreter's switch
    interval (5 ms) forces the GIL over: an fsync in a thread took ~890 µs under a poll,
    ~310 µs with the loop asleep.
    """
    _THREADS.set(_THREADS.get() + 1)
    try:
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)
    finally:
        _THREADS.set(_THREADS.get() - 1)
