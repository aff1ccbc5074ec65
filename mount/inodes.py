"""The FUSE adapter's inode table: kernel inode numbers onto tree nodes.

An inode is a file the kernel knows by number. We give each qid.path its own
inode number (the kernel's root is always 1), remember the directory and name
it was found under, and walk a node for it only when one is needed: a
directory listing creates inodes for every entry without a single walk, so
`ls -l` costs one directory read. Lookup counts follow the kernel's; when the
kernel forgets an inode, its node is clunked.

Each inode also caches the last stat we saw and when (our own attribute cache,
which lets a stat after the kernel dropped its caches be answered without a
round trip), and each directory caches the names it has seen.

An inode outlives its name while it is open: after unlink, its stat comes through
an open handle's fid (9P keeps an open fid usable after remove(5)) and it has no
links. `is_stream` says which files the kernel must read and write directly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import trio

from ninep.constants import DMDIR
from ninep.messages import Stat

__all__ = ["ROOT_INODE", "Inode", "InodeTable", "is_stream"]

ROOT_INODE = 1


def is_stream(stat: Stat) -> bool:
    """A file whose content is made when read (a device, a ctl file): length 0 and qid.vers 0.

    Plan 9's devices and ctl files say so, and so do ours (/dev, /proc, /cmd); our file
    trees never give a file qid.vers 0, so an empty file there is a file (docs/mount.md).
    The kernel reads and writes a stream directly, in order, without its page cache
    (which would end every read at the length 0 it was told).
    """
    return stat.length == 0 and stat.qid.vers == 0 and not stat.mode & DMDIR


@dataclass(eq=False, slots=True)
class Inode:
    ino: int
    qid_path: int
    parent: int
    name: str
    stat: Stat
    stat_time: float
    node: Any = None  # a walked, unopened node of the tree; None until needed
    lookups: int = 0
    pins: int = 0  # operations using `node` right now: it is not given back meanwhile
    writes: int = 0  # writes and truncations through this mount: read-ahead older than that is stale
    open_handles: int = 0
    unlinked: bool = False  # its name was removed while the kernel still had it: no links
    regular: bool = False  # created through this mount: a file, never a stream
    # The end of what this mount wrote since it last truncated the file: a server may show
    # a shorter length until the writer's fid is clunked (py9p buffers writes), and the
    # size the kernel is told must not go back over bytes written here (length()).
    written_end: int = 0
    last_open_vers: int | None = None  # qid.vers at the last open: may the page cache stay?
    children: dict[str, int] = field(default_factory=dict)  # name -> ino, for directories
    listed: float = 0.0  # when `children` was last known to be the whole directory
    listing_vers: int = 0  # a directory's qid.vers when the kernel last got all of its listing
    kernel_listed: float = 0.0  # when the kernel began reading the listing it last got all of from us
    list_size: int = 0  # entries in the directory's last whole listing (mount/listings.py)
    known_vers: int = 0  # a directory's qid.vers at which `children` is all of it; 0: not known
    changed_at: float = 0.0  # when this mount last made, removed or renamed a name in the directory
    removed_at: float = 0.0  # when this mount last removed or renamed a name in the directory
    missed_at: float = 0.0  # when a walk in this directory last found nothing, or a stale name
    read_at: float = 0.0  # when the server last sent all of this directory: its names' stats are that new
    seen_at: float = 0.0  # when the server last showed this name, or this mount made it (not moved by writes)
    relisting: trio.Event | None = None  # a listing for lookups' sake is on its way; set when in
    written_at: float = 0.0  # time.time() of our last write since the server's last stat; 0 if none
    vers_stale: bool = False  # our own wstat moved mtime: the server's qid.vers is one we have not seen
    restat: trio.Event | None = None  # set when the stat asked for at a written file's close is in
    lock: trio.Lock = field(default_factory=trio.Lock)

    def length(self) -> int:
        """The file's length: the server's, or the end of our own writes where that is later
        (forgotten once the server shows them all)."""
        n = self.stat.length
        if self.written_end and n >= self.written_end:
            self.written_end = 0
        return max(n, self.written_end)

    def fresh(self, ttl: float) -> bool:
        return time.monotonic() - self.stat_time < ttl

    def took(self, stat: Stat) -> None:
        """`stat` is the server's, just now: what we guessed since its last one (a length from
        our own writes, a qid.vers our wstat moved) is over."""
        self.stat, self.stat_time = stat, time.monotonic()
        self.written_at, self.vers_stale = 0.0, False


class InodeTable:
    """Inodes by number and by qid.path."""

    IDLE_MAX = 20000  # forgotten inodes kept for their cached stat, at most

    def __init__(self) -> None:
        self.by_ino: dict[int, Inode] = {}
        self.by_path: dict[int, int] = {}
        self._next = ROOT_INODE + 1
        # Inodes the kernel forgot while their stat was still fresh, oldest first: a lookup
        # after the kernel dropped its caches is answered from here without a round trip.
        self.idle: OrderedDict[int, Inode] = OrderedDict()

    def root(self, stat: Stat, node: Any) -> Inode:
        inode = Inode(ROOT_INODE, stat.qid.path, ROOT_INODE, "", stat, time.monotonic(), node, lookups=1)
        self.by_ino[ROOT_INODE] = inode
        self.by_path[stat.qid.path] = ROOT_INODE
        return inode

    def get(self, ino: int) -> Inode | None:
        return self.by_ino.get(ino)

    def learn(self, parent: Inode, name: str, stat: Stat, node: Any = None) -> tuple[Inode, list[Any]]:
        """The inode for `name` in `parent` with this stat; give back the nodes it does not need."""
        now = time.monotonic()
        ino = self.by_path.get(stat.qid.path)
        inode = self.by_ino.get(ino) if ino is not None else None
        unneeded: list[Any] = []
        if inode is None or inode.unlinked:
            # New to us; or a file with the number of one we saw removed: the server gave the
            # number again (ext4 reuses inode numbers), and it is another file. It gets an inode
            # of its own: the kernel may still have the old one, with its size and its pages.
            ino = self._next
            self._next += 1
            inode = Inode(ino, stat.qid.path, parent.ino, name, stat, now, node)
            self.by_ino[ino] = inode
            self.by_path[stat.qid.path] = ino
        else:
            inode.stat, inode.stat_time = stat, now
            if inode.ino != ROOT_INODE and (inode.parent, inode.name) != (parent.ino, name):
                # The qid.path under another name: renamed behind our back, or a new file
                # that got a removed one's number. What we held for the old name is not
                # for this one (a server may find files by path).
                if inode.node is not None:
                    unneeded.append(inode.node)
                inode.node = None
                inode.children.clear()
                inode.listed, inode.known_vers = 0.0, 0
                inode.parent, inode.name = parent.ino, name
            if node is not None:
                if inode.node is None:
                    inode.node = node
                else:
                    unneeded.append(node)
        inode.unlinked = False  # the server just showed it under a name
        inode.seen_at = now
        parent.children[name] = inode.ino
        return inode, unneeded

    def unlink(self, parent: Inode, name: str) -> None:
        """`name` in `parent` was removed: its inode, if the kernel still has it, has no links."""
        ino = parent.children.pop(name, None)
        inode = self.by_ino.get(ino) if ino is not None else None
        if inode is not None:
            inode.unlinked = True

    def retire(self, inode: Inode, ttl: float) -> Any:
        """The kernel forgot `inode`: keep it (without a node) while its stat is fresh.

        Gives back the node to clunk, if any, and drops what has gone stale or overflows.
        """
        node, inode.node = inode.node, None
        if inode.fresh(ttl):
            self.idle[inode.ino] = inode
            self.idle.move_to_end(inode.ino)
        else:
            self.drop(inode)
        while self.idle:
            ino, oldest = next(iter(self.idle.items()))
            if len(self.idle) <= self.IDLE_MAX and oldest.fresh(ttl):
                break
            del self.idle[ino]
            if oldest.lookups <= 0 and oldest.open_handles == 0:
                self.drop(oldest)
        return node

    def revive(self, inode: Inode) -> None:
        """The kernel knows `inode` again."""
        self.idle.pop(inode.ino, None)

    def drop(self, inode: Inode) -> Any:
        """Remove an inode the kernel no longer knows; give back its node to clunk."""
        self.by_ino.pop(inode.ino, None)
        self.idle.pop(inode.ino, None)
        if self.by_path.get(inode.qid_path) == inode.ino:
            del self.by_path[inode.qid_path]
        parent = self.by_ino.get(inode.parent)
        if parent is not None and parent.children.get(inode.name) == inode.ino:
            del parent.children[inode.name]
            parent.listed, parent.known_vers = 0.0, 0  # its children no longer hold every name it has
        node, inode.node = inode.node, None
        return node
