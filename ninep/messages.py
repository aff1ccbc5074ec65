"""9P2000 messages, qids and stat entries as plain immutable values.

Names and fields follow the manual pages of section 5 (version(5), walk(5), ...),
so a message reads like its line in intro(5). The codec turns these into bytes
and back; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .constants import (
    DMDIR,
    NOT_TOUCHED_U16,
    NOT_TOUCHED_U32,
    NOT_TOUCHED_U64,
    QTDIR,
)


@dataclass(frozen=True, slots=True)
class Qid:
    """The server's unique identity of a file: type bits, version, path."""

    type: int = 0
    vers: int = 0
    path: int = 0

    @property
    def is_dir(self) -> bool:
        return bool(self.type & QTDIR)


@dataclass(frozen=True, slots=True)
class Stat:
    """A directory entry (stat(5)). In a Twstat, all-ones / empty means "don't touch"."""

    type: int = 0
    dev: int = 0
    qid: Qid = Qid()
    mode: int = 0
    atime: int = 0
    mtime: int = 0
    length: int = 0
    name: str = ""
    uid: str = ""
    gid: str = ""
    muid: str = ""

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)

    @classmethod
    def dont_touch(cls, **changes: object) -> Stat:
        """A Twstat entry that changes only the given fields (stat(5))."""
        blank = cls(
            type=NOT_TOUCHED_U16,
            dev=NOT_TOUCHED_U32,
            qid=Qid(0xFF, NOT_TOUCHED_U32, NOT_TOUCHED_U64),
            mode=NOT_TOUCHED_U32,
            atime=NOT_TOUCHED_U32,
            mtime=NOT_TOUCHED_U32,
            length=NOT_TOUCHED_U64,
        )
        return replace(blank, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Message:
    tag: int


@dataclass(frozen=True, slots=True)
class Tversion(Message):
    msize: int
    version: str


@dataclass(frozen=True, slots=True)
class Rversion(Message):
    msize: int
    version: str


@dataclass(frozen=True, slots=True)
class Tauth(Message):
    afid: int
    uname: str
    aname: str


@dataclass(frozen=True, slots=True)
class Rauth(Message):
    aqid: Qid


@dataclass(frozen=True, slots=True)
class Tattach(Message):
    fid: int
    afid: int
    uname: str
    aname: str


@dataclass(frozen=True, slots=True)
class Rattach(Message):
    qid: Qid


@dataclass(frozen=True, slots=True)
class Rerror(Message):
    ename: str


@dataclass(frozen=True, slots=True)
class Tflush(Message):
    oldtag: int


@dataclass(frozen=True, slots=True)
class Rflush(Message):
    pass


@dataclass(frozen=True, slots=True)
class Twalk(Message):
    fid: int
    newfid: int
    wnames: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rwalk(Message):
    qids: tuple[Qid, ...]


@dataclass(frozen=True, slots=True)
class Topen(Message):
    fid: int
    mode: int


@dataclass(frozen=True, slots=True)
class Ropen(Message):
    qid: Qid
    iounit: int


@dataclass(frozen=True, slots=True)
class Tcreate(Message):
    fid: int
    name: str
    perm: int
    mode: int


@dataclass(frozen=True, slots=True)
class Rcreate(Message):
    qid: Qid
    iounit: int


@dataclass(frozen=True, slots=True)
class Tread(Message):
    fid: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Rread(Message):
    data: bytes


@dataclass(frozen=True, slots=True)
class Twrite(Message):
    fid: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Rwrite(Message):
    count: int


@dataclass(frozen=True, slots=True)
class Tclunk(Message):
    fid: int


@dataclass(frozen=True, slots=True)
class Rclunk(Message):
    pass


@dataclass(frozen=True, slots=True)
class Tremove(Message):
    fid: int


@dataclass(frozen=True, slots=True)
class Rremove(Message):
    pass


@dataclass(frozen=True, slots=True)
class Tstat(Message):
    fid: int


@dataclass(frozen=True, slots=True)
class Rstat(Message):
    stat: Stat


@dataclass(frozen=True, slots=True)
class Twstat(Message):
    fid: int
    stat: Stat


@dataclass(frozen=True, slots=True)
class Rwstat(Message):
    pass
