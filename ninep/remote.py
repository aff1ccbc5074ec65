"""A remote 9P server seen as a tree: every node is a fid on that server.

This is what lets a namespace mount a remote machine, the FUSE adapter show
one, and our own server re-export one (a 9P proxy): all of them take trees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from .client import Connection, single_error
from .codec import decode_stats
from .constants import DEFAULT_MSIZE, MAXWELEM, NOFID
from .errors import NinePError
from .messages import Qid, Stat
from .transport import Address, dial
from .tree import Tree

__all__ = ["RemoteTree"]


@dataclass(eq=False, slots=True)
class RemoteNode:
    fid: int
    qid: Qid
    iounit: int = 0


class RemoteTree(Tree):
    """The tree a 9P server exports, through `conn`. `aname` is used when attach gives none."""

    def __init__(
        self, conn: Connection, *, uname: str | None = None, aname: str = "", key: Any = None
    ) -> None:
        self.conn = conn
        self.uname = uname
        self.aname = aname
        self.key = key

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
    ) -> AsyncIterator[RemoteTree]:
        stream = await dial(address)
        with single_error():
            async with trio.open_nursery() as nursery:
                conn = Connection(stream, msize=msize)
                try:
                    await conn.start(nursery)
                    yield cls(conn, uname=uname, aname=aname, key=key)
                finally:
                    await conn.aclose()
                    nursery.cancel_scope.cancel()

    def _release(self, fid: int) -> None:
        self.conn.fids.put(fid)

    async def attach(self, uname: str, aname: str) -> RemoteNode:
        uname, aname = self.uname or uname, aname or self.aname
        afid = await self.conn.authenticate(uname, aname, self.key)
        fid = self.conn.fids.get()
        try:
            qid = await self.conn.attach(fid, uname, aname, afid)
        except BaseException:
            self._release(fid)
            raise
        finally:
            if afid != NOFID:
                await self._clunk_fid(afid)
        return RemoteNode(fid, qid)

    async def walk(self, node: RemoteNode, names: Sequence[str]) -> tuple[list[Qid], RemoteNode | None]:
        newfid = self.conn.fids.get()
        qids: list[Qid] = []
        start = node.fid
        rest = list(names)
        try:
            while True:  # walk(5): 16 names per Twalk; later steps walk newfid in place
                step, rest = rest[:MAXWELEM], rest[MAXWELEM:]
                got = await self.conn.walk(start, newfid, step)
                qids.extend(got)
                if len(got) < len(step):
                    if start == newfid:
                        await self._clunk_fid(newfid)
                    else:
                        self._release(newfid)
                    return qids, None
                start = newfid
                if not rest:
                    break
        except NinePError:
            if start == newfid:
                await self._clunk_fid(newfid)
                return qids, None
            self._release(newfid)
            raise
        except BaseException:
            await self._clunk_fid(newfid)  # the server may or may not have made it
            raise
        return qids, RemoteNode(newfid, qids[-1] if qids else node.qid)

    async def _clunk_fid(self, fid: int) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.conn.clunk(fid)
        except NinePError:
            pass
        finally:
            self._release(fid)

    async def open(self, node: RemoteNode, mode: int) -> tuple[Qid, int]:
        node.qid, node.iounit = await self.conn.open(node.fid, mode)
        return node.qid, node.iounit

    async def create(self, node: RemoteNode, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        node.qid, node.iounit = await self.conn.create(node.fid, name, perm, mode)
        return node.qid, node.iounit

    async def read(self, node: RemoteNode, offset: int, count: int) -> bytes:
        return await self.conn.read_view(node.fid, offset, min(count, node.iounit or self.conn.iounit))

    async def readdir(self, node: RemoteNode) -> list[Stat]:
        out: list[Stat] = []
        offset = 0
        while data := await self.conn.read(node.fid, offset, self.conn.iounit):
            out.extend(decode_stats(data))
            offset += len(data)
        return out

    async def write(self, node: RemoteNode, offset: int, data: bytes) -> int:
        unit = node.iounit or self.conn.iounit
        done = 0
        while done < len(data) or not data:
            n = await self.conn.write(node.fid, offset + done, data[done : done + unit])
            done += n
            if n == 0:
                break
        return done

    async def stat(self, node: RemoteNode) -> Stat:
        return await self.conn.stat(node.fid)

    async def wstat(self, node: RemoteNode, stat: Stat) -> None:
        await self.conn.wstat(node.fid, stat)

    async def remove(self, node: RemoteNode) -> None:
        try:
            await self.conn.remove(node.fid)
        finally:
            self._release(node.fid)

    async def clunk(self, node: RemoteNode) -> None:
        await self._clunk_fid(node.fid)
