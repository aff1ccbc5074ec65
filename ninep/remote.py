"""A remote 9P server seen as a tree: every node is a fid on that server.

This is what lets a namespace mount a remote machine, the FUSE adapter show
one, and our own server re-export one (a 9P proxy): all of them take trees.

Reconnecting (what sshfs users ask for most): when the connection breaks, the
next operation dials again, re-attaches, and re-walks each node it touches by
the path it was walked by (re-opening it in its mode, without OTRUNC), then
retries the operation if repeating it is harmless (walk, open, read, stat,
directory reads). A write, create, remove or wstat that was in flight is
reported as an error, never silently dropped or repeated. `reconnect=False`
turns all of this off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from .bounds import Opening, read_dir
from .client import Connection, single_error
from .codec import CodecError
from .constants import DEFAULT_MSIZE, MAXWELEM, ORCLOSE, OTRUNC
from .errors import NinePError, NotFound, ProtocolError
from .messages import (
    Message,
    Qid,
    Rclunk,
    Rcreate,
    Ropen,
    Rread,
    Rremove,
    Rstat,
    Rwalk,
    Stat,
    Tclunk,
    Tcreate,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Twalk,
)
from .transport import Address
from .tree import Tree

__all__ = ["RemoteTree"]

log = logging.getLogger("ninefs.remote")
T = TypeVar("T")
REDIAL_TIMEOUT = 5.0  # how long one attempt to reach a server that went away may take


@dataclass(eq=False, slots=True)
class RemoteNode:
    fid: int
    qid: Qid
    uname: str
    aname: str
    path: tuple[str, ...]  # the names walked from the attach root: how to find it again
    conn: Connection  # the connection `fid` belongs to
    iounit: int = 0
    omode: int | None = None


def _walked(path: tuple[str, ...], names: Sequence[str]) -> tuple[str, ...]:
    out = list(path)
    for n in names:
        if n == "..":
            if out:
                out.pop()
        elif n != ".":
            out.append(n)
    return tuple(out)


class RemoteTree(Tree):
    """The tree a 9P server exports. `aname` is used when attach gives none."""

    pipelines = True

    def __init__(
        self,
        conn: Connection,
        *,
        uname: str | None = None,
        aname: str = "",
        key: Any = None,
        redial: Callable[[], Awaitable[Connection]] | None = None,
    ) -> None:
        self.conn = conn
        self.uname = uname
        self.aname = aname
        self.key = key
        self._redial = redial  # None: no reconnecting
        self._lock = trio.Lock()
        self.address = "9P server"  # for errors; connect() knows better
        self.connect_timeout: float | None = None  # the deadline of an attach

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        address: str | Address,
        *,
        uname: str | None = None,
        aname: str = "",
        msize: int = DEFAULT_MSIZE,
        key: Any = None,
        reconnect: bool = True,
        connect_timeout: float | None = None,
    ) -> AsyncIterator[RemoteTree]:
        """Dial `address` for the `async with` body. `connect_timeout` bounds dial and
        Tversion here, and every attach later (the first is what a mount waits for)."""
        with single_error():
            async with trio.open_nursery() as nursery:

                async def new_connection() -> Connection:
                    return await Opening(address, connect_timeout).connection(nursery, msize=msize)

                tree = cls(await new_connection(), uname=uname, aname=aname, key=key)
                tree.address, tree.connect_timeout = str(address), connect_timeout
                if reconnect:
                    tree._redial = new_connection
                try:
                    yield tree
                finally:
                    await tree.conn.aclose()
                    nursery.cancel_scope.cancel()

    # --- connections ------------------------------------------------------------------

    async def _reconnect(self, broken: Connection) -> None:
        """Replace a broken connection: one quick try per operation that finds it broken.

        While the server is down every operation fails at once ("connection lost") rather
        than hanging; the first one after it is back finds a new connection.
        """
        async with self._lock:
            if self.conn is not broken:
                return  # somebody else already did
            assert self._redial is not None
            try:
                with trio.fail_after(REDIAL_TIMEOUT):
                    self.conn = await self._redial()
            except (
                OSError,
                CodecError,
                trio.TooSlowError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ) as e:
                # Whatever answers at the old address (or does not) is one error, not a traceback.
                raise ProtocolError(f"connection lost; reconnecting failed: {e or 'timed out'}") from None
            log.info("reconnected to %s", self.address)  # not a fault: -v shows it

    async def _fresh(self, node: RemoteNode) -> int:
        """The node's fid on the current connection, finding the file again if needed."""
        if node.conn is self.conn:
            return node.fid
        conn = self.conn
        fid, _ = await self._attach_fid(conn, node.uname, node.aname)
        try:
            names = list(node.path)
            while names:
                step, names = names[:MAXWELEM], names[MAXWELEM:]
                if len(await conn.walk(fid, fid, step)) != len(step):
                    raise NinePError("file does not exist: gone since the connection was lost")
            if node.omode is not None:
                await conn.open(fid, node.omode & ~(OTRUNC | ORCLOSE))
        except BaseException:
            await self._clunk_on(conn, fid)
            raise
        node.fid, node.conn = fid, conn
        return fid

    async def _call(
        self, node: RemoteNode, op: Callable[[Connection, int], Awaitable[T]], *, repeatable: bool
    ) -> T:
        for attempt in (0, 1):
            conn = self.conn
            try:
                fid = await self._fresh(node)
                return await op(conn, fid)
            except ProtocolError:
                if self._redial is None or attempt:
                    raise
                await self._reconnect(conn)
                if not repeatable:
                    raise NinePError(
                        "i/o error: connection lost during the operation (reconnected; it may or may not "
                        "have happened)"
                    ) from None
        raise AssertionError("unreachable")

    async def _attach_fid(self, conn: Connection, uname: str, aname: str) -> tuple[int, Qid]:
        return await conn.attach_as(uname, aname, self.key)

    async def _clunk_on(self, conn: Connection, fid: int) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await conn.clunk(fid)
        except NinePError:
            pass
        finally:
            conn.fids.put(fid)

    # --- the tree interface ----------------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> RemoteNode:
        uname, aname = self.uname or uname, aname or self.aname
        for attempt in (0, 1):
            conn = self.conn
            try:
                with Opening(self.address, self.connect_timeout).step("Tauth/Tattach"):
                    fid, qid = await self._attach_fid(conn, uname, aname)
                return RemoteNode(fid, qid, uname, aname, (), conn)
            except ProtocolError:
                if self._redial is None or attempt:
                    raise
                await self._reconnect(conn)
        raise AssertionError("unreachable")

    async def walk(self, node: RemoteNode, names: Sequence[str]) -> tuple[list[Qid], RemoteNode | None]:
        async def op(conn: Connection, start: int) -> tuple[list[Qid], RemoteNode | None]:
            newfid = conn.fids.get()
            qids: list[Qid] = []
            rest = list(names)
            try:
                while True:  # walk(5): 16 names per Twalk; later steps walk newfid in place
                    step, rest = rest[:MAXWELEM], rest[MAXWELEM:]
                    got = await conn.walk(start, newfid, step)
                    qids.extend(got)
                    if len(got) < len(step):
                        if start == newfid:
                            await self._clunk_on(conn, newfid)
                        else:
                            conn.fids.put(newfid)
                        return qids, None
                    start = newfid
                    if not rest:
                        break
            except ProtocolError:
                raise  # the fid numbers of a dead connection do not matter any more
            except NinePError:
                if start == newfid:
                    await self._clunk_on(conn, newfid)
                    return qids, None
                conn.fids.put(newfid)
                raise
            except BaseException:
                await self._clunk_on(conn, newfid)  # the server may or may not have made it
                raise
            qid = qids[-1] if qids else node.qid
            return qids, RemoteNode(newfid, qid, node.uname, node.aname, _walked(node.path, names), conn)

        return await self._call(node, op, repeatable=True)

    # --- walk and then act, the messages sent together ----------------------------------

    async def walk_open(
        self, node: RemoteNode, names: Sequence[str], mode: int
    ) -> tuple[RemoteNode, Qid, int]:
        if len(names) > MAXWELEM:
            return await super().walk_open(node, names, mode)
        new, (opened,) = await self._walk_then(
            node, names, lambda fid: [(Topen(0, fid, mode), Ropen)], repeatable=not mode & (OTRUNC | ORCLOSE)
        )
        assert isinstance(opened, Ropen)
        new.qid, new.iounit, new.omode = opened.qid, opened.iounit, mode
        return new, opened.qid, opened.iounit

    async def walk_create(
        self, node: RemoteNode, names: Sequence[str], name: str, perm: int, mode: int
    ) -> tuple[RemoteNode, Qid, int]:
        if len(names) > MAXWELEM:
            return await super().walk_create(node, names, name, perm, mode)
        new, (created,) = await self._walk_then(
            node, names, lambda fid: [(Tcreate(0, fid, name, perm, mode), Rcreate)], repeatable=False
        )
        assert isinstance(created, Rcreate)
        new.qid, new.iounit, new.omode = created.qid, created.iounit, mode
        new.path = (*new.path, name)
        return new, created.qid, created.iounit

    async def walk_open_read(
        self, node: RemoteNode, names: Sequence[str], mode: int, count: int
    ) -> tuple[RemoteNode, Qid, int, bytes | None]:
        if len(names) > MAXWELEM:
            return await super().walk_open_read(node, names, mode, count)
        new, (opened, read) = await self._walk_then(
            node,
            names,
            lambda fid: [
                (Topen(0, fid, mode), Ropen),
                (Tread(0, fid, 0, min(count, node.conn.iounit)), Rread),
            ],
            repeatable=not mode & (OTRUNC | ORCLOSE),
            optional=1,
        )
        assert isinstance(opened, Ropen)
        new.qid, new.iounit, new.omode = opened.qid, opened.iounit, mode
        return new, opened.qid, opened.iounit, read.data if isinstance(read, Rread) else None

    async def walk_stat(self, node: RemoteNode, names: Sequence[str]) -> tuple[RemoteNode, Stat]:
        if len(names) > MAXWELEM:
            return await super().walk_stat(node, names)
        new, (stat,) = await self._walk_then(
            node, names, lambda fid: [(Tstat(0, fid), Rstat)], repeatable=True
        )
        assert isinstance(stat, Rstat)
        return new, stat.stat

    async def walk_remove(self, node: RemoteNode, names: Sequence[str]) -> None:
        if len(names) > MAXWELEM:
            return await super().walk_remove(node, names)
        await self._walk_then(
            node, names, lambda fid: [(Tremove(0, fid), Rremove)], repeatable=False, consumes=True
        )

    async def _walk_then(
        self,
        node: RemoteNode,
        names: Sequence[str],
        then: Callable[[int], list[tuple[Message, type[Message]]]],
        *,
        repeatable: bool,
        consumes: bool = False,
        optional: int = 0,
    ) -> tuple[RemoteNode, list[Message]]:
        """Twalk to a new fid and the requests `then(newfid)`, in one write: one round trip.

        intro(5) lets a server handle them in any order; one that runs a request before
        the walk made its fid (or before the open it needs) refuses it, so each request
        that failed is sent again, in order, once those before it are known to be done.
        `consumes`: the request gives the fid up either way (Tremove), so its first
        answer is the one that counts. The last `optional` requests may fail: their
        errors are returned in place of their replies.
        """

        async def op(conn: Connection, start: int) -> tuple[RemoteNode, list[Message]]:
            newfid = conn.fids.get()
            requests = then(newfid)
            try:
                walked, *replies = await conn.pipeline(
                    (Twalk(0, start, newfid, tuple(names)), Rwalk), *requests
                )
            except BaseException:
                await self._clunk_on(conn, newfid)  # the server may or may not have made it
                raise
            if isinstance(walked, NinePError) or len(walked.qids) < len(names):
                conn.fids.put(newfid)  # walk(5): no new fid, so the other requests failed too
                raise walked if isinstance(walked, NinePError) else NotFound("file does not exist")
            qid = walked.qids[-1] if walked.qids else node.qid
            new = RemoteNode(newfid, qid, node.uname, node.aname, _walked(node.path, names), conn)
            try:
                for i, reply in enumerate(replies):
                    if isinstance(reply, NinePError):
                        (again,) = await conn.pipeline(requests[i])
                        if isinstance(again, NinePError) and i < len(replies) - optional:
                            raise reply if consumes else again
                        replies[i] = again
            except BaseException:
                if consumes:
                    conn.fids.put(newfid)
                else:
                    await self._clunk_on(conn, newfid)
                raise
            if consumes:
                conn.fids.put(newfid)
            return new, replies  # type: ignore[return-value]  # errors only where optional

        return await self._call(node, op, repeatable=repeatable)

    async def open(self, node: RemoteNode, mode: int) -> tuple[Qid, int]:
        async def op(conn: Connection, fid: int) -> tuple[Qid, int]:
            return await conn.open(fid, mode)

        node.qid, node.iounit = await self._call(node, op, repeatable=not mode & (OTRUNC | ORCLOSE))
        node.omode = mode
        return node.qid, node.iounit

    async def create(self, node: RemoteNode, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        async def op(conn: Connection, fid: int) -> tuple[Qid, int]:
            return await conn.create(fid, name, perm, mode)

        node.qid, node.iounit = await self._call(node, op, repeatable=False)
        node.path = (*node.path, name)
        node.omode = mode
        return node.qid, node.iounit

    async def read(self, node: RemoteNode, offset: int, count: int) -> bytes:
        async def op(conn: Connection, fid: int) -> bytes:
            return await conn.read_view(fid, offset, min(count, node.iounit or conn.iounit))

        return await self._call(node, op, repeatable=True)

    async def readdir(self, node: RemoteNode) -> list[Stat]:
        async def op(conn: Connection, fid: int) -> list[Stat]:
            return await read_dir(conn, fid, "/" + "/".join(node.path))

        return await self._call(node, op, repeatable=True)

    async def write(self, node: RemoteNode, offset: int, data: bytes) -> int:
        async def op(conn: Connection, fid: int) -> int:
            unit = node.iounit or conn.iounit
            done = 0
            while done < len(data) or not data:
                n = await conn.write(fid, offset + done, data[done : done + unit])
                done += n
                if n == 0:
                    break
            return done

        return await self._call(node, op, repeatable=False)

    async def stat(self, node: RemoteNode) -> Stat:
        async def op(conn: Connection, fid: int) -> Stat:
            return await conn.stat(fid)

        return await self._call(node, op, repeatable=True)

    async def wstat(self, node: RemoteNode, stat: Stat) -> None:
        async def op(conn: Connection, fid: int) -> None:
            await conn.wstat(fid, stat)

        await self._call(node, op, repeatable=False)
        if stat.name and node.path:
            node.path = (*node.path[:-1], stat.name)

    async def remove(self, node: RemoteNode) -> None:
        if node.conn is not self.conn:
            await self._fresh(node)
        conn = node.conn
        try:
            await conn.remove(node.fid)
        except ProtocolError:
            raise NinePError(
                "i/o error: connection lost during remove; it may or may not have happened"
            ) from None
        finally:
            conn.fids.put(node.fid)

    async def clunk(self, node: RemoteNode) -> None:
        if node.conn is self.conn and not node.conn.closed:
            await self._clunk_on(node.conn, node.fid)

    def clunk_soon(self, node: RemoteNode) -> bool:
        if node.conn is self.conn and not node.conn.closed:
            node.conn.clunk_soon(node.fid)
        return True  # on a connection given up, the fid went with it

    async def stat_clunk(self, node: RemoteNode) -> Stat:
        conn = node.conn
        if conn is not self.conn or conn.closed:
            return await super().stat_clunk(node)
        # One write. A server that clunks first answers the Tstat with an error: that
        # stat is lost, the fid is gone either way (clunk(5)).
        try:
            with trio.CancelScope(shield=True), trio.fail_after(5):
                stat, _ = await conn.pipeline((Tstat(0, node.fid), Rstat), (Tclunk(0, node.fid), Rclunk))
        except trio.TooSlowError:
            raise NinePError("i/o error: timed out: no answer to Tstat+Tclunk") from None
        finally:
            conn.fids.put(node.fid)
        if isinstance(stat, NinePError):
            raise stat
        assert isinstance(stat, Rstat)
        return stat.stat
