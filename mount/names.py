"""The names in a directory, as this mount changes them: mkdir, create's bookkeeping,
unlink, rmdir and rename.

9P has no rename across directories (wstat(5) renames within one; `mv` copies), and
refuses to rename onto a name that exists, which POSIX rename replaces: the mount
removes the target first, and only when it must (rename).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from typing import Any

import trio

from ninep.constants import DMDIR, OREAD, QTDIR
from ninep.errors import NinePError
from ninep.messages import Qid, Stat
from ninep.posix import dm_special
from ninep.tree import dir_perm

from .fuseabi import RENAME_EXCHANGE, RENAME_NOREPLACE, Attr, FuseError
from .fuseop import fuse_op
from .inodes import Inode
from .listings import Listings
from .posix import check_name, create_mode, maker

__all__ = ["Names"]


class Names(Listings):
    """The name-changing half of TreeFS (mount/fuse.py), which gives `_attr`, `_writable`,
    `uid` and `uname`."""

    uid: int
    uname: str

    def _dir_changed(self, d: Inode) -> None:
        """We changed `d`'s entries: its mtime is now, and the rest of its stat still holds.

        Kept fresh, so the kernel's permission check on the next path through `d`
        (we mount with default_permissions) is answered without a Tstat.
        """
        now = int(time.time())
        if d.stat.mtime != now:  # (rm -rf, tar x: many changes a second, one new stat)
            d.stat = dataclasses.replace(d.stat, mtime=now)
        # Its qid.vers moved to one we have not seen: our listing of it is not known whole
        # at any qid.vers until it is read again (listings.py).
        d.known_vers, d.changed_at = 0, time.monotonic()

    @fuse_op
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Attr:
        self._writable()
        check_name(name)
        parent = self._inode(parent_inode)
        n = os.fsdecode(name)
        node, qid, _ = await self._create_in(parent, n, DMDIR | (mode & 0o777), OREAD)
        owner = maker(ctx.uid, ctx.gid, self.uid, parent.stat)  # allow_other: the maker's
        try:  # POSIX: the mode asked, less the umask (the kernel's); open(5) gave less
            asked = DMDIR | (mode & 0o777) | dm_special(mode)
            got = dir_perm(mode & 0o777, parent.stat.mode)
            perm, given = await create_mode(self.tree, node, asked, got, owner)
        finally:
            self._clunk_later(node)
        attr = self._created(parent, n, self._new_stat(parent, n, qid, perm, owner if given else None))
        made = self._inode(attr.st_ino)
        made.listed = made.read_at = time.monotonic()  # new and empty: we know all of it
        return attr

    def _new_stat(
        self, parent: Inode, name: str, qid: Qid, mode: int, owner: tuple[str, str] | None = None
    ) -> Stat:
        """The stat a conforming server gives a file we just created (open(5)), without asking;
        `owner`: the user and group it was given to after (posix.create_mode)."""
        now = int(time.time())
        return Stat(
            qid=qid,
            mode=mode,
            atime=now,
            mtime=now,
            length=0,
            name=name,
            uid=owner[0] if owner else self.uname,
            gid=owner[1] if owner else parent.stat.gid,
            muid=self.uname,
        )

    def _created(self, parent: Inode, name: str, stat: Stat) -> Attr:
        self._dir_changed(parent)
        inode = self._learn(parent, name, stat)
        inode.lookups += 1
        self.inodes.revive(inode)
        return self._attr(inode)

    async def _remove(self, parent_inode: int, name: bytes) -> None:
        self._writable()
        check_name(name)
        parent = self._inode(parent_inode)
        n = os.fsdecode(name)
        ino = parent.children.get(n)
        child = self.inodes.get(ino) if ino is not None else None
        if child is not None:
            self._let_go(child)  # its clunks go out with the remove, not one by one after it
        base, names = self._walk_in(parent)
        with self._pinned(base):
            await self.tree.walk_remove(await self._node(base), [*names, n])
        self.inodes.unlink(parent, n)
        parent.removed_at = time.monotonic()
        self._dir_changed(parent)

    @fuse_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self._remove(parent_inode, name)

    @fuse_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self._remove(parent_inode, name)

    @fuse_op
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        self._writable()
        if parent_inode_old != parent_inode_new:
            raise FuseError(errno.EXDEV)  # wstat(5) renames within a directory; mv copies
        if flags & RENAME_EXCHANGE:
            raise FuseError(errno.EINVAL)
        check_name(name_old)
        check_name(name_new)
        parent = self._inode(parent_inode_old)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        if new not in parent.children:
            # The kernel looked `new` up first and found nothing: one round trip, walk and
            # wstat together. 9P refuses to rename onto a name that is there ("file already
            # exists"), so if it was made meanwhile, the whole way below does it.
            try:
                base, names = self._walk_in(parent)
                with self._pinned(base):
                    await self.tree.walk_wstat(
                        await self._node(base), [*names, old], Stat.dont_touch(name=new)
                    )
            except OSError as e:
                if e.errno != errno.EEXIST or flags & RENAME_NOREPLACE:
                    raise
            else:
                self._renamed(parent, old, new)
                return
        walked: dict[str, Any] = {}  # name -> its node, or the error its walk met

        async def walk(name: str) -> None:
            try:
                walked[name] = (await self.tree.walk(pnode, [name]))[1]
            except (NinePError, OSError) as e:
                walked[name] = e

        with self._pinned(parent):
            pnode = await self._node(parent)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(walk, new)  # both walks in flight at once: one round trip
                    await walk(old)
                node, target = walked[old], walked[new]
                if isinstance(node, BaseException):
                    raise node
                if node is None:
                    raise FuseError(errno.ENOENT)
                if target is not None and not isinstance(target, BaseException):
                    if flags & RENAME_NOREPLACE:
                        raise FuseError(errno.EEXIST)
                    # POSIX rename replaces the target; 9P refuses, so remove it first (as 9pfuse does).
                    # The walks' qids say which is a directory: no Tstat (the kernel checked too).
                    target_dir = bool(target.qid.type & QTDIR)
                    if target_dir != bool(node.qid.type & QTDIR):
                        raise FuseError(errno.EISDIR if target_dir else errno.ENOTDIR)
                    del walked[new]  # remove(5) clunks it, whatever the answer
                    await self.tree.remove(target)
                    self.inodes.unlink(parent, new)
                await self.tree.wstat(node, Stat.dont_touch(name=new))
            finally:
                for n in walked.values():
                    if n is not None and not isinstance(n, BaseException):
                        self._clunk_later(n)
        self._renamed(parent, old, new)

    def _renamed(self, parent: Inode, old: str, new: str) -> None:
        parent.removed_at = time.monotonic()
        ino = parent.children.pop(old, None)
        moved = self.inodes.get(ino) if ino is not None else None
        self.missing.pop((parent.ino, new), None)
        if moved is not None:
            moved.name = new
            parent.children[new] = moved.ino
        else:
            parent.listed = 0.0  # `new` exists now, and we know no inode for it
        self._dir_changed(parent)
