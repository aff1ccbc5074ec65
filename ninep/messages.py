"""9P2000 messages, qids and stat entries as plain immutable values.

Names and fields follow the manual pages of section 5 (version(5), walk(5), ...),
so a message reads like its line in intro(5). The codec turns these into bytes
and back; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, replace
from typing import TypeVar

from .constants import (
    DMDIR,
    NOT_TOUCHED_U16,
    NOT_TOUCHED_U32,
    NOT_TOUCHED_U64,
    QTDIR,
)

_V = TypeVar("_V", bound=type)


def _quick_init(cls: _V) -> _V:
    """Give a frozen dataclass an `__init__` of the same signature that stores each field
    through its slot's descriptor. The generated one goes through object.__setattr__ for
    every field (the class's own refuses, being frozen), which takes twice as long: an
    11-field Stat, built for every stat and directory entry, costs ~3 µs that way here.
    The source is made like the dataclasses module makes its own."""
    fields = list(cls.__dataclass_fields__.values())  # type: ignore[attr-defined]
    names: dict[str, object] = {}
    params, body = [], []
    for f in fields:
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        names[f"_set_{f.name}"] = slot.__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            names[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body), names)
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    init.__annotations__ = {f.name: f.type for f in fields} | {"return": None}  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]
    return cls


@_quick_init
@dataclass(frozen=True, slots=True)
class Qid:
    """The server's unique identity of a file: type bits, version, path."""

    type: int = 0
    vers: int = 0
    path: int = 0

    @property
    def is_dir(self) -> bool:
        return bool(self.type & QTDIR)


@_quick_init
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


@_quick_init
@dataclass(frozen=True, slots=True)
class Message:
    tag: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Tversion(Message):
    msize: int
    version: str


@_quick_init
@dataclass(frozen=True, slots=True)
class Rversion(Message):
    msize: int
    version: str


@_quick_init
@dataclass(frozen=True, slots=True)
class Tauth(Message):
    afid: int
    uname: str
    aname: str


@_quick_init
@dataclass(frozen=True, slots=True)
class Rauth(Message):
    aqid: Qid


@_quick_init
@dataclass(frozen=True, slots=True)
class Tattach(Message):
    fid: int
    afid: int
    uname: str
    aname: str


@_quick_init
@dataclass(frozen=True, slots=True)
class Rattach(Message):
    qid: Qid


@_quick_init
@dataclass(frozen=True, slots=True)
class Rerror(Message):
    ename: str


@_quick_init
@dataclass(frozen=True, slots=True)
class Tflush(Message):
    oldtag: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Rflush(Message):
    pass


@_quick_init
@dataclass(frozen=True, slots=True)
class Twalk(Message):
    fid: int
    newfid: int
    wnames: tuple[str, ...]


@_quick_init
@dataclass(frozen=True, slots=True)
class Rwalk(Message):
    qids: tuple[Qid, ...]


@_quick_init
@dataclass(frozen=True, slots=True)
class Topen(Message):
    fid: int
    mode: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Ropen(Message):
    qid: Qid
    iounit: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Tcreate(Message):
    fid: int
    name: str
    perm: int
    mode: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Rcreate(Message):
    qid: Qid
    iounit: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Tread(Message):
    fid: int
    offset: int
    count: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Rread(Message):
    data: bytes


@_quick_init
@dataclass(frozen=True, slots=True)
class Twrite(Message):
    fid: int
    offset: int
    data: bytes


@_quick_init
@dataclass(frozen=True, slots=True)
class Rwrite(Message):
    count: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Tclunk(Message):
    fid: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Rclunk(Message):
    pass


@_quick_init
@dataclass(frozen=True, slots=True)
class Tremove(Message):
    fid: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Rremove(Message):
    pass


@_quick_init
@dataclass(frozen=True, slots=True)
class Tstat(Message):
    fid: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Rstat(Message):
    stat: Stat


@_quick_init
@dataclass(frozen=True, slots=True)
class Twstat(Message):
    fid: int
    stat: Stat


@_quick_init
@dataclass(frozen=True, slots=True)
class Rwstat(Message):
    pass
