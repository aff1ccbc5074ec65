"""The 9P2000 server: exports any `Tree` to many connections at once.

Written once, like lib9p's srv loop. One task reads each connection; every
request then runs as its own task in that connection's nursery with its own
cancel scope, so a slow read never blocks a stat, and Tflush cancels exactly
the request it names (flush(5)). Per connection we keep the fid table, the
negotiated msize and the limits; a connection that misbehaves is answered with
Rerror or closed, and never disturbs another.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from . import codec
from .auth import Authenticator, AuthSession
from .codec import CodecError
from .constants import (
    DMAUTH,
    IOHDRSZ,
    MAXWELEM,
    MIN_MSIZE,
    NOFID,
    NOTAG,
    OACCMODE,
    OEXEC,
    ORCLOSE,
    ORDWR,
    OREAD,
    OTRUNC,
    OWRITE,
    VERSION,
)
from .errors import NinePError, ename_from_oserror
from .limits import Admission, Limits, Slot
from .messages import (
    Message,
    Rattach,
    Rauth,
    Rclunk,
    Rcreate,
    Rerror,
    Rflush,
    Ropen,
    Rread,
    Rremove,
    Rstat,
    Rversion,
    Rwalk,
    Rwrite,
    Rwstat,
    Stat,
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
from .transport import Address, FrameReader, keepalive, listener_address, listeners, parse_address, send_frame
from .tree import Tree, check_name

__all__ = ["Limits", "Server"]

log = logging.getLogger("ninefs.server")

Trace = Callable[[str], None]


OUTBOX = 32  # frame parts of inline replies held at most before they are sent
OUTBOX_BYTES = 256 << 10  # ... and bytes: a client that does not read must not make us hold more
MAX_OFFSET = (1 << 63) - 1  # offsets past this are no file position on the host (off_t)


class _Error(Exception):
    """A request the server itself refuses (not the tree): becomes Rerror."""


@dataclass(slots=True)
class _Fid:
    node: Any
    uname: str
    omode: int | None = None  # None: not open
    is_dir: bool = False
    # directory reads (read(5)): the encoded entries, and where the next read must start
    dir_entries: list[bytes] = field(default_factory=list)
    dir_index: int = 0
    dir_offset: int = 0
    dir_bytes: int = 0  # of dir_entries, counted in the connection's listing_bytes
    auth: AuthSession | None = None  # an afid (attach(5)): reads and writes run the exchange


@dataclass(slots=True)
class _Request:
    scope: trio.CancelScope
    done: trio.Event
    flushed: bool = False


class Server:
    """Serves `tree` over 9P2000. `serve(address)` runs until cancelled."""

    def __init__(
        self,
        tree: Tree,
        *,
        limits: Limits = Limits(),
        trace: Trace | None = None,
        auth: Authenticator | None = None,
        host_key: str | None = None,
    ) -> None:
        self.tree = tree
        self.auth = auth  # None: no authentication; else every attach must prove a key
        self.host_key = host_key  # for tls! addresses: the key the TLS certificate is made from
        self.tls: ssl.SSLContext | None = None
        self.limits = limits
        self.trace = trace
        self.connections = 0
        self.addresses: list[Address] = []
        self.admission = Admission(limits)
        self.held = 0  # bytes held by every connection's requests and unsent replies (Limits.held_bytes)

    async def serve(
        self,
        address: str | Address,
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `address` and serve every connection; started() gives the bound addresses."""
        addr = parse_address(address, listening=True) if isinstance(address, str) else address
        if addr.network == "tls" and self.tls is None:
            from .tls import server_context

            self.tls = server_context(self.host_key) if self.host_key else server_context()
        lsn = await listeners(addr)
        await self.serve_listeners(lsn, task_status=task_status, network=addr.network)

    async def serve_listeners(
        self,
        lsn: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
        network: str = "tcp",
    ) -> None:
        self.addresses = [listener_address(x, network) for x in lsn]
        async with trio.open_nursery() as nursery:
            for x in lsn:
                nursery.start_soon(self._accept_loop, x, nursery)
            task_status.started(self.addresses)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:  # EMFILE and friends: wait and retry, never die
                    log.warning("accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._serve_accepted, stream)

    async def _serve_accepted(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        slot = self.admission.admit(peer.rpartition("!")[0] or peer)
        if slot is None:
            log.warning(
                "%s: refused: %d connections open, none still in its handshake", peer, len(self.admission)
            )
            await trio.aclose_forcefully(stream)
            return
        try:
            with slot.scope:
                await self._guarded(peer, self._serve_socket, stream, peer, slot)
        finally:
            self.admission.release(slot)
            await trio.aclose_forcefully(stream)
        if slot.scope.cancelled_caught:
            if slot.evicted:
                log.warning("%s: closed in its handshake, to make room for a new connection", peer)
            else:
                log.warning("%s: closed: handshake not done within %ss", peer, self.limits.handshake_timeout)

    async def _serve_socket(self, stream: trio.SocketStream, peer: str, slot: Slot) -> None:
        if isinstance(stream.socket.getsockname(), tuple):
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            keepalive(stream)  # a client that vanished without a FIN is noticed, its fids released
        conn: trio.abc.Stream = stream
        if self.tls is not None:
            conn = trio.SSLStream(stream, self.tls, server_side=True)
            await conn.do_handshake()  # within the slot's handshake deadline
        await self._serve_stream(conn, peer, slot)

    async def handle_stream(self, stream: trio.abc.Stream, peer: str = "?") -> None:
        """Serve one connection until it closes; usable with any trio stream."""
        await self._guarded(peer, self._serve_stream, stream, peer, None)

    async def _guarded(self, peer: str, serve: Callable[..., Any], *args: Any) -> None:
        """A connection is a fault boundary: whatever it raises ends it, and only it.

        Resets, TLS aborts, timeouts and protocol errors arrive plain or grouped by the
        connection's nursery; each gets one log line. Anything else is a bug of ours that
        this connection met: logged with its traceback, and the server goes on. Only
        cancellation (and KeyboardInterrupt) passes through.
        """
        try:
            await serve(*args)
        except* _LOST as group:
            e = _first(group)
            why = str(e) if str(e).startswith("connection") else f"connection lost: {type(e).__name__}: {e}"
            log.info("%s: %s", peer, why)
        except* Exception:
            log.exception("%s: connection failed", peer)

    async def _serve_stream(self, stream: trio.abc.Stream, peer: str, slot: Slot | None) -> None:
        self.connections += 1
        log.info("%s: connected", peer)
        try:
            try:
                await _Connection(self, stream, peer, slot).run()
            finally:
                await _close(stream)
        finally:
            self.connections -= 1
            log.info("%s: disconnected", peer)


# What a connection may raise when its peer goes away or misbehaves (ssl.SSLError is an OSError).
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError, CodecError)


def _first(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


async def _close(stream: trio.abc.Stream) -> None:
    """Close politely (TLS close_notify) if that is quick, else at once."""
    with trio.move_on_after(1) as scope:
        await stream.aclose()
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"tcp!{name[0]}!{name[1]}"
    return f"unix!{name or '-'}"


class _Connection:
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
        while True:
            if self.outbox and (
                len(self.outbox) >= OUTBOX or self.outbox_bytes >= OUTBOX_BYTES or not self.reader.has_frame()
            ):
                await self._send_parts(())  # nothing more to answer at once: the replies go
            while self._holding_too_much():  # replies the client does not read: read no more
                self.drained = trio.Event()
                with trio.move_on_after(1):  # the server's total may fall through others too
                    await self.drained.wait()
            try:
                frame = await self.reader.next_frame()
            except CodecError as e:
                log.warning("%s: closing: %s", self.peer, e)
                return
            if frame is None:
                return
            try:
                msg = codec.decode(frame)
            except CodecError as e:
                if e.tag is None:
                    log.warning("%s: closing: %s", self.peer, e)
                    return
                log.info("%s: bad message: %s", self.peer, e)
                self._trace_in(f"<malformed tag {e.tag}>")
                await self.send(Rerror(e.tag, f"bad message: {e}"))
                continue
            self._trace_in(msg)
            await self._dispatch(msg)

    async def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, Tversion):
            await self.version(msg)
            return
        if not self.versioned:
            await self.send(Rerror(msg.tag, "version: Tversion must come first"))
            return
        if msg.tag in self.pending or msg.tag == NOTAG:
            await self.send(Rerror(msg.tag, f"tag {msg.tag} already in use"))
            return
        if len(self.pending) >= self.limits.outstanding:
            await self.send(Rerror(msg.tag, "too many outstanding requests"))
            return
        req = _Request(trio.CancelScope(), trio.Event())
        if isinstance(msg, Tflush):
            target = self.pending.get(msg.oldtag)  # looked up first: a flush may name itself
            self.pending[msg.tag] = req
            if target is not None:
                target.flushed = True
                target.scope.cancel()
            self.nursery.start_soon(self._flush, msg, req, target)
            return
        handler = self.handlers.get(type(msg))
        if handler is None:  # an R-message sent to us
            await self.send(Rerror(msg.tag, f"unexpected {type(msg).__name__}"))
            return
        if type(msg) in self.inline or (type(msg) in _IO and self._io_inline(msg.fid)):  # type: ignore[attr-defined]
            # The tree never waits for this one: answer it here, without a task of its own.
            # Nothing else is read meanwhile, so no flush can be waiting for it. The reply
            # waits in the outbox while more requests are already here: requests sent
            # together (a walk and an open) are answered together, in one write.
            parts = self._encode(await self._answer(handler, msg))
            self.outbox.extend(parts)
            self.outbox_bytes += sum(len(p) for p in parts)
            return
        self.pending[msg.tag] = req
        self.nursery.start_soon(self._respond, handler, msg, req)

    def _io_inline(self, fid: int) -> bool:
        f = self.fids.get(fid)
        return f is not None and f.auth is None and not f.is_dir and self.tree.io_never_blocks(f.node)

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

    async def _release(self, f: _Fid) -> None:
        if f.auth is not None:
            return
        if f.omode is not None and f.omode & ORCLOSE:
            await self.tree.remove(f.node)
        else:
            await self.tree.clunk(f.node)

    # --- the messages ------------------------------------------------------------

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

    async def auth(self, m: Tauth) -> Message:
        if self.server.auth is None:
            raise _Error("authentication not required")
        self._check_names(m.uname, m.aname)
        self._new_fid_check(m.afid)
        if sum(1 for f in self.fids.values() if f.auth is not None) >= self.limits.auth_fids:
            raise _Error(f"too many fids: at most {self.limits.auth_fids} authentication fids at once")
        tls = isinstance(self.stream, trio.SSLStream)
        binding = getattr(self.server.tls, "ninefs_binding", b"") if tls else b""
        session = self.server.auth.start(m.uname, m.aname, binding)
        self.fids[m.afid] = _Fid(None, m.uname, omode=ORDWR, auth=session)
        return Rauth(m.tag, session.qid)

    def _fid(self, fid: int, *, auth_ok: bool = False) -> _Fid:
        try:
            f = self.fids[fid]
        except KeyError:
            raise _Error("fid unknown or out of range") from None
        if f.auth is not None and not auth_ok:
            raise _Error("bad use of fid: an authentication fid")
        return f

    def _new_fid_check(self, fid: int) -> None:
        if fid == NOFID:
            raise _Error("fid unknown or out of range")
        if fid in self.fids:
            raise _Error("fid already in use")
        if len(self.fids) >= self.limits.fids:
            raise _Error(f"too many fids (at most {self.limits.fids} per connection)")

    def _check_names(self, uname: str, aname: str) -> None:
        if len(uname.encode()) > self.limits.uname_bytes:
            raise _Error(f"invalid argument: uname longer than {self.limits.uname_bytes} bytes")
        if len(aname.encode()) > self.limits.aname_bytes:
            raise _Error(f"invalid argument: aname longer than {self.limits.aname_bytes} bytes")

    def _check_name(self, name: str) -> None:
        if len(name.encode()) > self.limits.name_bytes:
            raise _Error(f"file name too long: {len(name.encode())} bytes (at most {self.limits.name_bytes})")

    async def attach(self, m: Tattach) -> Message:
        self._check_names(m.uname, m.aname)
        self._new_fid_check(m.fid)
        uname = m.uname
        if self.server.auth is None:
            if m.afid != NOFID:
                raise _Error("authentication not required")
        else:
            if m.afid == NOFID:
                raise _Error("authentication required: Tauth first (ninefs key gen; --key)")
            session = self._fid(m.afid, auth_ok=True).auth
            if session is None or session.user is None:
                raise _Error("authentication failed: afid not authenticated")
            if (session.uname, session.aname) != (m.uname, m.aname):
                raise _Error("authentication failed: afid was for another uname or aname")
            uname = session.user
        node = await self.tree.attach(uname, m.aname)
        self._new_fid_check(m.fid)  # another request may have taken it meanwhile
        self.fids[m.fid] = _Fid(node, uname, is_dir=node.qid.is_dir)
        if not self.attached:  # the handshake is done: full-size frames from now on
            self.attached = True
            self.reader.msize = self.msize
            if self.slot is not None:
                self.slot.handshake_done()
        return Rattach(m.tag, node.qid)

    async def walk(self, m: Twalk) -> Message:
        f = self._fid(m.fid)
        if f.omode is not None:
            raise _Error("cannot walk an open fid")
        if m.newfid != m.fid:
            self._new_fid_check(m.newfid)
        if len(m.wnames) > MAXWELEM:
            raise _Error(f"too many names in walk ({len(m.wnames)} > {MAXWELEM})")
        for name in m.wnames:
            if not name or "/" in name:
                raise _Error(f"file does not exist: bad name {name!r}")
            self._check_name(name)
        qids, node = await self.tree.walk(f.node, m.wnames)
        if node is None:  # walk(5): partial walk, newfid not created, fid not moved
            return Rwalk(m.tag, tuple(qids))
        if m.newfid == m.fid:
            if self.fids.get(m.fid) is f:
                self.fids[m.fid] = _Fid(node, f.uname, is_dir=node.qid.is_dir)
                await self.tree.clunk(f.node)
            else:  # clunked while we walked
                await self.tree.clunk(node)
                raise _Error("fid unknown or out of range")
        else:
            if m.newfid in self.fids:
                await self.tree.clunk(node)
                raise _Error("fid already in use")
            self.fids[m.newfid] = _Fid(node, f.uname, is_dir=node.qid.is_dir)
        return Rwalk(m.tag, tuple(qids))

    def _iounit(self, iounit: int) -> int:
        limit = self.msize - IOHDRSZ
        return limit if iounit <= 0 or iounit > limit else iounit

    async def open(self, m: Topen) -> Message:
        f = self._fid(m.fid)
        if f.omode is not None:
            raise _Error("file already open")
        if m.mode & ~(OACCMODE | OTRUNC | ORCLOSE):
            raise _Error(f"invalid open mode {m.mode:#x}")
        if f.is_dir and (m.mode & OACCMODE not in (OREAD, OEXEC) or m.mode & (OTRUNC | ORCLOSE)):
            raise _Error("is a directory")
        f.omode = m.mode  # claim it before awaiting, so two Topens cannot both succeed
        try:
            qid, iounit = await self.tree.open(f.node, m.mode)
        except BaseException:
            f.omode = None
            raise
        f.is_dir = qid.is_dir
        return Ropen(m.tag, qid, self._iounit(iounit))

    async def create(self, m: Tcreate) -> Message:
        f = self._fid(m.fid)
        if f.omode is not None:
            raise _Error("file already open")
        if not f.is_dir:
            raise _Error("not a directory")
        self._check_name(m.name)
        try:
            check_name(m.name)
        except NinePError as e:
            raise _Error(f"create prohibited: {e.ename}") from None
        if m.mode & ~(OACCMODE | OTRUNC | ORCLOSE):
            raise _Error(f"invalid open mode {m.mode:#x}")
        f.omode = m.mode
        try:
            qid, iounit = await self.tree.create(f.node, m.name, m.perm, m.mode)
        except BaseException:
            f.omode = None
            raise
        f.is_dir = qid.is_dir
        return Rcreate(m.tag, qid, self._iounit(iounit))

    async def read(self, m: Tread) -> Message:
        f = self._fid(m.fid, auth_ok=True)
        if f.auth is not None:
            return Rread(m.tag, f.auth.read(m.count))
        if f.omode is None:
            raise _Error("file not open")
        if f.omode & OACCMODE == OWRITE:
            raise _Error("permission denied: file not open for reading")
        count = min(m.count, self.msize - IOHDRSZ)
        if m.offset > MAX_OFFSET:
            raise _Error(f"invalid argument: offset {m.offset} past the largest file offset")
        if f.is_dir:
            return Rread(m.tag, await self._read_dir(f, m.offset, count))
        return Rread(m.tag, await self.tree.read(f.node, m.offset, count))

    async def _read_dir(self, f: _Fid, offset: int, count: int) -> bytes:
        if offset == 0:
            entries = [codec.encode_stat(st) for st in await self.tree.readdir(f.node)]
            self._drop_listing(f)
            size = sum(map(len, entries))
            if self.listing_bytes and self.listing_bytes + size > self.limits.listing_bytes:
                raise _Error(
                    f"too many open files: directory listings over {self.limits.listing_bytes >> 20} MiB "
                    "held on this connection; clunk some"
                )
            f.dir_entries, f.dir_index, f.dir_offset, f.dir_bytes = entries, 0, 0, size
            self.listing_bytes += size
        elif offset != f.dir_offset:  # read(5): no seeking in directories
            raise _Error("bad offset in directory read")
        out: list[bytes] = []
        size = 0
        i = f.dir_index
        entries = f.dir_entries
        while i < len(entries) and size + len(entries[i]) <= count:
            size += len(entries[i])
            out.append(entries[i])
            i += 1
        if not out and i < len(entries):
            raise _Error(f"read count {count} too small for a directory entry")
        f.dir_index = i
        f.dir_offset += size
        if i == len(entries):  # all read: what is left to know is where it ended
            self._drop_listing(f)
        return b"".join(out)

    def _drop_listing(self, f: _Fid) -> None:
        self.listing_bytes -= f.dir_bytes
        f.dir_entries, f.dir_index, f.dir_bytes = [], 0, 0

    async def write(self, m: Twrite) -> Message:
        f = self._fid(m.fid, auth_ok=True)
        if f.auth is not None:
            assert self.server.auth is not None
            return Rwrite(m.tag, self.server.auth.write(f.auth, bytes(m.data)))
        if f.omode is None:
            raise _Error("file not open")
        if f.is_dir:
            raise _Error("is a directory")
        if f.omode & OACCMODE not in (OWRITE, ORDWR):
            raise _Error("permission denied: file not open for writing")
        if m.offset + len(m.data) > MAX_OFFSET:
            raise _Error(f"file too large: offset {m.offset} past the largest file offset")
        return Rwrite(m.tag, await self.tree.write(f.node, m.offset, m.data))

    async def clunk(self, m: Tclunk) -> Message:
        f = self.fids.pop(m.fid, None)  # clunk(5): the fid is gone even if this fails
        if f is None:
            raise _Error("fid unknown or out of range")
        self._drop_listing(f)
        await self._release(f)
        return Rclunk(m.tag)

    async def remove(self, m: Tremove) -> Message:
        f = self.fids.pop(m.fid, None)  # remove(5): clunked even if the remove fails
        if f is None:
            raise _Error("fid unknown or out of range")
        self._drop_listing(f)
        await self.tree.remove(f.node)
        return Rremove(m.tag)

    async def stat(self, m: Tstat) -> Message:
        f = self._fid(m.fid, auth_ok=True)
        if f.auth is not None:
            return Rstat(
                m.tag, Stat(qid=f.auth.qid, mode=DMAUTH | 0o600, name="#a", uid=f.uname, gid=f.uname)
            )
        return Rstat(m.tag, await self.tree.stat(f.node))

    async def wstat(self, m: Twstat) -> Message:
        self._check_name(m.stat.name)
        await self.tree.wstat(self._fid(m.fid).node, m.stat)
        return Rwstat(m.tag)


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


def _agree_version(proposed: str) -> str:
    """version(5): we speak 9P2000; "9P2000.x" we do not speak is answered "9P2000"."""
    if proposed.startswith(VERSION):
        return VERSION
    if proposed.startswith("9P"):
        digits = proposed[2:].split(".")[0]
        if digits.isdigit() and int(digits) > 2000:
            return VERSION
    return "unknown"


def _short(msg: object) -> str:
    """One trace line per message, like lib9p's chatty9p; long data is summarised."""
    if isinstance(msg, (Rread, Twrite)):
        data = msg.data
        rest = ", ".join(f"{k}={getattr(msg, k)}" for k in msg.__dataclass_fields__ if k != "data")
        return f"{type(msg).__name__}({rest}, data=<{len(data)} bytes>)"
    return repr(msg)
