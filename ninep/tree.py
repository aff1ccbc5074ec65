"""The one interface of the project: a file tree, i.e. a 9P file server as a class.

Like lib9p's `Srv`, a tree is the 9P operations as methods; here they are
coroutines over *nodes*. A node is the tree's own object for what a fid names:
the server keeps one node per fid, so a tree may hang per-fid state (an open
file descriptor, a directory cursor, a remote fid) on it. Every node has a
`qid`. Local directories, RAM trees, machine trees, a remote 9P server seen
through the client, and a composed namespace all implement this, and the 9P
server and the FUSE adapter take any of them.

Rules a tree can rely on, because the server (or any adapter) enforces them:
a node is opened at most once, only open nodes are read or written, directory
nodes are only opened for reading, names passed to `walk` and `create` never
contain "/" and are never empty, and every node is given back exactly once
through `clunk` or `remove`.

Errors are raised as `NinePError` (Plan 9 wording) or host `OSError`s, which
the server turns into Rerror strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from .constants import DMDIR, NOT_TOUCHED_U32, NOT_TOUCHED_U64, OREAD
from .errors import NinePError, NotADirectory, NotFound
from .messages import Qid, Stat

__all__ = ["Node", "Tree", "check_name", "dir_perm", "file_perm", "is_null_wstat"]


class Node(Protocol):
    """What a fid names; `qid` is the file's current identity."""

    qid: Qid


LIST_FIRST_READ = 1 << 20  # walk_open_list's first read, with the open (a tree caps it at its iounit)


