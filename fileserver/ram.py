"""An in-memory file tree: the default tree of `ninefs serve`, the demo and the tests.

It behaves like a small Plan 9 file server (ramfs(4)): owners are the names
clients attach as, permissions are checked Plan 9's way (owner, group of the
same name, other), DMAPPEND and DMEXCL work, and removed files stay readable
through fids that still have them open. A byte budget turns runaway writes
into "no space left on device" instead of exhausting memory.
"""

from __future__ import annotations

import getpass
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ninep.constants import (
    DMAPPEND,
    DMDIR,
    DMEXCL,
    NOT_TOUCHED_U32,
    NOT_TOUCHED_U64,
    OACCMODE,
    OEXEC,
    ORCLOSE,
    ORDWR,
    OTRUNC,
    OWRITE,
    qid_type_for_mode,
)
from ninep.errors import (
    Exists,
    IsADirectory,
    NinePError,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
)
from ninep.messages import Qid, Stat
from ninep.tree import Tree, dir_perm, file_perm

from .pieces import Pieces

__all__ = ["RamTree"]

_READ, _WRITE, _EXEC = 4, 2, 1


@dataclass(eq=False, slots=True)
class _File:
    name: str
    mode: int
    uid: str
    gid: str
    path: int
    parent: _File | None = None
    vers: int = 0
    atime: int = 0
    mtime: int = 0
    muid: str = ""
    data: Pieces = field(default_factory=Pieces)
    children: dict[str, _File] = field(default_factory=dict)
    removed: bool = False
    exclusive_open: bool = False
    opens: int = 0  # fids open on it: a removed file keeps its bytes until the last is clunked

    @property
    def qid(self) -> Qid:
        return Qid(qid_type_for_mode(self.mode), self.vers, self.path)

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)

    def allows(self, uname: str, want: int) -> bool:
        """Plan 9 permission check; the group of a file is a user of that name."""
        perm = self.mode & 0o777
        if uname == self.uid:
            have = perm >> 6
        elif uname == self.gid:
            have = (perm >> 3) & 7
        else:
            have = perm & 7
        return have & want == want


@dataclass(eq=False, slots=True)
class _Node:
    file: _File
    uname: str
    omode: int | None = None

    @property
    def qid(self) -> Qid:
        return self.file.qid


