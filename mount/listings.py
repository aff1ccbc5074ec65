"""Directories: what the mount knows of one as a whole (every name in it, as of a
listing), and the FUSE operations that list them.

A directory whose whole listing we read (and changed only through this mount since)
answers lookups of names it does not have with "no such file" for the attribute-cache
time, without a walk: most of the lookups of a burst of creates (tar x, cp -r, git
checkout, rsync) are of names that are not there yet. A mount that makes a directory
knows all of it; one that comes to a directory it did not make learns it by reading
it, in the background, once two walks in it have found nothing (_relist_soon).

For the same time a listing is answered from that knowledge, asking nothing; past it,
the directory is read again, and the stats of all its names with it. A lookup of a name
whose stat went old waits for such a read of its directory (the second within the
attribute-cache time starts it): `git status` past the cache reads each directory once,
not a walk per file (_fresh_by_relisting).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import trio

from ninep.constants import OREAD
from ninep.errors import REFUSED_SYNC, NinePError
from ninep.messages import Stat

from .fileio import Handle
from .fuseabi import FileInfo
from .fusecodec import DirentBuffer
from .fuseop import errno_of, fuse_op
from .inodes import Inode
from .nodes import Nodes
from .posix import wstat_at

__all__ = ["DIR_FIRST_READ", "RELIST_MAX", "Listings"]

log = logging.getLogger("ninefs.fuse")

RELIST_MAX = 10_000  # a directory listed bigger than this is not read again for lookups' sake
DIR_FIRST_READ = 64 * 1024  # bytes of a directory read with its open (~600 entries): more goes after
WAIT_FOR_LISTING = 1_000  # entries: a lookup waits for a directory read again only up to this size


class Listings(Nodes):
    """The directory half of TreeFS (mount/fuse.py), which sets up `kernel` and `handles`
    and gives `_attr`, `_new_handle` and `_release_handle`."""

    kernel: Any  # the FUSE session, for notify_inval_entry
    handles: dict[int, Handle]

    def _listed_whole(self, d: Inode, entries: Sequence[Stat], since: float, vers: int) -> None:
        """`entries` are all of `d`, as the server had it at `since`, at qid.vers `vers`
        (each one learned).

        Names we knew that it no longer shows were removed behind our back: the kernel
        must stop taking them for there (it may trust an entry for the attribute-cache
        time); not names seen or made after it began. Unless we removed or renamed
        something in `d` meanwhile: then the listing may show a name that is gone, and `d`
        is not taken as known whole. Nor at `vers` if we made something there meanwhile.
        """
        d.list_size = len(entries)
        if d.removed_at >= since:
            return
        d.listed = d.read_at = since  # every name is learned: lookup may answer "no such file"
        d.known_vers = vers if d.changed_at < since else 0
        if len(d.children) <= len(entries) and all(st.name in d.children for st in entries):
            return  # the common case: nothing gone (every listed name known, no more known)
        listed = {st.name for st in entries}
        for name, ino in list(d.children.items()):
            child = self.inodes.get(ino)
            # Not a name learned after the listing was read (made meanwhile through this mount).
            if name not in listed and (child is None or child.seen_at < since):
                self.inodes.unlink(d, name)
                if self.kernel is not None:
                    self.kernel.notify_inval_entry(d.ino, os.fsencode(name))

    def _listing_from_memory(self, d: Inode) -> list[Stat] | None:
        """All of `d` as we last read it (the caller saw its qid.vers unchanged since), if
        each name's inode is still here."""
        out = []
        for name, ino in d.children.items():
            child = self.inodes.get(ino)
            if child is None or child.unlinked:
                return None
            st = child.stat
            out.append(st if st.name == name else dataclasses.replace(st, name=name))
        return out

    def _relist_soon(self, d: Inode) -> None:
        """A walk in `d` found nothing, or a name in it had a stat too old to answer with, and
        what we knew of all of `d` is old. On the second such within the attribute-cache time,
        read `d` again in the background (d.relisting is set when it is in)."""
        now = time.monotonic()
        ttl = self.options.attr_cache
        missed, d.missed_at = d.missed_at, now
        if now - missed >= ttl or d.relisting is not None or d.list_size > RELIST_MAX or self.nursery is None:
            return
        d.relisting = trio.Event()
        self.nursery.start_soon(self._relist, d, d.relisting)

    async def _fresh_by_relisting(self, d: Inode, name: str) -> Inode | None:
        """`name` in `d`, a directory the server once sent whole, is forgotten (drop_caches) or
        its stat is too old (`git status`, `du`, `ls -l` past the attribute cache: every
        name's is). Rather than a walk for each, the second such reads all of `d` again, one
        round trip for every name, and waits for it; its inode if that made it fresh, else
        None (walk it)."""
        if not d.read_at:
            return None  # never read whole: one stat, not a listing, for a name looked up
        if d.relisting is None:
            self._relist_soon(d)
        done = d.relisting
        if done is None or d.list_size > WAIT_FOR_LISTING:
            return None  # a big directory's reading goes on behind; this one is walked
        with trio.move_on_after(self.options.timeout):
            await done.wait()
        ino = d.children.get(name)
        inode = self.inodes.get(ino) if ino is not None else None
        return inode if inode is not None and inode.fresh(self.options.attr_cache) else None

    async def _relist(self, d: Inode, done: trio.Event) -> None:
        try:
            since = time.monotonic()
            with trio.move_on_after(self.options.timeout):
                base, names = self._walk_from(d)
                with self._pinned(base):
                    node, qid, entries = await self.tree.walk_open_list(await self._node(base), names)
                self._clunk_later(node)
                if self.inodes.get(d.ino) is not d or d.removed_at >= since:
                    return  # a name we removed meanwhile may be in it: learning it would bring it back
                if len(entries) > RELIST_MAX:
                    d.list_size = len(entries)  # too big to keep for lookups; not read again for them
                    return
                for st in entries:
                    self._learn(d, st.name, st)
                self._listed_whole(d, entries, since, qid.vers)
        except Exception as e:
            log.debug("listing %s again: %s", d.name, e)
        finally:
            d.relisting = None
            done.set()

    # --- the FUSE directory operations --------------------------------------------------------

    def _whole_listing(self, d: Inode, now: float) -> list[Stat] | None:
        """All of `d` from memory, when the server showed us all of it (or we made it) within
        the attribute-cache time and every change since was ours: the trust lookups already
        put in it (they answer "no such file" for names it lacks). Not for a directory the
        server does not version (qid.vers 0: /proc, /cmd, a namespace's own), read afresh."""
        ttl = self.options.attr_cache
        if now - d.listed >= ttl or now - d.read_at >= ttl or d.stat.qid.vers == 0:
            return None  # past it the listing is read again, and every name's stat with it
        return self._listing_from_memory(d)

    @fuse_op
    async def opendir(self, inode: int, ctx: Any) -> FileInfo:
        i = self._inode(inode)
        since = time.monotonic()
        entries = self._whole_listing(i, since)
        if entries is not None:
            # Nothing asked: another machine's change shows here after the attribute-cache
            # time at most, as in stat (sshfs: its 20 s dir_cache). The kernel keeps its own
            # listing while we know the one it read to be the directory's still.
            h = Handle(i, None, 0, False, False)
            h.vers, h.listed, h.entries, h.prefetched, h.memory = i.known_vers, since, entries, True, True
            # Also after our own changes there (known_vers 0): once the kernel has read all of
            # the listing since the last of them, and since the server last sent it whole, it
            # holds what we would answer (git status again over a tree git wrote: each
            # directory was a getattr and two readdirplus more).
            keep = (i.known_vers != 0 and i.listing_vers == i.known_vers) or (
                i.kernel_listed > i.changed_at and i.kernel_listed > i.read_at
            )
            return FileInfo(fh=self._new_handle(h), cache_dir=True, keep_cache=keep)
        # Else the listing asks the server, if only for the directory's qid.vers: what the
        # kernel or we know of it is used only while that is unchanged.
        stats_fresh = since - i.read_at < self.options.attr_cache
        prefetch = i.listing_vers == 0 or not stats_fresh
        if prefetch:
            # The kernel has no listing of it (never read, changed, or it forgot the inode), or
            # what we know of its names is old: its first read goes with the open, and the tree
            # keeps it for readdir (one round trip less for `ls` and `find`; nothing more to
            # wait for if it is only fsync'd).
            node, qid = await self._walk_opendir(i, DIR_FIRST_READ)
        else:
            node, qid, _ = await self._walk_open(i, OREAD)
        h = Handle(i, node, 0, False, False)
        h.vers, h.listed, h.prefetched = qid.vers, since, prefetch
        # The kernel keeps the listing it read (FOPEN_CACHE_DIR), and may serve it again while
        # the directory's qid.vers is the one it was read at: `ls` again asks nothing more.
        # (It drops it itself after creates and removes through this mount.) qid.vers 0 is
        # a server that does not version directories: always read afresh.
        # Not once the stats we have of its names are old (read with the listing): the kernel
        # would ask for each (`ls -l`), a round trip a name; a listing read again has them all.
        # (While they are fresh and we hold all of it, _whole_listing answered without asking.)
        keep = qid.vers != 0 and i.listing_vers == qid.vers and stats_fresh
        if qid.vers != 0 and qid.vers == i.known_vers and i.removed_at < since:
            # Unchanged since we last read all of it (nor changed by us: known_vers would be
            # 0): its names are all we know of it as of now, for lookups' "no such file".
            i.listed = since
        return FileInfo(fh=self._new_handle(h), cache_dir=True, keep_cache=keep)

    @fuse_op
    async def readdir(self, fh: int, start_id: int, buf: DirentBuffer) -> None:
        h = self.handles[fh]
        if start_id == 0 or h.entries is None:
            if not (h.prefetched and h.entries is not None):  # else ours, from opendir
                if h.node is None:  # rewinddir of a listing from memory: now the server's
                    h.node, _, _ = await self._walk_open(h.inode, OREAD)
                h.memory = False
                if not h.prefetched:  # else read from the open on: its time stands (_listed_whole)
                    h.listed = time.monotonic()
                h.entries = list(await self.tree.readdir(h.node))
            h.prefetched = False  # rewinddir reads afresh
        # "." and ".." first (ids 1 and 2; the kernel takes no lookup count for them), then entry
        # k with id k + 3.
        for i, name in ((0, b"."), (1, b"..")):
            if i >= start_id:
                dot = self.inodes.get(h.inode.parent if i else h.inode.ino) or h.inode
                if not buf.add(name, self._attr(dot), i + 1):
                    return
        raced = h.inode.removed_at >= h.listed  # we removed or renamed something there since
        children, memory = h.inode.children, h.memory
        for i in range(max(start_id - 2, 0), len(h.entries)):
            st = h.entries[i]
            if memory:
                # Our own listing: the inodes as they are, their stats as old as they are (not
                # renewed by being listed: the server showed us nothing new).
                inode = self.inodes.by_ino.get(children.get(st.name, 0))  # type: ignore[assignment]
                if inode is None:
                    continue  # removed since the open
            else:
                if raced and st.name not in children:
                    continue  # maybe one we removed: not brought back (readdir(3) may leave it out)
                inode = self._learn(h.inode, st.name, st)
            if not buf.add(os.fsencode(st.name), self._attr(inode), i + 3):
                break
            if buf.plus:  # READDIRPLUS: each entry is a lookup the kernel will forget
                inode.lookups += 1
                self.inodes.revive(inode)
        else:
            h.inode.listing_vers = h.vers
            h.inode.kernel_listed = h.listed if h.memory else 0.0
            if not h.memory:  # ours says nothing new of the server's directory
                self._listed_whole(h.inode, h.entries, h.listed, h.vers)

    @fuse_op
    async def releasedir(self, fh: int) -> None:
        await self._release_handle(fh)

    @fuse_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """The directory's entries on the server's stable storage: stat(5)'s null wstat,
        which our servers answer with an fsync(2) of the directory. So a create, rename or
        remove before it survives a crash of the server's host (SQLite after each journal
        it makes, an editor's save, git).

        A server that will not sync a directory (it refuses the wstat) leaves its entries
        as durable as it makes them, as before: not an error. An error of the disk, or of
        the connection, is one."""
        h = self.handles[fh]
        d = h.inode
        null = Stat.dont_touch()
        try:
            if h.node is not None:
                await self.tree.wstat(h.node, null)  # the fid its listing was read on
            else:  # listed from memory: its own node, or the walk goes with the wstat
                base, names = self._walk_from(d)
                with self._pinned(base):
                    await wstat_at(self.tree, await self._node(base), names, null)
        except NinePError as e:
            if errno_of(e) not in REFUSED_SYNC:
                raise
            log.debug("%s: the server does not sync directories: %s", d.name, e)
