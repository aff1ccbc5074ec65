"""What each FUSE request asks, as a value per opcode (fusecodec.parse makes them).

As fuser's request.rs: the file system above the session reads fields, never bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fuseabi import SetattrIn


@dataclass(frozen=True, slots=True)
class Lookup:
    name: bytes


@dataclass(frozen=True, slots=True)
class Forget:
    nlookup: int


@dataclass(frozen=True, slots=True)
class BatchForget:
    items: list[tuple[int, int]]  # (nodeid, nlookup)


@dataclass(frozen=True, slots=True)
class Getattr:
    fh: int | None  # the open file it is asked through (fstat), if any


@dataclass(frozen=True, slots=True)
class Setattr:
    changes: SetattrIn


@dataclass(frozen=True, slots=True)
class Mknod:
    name: bytes
    mode: int
    rdev: int
    umask: int


@dataclass(frozen=True, slots=True)
class Mkdir:
    name: bytes
    mode: int
    umask: int


@dataclass(frozen=True, slots=True)
class Unlink:
    name: bytes


@dataclass(frozen=True, slots=True)
class Rmdir:
    name: bytes


@dataclass(frozen=True, slots=True)
class Rename:
    newdir: int
    old: bytes
    new: bytes
    flags: int


@dataclass(frozen=True, slots=True)
class Symlink:
    name: bytes
    target: bytes


@dataclass(frozen=True, slots=True)
class Link:
    oldnodeid: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Open:
    flags: int


@dataclass(frozen=True, slots=True)
class Read:
    fh: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Write:
    fh: int
    offset: int
    data: bytes
    write_flags: int


@dataclass(frozen=True, slots=True)
class Release:
    fh: int
    flags: int


@dataclass(frozen=True, slots=True)
class Flush:
    fh: int


@dataclass(frozen=True, slots=True)
class Fsync:
    fh: int
    datasync: bool


@dataclass(frozen=True, slots=True)
class Readdir:
    fh: int
    offset: int
    size: int
    plus: bool


@dataclass(frozen=True, slots=True)
class Access:
    mask: int


@dataclass(frozen=True, slots=True)
class Create:
    name: bytes
    flags: int
    mode: int
    umask: int


@dataclass(frozen=True, slots=True)
class Interrupt:
    unique: int


@dataclass(frozen=True, slots=True)
class Init:
    major: int
    minor: int
    max_readahead: int
    flags: int


@dataclass(frozen=True, slots=True)
class Xattr:
    name: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Bare:
    """A request whose body the mount does not read (STATFS, DESTROY, READLINK, the rest)."""


BARE = Bare()


@dataclass(frozen=True, slots=True)
class Request:
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    args: Any

    @property
    def umask(self) -> int:
        """The caller's umask, for the requests that carry one (create, mkdir, mknod)."""
        return getattr(self.args, "umask", 0)
