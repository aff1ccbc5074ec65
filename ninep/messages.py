"""9P2000 messages, qids and stat entries as plain immutable values.

Names and fields follow the manual pages of section 5 (version(5), walk(5), ...),
so a message reads like its line in intro(5). The codec turns these into bytes
and back; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError, dataclass, replace
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

from .constants import (
    DMDIR,
    NOT_TOUCHED_U16,
    NOT_TOUCHED_U32,
    NOT_TOUCHED_U64,
    QTDIR,
)

_V = TypeVar("_V", bound=type)


class _Value:
    """What @dataclass(frozen=True) writes for each class, written once here instead of
    compiled anew for each of the 30 classes below (equality, hash, repr, and refusing
    assignment: FrozenInstanceError, as a frozen dataclass's): every process that speaks 9P
    imports this module, and compiling ~200 small functions made it ~25 ms of
    `ninefs cpu HOST -- true`'s start-up (issue #19)."""

    __slots__ = ()
    _values: Callable[[Any], Any]  # attrgetter of the fields, set by _value

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(self._values(self) == self._values(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values(self))

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__dataclass_fields__)  # type: ignore[attr-defined]
        return f"{self.__class__.__qualname__}({values})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    # pickle and copy restore the slots as a frozen dataclass's do: around __setattr__
    def __getstate__(self) -> list[object]:
        return [getattr(self, name) for name in self.__dataclass_fields__]  # type: ignore[attr-defined]

    def __setstate__(self, state: list[object]) -> None:
        for name, value in zip(self.__dataclass_fields__, state, strict=True):  # type: ignore[attr-defined]
            object.__setattr__(self, name, value)


@dataclass_transform(frozen_default=True)
def _value(cls: _V) -> _V:
    """A dataclass with slots, frozen by _Value, whose `__init__` (of the same signature)
    stores each field through its slot's descriptor. The generated one goes through
    object.__setattr__ for every field (the class's own refuses, being frozen), which
    takes twice as long: an 11-field Stat, built for every stat and directory entry, costs
    ~3 µs that way here. The source is made like the dataclasses module makes its own."""
    cls = dataclass(slots=True, init=False, repr=False, eq=False)(cls)  # type: ignore[assignment]
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
    cls._values = attrgetter(*(f.name for f in fields))  # type: ignore[attr-defined]
    return cls


@_value
class Qid(_Value):
    """The server's unique identity of a file: type bits, version, path."""

    type: int = 0
    vers: int = 0
    path: int = 0

    @property
    def is_dir(self) -> bool:
        return bool(self.type & QTDIR)


@_value
class Stat(_Value):
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


@_value
class Message(_Value):
    """A 9P2000 message: each carries the tag its reply answers to (intro(5))."""

    tag: int


@_value
class Tversion(Message):
    """version(5): the largest message the client will send or receive, and its protocol."""

    msize: int
    version: str


@_value
class Rversion(Message):
    """version(5): the server's msize (at most the client's) and protocol, or "unknown"."""

    msize: int
    version: str


@_value
class Tauth(Message):
    """attach(5): an auth fid, afid, on which to prove who uname is before attaching to aname."""

    afid: int
    uname: str
    aname: str


@_value
class Rauth(Message):
    """attach(5): the qid of the auth file; reading and writing afid authenticates."""

    aqid: Qid


@_value
class Tattach(Message):
    """attach(5): fid becomes the root of aname for uname (afid: the proof, or NOFID)."""

    fid: int
    afid: int
    uname: str
    aname: str


@_value
class Rattach(Message):
    """attach(5): the qid of the root."""

    qid: Qid


@_value
class Rerror(Message):
    """error(5): the request failed, for the reason ename."""

    ename: str


@_value
class Tflush(Message):
    """flush(5): abort the request whose tag is oldtag."""

    oldtag: int


@_value
class Rflush(Message):
    """flush(5): oldtag is answered or abandoned; its tag may be used again."""


@_value
class Twalk(Message):
    """walk(5): newfid is fid walked through wnames (at most 16)."""

    fid: int
    newfid: int
    wnames: tuple[str, ...]


@_value
class Rwalk(Message):
    """walk(5): a qid per name walked; fewer than asked is a partial walk, newfid unset."""

    qids: tuple[Qid, ...]


@_value
class Topen(Message):
    """open(5): open fid with mode (OREAD, OWRITE, ORDWR or OEXEC; OTRUNC, ORCLOSE)."""

    fid: int
    mode: int


@_value
class Ropen(Message):
    """open(5): the file's qid and iounit, the most one read or write moves (0: msize-24)."""

    qid: Qid
    iounit: int


@_value
class Tcreate(Message):
    """open(5): create name in the directory fid with perm and open it; fid becomes it."""

    fid: int
    name: str
    perm: int
    mode: int


@_value
class Rcreate(Message):
    """open(5): the new file's qid and iounit."""

    qid: Qid
    iounit: int


@_value
class Tread(Message):
    """read(5): up to count bytes of fid at offset."""

    fid: int
    offset: int
    count: int


@_value
class Rread(Message):
    """read(5): the bytes read; none at the end of the file."""

    data: bytes


@_value
class Twrite(Message):
    """read(5): write data to fid at offset."""

    fid: int
    offset: int
    data: bytes


@_value
class Rwrite(Message):
    """read(5): how many bytes were written."""

    count: int


@_value
class Tclunk(Message):
    """clunk(5): forget fid."""

    fid: int


@_value
class Rclunk(Message):
    """clunk(5): fid is forgotten."""


@_value
class Tremove(Message):
    """remove(5): remove the file of fid, and clunk fid (even if the remove fails)."""

    fid: int


@_value
class Rremove(Message):
    """remove(5): removed."""


@_value
class Tstat(Message):
    """stat(5): the directory entry of fid."""

    fid: int


@_value
class Rstat(Message):
    """stat(5): the entry."""

    stat: Stat


@_value
class Twstat(Message):
    """stat(5): change fid's entry; fields all ones or empty are left alone (Stat.dont_touch)."""

    fid: int
    stat: Stat


@_value
class Rwstat(Message):
    """stat(5): changed."""