class Tree(ABC):
    """A file server. Subclasses implement either `walk` or `walk1` + `clone`."""

    # Operations that never wait (no I/O that can block, no locks): the server may answer
    # them without a task of their own, which roughly halves its cost per message. A tree
    # that waits on a network, a process or a lock in an operation must not list it.
    never_blocks: frozenset[str] = frozenset()
    # walk_open, walk_stat and walk_remove take one round trip, not two (RemoteTree).
    pipelines = False

    @abstractmethod
    async def attach(self, uname: str, aname: str) -> Any:
        """The root node of the tree named `aname`, acting as `uname` (attach(5))."""

    async def walk(self, node: Any, names: Sequence[str]) -> tuple[list[Qid], Any | None]:
        """Walk `names` from `node` (walk(5)); `node` itself is left as it was.

        Raise when the first name fails. If a later one fails, return the qids
        that succeeded and None. On success return every qid and the new node.
        With no names, return a clone of `node`.
        """
        if not names:
            return [], await self.clone(node)
        if not node.qid.is_dir:
            raise NotADirectory("walk in non-directory")
        qids: list[Qid] = []
        cur = node
        for i, name in enumerate(names):
            try:
                nxt = await self.walk1(cur, name)
            except OSError:  # NinePError is one too
                if cur is not node:
                    await self.clunk(cur)
                if i == 0:
                    raise
                return qids, None
            if cur is not node:
                await self.clunk(cur)
            cur = nxt
            qids.append(cur.qid)
        return qids, cur

    async def walk1(self, node: Any, name: str) -> Any:
        """One step of a walk: a new node for `name` in directory `node` ("..": the parent)."""
        raise NotImplementedError

    async def clone(self, node: Any) -> Any:
        """A new node naming the same file as `node`, not open."""
        raise NotImplementedError

    @abstractmethod
    async def open(self, node: Any, mode: int) -> tuple[Qid, int]:
        """Open `node` in 9P `mode` (open(5)); return its qid and iounit (0: any)."""

    @abstractmethod
    async def create(self, node: Any, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        """Create `name` in directory `node`, which then names the new file, open in `mode`."""

    @abstractmethod
    async def read(self, node: Any, offset: int, count: int) -> bytes:
        """At most `count` bytes at `offset` of an open file; b"" at end of file."""

    @abstractmethod
    async def readdir(self, node: Any) -> Sequence[Stat]:
        """Every entry of an open directory, in order; the server packs them into reads."""

    @abstractmethod
    async def write(self, node: Any, offset: int, data: bytes) -> int:
        """Write `data` at `offset` (ignored for append-only files); return the count written."""

    @abstractmethod
    async def stat(self, node: Any) -> Stat:
        """The file's directory entry (stat(5)); needs no permission."""

    @abstractmethod
    async def wstat(self, node: Any, stat: Stat) -> None:
        """Apply the touched fields of `stat`, all or none; all untouched means fsync."""

    @abstractmethod
    async def remove(self, node: Any) -> None:
        """Remove the file; the node is released whether or not that succeeds."""

    async def clunk(self, node: Any) -> None:  # noqa: B027 - optional, like lib9p's destroyfid
        """Release the node (close what it holds). The default holds nothing."""

    def io_never_blocks(self, node: Any) -> bool:
        """Whether reads and writes of this open node return at once (a regular file on a
        local disk, say), so the server may answer them as it does `never_blocks` ones."""
        return False

    def wstat_never_blocks(self, node: Any, stat: Stat) -> bool:
        """Whether this wstat of `node` returns at once (a chmod, a utimes or a rename on a
        local disk, not the fsync a null wstat asks for), so the server may answer it as
        it does `never_blocks` ones."""
        return False

    def clunk_soon(self, node: Any) -> bool:
        """Release the node without waiting for it, if the tree can: True when it has
        (RemoteTree: the Tclunk goes out with its next requests), False when the caller
        is to await `clunk` itself."""
        return False

    # --- walk and then act, in one go ----------------------------------------------
    #
    # What a FUSE mount does all the time: walk to a file and open, stat or remove it.
    # Here each is the two calls; a tree whose calls each cost a round trip does both
    # in one (RemoteTree: the two messages are sent together).

    async def walk_open(self, node: Any, names: Sequence[str], mode: int) -> tuple[Any, Qid, int]:
        """Walk `names` (none: a clone) to a new node and open it: (new node, qid, iounit)."""
        new = await self._walk_all(node, names)
        try:
            qid, iounit = await self.open(new, mode)
        except BaseException:
            await self.clunk(new)
            raise
        return new, qid, iounit

    async def walk_open_read(
        self, node: Any, names: Sequence[str], mode: int, count: int
    ) -> tuple[Any, Qid, int, bytes | None]:
        """`walk_open`, then read at most `count` bytes from the start: (node, qid, iounit,
        data); data is None when the read failed (the open stands: a read may say why)."""
        new, qid, iounit = await self.walk_open(node, names, mode)
        try:
            return new, qid, iounit, await self.read(new, 0, count)
        except NinePError:
            return new, qid, iounit, None
        except BaseException:
            await self.clunk(new)
            raise

    async def walk_opendir(self, node: Any, names: Sequence[str], count: int) -> tuple[Any, Qid]:
        """Walk to a directory and open it to be read; a tree that can sends its first read
        (`count` bytes) with the open, and readdir starts from what that gave."""
        new, qid, _ = await self.walk_open(node, names, OREAD)
        return new, qid

    async def walk_open_list(self, node: Any, names: Sequence[str]) -> tuple[Any, Qid, Sequence[Stat]]:
        """Walk to a directory, open it and read all of it, in as few round trips as the
        tree can."""
        new, qid = await self.walk_opendir(node, names, LIST_FIRST_READ)
        try:
            return new, qid, await self.readdir(new)
        except BaseException:
            await self.clunk(new)
            raise

    async def walk_open_stat(
        self, node: Any, names: Sequence[str], mode: int, count: int = 0
    ) -> tuple[Any, Qid, int, bytes | None, Stat]:
        """`walk_open` (and `walk_open_read` of `count` bytes if not 0), and the opened
        file's stat: for an open that must learn it anyway (what it knew is old), in the
        same round trip where the tree can. data is None when nothing was read."""
        if count:
            new, qid, iounit, data = await self.walk_open_read(node, names, mode, count)
        else:
            (new, qid, iounit), data = await self.walk_open(node, names, mode), None
        try:
            return new, qid, iounit, data, await self.stat(new)
        except BaseException:
            await self.clunk(new)
            raise

    async def walk_stat(self, node: Any, names: Sequence[str]) -> tuple[Any, Stat]:
        """Walk `names` to a new node and stat it."""
        new = await self._walk_all(node, names)
        try:
            return new, await self.stat(new)
        except BaseException:
            await self.clunk(new)
            raise

    async def walk_wstat(self, node: Any, names: Sequence[str], stat: Stat) -> None:
        """Walk `names` and wstat what they name (a rename, say); the walked node is given back."""
        new = await self._walk_all(node, names)
        try:
            await self.wstat(new, stat)
        finally:
            if not self.clunk_soon(new):
                await self.clunk(new)

    async def walk_remove(self, node: Any, names: Sequence[str]) -> None:
        """Walk `names` and remove what they name."""
        await self.remove(await self._walk_all(node, names))

    async def walk_create(
        self, node: Any, names: Sequence[str], name: str, perm: int, mode: int
    ) -> tuple[Any, Qid, int]:
        """Walk `names` (none: a clone of a directory) to a new node and create `name` in
        it (create(5): the node becomes the new file, open): (new node, qid, iounit)."""
        new = await self._walk_all(node, names)
        try:
            qid, iounit = await self.create(new, name, perm, mode)
        except BaseException:
            await self.clunk(new)
            raise
        return new, qid, iounit

    async def stat_clunk(self, node: Any) -> Stat:
        """Stat `node` and release it (whether or not the stat worked)."""
        try:
            return await self.stat(node)
        finally:
            await self.clunk(node)

    async def _walk_all(self, node: Any, names: Sequence[str]) -> Any:
        _, new = await self.walk(node, names)
        if new is None:
            raise NotFound("file does not exist")
        return new

    async def close(self) -> None:  # noqa: B027 - optional
        """Release what the whole tree holds (connections, processes)."""


def check_name(name: str) -> None:
    """A name that may be created: one path element, not "." or ".." (intro(5))."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise NinePError(f"invalid name {name!r}")


def file_perm(perm: int, dir_mode: int) -> int:
    """open(5): a new file's permissions are limited by its directory's."""
    return perm & (~0o666 | (dir_mode & 0o666))


def dir_perm(perm: int, dir_mode: int) -> int:
    """open(5): a new directory's permissions are limited by its parent's."""
    return (perm & (~0o777 | (dir_mode & 0o777))) | DMDIR


def is_null_wstat(st: Stat) -> bool:
    """stat(5): a Twstat that touches nothing asks the server to commit the file to disk."""
    return not (
        st.name
        or st.uid
        or st.gid
        or st.length != NOT_TOUCHED_U64
        or st.mode != NOT_TOUCHED_U32
        or st.mtime != NOT_TOUCHED_U32
        or st.atime != NOT_TOUCHED_U32
    )
