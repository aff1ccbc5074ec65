"""The few Linux system calls a per-process namespace needs: unshare, mount, open_tree.

Python 3.11 has neither `os.unshare` nor `mount`, so they come from libc
through ctypes (open_tree and move_mount, Linux 5.2, through syscall(2): their
numbers are the same on every architecture). Nothing else in the project
touches the kernel's mount table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

__all__ = [
    "attach_tree",
    "bind_mount",
    "clone_tree",
    "die_with_parent",
    "make_rprivate",
    "mount_tmpfs",
    "move_mount",
    "rbind",
    "unmount_detach",
    "unshare_mount_namespace",
]

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
SYS_OPEN_TREE = 428  # include/uapi/asm-generic/unistd.h: the same number on every architecture
SYS_MOVE_MOUNT = 429
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


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


def mount_tmpfs(path: str, options: str = "mode=0700") -> None:
    _check(_libc.mount(b"tmpfs", _b(path), b"tmpfs", 0, _b(options)), "mount tmpfs", path)


def move_mount(source: str, target: str) -> None:
    """Move the mount at `source` (and everything on it) to `target`."""
    _check(_libc.mount(_b(source), _b(target), None, MS_MOVE, None), "move mount", target)


def clone_tree(path: str) -> int:
    """A detached copy of the mounts at and below `path` (open_tree(2), OPEN_TREE_CLONE):
    an fd that nothing mounted on `path` later changes; attach it with `attach_tree`."""
    flags = OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPEN_TREE), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(_b(path)), ctypes.c_long(flags)
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree: {os.strerror(err)}", path)
    return int(fd)


def attach_tree(fd: int, target: str) -> None:
    """Mount a tree from `clone_tree` on `target` (move_mount(2)); `fd` may be closed after."""
    result = _libc.syscall(
        ctypes.c_long(SYS_MOVE_MOUNT),
        ctypes.c_long(fd),
        ctypes.c_char_p(b""),
        ctypes.c_long(AT_FDCWD),
        ctypes.c_char_p(_b(target)),
        ctypes.c_long(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(0 if result == 0 else -1, "move_mount", target)


def die_with_parent(parent: int) -> None:
    """In a child: be killed (SIGKILL) when the process that started us exits, however it ends.

    `parent` is its pid: if it died before the request took hold, die now."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def rbind(source: str, target: str) -> None:
    _check(_libc.mount(_b(source), _b(target), None, MS_BIND | MS_REC, None), "rbind", target)


def copy_entry(entry: os.DirEntry, source: str, target: str) -> None:
    """An entry of a directory being covered by a tmpfs, made again at `target` as it was:
    a symlink copied (with its owner), anything else an empty file or directory with
    `source` (the entry's path) bound onto it. FileNotFoundError: it went away meanwhile."""
    if entry.is_symlink():
        os.symlink(os.readlink(source), target)
        st = entry.stat(follow_symlinks=False)
        os.lchown(target, st.st_uid, st.st_gid)
        return
    if entry.is_dir(follow_symlinks=False):
        os.mkdir(target)
    else:
        open(target, "x").close()
    rbind(source, target)


def bind_mount(source: str, target: str) -> None:
    _check(_libc.mount(_b(source), _b(target), None, MS_BIND, None), "bind", target)


def unmount_detach(path: str) -> None:
    _check(_libc.umount2(_b(path), MNT_DETACH), "umount", path)
