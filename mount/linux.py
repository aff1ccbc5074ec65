"""The few Linux system calls a per-process namespace needs: unshare and mount.

Python 3.11 has neither `os.unshare` nor `mount`, so they come from libc
through ctypes. Nothing else in the project touches the kernel's mount table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["bind_mount", "make_rprivate", "mount_tmpfs", "rbind", "unmount_detach", "unshare_mount_namespace"]

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(s: str | None) -> bytes | None:
    return os.fsencode(s) if s is not None else None


def unshare_mount_namespace() -> None:
    """rfork(RFNAMEG): from now on this process has a mount table of its own.

    Must run while the process has one thread: the kernel refuses CLONE_NEWNS
    to a thread that shares its file-system context with others.
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")


def make_rprivate(path: str = "/") -> None:
    """Stop mount events propagating between our namespace and the parent's, both ways."""
    _check(_libc.mount(b"none", _b(path), None, MS_REC | MS_PRIVATE, None), "make-rprivate", path)


def mount_tmpfs(path: str) -> None:
    _check(_libc.mount(b"tmpfs", _b(path), b"tmpfs", 0, b"mode=0700"), "mount tmpfs", path)


def rbind(source: str, target: str) -> None:
    _check(_libc.mount(_b(source), _b(target), None, MS_BIND | MS_REC, None), "rbind", target)


def bind_mount(source: str, target: str) -> None:
    _check(_libc.mount(_b(source), _b(target), None, MS_BIND, None), "bind", target)


def unmount_detach(path: str) -> None:
    _check(_libc.umount2(_b(path), MNT_DETACH), "umount", path)
