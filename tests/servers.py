"""One way to start a server for a test: in this trio loop, or as a real subprocess.

Both always stop what they started, also when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from ninep import Connection, Limits, Server, Tree, dial


@asynccontextmanager
async def serving(
    tree: Tree, address: str = "tcp!127.0.0.1!0", *, limits: Limits = Limits()
) -> AsyncIterator[str]:
    """Serve `tree` in the current trio loop; yields the dial string of the bound address."""
    server = Server(tree, limits=limits)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve, address)
        try:
            yield str(addresses[0])
        finally:
            nursery.cancel_scope.cancel()


def ninefs_command(*args: str) -> list[str]:
    """The argv to run the `ninefs` CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "mount.cli", *args]


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(argv: list[str], stderr: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """A server's process, started (its address comes with `server_address`)."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=CHECKOUT)


def server_address(proc: subprocess.Popen) -> str:
    """The address a started server prints once it listens ("ninefs: serving on ADDR")."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ninefs: serving on "):
        raise RuntimeError(f"server did not start: {line!r}")
    return line.split()[-1]


def stop_servers(*procs: subprocess.Popen) -> None:
    """SIGTERM to every one still running, then wait for each (SIGKILL after 10 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextmanager
def server_process(
    *args: str, listen: str = "tcp!127.0.0.1!0", stderr: Any = subprocess.DEVNULL
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `ninefs serve ARGS --listen LISTEN` in a subprocess; yield its address and process.

    `stderr`: where its log goes (a file, to check what it said)."""
    proc = start_server(ninefs_command("serve", *args, "--listen", listen), stderr)
    try:
        yield server_address(proc), proc
    finally:
        stop_servers(proc)


@contextmanager
def server_processes(n: int, *args: str) -> Iterator[list[str]]:
    """`n` servers as `server_process` starts one, all started at once (each spends most
    of a second importing before it listens); their addresses."""
    procs = [start_server(ninefs_command("serve", *args, "--listen", "tcp!127.0.0.1!0")) for _ in range(n)]
    try:
        yield [server_address(proc) for proc in procs]
    finally:
        stop_servers(*procs)


@asynccontextmanager
async def raw_connection(address: str, *, msize: int = 1 << 20) -> AsyncIterator[Connection]:
    """A versioned 9P connection with no attach, for tests of the raw protocol."""
    stream = await dial(address)
    async with trio.open_nursery() as nursery:
        conn = Connection(stream, msize=msize)
        try:
            await conn.start(nursery)
            yield conn
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()
