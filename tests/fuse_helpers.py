"""Real FUSE mounts for tests: `ninefs mount` in the background, always unmounted."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from mount.mounter import unmount
from ninep import RemoteTree

from .servers import ninefs_command, server_process


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse")


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")


def ninefs_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if " fuse.ninefs " in line]


@contextmanager
def mounted(address: str, mountpoint: str, *args: str) -> Iterator[str]:
    """`ninefs mount ADDRESS MOUNTPOINT ARGS`; unmounted afterwards whatever happens."""
    r = subprocess.run(ninefs_command("mount", address, mountpoint, *args), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    try:
        yield mountpoint
    finally:
        if mountpoint in ninefs_mounts() and unmount(mountpoint).returncode != 0:
            unmount(mountpoint, lazy=True)


def sh(command: str, cwd: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """A shell command as a person would run it; output as text."""
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def on_terminal(
    argv: list[str], wait_for: bytes, keys: bytes, *, size: tuple[int, int] | None = None
) -> tuple[int, bytes]:
    """Run `argv` as a person at a terminal would: on a new pseudo-terminal as its
    controlling terminal; once `wait_for` appears in the output, type `keys`.
    Gives the exit status and everything the terminal showed."""
    import fcntl
    import select
    import struct
    import termios
    import time

    master, slave = os.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
    os.close(slave)
    out = b""
    try:
        deadline, typed = time.monotonic() + 30, False
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:  # the terminal hung up
                    break
            if not typed and wait_for in out:
                os.write(master, keys)
                typed = True
        return proc.wait(timeout=30), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@asynccontextmanager
async def mounted_here(
    export: Path, mp: Path, counts: Counter[str] | None = None, **options: Any
) -> AsyncIterator[RemoteTree]:
    """`export` served by `ninefs serve` and mounted on `mp` in this trio loop (the kernel's
    requests counted by opcode into `counts`); yields the mount's tree, whose connection
    can count the 9P side (Connection.counts). Commands run as subprocesses meanwhile."""
    from mount.fuse import FuseOptions
    from mount.mounter import mount_tree

    with server_process(str(export)) as (address, _):
        async with RemoteTree.connect(address, uname="root") as tree, trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(
                partial(
                    mount_tree,
                    tree,
                    str(mp),
                    uname="root",
                    options=FuseOptions(**options),
                    ready=ready.set,
                    unmount_on_signals=False,
                    counts=counts,
                )
            )
            with trio.fail_after(30):
                await ready.wait()
            try:
                yield tree
            finally:
                nursery.cancel_scope.cancel()
