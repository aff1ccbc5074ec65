"""A remote 9P server seen as a tree: every node is a fid on that server.

This is what lets a namespace mount a remote machine, the FUSE adapter show
one, and our own server re-export one (a 9P proxy): all of them take trees.

Reconnecting (what sshfs users ask for most), and failing fast until it works. A tree
is in one of three states (`state`; why it last lost its server: `last_error`):

- "up": operations go to the server.
- "reconnecting": the connection was just lost (EOF, a reset, a Tflush nobody answered,
  a protocol botch that ended it; noticed when it happens, by the tree's one background
  task, not at the next operation) and the first redial is under way. Operations wait
  for it, but never past GRACE (1 s) after the loss: a blip (a connection reset, a
  server restarted at once) costs them that wait and nothing else.
- "down": that first redial failed, or GRACE passed. Operations fail with `Unreachable`
  (EIO), "ADDRESS: host unreachable (reconnecting): CAUSE", instead of each waiting out
  a connect deadline. The redial goes on in the background: each attempt (dial and
  Tversion) gets REDIAL_TIMEOUT (5 s, or `connect_timeout` if that is shorter);
  attempts start BACKOFF_FIRST (0.1 s) apart, doubling up to BACKOFF_MAX (5 s), counted
  from the start of the one before. The first attempt that works makes the tree "up".

The rule for an operation, exactly: it waits for at most one redial attempt, and never
longer than GRACE. After a loss, that is the first attempt (until it fails or GRACE
after the loss). While down, it is an attempt it asks for, started at once instead of
after the backoff, but only while the server's host refuses (the last attempt failed
outright, within GRACE: a dial that costs a round trip), so that the first operation
after the server is back finds it; if that attempt does not fail or succeed within
GRACE the host no longer refuses, and from then on, while attempts hang (a host that
drops packets, a server that accepts and never answers), operations fail at once.

Nodes from before the loss are found again when next used: re-attached and re-walked
by the path they were walked by (re-opened in their mode, without OTRUNC or ORCLOSE).
An operation in flight when the connection broke is tried again on the new connection
if repeating it is harmless (attach, walk, open, read, stat, directory reads) and that
connection comes within GRACE; otherwise it fails, with `Unreachable`. A write, create,
remove or wstat in flight is reported as an error ("it may or may not have happened"),
never silently dropped or repeated; one that had not gone out yet (the loss came while
its node was being found again) is tried again like a harmless one.

What failing fast cannot shorten: the operation that meets a host gone silent waits
for its caller's deadline (the mount's), then for an Rflush (client.FLUSH_TIMEOUT), before
the connection is known lost; TCP keepalive (transport.keepalive) ends a quiet one.
`reconnect=False` turns all of this off: a lost connection stays lost ("down"), and
every operation fails with its error, as it finds it.

A server absent at the start (what Plan 9's newns lives with: it goes on past a mount
that fails). By default `connect` raises when the first dial fails, all or nothing, as a
library user expects. `start_down=True` makes a tree anyway: if that dial fails, or does
not answer within `connect_timeout`, the tree starts "down" with that error, and redials
in the background with the backoff above, as for a tree that went down later; operations
meanwhile fail fast with `Unreachable`. `lazy=True` dials nothing until an operation asks
(state "idle"): the first one dials and waits for that attempt, as after a loss. A node of
the attach root can be had before the server answers (`attach_later`, what a namespace
mounts); like every node from before a reconnect, it is attached and walked at first use,
and so is a clone of a node (a zero-name walk) made while the tree is not up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

import trio

from .bounds import Opening, read_dir
from .client import Connection, single_error
from .codec import CodecError
from .constants import DEFAULT_MSIZE, MAXWELEM, NOFID, ORCLOSE, OREAD, OTRUNC, QTDIR
from .errors import NinePError, NotFound, ProtocolError, Unreachable
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
    Rwstat,
    Stat,
    Tclunk,
    Tcreate,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Twalk,
    Twstat,
)
from .transport import Address
from .tree import Tree

__all__ = ["RemoteTree", "State", "reason"]

log = logging.getLogger("ninefs.remote")
T = TypeVar("T")
State = Literal["idle", "up", "reconnecting", "down"]

GRACE = 1.0  # how long after a loss operations wait for the first redial
REDIAL_TIMEOUT = 5.0  # how long one attempt to reach a server that went away may take
BACKOFF_FIRST = 0.1  # between the starts of the first two attempts; doubling from there
BACKOFF_MAX = 5.0
# What a failed attempt raises: an address that answers (or does not) is one error line.
REDIAL_ERRORS = (OSError, CodecError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)


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
    # A directory's read at offset 0, sent with its open (walk_open_read): readdir starts there.
    first_read: bytes | None = None


def _walked(path: tuple[str, ...], names: Sequence[str]) -> tuple[str, ...]:
    out = list(path)
    for n in names:
        if n == "..":
            if out:
                out.pop()
        elif n != ".":
            out.append(n)
    return tuple(out)


def _nowhere() -> Connection:
    """The connection of a node that is on none yet: `_fresh` attaches and walks it."""
    return Connection.never(ProtocolError("not attached yet"))


def reason(e: BaseException | None) -> str:
    """A connection's end or a failed dial in a few words: "connection refused"."""
    if e is None:
        return "connection closed"
    if isinstance(e, NinePError):
        return e.ename
    if isinstance(e, socket.gaierror):  # its errno is getaddrinfo's (EAI_NONAME is -2), not errno(3)'s
        return (e.strerror or str(e)).lower()
    if isinstance(e, OSError):
        if e.errno:
            return os.strerror(e.errno).lower()
        # trio.open_tcp_stream: "all attempts to connect to ... failed", the errors in its cause
        leaves = e.__cause__.exceptions if isinstance(e.__cause__, BaseExceptionGroup) else ()
        for leaf in leaves:
            if isinstance(leaf, OSError) and leaf.errno:
                return reason(leaf)
    if isinstance(e, trio.TooSlowError):
        return "timed out"
    return str(e) or type(e).__name__


