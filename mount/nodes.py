"""How the mount gets, keeps and gives back the tree's nodes (a 9P fid each).

A node is walked when one is needed: an inode keeps the one it was walked for, a
directory keeps a fresh one ready for its next create, and opens walk, open and
read in one round trip where the tree can (Tree.walk_open_read). Inodes keep at
most HELD_FIDS nodes, because a server allows a connection only so many fids; a
node in use is pinned, so it is not given back under an operation's feet.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from ninep.messages import Qid, Stat
from ninep.tree import Tree

from .fuseabi import FuseError
from .inodes import ROOT_INODE, Inode, InodeTable

__all__ = ["HELD_FIDS", "SPARES", "Nodes"]

log = logging.getLogger("ninefs.fuse")

HELD_FIDS = 1024  # walked nodes kept by inodes the kernel knows (_hold)
SPARES = 64  # directories that keep a walked fid ready for their next create


class Nodes:
    """The node-keeping half of TreeFS (mount/fuse.py), which sets these up."""

    tree: Tree
    inodes: InodeTable
    nursery: trio.Nursery | None
    options: Any  # FuseOptions
    # ino -> (its parent, its name, a fresh node of that directory) for its next create
    spares: OrderedDict[int, tuple[int, str, Any]]
    # inodes that may hold a walked node, oldest first (_hold)
    held: OrderedDict[int, Inode]
    missing: OrderedDict[tuple[int, str], float]  # the negative cache (TreeFS._missed)
    walking_ahead: set[int]  # directories whose node is being walked behind (_walk_ahead)

    async def _clunk(self, node: Any) -> None:
        try:
            await self.tree.clunk(node)
        except Exception as e:
            log.debug("clunk: %s", e)

    def _clunk_later(self, node: Any) -> None:
        """Release a node without making the kernel wait for the round trip."""
        if self.tree.clunk_soon(node):
            return
        if self.nursery is None:
            raise RuntimeError("TreeFS.start was not called")
        self.nursery.start_soon(self._clunk, node)

    def _let_go(self, inode: Inode) -> None:
        """Give back the nodes kept for `inode` (its walked node, a directory's spare) unless in use."""
        if inode.node is not None and not inode.pins and not inode.lock.locked():
            node, inode.node = inode.node, None
            self.held.pop(inode.ino, None)
            self._clunk_later(node)
        spare = self.spares.pop(inode.ino, None)
        if spare is not None:
            self._clunk_later(spare[2])

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise FuseError(errno.ESTALE)
        return inode

    async def _node(self, inode: Inode) -> Any:
        """The inode's walked node, walked the first time from the nearest inode that holds one."""
        if inode.node is not None:
            return inode.node
        async with inode.lock:
            if inode.node is not None:
                return inode.node
            base, names = self._walk_from(inode)
            with self._pinned(base):
                _qids, node = await self.tree.walk(await self._node(base), names)
            if node is None:
                raise FuseError(errno.ENOENT)
            inode.node = node
            self._hold(inode)
            return node

    @contextmanager
    def _pinned(self, inode: Inode) -> Iterator[None]:
        """While in use, `inode`'s node is not given back to the server to save fids."""
        inode.pins += 1
        try:
            yield
        finally:
            inode.pins -= 1

    def _hold(self, inode: Inode) -> None:
        """`inode` keeps a walked node now: count it against HELD_FIDS, the oldest unused go.

        A server allows a connection only so many fids (ours 4096), and the kernel may
        know far more inodes than that (find, du, a big tar); a node given back is
        walked again from its directory when it is needed.
        """
        if inode.ino == ROOT_INODE:
            return
        held = self.held
        held[inode.ino] = inode
        held.move_to_end(inode.ino)
        for _ in range(len(held)):
            if len(held) <= HELD_FIDS:
                break
            ino, old = held.popitem(last=False)
            if old.node is None:
                continue  # opened, forgotten or dropped meanwhile
            if old.pins or old.lock.locked():
                held[ino] = old  # in use right now: it waits its turn again
                continue
            node, old.node = old.node, None
            self._clunk_later(node)

    def _walk_from(self, inode: Inode) -> tuple[Inode, list[str]]:
        """Where a fresh node for `inode` is walked from, in one Twalk either way: a clone
        of its own node, or its path from the nearest directory that holds one (the root
        always does), not a walk per level.

        When its directory holds no node, one is walked for it behind (_walk_ahead): the
        files of a directory the mount made or only looked into are opened one after
        another (cat, grep, tar, git), and a walk from the directory costs the server one
        lookup, not one per level below the nearest node."""
        names: list[str] = []
        start = inode
        while inode.node is None and inode.ino != ROOT_INODE:
            names.append(inode.name)
            inode = self._inode(inode.parent)
        names.reverse()
        if len(names) > 1:
            self._walk_ahead(start.parent)
        return inode, names

    def _walk_by_name(self, inode: Inode) -> tuple[Inode, list[str]]:
        """Where the open of file `inode` walks from: its name in its directory, not its own
        node, so that the open finds the file the name holds now (one replaced on the host
        by a rename: an editor's save, `mv new f`); one Twalk either way. A file whose
        name is no longer its own (unlinked) is walked to as before: its own node."""
        parent = self.inodes.get(inode.parent) if inode.ino != ROOT_INODE else None
        if parent is None or parent.children.get(inode.name) != inode.ino:
            return self._walk_from(inode)
        base, names = self._walk_in(parent)
        return base, [*names, inode.name]

    def _walk_in(self, d: Inode) -> tuple[Inode, list[str]]:
        """Where a walk to a name in directory `d` starts, and the names from there to `d`
        (none when `d` holds a node). When it holds none, one is walked for it behind, for
        the next names there (rm -r, mv): the first costs one round trip, not two."""
        base, names = self._walk_from(d)
        if names:
            self._walk_ahead(d.ino)
        return base, names

    def _walk_ahead(self, ino: int) -> None:
        """Walk a node for directory `ino` behind the caller (once at a time)."""
        if self.nursery is None or ino in self.walking_ahead or len(self.walking_ahead) >= SPARES:
            return
        d = self.inodes.get(ino)
        if d is None or d.node is not None:
            return
        self.walking_ahead.add(ino)
        self.nursery.start_soon(self._node_behind, d)

    async def _node_behind(self, d: Inode) -> None:
        try:
            with trio.fail_after(self.options.timeout):
                await self._node(d)
        except (Exception, trio.TooSlowError) as e:
            log.debug("walk of %s ahead: %s", d.name, e)  # the next walk from further up will say
        finally:
            self.walking_ahead.discard(d.ino)

    async def _clone(self, inode: Inode) -> Any:
        """A fresh node for `inode`, to create in."""
        base, names = self._walk_from(inode)
        with self._pinned(base):
            _, node = await self.tree.walk(await self._node(base), names)
        if node is None:
            raise FuseError(errno.ENOENT)
        return node

    async def _walk_open(self, inode: Inode, mode: int, *, by_name: bool = False) -> tuple[Any, Qid, int]:
        """A fresh node for `inode`, opened: walk and open go to the server together."""
        base, names = self._walk_by_name(inode) if by_name else self._walk_from(inode)
        with self._pinned(base):
            return await self.tree.walk_open(await self._node(base), names, mode)

    async def _walk_open_read(
        self, inode: Inode, mode: int, count: int
    ) -> tuple[Any, Qid, int, bytes | None]:
        """`_walk_open` by name, and up to `count` bytes from the start read in the same round trip."""
        base, names = self._walk_by_name(inode)
        with self._pinned(base):
            return await self.tree.walk_open_read(await self._node(base), names, mode, count)

    async def _walk_opendir(self, inode: Inode, count: int) -> tuple[Any, Qid]:
        """`_walk_open` of a directory, its first `count` bytes read with it where the tree can."""
        base, names = self._walk_from(inode)
        with self._pinned(base):
            return await self.tree.walk_opendir(await self._node(base), names, count)

    async def _walk_open_stat(
        self, inode: Inode, mode: int, count: int = 0
    ) -> tuple[Any, Qid, int, bytes | None, Stat]:
        """`_walk_open_read` (count 0: no read), and the file's stat in the same round trip."""
        base, names = self._walk_by_name(inode)
        with self._pinned(base):
            return await self.tree.walk_open_stat(await self._node(base), names, mode, count)

    async def _create_in(self, d: Inode, name: str, perm: int, mode: int) -> tuple[Any, Qid, int]:
        """Create `name` in directory `d`: (the new file's node, qid, iounit).

        A tree that pipelines gets the clone of `d` and the create in one write. For one
        that does not, the fresh node of `d` walked ahead of time, if there is one, and
        the next one is walked meanwhile: creating files one after another (cp -r, tar x,
        git) costs one round trip each instead of two.
        """
        if self.tree.pipelines:
            # The clone and the create go in one write: a spare walked ahead would cost the
            # same round trip and two more writes on each side.
            base, names = self._walk_from(d)
            with self._pinned(base):
                return await self.tree.walk_create(await self._node(base), names, name, perm, mode)
        kept = self.spares.pop(d.ino, None)
        if self.nursery is not None:
            self.nursery.start_soon(self._make_spare, d)
        if kept is not None:
            parent, dname, node = kept
            if (parent, dname) == (d.parent, d.name):
                try:
                    return node, *await self.tree.create(node, name, perm, mode)
                except FileNotFoundError:
                    pass  # its directory is gone (removed, or renamed behind our back): walk anew
                except BaseException:
                    self._clunk_later(node)
                    raise
            self._clunk_later(node)
        base, names = self._walk_from(d)
        with self._pinned(base):  # the clone and the create go to the server together
            return await self.tree.walk_create(await self._node(base), names, name, perm, mode)

    async def _make_spare(self, d: Inode) -> None:
        try:
            with trio.fail_after(self.options.timeout):
                node = await self._clone(d)
        except (Exception, trio.TooSlowError):
            return  # the next create will clone for itself and report what is wrong
        if d.ino in self.spares or self.inodes.get(d.ino) is not d:
            await self._clunk(node)
            return
        self.spares[d.ino] = (d.parent, d.name, node)
        while len(self.spares) > SPARES:
            _, (_, _, old) = self.spares.popitem(last=False)
            self._clunk_later(old)

    def _learn(self, parent: Inode, name: str, stat: Stat) -> Inode:
        if self.missing:
            self.missing.pop((parent.ino, name), None)  # there after all (listed, or made here)
        inode, unneeded = self.inodes.learn(parent, name, stat)
        for old in unneeded:
            self._clunk_later(old)
        return inode
