"""One client's session on the server: the loop that reads its requests and answers them.

Written once, like lib9p's srv loop. One task reads the connection; every request
then runs as its own task in the connection's nursery with its own cancel scope, so a
slow read never blocks a stat, and Tflush cancels exactly the request it names
(flush(5)). Requests a tree promises never to wait for are answered inline, and their
replies leave together. Bytes held for a client that does not read its replies are
bounded (Limits.held_bytes): past them the connection is read no further.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from . import codec
from .answers import Answers, _agree_version, _Error, _Fid
from .codec import CodecError
from .constants import (
    MIN_MSIZE,
    NOTAG,
    VERSION,
)
from .errors import ename_from_oserror
from .limits import Slot
from .messages import (
    Message,
    Rerror,
    Rflush,
    Rread,
    Rversion,
    Tattach,
    Tauth,
    Tclunk,
    Tcreate,
    Tflush,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Tversion,
    Twalk,
    Twrite,
    Twstat,
)
from .transport import FrameReader, send_frame

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Session"]

log = logging.getLogger("ninefs.server")

Trace = Callable[[str], None]

OUTBOX = 32  # frame parts of inline replies held at most before they are sent
OUTBOX_BYTES = 256 << 10  # ... and bytes: a client that does not read must not make us hold more


@dataclass(slots=True)
class _Request:
    scope: trio.CancelScope
    done: trio.Event
    flushed: bool = False


class Session(Answers):
    """One client: its fids, msize and outstanding requests."""

    def __init__(self, server: Server, stream: trio.abc.Stream, peer: str, slot: Slot | None) -> None:
        self.server = server
        self.slot = slot
        self.attached = False  # until then frames are small (Limits.handshake_frame)
        self.tree = server.tree
        self.stream = stream
        self.peer = peer
        self.limits = server.limits
        self.trace = server.trace
        self.msize = self.limits.msize
        self.versioned = False
        self.fids: dict[int, _Fid] = {}
        self.pending: dict[int, _Request] = {}
        self.send_lock = trio.Lock()
        self.outbox: list[bytes] = []  # replies answered inline, not sent yet (_dispatch)
        self.outbox_bytes = 0
        self.held = 0  # bytes of requests in tasks and of their replies not sent yet
        self.listing_bytes = 0  # directory listings kept for open fids (_read_dir)
        self.drained: trio.Event | None = None  # set when `held` falls back under the limits
        self.reader = FrameReader(
            stream, min(self.msize, self.limits.handshake_frame), frame_timeout=self.limits.frame_timeout
        )
        self.answered = 0.0  # when our last reply went (time.perf_counter)
        if self.limits.poll > 0:  # the client's next request often follows soon (poll_until)
            self.reader.poll = lambda now: self.answered + self.limits.poll
        self.handlers: dict[type, Callable[[Any], Any]] = {
            Tattach: self.attach,
            Twalk: self.walk,
            Topen: self.open,
            Tcreate: self.create,
            Tread: self.read,
            Twrite: self.write,
            Tclunk: self.clunk,
            Tremove: self.remove,
            Tstat: self.stat,
            Twstat: self.wstat,
            Tauth: self.auth,
        }
        never = self.tree.never_blocks
        self.inline = {t for t, ops in _OPS_OF.items() if ops <= never}
        self.readdir_inline = "readdir" in never

    # --- the connection loop -------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    await self._read_loop()
                finally:
                    if self.outbox:  # answered before the client stopped sending: still theirs
                        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                            await self._send_parts(())
                nursery.cancel_scope.cancel()
        finally:
            await self._release_all_fids()

    async def _read_loop(self) -> None:
        reader, decode, dispatch = self.reader, codec.decode, self._dispatch
        while True:
            if self.outbox and (
                len(self.outbox) >= OUTBOX or self.outbox_bytes >= OUTBOX_BYTES or not reader.has_frame()
            ):
                await self._send_parts(())  # nothing more to answer at once: the replies go
            while self.held > 0 and self._holding_too_much():  # replies the client does not read
                self.drained = trio.Event()
                with trio.move_on_after(1):  # the server's total may fall through others too
                    await self.drained.wait()
            try:
                frame = await reader.next_frame()
            except CodecError as e:
                log.warning("%s: closing: %s", self.peer, e)
                return
            if frame is None:
                return
            try:
                msg = decode(frame)
            except CodecError as e:
                if e.tag is None:
                    log.warning("%s: closing: %s", self.peer, e)
                    return
                log.info("%s: bad message: %s", self.peer, e)
                self._trace_in(f"<malformed tag {e.tag}>")
                await self.send(Rerror(e.tag, f"bad message: {e}"))
                continue
            if self.trace is not None:
                self._trace_in(msg)
            await dispatch(msg)

    async def _dispatch(self, msg: Message) -> None:
        t = type(msg)
        if t is Tversion:
            await self.version(msg)  # type: ignore[arg-type]
            return
        if not self.versioned:
            await self.send(Rerror(msg.tag, "version: Tversion must come first"))
            return
        tag = msg.tag
        pending = self.pending
        if tag in pending or tag == NOTAG:
            await self.send(Rerror(tag, f"tag {tag} already in use"))
            return
        if len(pending) >= self.limits.outstanding:
            await self.send(Rerror(tag, "too many outstanding requests"))
            return
        if t is Tflush:
            target = pending.get(msg.oldtag)  # type: ignore[attr-defined]  # first: a flush may name itself
            req = pending[tag] = _Request(trio.CancelScope(), trio.Event())
            if target is not None:
                target.flushed = True
                target.scope.cancel()
            self.nursery.start_soon(self._flush, msg, req, target)
            return
        handler = self.handlers.get(t)
        if handler is None:  # an R-message sent to us
            await self.send(Rerror(tag, f"unexpected {t.__name__}"))
            return
        if (
            t in self.inline
            or (t in _IO and self._io_inline(msg.fid))  # type: ignore[attr-defined]
            or (t is Twstat and self._wstat_inline(msg))  # type: ignore[arg-type]
        ):
            # The tree never waits for this one: answer it here, without a task of its own.
            # Nothing else is read meanwhile, so no flush can be waiting for it. The reply
            # waits in the outbox while more requests are already here: requests sent
            # together (a walk and an open) are answered together, in one write.
            parts = self._encode(await self._answer(handler, msg))
            self.outbox.extend(parts)
            self.outbox_bytes += len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
            return
        req = pending[tag] = _Request(trio.CancelScope(), trio.Event())
        self.nursery.start_soon(self._respond, handler, msg, req)

    def _wstat_inline(self, msg: Twstat) -> bool:
        f = self.fids.get(msg.fid)
        return f is not None and f.auth is None and self.tree.wstat_never_blocks(f.node, msg.stat)

    def _io_inline(self, fid: int) -> bool:
        f = self.fids.get(fid)
        if f is None or f.auth is not None:
            return False
        # A directory's read lists it: with a walk and an open sent with it (a FUSE opendir),
        # the three replies go in one write, one wake-up of the client, not two.
        return self.readdir_inline if f.is_dir else self.tree.io_never_blocks(f.node)

    async def _answer(self, handler: Callable[[Any], Any], msg: Message) -> Message:
        """The reply to `msg`: the handler's, or an Rerror for whatever it raised."""
        try:
            return await handler(msg)
        except _Error as e:
            return Rerror(msg.tag, str(e))
        except OSError as e:  # NinePError, and host errors from local trees
            return Rerror(msg.tag, ename_from_oserror(e))
        except (CodecError, ValueError) as e:
            return Rerror(msg.tag, str(e) or "invalid argument")
        except Exception as e:
            log.exception("%s: %s failed", self.peer, type(msg).__name__)
            return Rerror(msg.tag, f"i/o error: {type(e).__name__}: {e}")

    async def _respond(self, handler: Callable[[Any], Any], msg: Message, req: _Request) -> None:
        reply: Message | None = None
        held = len(msg.data) if isinstance(msg, Twrite) else 0
        self._hold(held)
        try:
            with req.scope:
                reply = await self._answer(handler, msg)
            # flush(5): once flushed (and not answered yet) the request is never answered.
            if reply is not None and not (req.flushed and req.scope.cancelled_caught):
                if isinstance(reply, Rread):
                    self._hold(len(reply.data))
                    held += len(reply.data)
                await self.send(reply, lambda: self._forget(msg.tag, req))
        finally:
            self._hold(-held)
            self._forget(msg.tag, req)
            req.done.set()

    def _hold(self, n: int) -> None:
        """Count `n` more (or fewer) bytes held for this connection, and wake its reader."""
        self.held += n
        self.server.held += n
        if n < 0 and self.drained is not None and not self._holding_too_much():
            self.drained.set()
            self.drained = None

    def _holding_too_much(self) -> bool:
        """Limits.held_bytes: this connection's, or (while it holds any) the server's."""
        if self.held > self.limits.held_bytes:
            return True
        return self.held > 0 and self.server.held > self.limits.server_held_bytes

    def _forget(self, tag: int, req: _Request) -> None:
        if self.pending.get(tag) is req:
            del self.pending[tag]

    async def _flush(self, msg: Tflush, req: _Request, target: _Request | None) -> None:
        try:
            if target is not None:
                await target.done.wait()
            await self.send(Rflush(msg.tag), lambda: self._forget(msg.tag, req))
        finally:
            self._forget(msg.tag, req)
            req.done.set()

    async def send(self, msg: Message, sent: Callable[[], None] | None = None) -> None:
        """Send a reply; `sent` runs once it is its turn on the wire, before the bytes go.

        The tag must be free again by the time the client can see the reply: a
        client reuses it at once, and that next request may be read before this
        task runs again.
        """
        await self._send_parts(self._encode(msg), sent)

    def _encode(self, msg: Message) -> tuple[bytes, ...]:
        try:
            parts = codec.encode_parts(msg)
        except CodecError as e:  # a tree gave us something unencodable: still answer
            log.warning("%s: cannot encode %s: %s", self.peer, type(msg).__name__, e)
            parts = (codec.encode(Rerror(msg.tag, f"i/o error: {e}")),)
        if self.trace is not None:
            self.trace(f"{self.peer} <- {_short(msg)}")
        return parts

    async def _send_parts(self, parts: tuple[bytes, ...], sent: Callable[[], None] | None = None) -> None:
        """Send `parts` after whatever waits in the outbox (replies keep their order)."""
        if self.outbox:
            parts, self.outbox, self.outbox_bytes = (*self.outbox, *parts), [], 0
        await send_frame(self.stream, self.send_lock, parts, sent)
        self.answered = time.perf_counter()

    def _trace_in(self, msg: object) -> None:
        if self.trace is not None:
            self.trace(f"{self.peer} -> {_short(msg)}")

    async def _abort_all(self) -> None:
        """version(5): a new Tversion aborts every outstanding request and clunks every fid."""
        for req in list(self.pending.values()):
            req.flushed = True
            req.scope.cancel()
        for req in list(self.pending.values()):
            await req.done.wait()
        await self._release_all_fids()

    async def _release_all_fids(self) -> None:
        fids, self.fids = self.fids, {}
        self.listing_bytes = 0
        if not fids:
            return
        with trio.move_on_after(self.limits.clunk_timeout) as scope:
            scope.shield = True
            for f in fids.values():
                try:
                    await self._release(f)
                except Exception as e:
                    log.info("%s: releasing a fid: %s", self.peer, e)
        if scope.cancelled_caught:
            log.warning("%s: gave up releasing fids after %ss", self.peer, self.limits.clunk_timeout)

    # --- the session itself ------------------------------------------------------

    async def version(self, m: Tversion) -> None:
        await self._abort_all()
        self.versioned = False
        if m.msize < MIN_MSIZE:
            await self.send(Rerror(m.tag, f"msize {m.msize} too small (at least {MIN_MSIZE})"))
            return
        version = _agree_version(m.version)
        msize = min(m.msize, self.limits.msize)
        if version == VERSION:
            self.versioned = True
            self.msize = msize
            self.reader.msize = msize if self.attached else min(msize, self.limits.handshake_frame)
        await self.send(Rversion(m.tag, msize, version))


# The tree operations each message may call: a message is answered inline only when the
# tree promises that none of them ever waits (Tree.never_blocks).
_IO = (Tread, Twrite)  # inline when the tree says the fid's node never blocks (Tree.io_never_blocks)
_OPS_OF: dict[type, frozenset[str]] = {
    Tattach: frozenset({"attach"}),
    Twalk: frozenset({"walk", "clunk"}),
    Topen: frozenset({"open"}),
    Tcreate: frozenset({"create"}),
    Tread: frozenset({"read", "readdir"}),
    Twrite: frozenset({"write"}),
    Tclunk: frozenset({"clunk", "remove"}),
    Tremove: frozenset({"remove"}),
    Tstat: frozenset({"stat"}),
    Twstat: frozenset({"wstat"}),
}


def _short(msg: object) -> str:
    """One trace line per message, like lib9p's chatty9p; long data is summarised."""
    if isinstance(msg, (Rread, Twrite)):
        data = msg.data
        rest = ", ".join(f"{k}={getattr(msg, k)}" for k in msg.__dataclass_fields__ if k != "data")
        return f"{type(msg).__name__}({rest}, data=<{len(data)} bytes>)"
    return repr(msg)