class RemoteTree(Tree):
    """The tree a 9P server exports. `aname` is used when attach gives none."""

    pipelines = True

    def __init__(
        self, conn: Connection, *, uname: str | None = None, aname: str = "", key: Any = None
    ) -> None:
        self.conn = conn
        self.uname = uname
        self.aname = aname
        self.key = key
        self.address = "9P server"  # for errors; connect() knows better
        self.connect_timeout: float | None = None  # the deadline of an attach
        self._redial: Callable[[], Awaitable[Connection]] | None = None  # connect() sets it: reconnecting
        self._state: State = "up"
        self._last_error: str | None = None
        self._since = time.time()
        self._changed = trio.Event()  # set, and replaced, at every change of state
        self._grace_end = 0.0  # trio time: operations wait for the first redial until then
        self._tries = self._failed = 0  # redial attempts started, and failed, since the loss
        self._refusing = False  # the last attempt failed outright: the next is worth a wait
        self._wanted = trio.Event()  # an operation wants an attempt now, not after the backoff
        self._supervisor: trio.CancelScope | None = None

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
        start_down: bool = False,
        lazy: bool = False,
    ) -> AsyncIterator[RemoteTree]:
        """Dial `address` for the `async with` body. `connect_timeout` bounds dial and
        Tversion here, and every attach later (the first is what a mount waits for).
        The tree's connections and its redial task live in a nursery of this block.
        `start_down`: a first dial that fails starts the tree "down" instead of raising;
        `lazy`: no dial until the first operation (both imply `reconnect`)."""
        with single_error():
            async with trio.open_nursery() as nursery:

                async def new_connection(timeout: float | None) -> Connection:
                    return await Opening(address, timeout).connection(nursery, msize=msize)

                failed: BaseException | None = None
                if lazy:
                    first = Connection.never(ProtocolError("not dialled yet"))
                else:
                    try:
                        first = await new_connection(connect_timeout)
                    except REDIAL_ERRORS as e:
                        if not start_down:
                            raise
                        first, failed = Connection.never(e), e
                tree = cls(first, uname=uname, aname=aname, key=key)
                tree.address, tree.connect_timeout = str(address), connect_timeout
                if lazy:
                    tree._state = "idle"
                elif failed is not None:
                    tree._state, tree._last_error = "down", reason(failed)
                    log.info("%s: not answering (%s); redialling", tree.address, tree._last_error)
                if reconnect or start_down or lazy:
                    each = REDIAL_TIMEOUT if connect_timeout is None else min(connect_timeout, REDIAL_TIMEOUT)
                    tree._redial = partial(new_connection, each)
                await nursery.start(tree._supervise)
                try:
                    yield tree
                finally:
                    assert tree._supervisor is not None
                    tree._supervisor.cancel()  # no redial of the connection we close now
                    tree._redial = None
                    await tree.conn.aclose()
                    tree._set_state("down", "closed")
                    nursery.cancel_scope.cancel()

    # --- the state of the connection ---------------------------------------------------

    @property
    def state(self) -> State:
        """The connection's: "up", "reconnecting" or "down" (see the module docstring)."""
        return self._state

    @property
    def last_error(self) -> str | None:
        """Why the connection was last lost, or the last redial failed (kept once up again)."""
        return self._last_error

    @property
    def state_since(self) -> float:
        """When `state` last changed (time.time(), for a status file)."""
        return self._since

    def _set_state(self, state: State, error: str | None = None) -> None:
        if error is not None:
            self._last_error = error
        if state != self._state:
            self._state, self._since = state, time.time()
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _lose(self, conn: Connection) -> None:
        """`conn` is given up: from now on operations wait GRACE at most, then fail at once."""
        if conn is not self.conn or self._state != "up":
            return  # known already
        self._grace_end = trio.current_time() + GRACE
        why = reason(conn.close_reason)
        if self._redial is None:
            self._set_state("down", why)
            return
        log.info("%s: connection lost (%s); reconnecting", self.address, why)  # -v shows it
        self._set_state("reconnecting", why)

    async def _supervise(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The tree's one background task: notice a loss when it happens, and redial."""
        with trio.CancelScope() as self._supervisor:
            task_status.started()
            if self._state == "idle":
                await self._wanted.wait()  # lazy: the first operation dials, and waits as after a loss
                each = REDIAL_TIMEOUT if self.connect_timeout is None else self.connect_timeout
                self._grace_end = trio.current_time() + min(each, REDIAL_TIMEOUT)
                self._set_state("reconnecting")
            while True:
                conn = self.conn
                await conn.wait_closed()
                self._lose(conn)
                if self._redial is None:
                    return
                await self._redial_until_up()

    async def _redial_until_up(self) -> None:
        assert self._redial is not None
        lost = trio.current_time()
        self._tries = self._failed = 0
        self._refusing, self._wanted = False, trio.Event()
        async with trio.open_nursery() as grace:
            grace.start_soon(self._end_grace)
            delay = BACKOFF_FIRST
            while True:
                started = trio.current_time()
                self._tries += 1
                try:
                    conn = await self._redial()
                    break
                except REDIAL_ERRORS as e:
                    self._failed += 1
                    self._refusing = trio.current_time() - started < GRACE
                    self._set_state("down", reason(e))
                with trio.move_on_at(started + delay):
                    await self._wanted.wait()  # the backoff, unless an operation asks now
                self._wanted = trio.Event()
                delay = min(delay * 2, BACKOFF_MAX)
            grace.cancel_scope.cancel()
        self.conn = conn
        self._set_state("up")
        log.info("%s: reconnected after %.1f s", self.address, trio.current_time() - lost)

    async def _end_grace(self) -> None:
        await trio.sleep_until(self._grace_end)
        if self._state == "reconnecting":
            self._set_state("down")

    async def _connection(self) -> Connection:
        """The connection to send on. Up: at once. Reconnecting: the new one, if it comes
        within the grace. Down: `Unreachable` at once, or after one redial of a host that
        refuses (see the module docstring)."""
        conn = self.conn
        if conn.closed:
            self._lose(conn)  # found before the supervisor runs
        if self._redial is None:
            return conn  # not reconnecting: every call fails with the connection's own error
        if self._state == "idle":
            self._wanted.set()  # lazy: this is the first use; the supervisor dials now
            while self._state == "idle":
                await self._changed.wait()
        if self._state == "reconnecting":
            with trio.move_on_at(self._grace_end):
                while self._state == "reconnecting":
                    await self._changed.wait()
        elif self._state == "down" and self._refusing:
            # Dialling a host that refuses costs a round trip: rather than fail for the rest
            # of the backoff (and miss the server just restarted), have the next attempt
            # start now and wait for it. One that hangs instead says the host no longer refuses.
            after = self._tries  # an attempt in flight began before we asked: the next counts
            self._wanted.set()
            with trio.move_on_after(GRACE) as waiting:
                while self._state == "down" and self._failed <= after:
                    await self._changed.wait()
            if waiting.cancelled_caught:
                self._refusing = False
        if self._state == "up":
            return self.conn
        raise Unreachable(f"host unreachable (reconnecting): {self._last_error}", self.address)

    # --- finding nodes again, and calls that survive a lost connection -----------------------

    async def _fresh(self, node: RemoteNode, conn: Connection) -> int:
        """The node's fid on `conn`, finding the file again if needed."""
        if node.conn is conn:
            return node.fid
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
        self,
        node: RemoteNode | None,
        op: Callable[[Connection, int], Awaitable[T]],
        *,
        repeatable: bool,
        what: str = "the operation",
    ) -> T:
        """`op(conn, fid)` with the node's fid (NOFID for none) on the connection there is.

        A lost connection: tried once more, on the next connection, if `repeatable` or
        `op` had not started; otherwise an error that says it may have happened.
        """
        for attempt in (0, 1):
            conn = await self._connection()
            started = False
            try:
                fid = NOFID if node is None else await self._fresh(node, conn)
                started = True
                return await op(conn, fid)
            except ProtocolError:
                if not conn.closed or attempt:
                    raise  # not a lost connection (a botch it survived), or lost twice
                if started and not repeatable:
                    raise NinePError(
                        f"i/o error: connection lost during {what}; it may or may not have happened"
                    ) from None
                if self._redial is None:
                    raise
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

    def attach_later(self, uname: str, aname: str) -> RemoteNode:
        """The attach root, as a node attached at its first use: no message now, so a
        server that is down (or not dialled yet) can be mounted and joins when it answers.
        Its qid is a stand-in (a directory, path 0) until then."""
        uname, aname = self.uname or uname, aname or self.aname
        return RemoteNode(NOFID, Qid(QTDIR, 0, 0), uname, aname, (), _nowhere())

    # --- the tree interface ----------------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> RemoteNode:
        uname, aname = self.uname or uname, aname or self.aname

        async def op(conn: Connection, _: int) -> RemoteNode:
            with Opening(self.address, self.connect_timeout).step("Tauth/Tattach"):
                fid, qid = await self._attach_fid(conn, uname, aname)
            return RemoteNode(fid, qid, uname, aname, (), conn)

        return await self._call(None, op, repeatable=True)

    async def walk(self, node: RemoteNode, names: Sequence[str]) -> tuple[list[Qid], RemoteNode | None]:
        if not names and self._state != "up" and self._redial is not None:
            # A clone needs no server: the copy is found at first use, as its original is
            # (a namespace clones a mount's root at every lookup of its mount point).
            return [], RemoteNode(NOFID, node.qid, node.uname, node.aname, node.path, _nowhere())

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

    async def walk_opendir(
        self, node: RemoteNode, names: Sequence[str], count: int
    ) -> tuple[RemoteNode, Qid]:
        new, qid, _, new.first_read = await self.walk_open_read(node, names, OREAD, count)
        return new, qid

    async def walk_open_stat(
        self, node: RemoteNode, names: Sequence[str], mode: int, count: int = 0
    ) -> tuple[RemoteNode, Qid, int, bytes | None, Stat]:
        if len(names) > MAXWELEM:
            return await super().walk_open_stat(node, names, mode, count)

        def then(fid: int) -> list[tuple[Message, type[Message]]]:
            requests: list[tuple[Message, type[Message]]] = [
                (Topen(0, fid, mode), Ropen),
                (Tstat(0, fid), Rstat),
            ]
            if count:
                requests.append((Tread(0, fid, 0, min(count, node.conn.iounit)), Rread))
            return requests

        new, replies = await self._walk_then(
            node, names, then, repeatable=not mode & (OTRUNC | ORCLOSE), optional=1 if count else 0
        )
        opened, stat = replies[0], replies[1]
        read = replies[2] if count else None
        assert isinstance(opened, Ropen) and isinstance(stat, Rstat)
        new.qid, new.iounit, new.omode = opened.qid, opened.iounit, mode
        return new, opened.qid, opened.iounit, read.data if isinstance(read, Rread) else None, stat.stat

    async def walk_stat(self, node: RemoteNode, names: Sequence[str]) -> tuple[RemoteNode, Stat]:
        if len(names) > MAXWELEM:
            return await super().walk_stat(node, names)
        new, (stat,) = await self._walk_then(
            node, names, lambda fid: [(Tstat(0, fid), Rstat)], repeatable=True
        )
        assert isinstance(stat, Rstat)
        return new, stat.stat

    async def walk_wstat(self, node: RemoteNode, names: Sequence[str], stat: Stat) -> None:
        if len(names) > MAXWELEM:
            return await super().walk_wstat(node, names, stat)
        new, (done,) = await self._walk_then(
            node, names, lambda fid: [(Twstat(0, fid, stat), Rwstat)], repeatable=False, optional=1
        )
        self.clunk_soon(new)
        if isinstance(done, NinePError):
            raise done

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
        first, node.first_read = node.first_read, None  # once: a second readdir reads afresh

        async def op(conn: Connection, fid: int) -> list[Stat]:
            return await read_dir(conn, fid, "/" + "/".join(node.path), first if conn is node.conn else None)

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
        async def op(conn: Connection, fid: int) -> None:
            try:
                await conn.remove(fid)
            finally:
                conn.fids.put(fid)  # remove(5): the fid is clunked, whether or not it worked

        await self._call(node, op, repeatable=False, what="remove")

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
