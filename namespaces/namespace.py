"""A Plan 9 namespace: trees composed with bind and mount, itself a tree.

The mount table maps a path of the namespace to a union: an ordered list of
members, each a node of some tree (bind(2)). Walking a name takes the first
member that has it; a subdirectory found that way is not a union (as in Plan
9). Reading a union directory lists every member's entries, in order, each
name once: the first member's entry wins. ".." is resolved on the namespace's
own path, so from a mount point it goes to the namespace parent, never to a
parent on the mounted server. Directories that exist only because a mount
point lies below them (/n for /n/alpha) appear as empty synthetic directories.

Because the namespace is a `Tree`, it can be served over 9P (exportfs),
mounted with FUSE, or mounted into another namespace. Qids are made unique
across member trees by putting the tree's index in the top byte of qid.path.

Creation follows bind(2)'s MCREATE: in a union (anything bound or mounted
with -a or -b, however many members it has) a create goes to the first member
bound with MCREATE, and fails ("create prohibited") when there is none. The
directory a union starts from enters it without MCREATE (Plan 9's cmount puts
`old` first with no flags), whatever the tree it came from was mounted with.

Differences from Plan 9, on purpose: the table is keyed by path, not by
channel (a bind follows the name it was made on); `old` need not exist (the
missing directories appear as synthetic ones); a plain (MREPL) bind or mount
accepts creates even without MCREATE, as the tree bound there would.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntFlag
from typing import Any

import trio

from ninep import bounds
from ninep.constants import DMDIR, OACCMODE, OEXEC, OREAD, QTDIR
from ninep.errors import (
    REFUSED_SYNC,
    NinePError,
    NotADirectory,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Unreachable,
    errno_for,
)
from ninep.messages import Qid, Stat
from ninep.remote import RemoteTree
from ninep.tree import Tree

__all__ = ["MAFTER", "MBEFORE", "MCREATE", "MREPL", "MountFlag", "Namespace", "split"]


class MountFlag(IntFlag):
    """bind(2)'s flags."""

    MREPL = 0
    MBEFORE = 1
    MAFTER = 2
    MCREATE = 4


MREPL, MBEFORE, MAFTER, MCREATE = MountFlag.MREPL, MountFlag.MBEFORE, MountFlag.MAFTER, MountFlag.MCREATE

_PATH_BITS = 56
_PATH_MASK = (1 << _PATH_BITS) - 1
_WIDE = 255  # top byte of the qid.paths numbered in Namespace._wide


def split(path: str) -> tuple[str, ...]:
    """A namespace path as names; "." and empty names vanish, ".." is applied."""
    out: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if out:
                out.pop()
        else:
            out.append(name)
    return tuple(out)


