"""Any tree shown to the kernel through FUSE (our own /dev/fuse session on trio, fusesession.py).

Every FUSE request is a coroutine in the same trio loop as the 9P client, under
a deadline, so a dead server becomes an error, never a hang (fuseop.py). Inodes
are qids (inodes.py); the nodes (fids) behind them are walked, kept and given
back by nodes.py; directories are listed by listings.py, and their names changed by
names.py; open files are read ahead and written behind by fileio.py.

Speed comes from doing less: directory reads carry attributes (`ls -l` is one
read), our own attribute and name caches answer repeated stats and lookups
without a round trip, a walk and what follows it go to the server together,
and qid.vers decides whether the kernel may keep a file's pages across opens.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import grp
import logging
import os
import pwd
import stat as st_mod
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from ninep.bounds import check_stat
from ninep.constants import (
    DMDIR,
    OREAD,
    OTRUNC,
)
from ninep.messages import Qid, Stat
from ninep.posix import dm_special, unix_special
from ninep.tree import Tree, file_perm

from .fileio import READAHEAD, FileIO, Handle, OpenFile, Window
from .fuseabi import Attr, FileInfo, FuseError, StatvfsData
from .fuseop import fuse_op
from .inodes import ROOT_INODE, Inode, InodeTable, is_stream
from .names import Names
from .posix import (
    Statfs,
    check_name,
    checks_after,
    create_mode,
    maker,
    open_mode,
    owner_name,
    wstat_keeping,
    wstat_mode,
)

__all__ = ["FuseOptions", "TreeFS"]

log = logging.getLogger("ninefs.fuse")


@dataclass(frozen=True, slots=True)
class FuseOptions:
    timeout: float = 30.0  # deadline of every operation
    # How long we trust a stat, and a directory's listing, we saw before asking again (sshfs:
    # 20 s). Another machine's changes show in stat and ls that much later; file contents
    # never lag, because every open revalidates through the qid.vers in Ropen (and bypasses
    # stale kernel state).
    attr_cache: float = 10.0
    # How long the kernel may trust names and attributes we gave it; None: as long as we
    # trust them ourselves (what is left of attr_cache), so it stops asking what we know.
    cache: float | None = None
    # How long "no such file" is remembered (kernel and ours); None: attr_cache.
    negative_cache: float | None = None
    read_only: bool = False
    # Other users' processes may use the mount (then the kernel checks modes: default_permissions).
    allow_other: bool = False

    @property
    def negative_ttl(self) -> float:
        return self.attr_cache if self.negative_cache is None else self.negative_cache


# The kernel's attribute time for a file open through the mount: its getattr comes to us,
# and we ask the server (fstat of a file written elsewhere, or unlinked).
OPEN_FILE_TTL = 1.0
MISSING_MAX = 4096  # names remembered as missing, at most


class TreeFS(Names, FileIO):
    """The FUSE operations (fusesession.py calls them) over a `Tree` attached as `uname`."""

    def __init__(
        self, tree: Tree, *, uname: str, aname: str = "", options: FuseOptions = FuseOptions()
    ) -> None:
        super().__init__()
        self.tree = tree
        self.uname = uname
        self.aname = aname
        self.options = options
        self.statvfs = Statfs(options.attr_cache if options.cache is None else options.cache)
        self.inodes = InodeTable()
        self.handles: dict[int, Handle] = {}
        self.files: dict[int, OpenFile] = {}  # what the handles of each open file share
        self._next_fh = 1
        self.nursery: trio.Nursery | None = None
        # ino -> (its parent, its name, a fresh node of that directory) for its next create
        self.spares: OrderedDict[int, tuple[int, str, Any]] = OrderedDict()
        # inodes that may hold a walked node, oldest first (_hold)
        self.held: OrderedDict[int, Inode] = OrderedDict()
        self.walking_ahead: set[int] = set()
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.kernel: Any = None  # the FuseSession serving us, for invalidations (mounter.py)
        # (directory ino, name) -> when a walk to it failed: the negative cache (_missed)
        self.missing: OrderedDict[tuple[int, str], float] = OrderedDict()

    async def start(self, nursery: trio.Nursery) -> None:
        """Attach the root; `nursery` hosts write-behind and readahead tasks."""
        self.nursery = nursery
        node = await self.tree.attach(self.uname, self.aname)
        stat = await self.tree.stat(node)
        self.inodes.root(stat, node)

    async def close(self) -> None:
        """Clunk every node we hold (at unmount)."""
        with trio.move_on_after(10) as scope:
            scope.shield = True
            for h in list(self.handles.values()):
                if h.node is not None:  # None: a directory listed from memory
                    await self._clunk(h.node)
            self.handles.clear()
            while self.spares:
                await self._clunk(self.spares.popitem()[1][2])
            for inode in list(self.inodes.by_ino.values()):
                node = self.inodes.drop(inode)
                if node is not None:
                    await self._clunk(node)

    # --- attributes ----------------------------------------------------------------

    def _attr(self, inode: Inode) -> Attr:
        s = inode.stat
        mode = s.mode
        ttl = self.options.cache
        if ttl is None:  # what is left of our own trust in this stat
            ttl = self.options.attr_cache - (time.monotonic() - inode.stat_time)
            if inode.open_handles and not mode & DMDIR:
                ttl = min(ttl, OPEN_FILE_TTL)
        ttl = ttl if ttl > 0 else 0.0
        perm = mode & 0o777 | unix_special(mode)
        if mode & DMDIR:
            st_mode, nlink, size = st_mod.S_IFDIR | perm, 2, s.length
        else:
            st_mode, nlink, size = st_mod.S_IFREG | perm, 1, inode.length()
        mtime = s.mtime * 1_000_000_000
        # One call, in Attr's field order (every entry of every listing comes through here).
        return Attr(
            inode.ino, 0, ttl, ttl, st_mode, 0 if inode.unlinked else nlink,
            _cached_uid(s.uid, self.uid), _cached_gid(s.gid, self.gid), 0, size, 128 * 1024,
            (size + 511) // 512, s.atime * 1_000_000_000, mtime, mtime,
        )  # fmt: skip

    async def _refresh(self, inode: Inode) -> Stat:
        await self._drain_inode(inode)
        if (
            inode.restat is not None
            and not inode.restat.is_set()
            and not inode.fresh(self.options.attr_cache)
        ):
            # The stat a close asked for is on its way (_restat_and_clunk): sooner than our own.
            with trio.move_on_after(self.options.timeout):
                await inode.restat.wait()
        if not inode.fresh(self.options.attr_cache) and inode.stat_time > 0 and not inode.open_handles:
            # Old by age (not made old by our own writes), and no open fid to stat: its
            # directory read again may answer this and its neighbours together.
            parent = self.inodes.get(inode.parent) if inode.ino != ROOT_INODE else None
            if parent is not None and parent.children.get(inode.name) == inode.ino:
                await self._fresh_by_relisting(parent, inode.name)
        if not inode.fresh(self.options.attr_cache):
            opened = self._opened_node(inode)  # after any wait above: a handle may have come or gone
            if opened is not None:
                stat = await self.tree.stat(opened)
            elif inode.node is None and self.tree.pipelines and inode.ino != ROOT_INODE:
                # Walked and stated in one round trip; the node is kept as _node keeps it.
                base, names = self._walk_from(inode)
                with self._pinned(base):
                    node, stat = await self.tree.walk_stat(await self._node(base), names)
                if inode.node is None and self.inodes.get(inode.ino) is inode:
                    inode.node = node
                    self._hold(inode)
                else:
                    self._clunk_later(node)
            else:
                with self._pinned(inode):
                    stat = await self.tree.stat(await self._node(inode))
            inode.took(stat)
        return inode.stat

    def _opened_node(self, inode: Inode) -> Any:
        """The fid of one of `inode`'s open handles, if it has any.

        An open file is the file its fid names, whatever became of its name: 9P keeps an
        open fid usable after remove(5), so fstat of an unlinked file works (tmpfile(3)),
        and no walk is needed.
        """
        if inode.open_handles:
            for h in self.handles.values():
                if h.inode is inode:
                    return h.node
        return None

    def _forget_stat(self, inode: Inode) -> None:
        inode.stat_time = 0.0

    # --- lookup and attributes -----------------------------------------------------------------

    # The operations the kernel sends most are often answered from what we hold, with
    # nothing to wait for: those skip fuse_op (a deadline costs ~10 us, a FUSE request
    # here ~50), and only what may wait on the server runs under one.

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Attr:
        check_name(name)
        parent = self.inodes.by_ino.get(parent_inode)
        if parent is not None:
            n = os.fsdecode(name)
            ino = parent.children.get(n)
            if ino is None:
                now = time.monotonic()
                if now - parent.listed < self.options.attr_cache and name not in (b".", b".."):
                    return self._negative()  # see _lookup
                missed = self.missing.get((parent_inode, n))
                if missed is not None and now - missed < self.options.negative_ttl:
                    return self._negative()  # a walk that failed that recently
            else:
                inode = self.inodes.by_ino.get(ino)
                if inode is not None and inode.fresh(self.options.attr_cache):
                    inode.lookups += 1
                    self.inodes.revive(inode)
                    return self._attr(inode)
        return await self._lookup(parent_inode, name)

    @fuse_op
    async def _lookup(self, parent_inode: int, name: bytes) -> Attr:
        parent = self._inode(parent_inode)
        n = os.fsdecode(name)
        if n == ".":
            inode = parent
        elif n == "..":
            inode = self._inode(parent.parent)
        else:
            ino = parent.children.get(n)
            inode = self.inodes.get(ino) if ino is not None else None
            if ino is None and time.monotonic() - parent.listed < self.options.attr_cache:
                # We listed this directory (or made it) and saw every change we made since:
                # a name we do not know is not there, as far as the attribute cache goes.
                return self._negative()
            counted = False  # this lookup counted toward reading the directory again
            if inode is None or (inode.stat_time > 0 and not inode.fresh(self.options.attr_cache)):
                # Not known (any more: the kernel forgot it, drop_caches) or known too long
                # ago: its directory read again may answer this and its neighbours together.
                counted = parent.read_at > 0
                found = await self._fresh_by_relisting(parent, n)
                if found is not None:
                    inode = found
                elif n not in parent.children and time.monotonic() - parent.listed < self.options.attr_cache:
                    return self._negative()  # read again just now, without it
            if inode is None or not inode.fresh(self.options.attr_cache):
                try:
                    node, stat = await self._walk_stat(parent, n, inode)
                except FileNotFoundError:
                    self._missed(parent, n)
                    if not counted:
                        self._relist_soon(parent)
                    return self._negative()
                inode, unneeded = self.inodes.learn(parent, n, stat, node)
                for old in unneeded:
                    self._clunk_later(old)
                if inode.node is node:
                    self._hold(inode)
        inode.lookups += 1
        self.inodes.revive(inode)
        return self._attr(inode)

    async def _walk_stat(self, parent: Inode, name: str, known: Inode | None) -> tuple[Any, Stat]:
        """Walk to `name` and stat it: in one round trip where the tree can, else the stat
        only when qid.vers says the file changed since we saw it."""
        if self.tree.pipelines:
            base, names = self._walk_from(parent)  # one Twalk, however many levels lack a node
            with self._pinned(base):
                return await self.tree.walk_stat(await self._node(base), [*names, name])
        with self._pinned(parent):
            _, node = await self.tree.walk(await self._node(parent), [name])
        if node is None:
            raise FuseError(errno.ENOENT)
        cached = known.stat if known is not None else None
        if cached is not None and cached.qid.path == node.qid.path and cached.qid.vers == node.qid.vers:
            return node, cached  # qid.vers unchanged: the file is as we saw it, no Tstat needed
        try:
            return node, await self.tree.stat(node)
        except BaseException:
            self._clunk_later(node)
            raise

    def _missed(self, parent: Inode, name: str) -> None:
        """A walk to `name` failed: "no such file" for the negative-cache time (--negative-cache),
        unless this mount makes it meanwhile (Nodes._learn forgets it)."""
        if self.options.negative_ttl <= 0:
            return
        self.missing[(parent.ino, name)] = time.monotonic()
        self.missing.move_to_end((parent.ino, name))
        while len(self.missing) > MISSING_MAX:
            self.missing.popitem(last=False)

    def _negative(self) -> Attr:
        """ "No such file", which the kernel may remember for the negative-cache time (st_ino 0)."""
        a = Attr()
        a.st_ino = 0
        a.entry_timeout = self.options.negative_ttl
        return a

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            inode = self.inodes.get(ino)
            if inode is None or ino == ROOT_INODE:
                continue
            inode.lookups -= n
            if inode.lookups <= 0 and inode.open_handles == 0:
                # the kernel's listing went with the inode (drop_caches)
                inode.listing_vers, inode.kernel_listed = 0, 0.0
                node = self.inodes.retire(inode, self.options.attr_cache)
                if node is not None:
                    self._clunk_later(node)

    async def getattr(self, inode: int, ctx: Any = None, fh: int | None = None) -> Attr:
        i = self.inodes.by_ino.get(inode)
        if i is not None and i.written_at and i.open_handles:
            # Open, and changed since the server's stat only by our own writes (fstat after
            # write: SQLite, dd status): their end is the length, and mtime is about when.
            # For this once: the kernel asks again next time (the stat is not fresh).
            a = self._attr(i)
            a.st_mtime_ns = a.st_ctime_ns = max(i.stat.mtime, int(i.written_at)) * 1_000_000_000
            return a
        # an open file's stat is the server's (written elsewhere, or unlinked)
        if i is not None and i.fresh(self.options.attr_cache) and (not i.open_handles or i.stat.mode & DMDIR):
            return self._attr(i)
        return await self._getattr(inode)

    @fuse_op
    async def _getattr(self, inode: int) -> Attr:
        i = self._inode(inode)
        await self._refresh(i)
        return self._attr(i)

    @fuse_op
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Attr:
        i = self._inode(inode)
        self._writable()
        h = self.handles.get(fh) if fh is not None else None
        changes: dict[str, Any] = {}
        if fields.update_size:
            changes["length"] = attr.st_size
        if fields.update_mode:
            mode = wstat_mode(i.stat.mode, attr.st_mode)
            if mode != i.stat.mode or not i.fresh(self.options.attr_cache):  # else rsync's fchmod to 0600
                changes["mode"] = mode
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns // 1_000_000_000
        if fields.update_gid and attr.st_gid != _cached_gid(i.stat.gid, self.gid):  # else cp -a's no-op
            changes["gid"] = grp.getgrgid(attr.st_gid).gr_name if _has_gid(attr.st_gid) else str(attr.st_gid)
        if fields.update_uid and attr.st_uid != _cached_uid(i.stat.uid, self.uid):
            changes["uid"] = owner_name(attr.st_uid)  # ours past wstat(5); EPERM from others (posix.py)
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns // 1_000_000_000  # the same; others drop it
        check_stat(changes, None)  # EOVERFLOW for times 9P's u32 cannot hold
        if not changes:
            # fchown to the owner it has (tar x, cp -a): nothing to ask. The attributes are what
            # we hold; the kernel keeps them only for what is left of our trust in them.
            return self._attr(i)
        if changes.keys() & {"length", "mtime", "atime"}:
            # A truncate lands after the writes before it, and so do times (a write moves mtime).
            # A mode or an owner does not care: 9P checks permissions at open.
            if h is not None:
                await self._drain(h)
            else:
                await self._drain_inode(i)
        if "length" in changes:
            i.writes += 1
            i.written_end = 0  # the server's length is the file's again
        with self._pinned(i):
            # An open file's own node will do (futimens, ftruncate, fchmod, which comes without
            # its handle): no walk for one of ours, and it works on an unlinked file too.
            node = h.node if h is not None else self._opened_node(i)
            if node is None and "length" not in changes and not checks_after(changes):
                # No open fid, and no stat needed after: the inode's own node, or the walk
                # goes with the wstat.
                base, names = self._walk_from(i)
                with self._pinned(base):
                    changes = await wstat_keeping(
                        self.tree, await self._node(base), changes, i.stat.mode, names
                    )
            else:
                if node is None:
                    node = await self._node(i)
                # EPERM for a setuid bit or an owner the server did not take; an atime it refused is left out
                changes = await wstat_keeping(self.tree, node, changes, i.stat.mode)
            if "length" not in changes:
                # chmod, chgrp, touch -d: wstat(5) does exactly what it was asked or nothing,
                # so the stat we hold, changed so, is the server's (tar x, cp -p: one round trip).
                # If our stat is old (a write since), the kernel is told to ask again (_attr).
                i.stat = dataclasses.replace(i.stat, **changes)
                if "mtime" in changes:
                    i.vers_stale = True  # a server's qid.vers may follow mtime (ours does)
                return self._attr(i)
            i.took(await self.tree.stat(node))  # a new length moves qid.vers and mtime
        return self._attr(i)

    def _writable(self) -> None:
        if self.options.read_only:
            raise FuseError(errno.EROFS)

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True  # the server decides; with default_permissions the kernel checks modes

    @fuse_op
    async def statfs(self, ctx: Any) -> StatvfsData:
        root = self._inode(ROOT_INODE)  # 9P has no statfs: our servers' .ninefs.statfs (posix.py)
        with self._pinned(root):
            return await self.statvfs.read(self.tree, await self._node(root))

    def _new_handle(self, h: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        h.inode.open_handles += 1
        self._opened(h)
        return fh

    async def _release_handle(self, fh: int, *, restat: bool = False) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        try:
            await self._drain(h)
        finally:
            h.inode.open_handles -= 1
            self._closed(h)
            if restat and self.nursery is not None:
                h.inode.restat = trio.Event()
                self.nursery.start_soon(self._restat_and_clunk, h.inode, h.node, h.inode.restat)
            elif h.node is not None:  # None: a directory listed from memory
                self._clunk_later(h.node)
            if h.inode.lookups <= 0 and h.inode.open_handles == 0 and h.inode.ino != ROOT_INODE:
                node = self.inodes.retire(h.inode, self.options.attr_cache)
                if node is not None:
                    self._clunk_later(node)

    # --- files -------------------------------------------------------------------------------------

    def _fileinfo(self, fh: int, h: Handle, qid: Qid, *, stored: bool = False) -> FileInfo:
        inode = h.inode
        keep = stored or (not (h.stream or h.direct) and inode.last_open_vers == qid.vers)
        inode.last_open_vers = None if h.direct else qid.vers
        # An open that cannot write has nothing for close(2) to wait for or report: no FLUSH.
        return FileInfo(fh=fh, direct_io=h.stream or h.direct, keep_cache=keep, noflush=not h.writable)

    @fuse_op
    async def open(self, inode: int, flags: int, ctx: Any) -> FileInfo:
        i = self._inode(inode)
        acc = flags & os.O_ACCMODE
        mode = open_mode(flags)  # EINVAL for access mode 3
        if acc != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        if flags & os.O_TRUNC:
            mode |= OTRUNC
        await self._drain_inode(i)
        first: bytes | None = None  # the start of the file, when it came with the open
        stat: Stat | None = None
        small = mode == OREAD and 0 < i.stat.length < READAHEAD and not i.stat.mode & DMDIR
        if (i.stat_time == 0 or i.vers_stale or mode & OTRUNC) and self.tree.pipelines:
            # What we hold is old (our own writes, a wstat, a truncation): the stat the open
            # needs goes with it, not one round trip after.
            node, qid, iounit, first, stat = await self._walk_open_stat(i, mode, READAHEAD if small else 0)
        elif small:
            # A small file opened to be read: walk its name, open and read it in one round
            # trip.
            node, qid, iounit, first = await self._walk_open_read(i, mode, READAHEAD)
        else:
            node, qid, iounit = await self._walk_open(i, mode, by_name=True)
        # (not a stream: a clone file's open gives the qid of what it made, by design)
        if qid.path != i.stat.qid.path and not i.unlinked and not is_stream(i.stat):
            self._clunk_later(node)
            self._replaced(i)
        try:
            unchanged = i.stat.qid.path == qid.path and i.stat.qid.vers == qid.vers
            if stat is None and unchanged and i.stat_time > 0 and not mode & OTRUNC:
                # Unchanged since we last saw it: no Tstat. Not when our own writes made the
                # stat we hold old (_forget_stat): a server whose qid.vers never moves (py9p)
                # would have the file read as the length it had before them.
                stat = i.stat
            elif stat is None:
                stat = await self.tree.stat(node)
        except BaseException:
            self._clunk_later(node)
            raise
        i.took(stat)
        # Streams (devices, ctl files: length 0 and qid.vers 0) go past the page cache, in order;
        # an empty file is a file (mmap, SQLite's -shm), and one we made never is a stream.
        stream = is_stream(stat) and not i.regular
        h = Handle(i, node, iounit, mode != OREAD, stream)
        if mode & OTRUNC:
            i.written_end = 0
        if mode == OREAD:
            h.length, h.writes_at_open = i.length(), i.writes
        if flags & os.O_APPEND and mode != OREAD:
            h.append = h.direct = True  # the mount places each write at the end (fileio._append)
            i.last_open_vers = None
        elif not unchanged and not flags & os.O_TRUNC:
            # Changed since we last told the kernel its size: it drops its pages (no keep_cache)
            # and forgets the size, so a read past the old one asks getattr. Not direct I/O,
            # which refuses mmap (SQLite's -shm, opened while another process writes it).
            i.last_open_vers = None
            self._forget_kernel_attributes(i.ino)
        # The whole file came with the open, at the size the kernel was told, and no one has
        # it open (fusesession.notify_store): its pages are filled now, so the read(2) that
        # follows needs no READ (sshfs's kernel_cache keeps its own writes' pages for that).
        store = (
            first is not None
            and unchanged
            and mode == OREAD
            and not stream
            and not i.open_handles
            and 0 < len(first) == stat.length == i.length()
            and self.kernel is not None
        )
        fh = self._new_handle(h)
        if first is not None and len(first) >= stat.length:
            w = h.windows[0] = Window(data=first, writes=i.writes)  # the whole file, read with the open
            w.done.set()
            if store:
                self.kernel.notify_store(i.ino, first)
        elif not stream and mode == OREAD and stat.length > 0 and self.nursery is not None:
            self._start_window(h, 0)  # most opens for reading read from the start: ask now
        return self._fileinfo(fh, h, qid, stored=store)

    @fuse_op
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[FileInfo, Attr]:
        self._writable()
        check_name(name)
        parent = self._inode(parent_inode)
        n = os.fsdecode(name)
        omode = open_mode(flags)  # EINVAL for access mode 3
        try:
            node, qid, iounit = await self._create_in(parent, n, mode & 0o777, omode)
        except FileExistsError:
            parent.listed = 0.0  # someone else made it: our picture of the directory is old
            if flags & os.O_EXCL:
                raise
            # open(2) without O_EXCL opens what is there (it appeared after the kernel looked).
            attr = await self.lookup(parent_inode, name, ctx)
            if not attr.st_ino:
                raise FuseError(errno.ENOENT) from None
            return await self.open(attr.st_ino, flags & ~os.O_CREAT, ctx), attr
        owner = maker(ctx.uid, ctx.gid, self.uid, parent.stat)  # allow_other: the maker's
        try:  # POSIX: the mode asked, less the umask (the kernel's); open(5) gave less
            asked = (mode & 0o777) | dm_special(mode)
            got = file_perm(mode & 0o777, parent.stat.mode)
            perm, given = await create_mode(self.tree, node, asked, got, owner)
        except BaseException:
            self._clunk_later(node)
            raise
        attr = self._created(parent, n, self._new_stat(parent, n, qid, perm, owner if given else None))
        inode = self._inode(attr.st_ino)
        inode.regular = True
        h = Handle(inode, node, iounit, True, False)
        if flags & os.O_APPEND:
            h.append = h.direct = True  # the mount places each write at the end (fileio._append)
        fh = self._new_handle(h)
        return self._fileinfo(fh, h, qid), attr

    async def release(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is None or not h.writable:
            await self._release_handle(fh)  # nothing to wait for
        else:
            await self._release_written(fh, h)

    @fuse_op
    async def _release_written(self, fh: int, h: Handle) -> None:
        self._forget_stat(h.inode)
        await self._release_handle(fh, restat=h.writable)

    async def _restat_and_clunk(self, inode: Inode, node: Any, done: trio.Event) -> None:
        """Learn a written file's new stat through its handle's node, then clunk that.

        Off the kernel's path, so the stat that usually follows a write (ls -l, make)
        is answered from the cache, and without a walk of its own.
        """
        try:
            with trio.move_on_after(self.options.timeout):
                writes = inode.writes
                stat = await self.tree.stat_clunk(node)  # one round trip (RemoteTree)
                # Not if written meanwhile: a length older than the kernel's would move the
                # next write's offset back.
                if (
                    self.inodes.get(inode.ino) is inode
                    and inode.writes == writes
                    and not inode.fresh(self.options.attr_cache)
                ):
                    inode.took(stat)
        except Exception as e:
            log.debug("restat: %s", e)
        finally:
            done.set()
            if inode.restat is done:
                inode.restat = None

    def _replaced(self, i: Inode) -> NoReturn:
        """The name of `i` holds another file now (replaced by a rename elsewhere): the
        mount forgets the name and says ESTALE, and the kernel, as for NFS, looks the name
        up again (LOOKUP_REVAL) and opens what it finds, once."""
        parent = self.inodes.get(i.parent)
        if parent is not None:
            self.inodes.unlink(parent, i.name)
            parent.listed = 0.0  # its listing is older than this
        self._forget_kernel_attributes(i.ino)
        raise FuseError(errno.ESTALE)

    def _forget_kernel_attributes(self, ino: int) -> None:
        """Tell the kernel to ask getattr again for `ino` (its pages stay: safe in any request)."""
        if self.kernel is not None:
            self.kernel.notify_inval_inode(ino)

    # --- not in 9P2000 ---------------------------------------------------------------------------------

    async def symlink(self, *args: Any) -> Any:
        raise FuseError(errno.EPERM)

    async def link(self, *args: Any) -> Any:
        raise FuseError(errno.EPERM)

    async def mknod(self, *args: Any) -> Any:
        raise FuseError(errno.EPERM)

    async def readlink(self, *args: Any) -> Any:
        raise FuseError(errno.EINVAL)


@functools.lru_cache(maxsize=1024)
def _cached_uid(name: str, fallback: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else fallback


@functools.lru_cache(maxsize=1024)
def _cached_gid(name: str, fallback: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else fallback


def _has_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False
