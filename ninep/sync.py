"""A blocking facade over the client, for scripts and threads that do not use trio.

`ninep.sync.connect(addr)` starts one trio loop in a helper thread that owns the
connection; every method call is handed to that loop with
`trio.from_thread.run` and blocks until it is done. Calls from several threads
at once are fine: they become concurrent 9P requests on the one connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .files import Client, File
from .files import connect as async_connect
from .messages import Stat
from .transport import Address

__all__ = ["SyncClient", "SyncFile", "connect", "run_all"]


class _Loop:
    """A trio run in a daemon thread, kept alive until `stop`."""

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self.value: Any = None
        self.thread = threading.Thread(target=self._main, name="ninep-sync", daemon=True)

    def start(self, setup: Callable[[], Any]) -> None:
        self._setup = setup
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as e:  # reported to the starting thread if setup failed
            if not self._ready.is_set():
                self._error = e
                self._ready.set()

    async def _run(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with self._setup() as value:
            self.value = value
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
            self.thread.join()


class SyncFile:
    """A blocking `File`: read, write, seek, readline, iteration, close."""

    def __init__(self, loop: _Loop, file: File) -> None:
        self._loop = loop
        self._file = file

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._file, name)
        if callable(attr) and _is_async(attr):
            return lambda *a: self._loop.call(attr, *a)
        return attr

    def __enter__(self) -> SyncFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        self._loop.call(self._file.close)


class SyncClient:
    """The `Client` path API, blocking. Close it (or use `with`) to end the connection."""

    def __init__(self, loop: _Loop) -> None:
        self._loop = loop
        self.client: Client = loop.value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if callable(attr) and _is_async(attr):
            return lambda *a, **k: self._loop.call(lambda: attr(*a, **k))
        return attr

    def open(self, path: str, mode: str = "r", *, perm: int = 0o666) -> SyncFile:
        async def opening() -> File:
            return await self.client.open(path, mode, perm=perm)

        return SyncFile(self._loop, self._loop.call(opening))

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        async def collect() -> list[tuple[str, list[str], list[str]]]:
            return [x async for x in self.client.walk(top)]

        return iter(self._loop.call(collect))

    def ls(self, path: str = "/") -> list[Stat]:
        return self._loop.call(self.client.ls, path)

    def close(self) -> None:
        self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def connect(address: str | Address, **options: Any) -> SyncClient:
    """Connect and attach; the blocking twin of `ninep.connect`, with the same options
    (uname, aname, msize, key, timeout, reconnect)."""
    loop = _Loop()
    loop.start(lambda: async_connect(address, **options))
    return SyncClient(loop)


def run_all(hosts: Any, argv: Any, **options: Any) -> list[Any]:
    """Run a command on many machines at once and wait for all of them: the blocking twin
    of `ninep.run_all` (ninep/fanout.py), with the same options; one result per host."""
    from functools import partial

    from .fanout import run_all as async_run_all

    return trio.run(partial(async_run_all, hosts, argv, **options))