def _show(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


@dataclass(eq=False, slots=True)
class Member:
    """One element of a union: a node of a tree, and where it came from (for unmount)."""

    tree: Tree
    tree_index: int
    node: Any
    source: str  # the `new` of the bind, or the address/tree of the mount
    create: bool
    aname: str | None = None  # for a mount: what to attach when a user of its own walks in


@dataclass(eq=False, slots=True)
class NsNode:
    """What a fid of the namespace names: a path, and the member nodes it resolves to."""

    path: tuple[str, ...]
    members: list[Member]  # owned: clunked with this node
    qid: Qid
    creatable: bool = True  # False: a union without an MCREATE member
    mount_point: bool = False
    open_members: list[Member] = field(default_factory=list)
    user: str | None = None  # with per_user: the attached user, for whom mounts are attached

    @property
    def is_union(self) -> bool:
        return len(self.members) > 1


class Namespace(Tree):
    """A mount table that is a tree. Use `async with Namespace() as ns:` to own connections."""

    def __init__(self, root: Tree | None = None, *, uname: str = "none", per_user: bool = False) -> None:
        self.uname = uname
        # per_user: every attach sees mounted trees attached as its own user (authenticated
        # servers: each user gets the host's permission checks), not as the namespace's.
        self.per_user = per_user
        self.table: dict[tuple[str, ...], list[Member]] = {}
        # Mount points made with MBEFORE/MAFTER: unions, even with one member (bind -a onto
        # a name that did not exist), so only an MCREATE member takes a create.
        self.unions: set[tuple[str, ...]] = set()
        self.trees: list[Tree] = []  # index+1 goes into qid.path; 0 is for synthetic dirs
        self._wide: dict[tuple[int, int], int] = {}
        self._root_tree = root
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._dialled: set[int] = set()  # id() of the trees dial() made: they close with us

    async def __aenter__(self) -> Namespace:
        # Connections to servers live in tasks of this nursery, for as long as the namespace.
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        if self._root_tree is not None:
            await self.mount(self._root_tree, "/", MREPL | MCREATE, source="#/")
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        with trio.CancelScope(shield=True):
            await self.close()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc)

    async def dial(
        self,
        address: str,
        *,
        start_down: bool = False,
        lazy: bool = False,
        connect_timeout: float | None = None,
    ) -> RemoteTree:
        """A connection to the server at `address`, living as long as the namespace, for
        `mount`. By default a server that does not answer is an error; `start_down` gives a
        tree that starts "down" and joins when the server answers, `lazy` one that dials at
        its first use (ninep.remote). Many dials may run at once (nsfile.apply does).
        `connect_timeout` None: bounds.CONNECT_TIMEOUT, as it is when called."""
        if connect_timeout is None:
            connect_timeout = bounds.CONNECT_TIMEOUT
        if self._nursery is None:
            raise RuntimeError("mount a server inside `async with Namespace() as ns:`")
        return await self._nursery.start(self._connect, address, start_down, lazy, connect_timeout)

    async def _connect(
        self,
        address: str,
        start_down: bool = False,
        lazy: bool = False,
        connect_timeout: float = bounds.CONNECT_TIMEOUT,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # bounds.CONNECT_TIMEOUT: a server that never answers fails this mount (or starts it
        # down), not hangs it (the deadline covers the attach too, which RemoteTree.attach runs under it).
        async with RemoteTree.connect(
            address, uname=self.uname, connect_timeout=connect_timeout, start_down=start_down, lazy=lazy
        ) as tree:
            self._dialled.add(id(tree))
            task_status.started(tree)
            await trio.sleep_forever()

    def remote_mounts(self) -> list[tuple[tuple[str, ...], str, RemoteTree]]:
        """Every mount of a 9P server: (mount point, the address as given, its tree), by path."""
        out = []
        for path in self.mount_points():
            for m in self.table[path]:
                if isinstance(m.tree, RemoteTree) and m.aname is not None:
                    out.append((path, m.source, m.tree))
        return out

    async def close(self) -> None:
        """Let every mount go (`async with` does this as it ends, then closes what dial() made)."""
        # A connection dial() made closes next, and its fids with it (version(5), intro(5)):
        # nothing is sent for them. Another remote tree's Tclunk goes out with its connection's
        # next message, with nobody waiting for the Rclunk. One round trip after another was
        # ~70 ms of `ns run -- true` over 64 machines, and every Tclunk wakes a server (#19).
        for members in self.table.values():
            for m in members:
                if id(m.tree) not in self._dialled:
                    await _release(m.tree, m.node)
        self.table.clear()

    @property
    def has_root(self) -> bool:
        """Whether something (the host, for `ns run`) is mounted at /."""
        return () in self.table

    def _index(self, tree: Tree) -> int:
        for i, t in enumerate(self.trees):
            if t is tree:
                return i + 1
        if len(self.trees) >= _WIDE - 1:
            raise NinePError("too many trees in one namespace")
        self.trees.append(tree)
        return len(self.trees)

    # --- bind, mount, unmount ------------------------------------------------------------

    async def mount(
        self,
        tree: Tree | str,
        old: str,
        flags: int = MREPL,
        aname: str = "",
        *,
        source: str | None = None,
        root: Any = None,
    ) -> None:
        """Attach `tree` (or the 9P server at a dial string) at `old` (bind(2)'s mount).
        `root`: the node of `tree` to mount, attached already (nsfile.apply attaches each
        server as soon as it is dialled, all at once); the namespace owns it from now on."""
        if isinstance(tree, str):
            source = source or tree
            tree = await self.dial(tree)
        if root is not None:
            node = root
        elif isinstance(tree, RemoteTree) and tree.state != "up":
            # A server that is down, or not dialled yet: its root is attached at first use.
            node: Any = tree.attach_later(self.uname, aname)
        else:
            node = await tree.attach(self.uname, aname)
        member = Member(tree, self._index(tree), node, source or repr(tree), bool(flags & MCREATE), aname)
        await self._add(split(old), member, flags)

    async def bind(self, new: str, old: str, flags: int = MREPL) -> None:
        """Make the name `old` refer to the file `new` (bind(2)); both are namespace paths."""
        target = await self._resolve(split(new))
        try:
            if len(target.members) != 1:
                # Binding a union binds its members, in order (Plan 9 binds the channel's union).
                members = [
                    Member(m.tree, m.tree_index, await _clone(m), new, bool(flags & MCREATE))
                    for m in target.members
                ]
            else:
                m = target.members[0]
                members = [Member(m.tree, m.tree_index, await _clone(m), new, bool(flags & MCREATE))]
        finally:
            await self.clunk(target)
        if not members:
            raise NotFound(f"file does not exist: {new}")
        path = split(old)
        for i, member in enumerate(members):
            # Several members keep their order: each goes before/after as one block would.
            await self._add(path, member, flags if i == 0 or flags & MAFTER else MAFTER)

    async def _add(self, path: tuple[str, ...], member: Member, flags: int) -> None:
        current = self.table.get(path)
        if flags & (MBEFORE | MAFTER) and current is None:
            # A union starts from what `old` resolves to now.
            try:
                node = await self._resolve(path)
            except NinePError:
                node = None
            if node is not None:
                # bind(2): `old` enters the union without MCREATE (Plan 9's cmount: newmount(old, 0)).
                current = [
                    Member(m.tree, m.tree_index, await _clone(m), m.source, False) for m in node.members
                ]
                await self.clunk(node)
                if not node.qid.is_dir:
                    for m in current:
                        await _quiet_clunk(m.tree, m.node)
                    raise NotADirectory(f"not a directory: a union needs directories: {_show(path)}")
        if not flags & (MBEFORE | MAFTER):
            for m in current or []:
                await _quiet_clunk(m.tree, m.node)
            self.table[path] = [member]
            self.unions.discard(path)
            return
        self.unions.add(path)
        if flags & MBEFORE:
            self.table[path] = [member, *(current or [])]
        else:
            self.table[path] = [*(current or []), member]

    async def unmount(self, old: str, new: str | None = None) -> None:
        """Remove everything mounted at `old`, or only what came from `new` (unmount(2))."""
        path = split(old)
        members = self.table.get(path)
        if not members:
            raise NinePError(f"not mounted: {old}")
        if new is None:
            gone, keep = members, []
        else:
            key = new if "!" in new or ":" in new else _show(split(new))
            gone = [m for m in members if m.source in (new, key)]
            keep = [m for m in members if m not in gone]
            if not gone:
                raise NinePError(f"not mounted: {new} on {old}")
        for m in gone:
            await _quiet_clunk(m.tree, m.node)
        if keep:
            self.table[path] = keep
        else:
            del self.table[path]
            self.unions.discard(path)

    def mount_points(self) -> list[tuple[str, ...]]:
        """Every path with something mounted on it, shallowest first."""
        return sorted(self.table, key=lambda p: (len(p), p))

    # --- resolution ---------------------------------------------------------------------------

    def _qid(self, member: Member, qid: Qid) -> Qid:
        if qid.path <= _PATH_MASK:
            return Qid(qid.type, qid.vers, (member.tree_index << _PATH_BITS) | qid.path)
        # A path that needs the top byte itself (a namespace inside a namespace, an inode
        # with high bits): number it here, so no two files ever share a qid.path.
        key = (member.tree_index, qid.path)
        number = self._wide.get(key)
        if number is None:
            number = self._wide[key] = (_WIDE << _PATH_BITS) | len(self._wide)
        return Qid(qid.type, qid.vers, number)

    def _synthetic_qid(self, path: tuple[str, ...]) -> Qid:
        return Qid(QTDIR, 0, zlib.crc32("/".join(path).encode()) & _PATH_MASK)

    def _below(self, path: tuple[str, ...]) -> list[str]:
        """Names of mount points (or their ancestors) directly below `path`."""
        n = len(path)
        seen: list[str] = []
        for p in self.table:
            if len(p) > n and p[:n] == path and p[n] not in seen:
                seen.append(p[n])
        return seen

    async def _mounted(self, path: tuple[str, ...], user: str | None = None) -> NsNode:
        own = []
        for m in self.table[path]:
            if user is not None and m.aname is not None and user != self.uname:
                node = await m.tree.attach(user, m.aname)
            else:
                node = await _clone(m)
            own.append(Member(m.tree, m.tree_index, node, m.source, m.create, m.aname))
        first = own[0]
        creatable = any(m.create for m in own) or (len(own) == 1 and path not in self.unions)
        return NsNode(path, own, self._qid(first, first.node.qid), creatable, mount_point=True, user=user)

    async def _resolve(self, path: tuple[str, ...], user: str | None = None) -> NsNode:
        node = await self._root(user)
        for i, name in enumerate(path):
            try:
                nxt = await self.walk1(node, name)
            except NinePError as e:
                await self.clunk(node)
                raise type(e)(e.ename, _show(path[: i + 1])) from None
            await self.clunk(node)
            node = nxt
        return node

    async def _root(self, user: str | None = None) -> NsNode:
        if () in self.table:
            return await self._mounted((), user)
        return NsNode((), [], self._synthetic_qid(()), creatable=False, user=user)

    # --- the tree interface ---------------------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> NsNode:
        return await self._resolve(split(aname), uname if self.per_user else None)

    async def clone(self, node: NsNode) -> NsNode:
        members = [
            Member(m.tree, m.tree_index, await _clone(m), m.source, m.create, m.aname) for m in node.members
        ]
        return NsNode(node.path, members, node.qid, node.creatable, node.mount_point, user=node.user)

    async def walk1(self, node: NsNode, name: str) -> NsNode:
        if not node.qid.type & QTDIR:
            raise NotADirectory("walk in non-directory")
        if name == "..":
            return await self._resolve(node.path[:-1], node.user)  # the namespace's parent
        if name == ".":
            return await self.clone(node)
        path = (*node.path, name)
        if path in self.table:
            return await self._mounted(path, node.user)
        for m in node.members:
            try:
                _, child = await m.tree.walk(m.node, [name])
            except (NinePError, OSError):
                continue
            if child is None:
                continue
            member = Member(m.tree, m.tree_index, child, m.source, m.create)
            return NsNode(path, [member], self._qid(member, child.qid), user=node.user)
        if name in self._below(node.path):
            return NsNode(path, [], self._synthetic_qid(path), creatable=False, user=node.user)
        raise NotFound("file does not exist")

    async def open(self, node: NsNode, mode: int) -> tuple[Qid, int]:
        if not node.members:  # synthetic directory
            if mode & OACCMODE not in (OREAD, OEXEC):
                raise PermissionDenied("permission denied")
            return node.qid, 0
        if node.qid.type & QTDIR:
            # A union is read member by member; open them all for reading.
            for m in node.members:
                await m.tree.open(m.node, mode)
            node.open_members = list(node.members)
            return node.qid, 0
        m = node.members[0]
        qid, iounit = await m.tree.open(m.node, mode)
        node.qid = self._qid(m, qid)
        return node.qid, iounit

    async def create(self, node: NsNode, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        if not node.members:
            raise PermissionDenied("create prohibited: no file server is mounted here")
        if (*node.path, name) in self.table:
            raise NinePError("file already exists")
        # bind(2): the first member bound with MCREATE takes it; a plain (non-union) directory
        # takes it as its tree would; a union with no MCREATE member refuses it.
        targets = [m for m in node.members if m.create]
        if not targets and node.creatable and not node.is_union:
            targets = node.members
        if not targets:
            raise PermissionDenied("create prohibited: no member of this union was bound with MCREATE")
        m = targets[0]
        qid, iounit = await m.tree.create(m.node, name, perm, mode)
        for other in node.members:
            if other is not m:
                await _quiet_clunk(other.tree, other.node)
        node.members = [m]
        node.path = (*node.path, name)
        node.mount_point = False
        node.qid = self._qid(m, qid)
        return node.qid, iounit

    def _member(self, node: NsNode) -> Member:
        if not node.members:
            raise PermissionDenied("permission denied: synthetic directory")
        return node.members[0]

    async def read(self, node: NsNode, offset: int, count: int) -> bytes:
        m = self._member(node)
        return await m.tree.read(m.node, offset, count)

    async def readdir(self, node: NsNode) -> Sequence[Stat]:
        seen: dict[str, Stat] = {}
        for m in node.open_members or node.members:
            for st in await m.tree.readdir(m.node):
                if st.name not in seen:
                    seen[st.name] = self._fix(m, st)
        # Mount points below this directory show the mounted root under their own name.
        for name in self._below(node.path):
            path = (*node.path, name)
            if path in self.table:
                m = self.table[path][0]
                try:
                    st = await self._mount_stat(m, path)
                except (NinePError, OSError):
                    continue  # a broken server hides its mount point's entry, not the directory
                seen[name] = st
            elif name not in seen:
                seen[name] = self._synthetic_stat(path)
        return list(seen.values())

    def _fix(self, m: Member, st: Stat, name: str | None = None) -> Stat:
        """A member's entry as the namespace shows it: its qid made unique, maybe renamed."""
        return replace(st, qid=self._qid(m, st.qid), name=name or st.name)

    def _synthetic_stat(self, path: tuple[str, ...]) -> Stat:
        return Stat(
            qid=self._synthetic_qid(path),
            mode=DMDIR | 0o555,
            name=path[-1] if path else "/",
            uid=self.uname,
            gid=self.uname,
            muid=self.uname,
        )

    async def write(self, node: NsNode, offset: int, data: bytes) -> int:
        m = self._member(node)
        return await m.tree.write(m.node, offset, data)

    async def stat(self, node: NsNode) -> Stat:
        if not node.members:
            return self._synthetic_stat(node.path)
        m = node.members[0]
        if node.mount_point:
            return await self._mount_stat(m, node.path)
        return self._fix(m, await m.tree.stat(m.node))

    async def _mount_stat(self, m: Member, path: tuple[str, ...]) -> Stat:
        """A mount point is known by the name it is mounted on. One whose server is down
        (or not dialled yet: a stat is no reason to dial) still exists, as a directory
        like a synthetic one: what is below it fails with EIO until the server answers."""
        name = path[-1] if path else None
        if isinstance(m.tree, RemoteTree) and m.tree.state == "idle":
            return self._synthetic_stat(path)
        try:
            return self._fix(m, await m.tree.stat(m.node), name)
        except Unreachable:
            return self._synthetic_stat(path)

    async def wstat(self, node: NsNode, stat: Stat) -> None:
        if node.mount_point and stat.name and stat.name != node.path[-1]:
            raise PermissionDenied("permission denied: cannot rename a mount point")
        if len(node.members) > 1 and stat == _SYNC:
            await _sync_all(node.members)
            return
        m = self._member(node)
        await m.tree.wstat(m.node, stat)
        if stat.name:
            node.path = (*node.path[:-1], stat.name)

    async def remove(self, node: NsNode) -> None:
        try:
            if node.mount_point or not node.members:
                raise PermissionDenied("permission denied: cannot remove a mount point")
            m = node.members[0]
            node.members = []
            await m.tree.remove(m.node)
        finally:
            await self.clunk(node)

    async def clunk(self, node: NsNode) -> None:
        members, node.members, node.open_members = node.members, [], []
        for m in members:
            await _quiet_clunk(m.tree, m.node)

    def clunk_soon(self, node: NsNode) -> bool:
        rest = [m for m in node.members if not m.tree.clunk_soon(m.node)]
        node.members, node.open_members = rest, []
        return not rest  # what is left, the caller clunks

    # --- walk and then act: one round trip when the walk stays inside one tree ------------

    pipelines = True

    def _one_tree(self, node: NsNode, names: Sequence[str]) -> Member | None:
        """The member a walk of `names` stays inside: one name, in a directory of one tree
        that is no union, and nothing mounted or bound there. None: walk as usual."""
        if len(names) != 1 or names[0] in ("..", ".") or len(node.members) != 1:
            return None
        path = (*node.path, names[0])
        if not node.qid.type & QTDIR or path in self.table or names[0] in self._below(node.path):
            return None
        return node.members[0]

    async def walk_open(self, node: NsNode, names: Sequence[str], mode: int) -> tuple[NsNode, Qid, int]:
        m = self._one_tree(node, names)
        if m is None:
            return await super().walk_open(node, names, mode)
        child, qid, iounit = await m.tree.walk_open(m.node, names, mode)
        return self._opened(node, names[0], m, child, qid, iounit)

    async def walk_open_read(
        self, node: NsNode, names: Sequence[str], mode: int, count: int
    ) -> tuple[NsNode, Qid, int, bytes | None]:
        m = self._one_tree(node, names)
        if m is None:
            return await super().walk_open_read(node, names, mode, count)
        child, qid, iounit, data = await m.tree.walk_open_read(m.node, names, mode, count)
        return (*self._opened(node, names[0], m, child, qid, iounit), data)

    async def walk_opendir(self, node: NsNode, names: Sequence[str], count: int) -> tuple[NsNode, Qid]:
        m = self._one_tree(node, names)
        if m is None:
            return await super().walk_opendir(node, names, count)
        child, qid = await m.tree.walk_opendir(m.node, names, count)
        new, qid, _ = self._opened(node, names[0], m, child, qid, 0)
        return new, qid

    async def walk_open_stat(
        self, node: NsNode, names: Sequence[str], mode: int, count: int = 0
    ) -> tuple[NsNode, Qid, int, bytes | None, Stat]:
        m = self._one_tree(node, names)
        if m is None:
            return await super().walk_open_stat(node, names, mode, count)
        child, qid, iounit, data, st = await m.tree.walk_open_stat(m.node, names, mode, count)
        return (*self._opened(node, names[0], m, child, qid, iounit), data, self._fix(m, st))

    async def walk_wstat(self, node: NsNode, names: Sequence[str], stat: Stat) -> None:
        m = self._one_tree(node, names)  # nothing mounted there: no mount point to rename
        if m is None:
            return await super().walk_wstat(node, names, stat)
        await m.tree.walk_wstat(m.node, names, stat)

    def _opened(
        self, node: NsNode, name: str, m: Member, child: Any, qid: Qid, iounit: int
    ) -> tuple[NsNode, Qid, int]:
        member = Member(m.tree, m.tree_index, child, m.source, m.create)
        new = NsNode((*node.path, name), [member], self._qid(member, qid), user=node.user)
        if qid.type & QTDIR:
            new.open_members, iounit = [member], 0  # as open() does a directory
        return new, new.qid, iounit

    async def walk_stat(self, node: NsNode, names: Sequence[str]) -> tuple[NsNode, Stat]:
        m = self._one_tree(node, names)
        if m is None:
            return await super().walk_stat(node, names)
        child, st = await m.tree.walk_stat(m.node, names)
        member = Member(m.tree, m.tree_index, child, m.source, m.create)
        new = NsNode((*node.path, names[0]), [member], self._qid(member, child.qid), user=node.user)
        return new, self._fix(m, st)

    async def walk_remove(self, node: NsNode, names: Sequence[str]) -> None:
        m = self._one_tree(node, names)
        if m is None:
            return await super().walk_remove(node, names)
        await m.tree.walk_remove(m.node, names)

    async def stat_clunk(self, node: NsNode) -> Stat:
        if len(node.members) != 1 or node.mount_point:
            return await super().stat_clunk(node)
        m = node.members[0]
        node.members, node.open_members = [], []
        return self._fix(m, await m.tree.stat_clunk(m.node))


async def _clone(m: Member) -> Any:
    _, node = await m.tree.walk(m.node, [])
    if node is None:
        raise NinePError(f"i/o error: cannot clone a node of {m.source}")
    return node


async def _quiet_clunk(tree: Tree, node: Any) -> None:
    with contextlib.suppress(Exception):
        await tree.clunk(node)


async def _release(tree: Tree, node: Any) -> None:
    """_quiet_clunk, without waiting where the tree can send the clunk later."""
    with contextlib.suppress(Exception):
        if tree.clunk_soon(node):
            return
    await _quiet_clunk(tree, node)


_SYNC = Stat.dont_touch()  # stat(5)'s null wstat: the file to stable storage


async def _sync_all(members: Sequence[Member]) -> None:
    """A null wstat of a union: every member to stable storage, as a create or rename may
    have gone to any (the first MCREATE member, often not the first). One that will not
    sync (refuses) is as durable as it makes itself; an error of one that tried (its disk,
    its connection) is the answer, once every member has been asked."""
    refused: NinePError | None = None
    failed: NinePError | None = None
    synced = False
    for m in members:
        try:
            await m.tree.wstat(m.node, _SYNC)
            synced = True
        except NinePError as e:
            if isinstance(e, ProtocolError) or errno_for(e.ename) not in REFUSED_SYNC:
                failed = failed or e
            else:
                refused = refused or e
    if failed is not None:
        raise failed
    if refused is not None and not synced:
        raise refused
