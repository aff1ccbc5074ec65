"""Real FUSE mounts for tests: `ninefs mount` in the background, always unmounted."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mount.mounter import unmount

from .servers import ninefs_command


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
