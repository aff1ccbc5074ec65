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
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return False
    return os.path.exists("/dev/fuse")


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and pyfuse3")


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
