"""The FUSE kernel protocol's layouts and the values a file system above it sees.

What linux/fuse.h (include/uapi/linux/fuse.h, protocol 7.x) defines, as struct
formats and constants, and the plain values the session hands the file system
and takes back from it: attributes, open replies, statfs, setattr changes, the
caller. Nothing here does I/O; fusecodec.py turns bytes into requests and
replies into bytes with these, and fusesession.py is the only place that reads
and writes /dev/fuse (as fuser splits fuse_abi.rs, request.rs and reply.rs).
"""

from __future__ import annotations

import enum
import struct
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Attr",
    "Context",
    "FileInfo",
    "FuseError",
    "Op",
    "SetattrIn",
    "StatvfsData",
]

KERNEL_MAJOR = 7
KERNEL_MINOR = 38  # the layouts below are those of 7.38; the kernel's own minor, if lower, is used
MIN_MINOR = 12  # entry_out and attr_out at their full sizes since 7.9, init_out's max_write since 7.5
ROOT_ID = 1


class Op(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52  # 7.41; answered ENOSYS, and the kernel falls back to GETATTR


OP_NAMES = {op.value: op.name for op in Op}


class Notify(enum.IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


# setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5

# init flags
FUSE_ASYNC_READ = 1 << 0
FUSE_POSIX_LOCKS = 1 << 1
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_EXPORT_SUPPORT = 1 << 4
FUSE_BIG_WRITES = 1 << 5
FUSE_DONT_MASK = 1 << 6
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_READDIRPLUS_AUTO = 1 << 14
FUSE_ASYNC_DIO = 1 << 15
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_HANDLE_KILLPRIV = 1 << 19
FUSE_ABORT_ERROR = 1 << 21
FUSE_MAX_PAGES = 1 << 22
FUSE_INIT_EXT = 1 << 30

FUSE_GETATTR_FH = 1 << 0
FUSE_FSYNC_FDATASYNC = 1 << 0
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

# Layouts: little-endian, as the kernel on every architecture ninefs runs on (x86-64, arm64).
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct(
    "<QQQQQQIIIIIIIIII"
)  # ino size blocks a/m/ctime a/m/ctimensec mode nlink uid gid rdev blksize flags
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_nsec attr_nsec; + ATTR
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy; + ATTR
ENTRY_AND_ATTR = struct.Struct("<" + ENTRY_OUT.format[1:] + ATTR.format[1:])  # fuse_entry_out, whole
OPEN_OUT = struct.Struct("<QII")  # fh open_flags padding
WRITE_OUT = struct.Struct("<II")  # size padding
KSTATFS = struct.Struct(
    "<QQQQQIIII24x"
)  # blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (+ flags2 unused[11] since 7.36)
INIT_OUT = struct.Struct(
    "<IIIIHHIIHHI28x"
)  # ... max_background congestion max_write time_gran max_pages map_alignment flags2
FORGET_IN = struct.Struct("<Q")  # nlookup
FORGET_ONE = struct.Struct("<QQ")  # nodeid nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count dummy
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags dummy fh
SETATTR_IN = struct.Struct(
    "<IIQQQQQQIIIIIIII"
)  # valid padding fh size lock_owner a/m/ctime nsec mode unused uid gid unused
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")  # mode umask
RENAME_IN = struct.Struct("<Q")  # newdir
RENAME2_IN = struct.Struct("<QII")  # newdir flags padding
OPEN_IN = struct.Struct("<II")  # flags open_flags
CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags
RELEASE_IN = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")  # fh unused padding lock_owner
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
FSYNC_IN = struct.Struct("<QII")  # fh fsync_flags padding
GETXATTR_IN = struct.Struct("<II")  # size padding
ACCESS_IN = struct.Struct("<II")  # mask padding
INTERRUPT_IN = struct.Struct("<Q")  # unique
DIRENT = struct.Struct("<QQII")  # ino off namelen type; + name, padded to 8
DIRENTPLUS = struct.Struct("<" + ENTRY_OUT.format[1:] + ATTR.format[1:] + DIRENT.format[1:])  # + name
NOTIFY_INVAL_INODE = struct.Struct("<Qqq")  # ino off len
NOTIFY_INVAL_ENTRY = struct.Struct("<QII")  # parent namelen flags; + name NUL
NOTIFY_DELETE = struct.Struct("<QQII")  # parent child namelen padding; + name NUL
NOTIFY_STORE = struct.Struct("<QQII")  # ino offset size padding; + the bytes

# The write-in header the kernel sent before 7.9 was shorter; we refuse those kernels (MIN_MINOR).
COMPAT_WRITE_IN_SIZE = 24


class FuseError(Exception):
    """An operation's answer is this errno (the reply's error field, negated)."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno

    def __str__(self) -> str:
        import os

        return os.strerror(self.errno)


@dataclass(slots=True)
class Attr:
    """A file's attributes and how long the kernel may keep them (fuse_entry_out, fuse_attr).

    Named as struct stat's fields; st_ino 0 in a lookup's answer means "no such
    file, and the kernel may remember that for entry_timeout" (a negative entry)."""

    st_ino: int = 0
    generation: int = 0
    entry_timeout: float = 0.0
    attr_timeout: float = 0.0
    st_mode: int = 0
    st_nlink: int = 0
    st_uid: int = 0
    st_gid: int = 0
    st_rdev: int = 0
    st_size: int = 0
    st_blksize: int = 4096
    st_blocks: int = 0
    st_atime_ns: int = 0
    st_mtime_ns: int = 0
    st_ctime_ns: int = 0


@dataclass(slots=True)
class FileInfo:
    """An open's answer: our handle number and how the kernel is to treat the open file."""

    fh: int
    direct_io: bool = False  # reads and writes go to us as they come, past the page cache
    keep_cache: bool = False  # the pages the kernel has of the file are still good
    nonseekable: bool = False
    noflush: bool = False  # nothing written through this open: no FLUSH at close
    cache_dir: bool = False  # a directory: the kernel may keep what readdir gave it

    @property
    def open_flags(self) -> int:
        return (
            (FOPEN_DIRECT_IO if self.direct_io else 0)
            | (FOPEN_KEEP_CACHE if self.keep_cache else 0)
            | (FOPEN_NONSEEKABLE if self.nonseekable else 0)
            | (FOPEN_NOFLUSH if self.noflush else 0)
            | (FOPEN_CACHE_DIR if self.cache_dir else 0)
        )


@dataclass(slots=True)
class StatvfsData:
    f_bsize: int = 4096
    f_frsize: int = 4096
    f_blocks: int = 0
    f_bfree: int = 0
    f_bavail: int = 0
    f_files: int = 0
    f_ffree: int = 0
    f_favail: int = 0
    f_namemax: int = 255


class Context(Protocol):
    """Who asked: the calling process's fsuid, fsgid and pid (fuse_in_header), and its umask
    where the request carries one. The session passes the request itself (fuseargs.Request)."""

    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def umask(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SetattrIn:
    """What a SETATTR asks to change (fuse_setattr_in): a field counts only if its bit is set."""

    valid: int
    fh: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_mode: int
    st_uid: int
    st_gid: int

    @property
    def update_size(self) -> bool:
        return bool(self.valid & FATTR_SIZE)

    @property
    def update_mode(self) -> bool:
        return bool(self.valid & FATTR_MODE)

    @property
    def update_uid(self) -> bool:
        return bool(self.valid & FATTR_UID)

    @property
    def update_gid(self) -> bool:
        return bool(self.valid & FATTR_GID)

    @property
    def update_atime(self) -> bool:
        return bool(self.valid & (FATTR_ATIME | FATTR_ATIME_NOW))

    @property
    def update_mtime(self) -> bool:
        return bool(self.valid & (FATTR_MTIME | FATTR_MTIME_NOW))

    @property
    def has_fh(self) -> bool:
        return bool(self.valid & FATTR_FH)

    @staticmethod
    def times(valid: int, atime: int, atimensec: int, mtime: int, mtimensec: int) -> tuple[int, int]:
        """The times asked, in ns: "now" (utimensat's UTIME_NOW) is the clock's now."""
        now = time.time_ns()
        a = now if valid & FATTR_ATIME_NOW else atime * 1_000_000_000 + atimensec
        m = now if valid & FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtimensec
        return a, m
