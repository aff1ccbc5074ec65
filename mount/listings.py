"""What the mount knows of a directory as a whole: every name in it, as of a listing.

A directory whose whole listing we read (and changed only through this mount since)
answers lookups of names it does not have with "no such file" for the attribute-cache
time, without a walk: most of the lookups of a burst of creates (tar x, cp -r, git
checkout, rsync) are of names that are not there yet. A mount that makes a directory
knows all of it; one that comes to a directory it did not make learns it by reading
it, in the background, once two walks in it have found nothing (_relist_soon).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import trio

from ninep.messages import Stat

from .inodes import Inode
from .nodes import Nodes

__all__ = ["RELIST_MAX", "Listings"]

log = logging.getLogger("ninefs.fuse")

RELIST_MAX = 10_000  # a directory listed bigger than this is not read again for lookups' sake


class Listings(Nodes):
    """The whole-directory half of TreeFS (mount/fuse.py), which sets up `kernel`."""

    kernel: object | None  # the FUSE session, for notify_inval_entry

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
        d.listed = since  # every name is learned: lookup may answer "no such file"
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
                    self.kernel.notify_inval_entry(d.ino, os.fsencode(name))  # type: ignore[attr-defined]

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
        """A walk in `d` found nothing, and what we knew of all of `d` is old. On the second
        such miss within the attribute-cache time, read `d` again in the background."""
        now = time.monotonic()
        ttl = self.options.attr_cache
        missed, d.missed_at = d.missed_at, now
        if now - missed >= ttl or d.relisting or d.list_size > RELIST_MAX or self.nursery is None:
            return
        d.relisting = True
        self.nursery.start_soon(self._relist, d)

    async def _relist(self, d: Inode) -> None:
        try:
            since = time.monotonic()
            with trio.move_on_after(self.options.timeout):
                base, names = self._walk_from(d)
                with self._pinned(base):
                    node, qid, entries = await self.tree.walk_open_list(await self._node(base), names)
                self._clunk_later(node)
                if entries is None or self.inodes.get(d.ino) is not d or d.removed_at >= since:
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
            d.relisting = False