class RamTree(Tree):
    """A fresh, empty tree in memory, owned by `owner` (default: the serving user)."""

    never_blocks = frozenset(
        {"attach", "walk", "open", "create", "read", "readdir", "write", "clunk", "remove", "stat", "wstat"}
    )

    def __init__(
        self,
        owner: str | None = None,
        *,
        root_mode: int = 0o777,
        max_bytes: int = 4 << 30,
        read_only: bool = False,
    ) -> None:
        self._paths = itertools.count(1)
        owner = owner or getpass.getuser()
        now = int(time.time())
        self.root = _File("/", DMDIR | root_mode, owner, owner, 0, atime=now, mtime=now, muid=owner)
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.read_only = read_only

    # --- helpers ------------------------------------------------------------------

    def _check(self, f: _File, uname: str, want: int) -> None:
        if not f.allows(uname, want):
            raise PermissionDenied("permission denied")

    def _check_writable(self) -> None:
        if self.read_only:
            raise NinePError("read-only file system")

    def _resize(self, f: _File, size: int) -> None:
        grow = size - len(f.data)
        if grow > 0 and self.used_bytes + grow > self.max_bytes:
            raise NinePError("no space left on device")
        f.data.truncate(size)
        self.used_bytes += grow

    def _touch(self, f: _File, uname: str) -> None:
        f.mtime = int(time.time())
        f.muid = uname
        f.vers = (f.vers + 1) & 0xFFFFFFFF

    def _stat(self, f: _File) -> Stat:
        return Stat(
            qid=f.qid,
            mode=f.mode,
            atime=f.atime,
            mtime=f.mtime,
            length=0 if f.is_dir else len(f.data),
            name=f.name,
            uid=f.uid,
            gid=f.gid,
            muid=f.muid,
        )

    # --- the tree interface ------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> _Node:
        if aname not in ("", "/"):
            raise NotFound(f"file does not exist: no tree named {aname!r}")
        return _Node(self.root, uname)

    async def clone(self, node: _Node) -> _Node:
        return _Node(node.file, node.uname)

    async def walk1(self, node: _Node, name: str) -> _Node:
        d = node.file
        if not d.is_dir:
            raise NotADirectory("walk in non-directory")
        self._check(d, node.uname, _EXEC)
        if name == "..":
            return _Node(d.parent or d, node.uname)
        if name == ".":
            return _Node(d, node.uname)
        child = d.children.get(name)
        if child is None or d.removed:
            raise NotFound("file does not exist")
        return _Node(child, node.uname)

    def _open_check(self, f: _File, uname: str, mode: int) -> None:
        acc = mode & OACCMODE
        want = {0: _READ, OWRITE: _WRITE, ORDWR: _READ | _WRITE, OEXEC: _EXEC}[acc]
        if mode & OTRUNC:
            want |= _WRITE
        if want & _WRITE or mode & ORCLOSE:
            self._check_writable()
        self._check(f, uname, want)
        if mode & ORCLOSE and f.parent is not None:
            self._check(f.parent, uname, _WRITE)
        if f.mode & DMEXCL:
            if f.exclusive_open:
                raise NinePError("file in use: exclusive-use file already open")
            f.exclusive_open = True

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        f = node.file
        self._open_check(f, node.uname, mode)
        node.omode = mode
        f.opens += 1
        if mode & OTRUNC and not f.is_dir and not f.mode & DMAPPEND:
            self._resize(f, 0)
            self._touch(f, node.uname)
        f.atime = int(time.time())
        return f.qid, 0

    async def create(self, node: _Node, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        d = node.file
        if not d.is_dir:
            raise NotADirectory("not a directory")
        self._check_writable()
        self._check(d, node.uname, _WRITE)
        if d.removed:
            raise NotFound("file does not exist: directory was removed")
        if name in d.children:
            raise Exists("file already exists")
        if perm & DMDIR:
            if mode & OACCMODE not in (0, OEXEC) or mode & (OTRUNC | ORCLOSE):
                raise IsADirectory("is a directory: cannot create a directory open for writing")
            fmode = dir_perm(perm, d.mode) | (perm & (DMAPPEND | DMEXCL) & 0)
        else:
            fmode = file_perm(perm, d.mode) & (0o777 | DMAPPEND | DMEXCL)
        now = int(time.time())
        f = _File(
            name,
            fmode,
            node.uname,
            d.gid,
            next(self._paths),
            parent=d,
            vers=1,  # never 0: an empty file with qid.vers 0 reads as a stream (docs/mount.md)
            atime=now,
            mtime=now,
            muid=node.uname,
            opens=1,
        )
        d.children[name] = f
        self._touch(d, node.uname)
        if f.mode & DMEXCL:
            f.exclusive_open = True
        node.file = f
        node.omode = mode
        return f.qid, 0

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        f = node.file
        if f.is_dir:
            raise IsADirectory("is a directory")
        return f.data.read(offset, count)  # type: ignore[return-value]  # often a view: no copy

    async def readdir(self, node: _Node) -> Sequence[Stat]:
        return [self._stat(c) for c in node.file.children.values()]

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        f = node.file
        self._check_writable()
        if f.mode & DMAPPEND:  # open(5): append-only files ignore the offset
            offset = len(f.data)
        grow = offset + len(data) - len(f.data) if data else 0
        if grow > 0 and self.used_bytes + grow > self.max_bytes:
            raise NinePError("no space left on device")
        f.data.write(offset, data)
        self.used_bytes += max(grow, 0)
        self._touch(f, node.uname)
        return len(data)

    async def stat(self, node: _Node) -> Stat:
        return self._stat(node.file)

    async def wstat(self, node: _Node, st: Stat) -> None:
        f = node.file
        uname = node.uname
        name_set = st.name != ""
        length_set = st.length != NOT_TOUCHED_U64
        mode_set = st.mode != NOT_TOUCHED_U32
        mtime_set = st.mtime != NOT_TOUCHED_U32
        gid_set = st.gid != ""
        atime_set = st.atime != NOT_TOUCHED_U32  # ours, past wstat(5) (docs/mount.md)
        uid_set = st.uid != "" and st.uid != f.uid
        if not (name_set or length_set or mode_set or mtime_set or gid_set or atime_set or uid_set):
            return  # stat(5): a null wstat asks to sync; memory is as synced as it gets
        self._check_writable()
        if uid_set:  # stat(5): the owner cannot change (a RAM tree has no root to do it)
            raise PermissionDenied("permission denied: cannot change a file's owner")
        # Check everything first: stat(5) wants all changes or none.
        if name_set and st.name != f.name:
            if f.parent is None:
                raise PermissionDenied("permission denied: cannot rename the root")
            if "/" in st.name or st.name in (".", ".."):
                raise NinePError(f"invalid name {st.name!r}")
            self._check(f.parent, uname, _WRITE)
            if st.name in f.parent.children:
                raise Exists("file already exists")
        if length_set:
            if f.is_dir and st.length != 0:
                raise IsADirectory("is a directory: cannot set a directory's length")
            self._check(f, uname, _WRITE)
            if st.length > len(f.data) and self.used_bytes + st.length - len(f.data) > self.max_bytes:
                raise NinePError("no space left on device")
        if mode_set:
            if (st.mode & DMDIR) != (f.mode & DMDIR):
                raise PermissionDenied("permission denied: cannot change the DMDIR bit")
            if uname != f.uid:
                raise PermissionDenied("permission denied: not the owner")
        if (mtime_set or gid_set or atime_set) and uname != f.uid:
            raise PermissionDenied("permission denied: not the owner")
        # Apply.
        if name_set and st.name != f.name and f.parent is not None:
            parent = f.parent
            parent.children = {(st.name if k == f.name else k): v for k, v in parent.children.items()}
            f.name = st.name
            self._touch(parent, uname)
        if length_set and not f.is_dir:
            self._resize(f, st.length)
            self._touch(f, uname)
        if mode_set:
            f.mode = (f.mode & DMDIR) | (st.mode & (0o777 | DMAPPEND | DMEXCL))
            f.vers = (f.vers + 1) & 0xFFFFFFFF
        if mtime_set:
            f.mtime = st.mtime
        if atime_set:
            f.atime = st.atime
        if gid_set:
            f.gid = st.gid

    async def remove(self, node: _Node) -> None:
        f = node.file
        try:
            if f.parent is None:
                raise PermissionDenied("permission denied: cannot remove the root")
            self._check_writable()
            self._check(f.parent, node.uname, _WRITE)
            if f.children:
                raise NotEmpty("directory not empty")
            if f.parent.children.get(f.name) is f:
                del f.parent.children[f.name]
                self._touch(f.parent, node.uname)
            f.removed = True
            if not f.opens:
                self._free(f)
        finally:
            await self.clunk(node)

    def _free(self, f: _File) -> None:
        self.used_bytes -= len(f.data)
        f.data = Pieces()

    async def clunk(self, node: _Node) -> None:
        f = node.file
        if node.omode is not None:
            if f.mode & DMEXCL:
                f.exclusive_open = False
            f.opens -= 1
            if f.removed and not f.opens:
                self._free(f)  # remove(5) took the name; the last open fid takes the bytes
        node.omode = None
