"""How the server answers each 9P request on a connection's fids.

The per-message rules of intro(5) and the pages after it (walk(5), open(5), read(5),
stat(5) ...) and the per-connection limits on them (ninep/limits.py), over the fid
table of one connection. `Session` (session.py) is this class plus the loop that reads
requests, runs them and sends the answers; this part never touches the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from . import codec
from .auth import AuthSession
from .constants import (
    DMAUTH,
    IOHDRSZ,
    MAXWELEM,
    NOFID,
    OACCMODE,
    OEXEC,
    ORCLOSE,
    ORDWR,
    OREAD,
    OTRUNC,
    OWRITE,
    VERSION,
)
from .errors import NinePError
from .limits import Limits, Slot
from .messages import (
    Message,
    Rattach,
    Rauth,
    Rclunk,
    Rcreate,
    Ropen,
    Rread,
    Rremove,
    Rstat,
    Rwalk,
    Rwrite,
    Rwstat,
    Stat,
    Tattach,
    Tauth,
    Tclunk,
    Tcreate,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Twalk,
    Twrite,
    Twstat,
)
from .transport import FrameReader
from .tree import Tree, check_name

__all__ = ["Answers"]

MAX_OFFSET = (1 << 63) - 1  # offsets past this are no file position on the host (off_t)


class _Error(Exception):
    """A request the server itself refuses (not the tree): becomes Rerror."""


@dataclass(slots=True)
class _Fid:
    node: Any
    uname: str
    omode: int | None = None  # None: not open
    is_dir: bool = False
    # directory reads (read(5)): the encoded entries, and where the next read must start
    dir_entries: list[bytes] = field(default_factory=list)
    dir_index: int = 0
    dir_offset: int = 0
    dir_bytes: int = 0  # of dir_entries, counted in the connection's listing_bytes
    auth: AuthSession | None = None  # an afid (attach(5)): reads and writes run the exchange


class Answers:
    """The T-message handlers over one connection's fids (the base of Session)."""

    server: Any  # the Server: its tree, authenticator and TLS context
    tree: Tree
    stream: trio.abc.Stream
    limits: Limits
    msize: int
    attached: bool
    slot: Slot | None
    reader: FrameReader
    fids: dict[int, _Fid]
    listing_bytes: int

    async def auth(self, m: Tauth) -> Message:
        if self.server.auth is None:
            raise _Error("authentication not required")
        self._check_names(m.uname, m.aname)
        self._new_fid_check(m.afid)
        if sum(1 for f in self.fids.values() if f.auth is not None) >= self.limits.auth_fids:
            raise _Error(f"too many fids: at most {self.limits.auth_fids} authentication fids at once")
        tls = isinstance(self.stream, trio.SSLStream)
        binding = getattr(self.server.tls, "ninefs_binding", b"") if tls else b""
        session = self.server.auth.start(m.uname, m.aname, binding)
        self.fids[m.afid] = _Fid(None, m.uname, omode=ORDWR, auth=session)
        return Rauth(m.tag, session.qid)

    def _fid(self, fid: int, *, auth_ok: bool = False) -> _Fid:
        try:
            f = self.fids[fid]
        except KeyError:
            raise _Error("fid unknown or out of range") from None
        if f.auth is not None and not auth_ok:
            raise _Error("bad use of fid: an authentication fid")
        return f

    def _new_fid_check(self, fid: int) -> None:
        if fid == NOFID:
            raise _Error("fid unknown or out of range")
        if fid in self.fids:
            raise _Error("fid already in use")
        if len(self.fids) >= self.limits.fids:
            raise _Error(f"too many fids (at most {self.limits.fids} per connection)")

    def _check_names(self, uname: str, aname: str) -> None:
        if len(uname.encode()) > self.limits.uname_bytes:
            raise _Error(f"invalid argument: uname longer than {self.limits.uname_bytes} bytes")
        if len(aname.encode()) > self.limits.aname_bytes:
            raise _Error(f"invalid argument: aname longer than {self.limits.aname_bytes} bytes")

    def _check_name(self, name: str) -> None:
        if len(name.encode()) > self.limits.name_bytes:
            raise _Error(f"file name too long: {len(name.encode())} bytes (at most {self.limits.name_bytes})")

    async def attach(self, m: Tattach) -> Message:
        self._check_names(m.uname, m.aname)
        self._new_fid_check(m.fid)
        uname = m.uname
        if self.server.auth is None:
            if m.afid != NOFID:
                raise _Error("authentication not required")
        else:
            if m.afid == NOFID:
                raise _Error("authentication required: Tauth first (ninefs key gen; --key)")
            session = self._fid(m.afid, auth_ok=True).auth
            if session is None or session.user is None:
                raise _Error("authentication failed: afid not authenticated")
            if (session.uname, session.aname) != (m.uname, m.aname):
                raise _Error("authentication failed: afid was for another uname or aname")
            uname = session.user
        node = await self.tree.attach(uname, m.aname)
        self._new_fid_check(m.fid)  # another request may have taken it meanwhile
        self.fids[m.fid] = _Fid(node, uname, is_dir=node.qid.is_dir)
        if not self.attached:  # the handshake is done: full-size frames from now on
            self.attached = True
            self.reader.msize = self.msize
            if self.slot is not None:
                self.slot.handshake_done()
        return Rattach(m.tag, node.qid)

    async def walk(self, m: Twalk) -> Message:
        f = self._fid(m.fid)
        if f.omode is not None:
            raise _Error("cannot walk an open fid")
        if m.newfid != m.fid:
            self._new_fid_check(m.newfid)
        if len(m.wnames) > MAXWELEM:
            raise _Error(f"too many names in walk ({len(m.wnames)} > {MAXWELEM})")
        for name in m.wnames:
            if not name or "/" in name:
                raise _Error(f"file does not exist: bad name {name!r}")
            self._check_name(name)
        qids, node = await self.tree.walk(f.node, m.wnames)
        if node is None:  # walk(5): partial walk, newfid not created, fid not moved
            return Rwalk(m.tag, tuple(qids))
        if m.newfid == m.fid:
            if self.fids.get(m.fid) is f:
                self.fids[m.fid] = _Fid(node, f.uname, is_dir=node.qid.is_dir)
                await self.tree.clunk(f.node)
            else:  # clunked while we walked
                await self.tree.clunk(node)
                raise _Error("fid unknown or out of range")
        else:
            if m.newfid in self.fids:
                await self.tree.clunk(node)
                raise _Error("fid already in use")
            self.fids[m.newfid] = _Fid(node, f.uname, is_dir=node.qid.is_dir)
        return Rwalk(m.tag, tuple(qids))

    def _iounit(self, iounit: int) -> int:
        limit = self.msize - IOHDRSZ
        return limit if iounit <= 0 or iounit > limit else iounit

    async def open(self, m: Topen) -> Message:
        f = self._fid(m.fid)
        if f.omode is not None:
            raise _Error("file already open")
        if m.mode & ~(OACCMODE | OTRUNC | ORCLOSE):
            raise _Error(f"invalid open mode {m.mode:#x}")
        if f.is_dir and (m.mode & OACCMODE not in (OREAD, OEXEC) or m.mode & (OTRUNC | ORCLOSE)):
            raise _Error("is a directory")
        f.omode = m.mode  # claim it before awaiting, so two Topens cannot both succeed
        try:
            qid, iounit = await self.tree.open(f.node, m.mode)
        except BaseException:
            f.omode = None
            raise
        f.is_dir = qid.is_dir
        return Ropen(m.tag, qid, self._iounit(iounit))

    async def create(self, m: Tcreate) -> Message:
        f = self._fid(m.fid)
        if f.omode is not None:
            raise _Error("file already open")
        if not f.is_dir:
            raise _Error("not a directory")
        self._check_name(m.name)
        try:
            check_name(m.name)
        except NinePError as e:
            raise _Error(f"create prohibited: {e.ename}") from None
        if m.mode & ~(OACCMODE | OTRUNC | ORCLOSE):
            raise _Error(f"invalid open mode {m.mode:#x}")
        f.omode = m.mode
        try:
            qid, iounit = await self.tree.create(f.node, m.name, m.perm, m.mode)
        except BaseException:
            f.omode = None
            raise
        f.is_dir = qid.is_dir
        return Rcreate(m.tag, qid, self._iounit(iounit))

    async def read(self, m: Tread) -> Message:
        f = self._fid(m.fid, auth_ok=True)
        if f.auth is not None:
            return Rread(m.tag, f.auth.read(m.count))
        if f.omode is None:
            raise _Error("file not open")
        if f.omode & OACCMODE == OWRITE:
            raise _Error("permission denied: file not open for reading")
        count = min(m.count, self.msize - IOHDRSZ)
        if m.offset > MAX_OFFSET:
            raise _Error(f"invalid argument: offset {m.offset} past the largest file offset")
        if f.is_dir:
            return Rread(m.tag, await self._read_dir(f, m.offset, count))
        return Rread(m.tag, await self.tree.read(f.node, m.offset, count))

    async def _read_dir(self, f: _Fid, offset: int, count: int) -> bytes:
        if offset == 0:
            entries = [codec.encode_stat(st) for st in await self.tree.readdir(f.node)]
            self._drop_listing(f)
            size = sum(map(len, entries))
            if self.listing_bytes and self.listing_bytes + size > self.limits.listing_bytes:
                raise _Error(
                    f"too many open files: directory listings over {self.limits.listing_bytes >> 20} MiB "
                    "held on this connection; clunk some"
                )
            f.dir_entries, f.dir_index, f.dir_offset, f.dir_bytes = entries, 0, 0, size
            self.listing_bytes += size
        elif offset != f.dir_offset:  # read(5): no seeking in directories
            raise _Error("bad offset in directory read")
        out: list[bytes] = []
        size = 0
        i = f.dir_index
        entries = f.dir_entries
        while i < len(entries) and size + len(entries[i]) <= count:
            size += len(entries[i])
            out.append(entries[i])
            i += 1
        if not out and i < len(entries):
            raise _Error(f"read count {count} too small for a directory entry")
        f.dir_index = i
        f.dir_offset += size
        if i == len(entries):  # all read: what is left to know is where it ended
            self._drop_listing(f)
        return b"".join(out)

    def _drop_listing(self, f: _Fid) -> None:
        self.listing_bytes -= f.dir_bytes
        f.dir_entries, f.dir_index, f.dir_bytes = [], 0, 0

    async def write(self, m: Twrite) -> Message:
        f = self._fid(m.fid, auth_ok=True)
        if f.auth is not None:
            assert self.server.auth is not None
            return Rwrite(m.tag, self.server.auth.write(f.auth, bytes(m.data)))
        if f.omode is None:
            raise _Error("file not open")
        if f.is_dir:
            raise _Error("is a directory")
        if f.omode & OACCMODE not in (OWRITE, ORDWR):
            raise _Error("permission denied: file not open for writing")
        if m.offset + len(m.data) > MAX_OFFSET:
            raise _Error(f"file too large: offset {m.offset} past the largest file offset")
        return Rwrite(m.tag, await self.tree.write(f.node, m.offset, m.data))

    async def clunk(self, m: Tclunk) -> Message:
        f = self.fids.pop(m.fid, None)  # clunk(5): the fid is gone even if this fails
        if f is None:
            raise _Error("fid unknown or out of range")
        self._drop_listing(f)
        await self._release(f)
        return Rclunk(m.tag)

    async def remove(self, m: Tremove) -> Message:
        f = self.fids.pop(m.fid, None)  # remove(5): clunked even if the remove fails
        if f is None:
            raise _Error("fid unknown or out of range")
        self._drop_listing(f)
        await self.tree.remove(f.node)
        return Rremove(m.tag)

    async def stat(self, m: Tstat) -> Message:
        f = self._fid(m.fid, auth_ok=True)
        if f.auth is not None:
            return Rstat(
                m.tag, Stat(qid=f.auth.qid, mode=DMAUTH | 0o600, name="#a", uid=f.uname, gid=f.uname)
            )
        return Rstat(m.tag, await self.tree.stat(f.node))

    async def wstat(self, m: Twstat) -> Message:
        self._check_name(m.stat.name)
        await self.tree.wstat(self._fid(m.fid).node, m.stat)
        return Rwstat(m.tag)

    async def _release(self, f: _Fid) -> None:
        if f.auth is not None:
            return
        if f.omode is not None and f.omode & ORCLOSE:
            await self.tree.remove(f.node)
        else:
            await self.tree.clunk(f.node)


def _agree_version(proposed: str) -> str:
    """version(5): we speak 9P2000; "9P2000.x" we do not speak is answered "9P2000"."""
    if proposed.startswith(VERSION):
        return VERSION
    if proposed.startswith("9P"):
        digits = proposed[2:].split(".")[0]
        if digits.isdigit() and int(digits) > 2000:
            return VERSION
    return "unknown"
