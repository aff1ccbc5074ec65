"""The 9P2000 client connection: raw 9P calls over one trio stream.

One reader task routes every R-message to the task waiting on its tag, so any
number of calls may be in flight at once. Tags and fids are allocated and
recycled by small plain objects (`TagPool`, `FidPool`). Cancelling a call sends
Tflush and waits for Rflush before its tag is reused (flush(5)). The
people-facing path API (`ninep.connect`) is built on this in `files.py`.
"""

from __future__ import annotations

import heapq
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

from . import codec
from .codec import CodecError
from .constants import DEFAULT_MSIZE, IOHDRSZ, NOFID, NOTAG, VERSION
from .errors import NinePError, ProtocolError, TimedOut, error_for
from .messages import (
    Message,
    Qid,
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
from .polling import poll_until
from .transport import FrameReader, abort, send_frame

__all__ = ["Connection", "FidPool", "TagPool", "single_error"]

log = logging.getLogger("ninefs.client")
R = TypeVar("R", bound=Message)
KeySpec = Any  # an Ed25519PrivateKey, a path to one, or None (see ninep.auth.resolve_key)

FINISH_SEND = 10.0  # how long a cancelled send may go on, to end the frame it began (send_frame)
FLUSH_TIMEOUT = 5.0  # how long a cancelled call waits for Rflush before giving up the connection
SOON_DELAY = 0.01  # the longest a request sent `soon` waits for another to go out with
POLL_REPLY = 0.001  # seconds a caller polls for its reply before it sleeps (_wait_for)
SOON_BATCH = 32  # `soon` requests that go out with one write, at most


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise a lone exception out of a nursery's ExceptionGroup as itself.

    Our context managers run the caller's body inside a nursery (the reader
    task lives there, and never raises); without this, `except
    FileNotFoundError` around `async with connect(...)` would never match.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        if isinstance(group, BaseExceptionGroup):
            raise
        raise group from group.__cause__


class TagPool:
    """Tags 0..0xFFFE, lowest free first; NOTAG is Tversion's alone."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 0

    def get(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        if self._next >= NOTAG:
            raise NinePError("too many outstanding requests")
        tag = self._next
        self._next += 1
        return tag

    def put(self, tag: int) -> None:
        heapq.heappush(self._free, tag)


class FidPool:
    """Fid numbers, reused lowest first once clunked."""

    def __init__(self, first: int = 0) -> None:
        self._free: list[int] = []
        self._next = first

    def get(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        if self._next >= NOFID:
            raise NinePError("too many fids")
        fid = self._next
        self._next += 1
        return fid

    def put(self, fid: int) -> None:
        heapq.heappush(self._free, fid)

    @property
    def in_use(self) -> int:
        """Fids handed out and not back yet: what a leak would grow."""
        return self._next - len(self._free)


Done = Callable[[Message | NinePError], None]


class _Call:
    __slots__ = ("done", "event", "reply", "sent", "want")

    def __init__(self, want: type[Message] = Message, done: Done | None = None) -> None:
        self.event = trio.Event()
        self.reply: Message | None = None
        self.sent = False  # on the wire: the server may have it
        self.want = want
        self.done = done  # a `soon` request: nobody waits, the reader hands the result here


class Connection:
    """A 9P2000 session over `stream`: `await conn.start(nursery)`, then the 9P calls."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        msize: int = DEFAULT_MSIZE,
        outstanding: int = 128,
        timeout: float | None = None,
        poll: float = POLL_REPLY,
    ) -> None:
        self.stream = stream
        # A deadline for every call (None: none; a read of a cmd(3) file may wait for hours).
        self.timeout = timeout
        # Servers limit requests in flight per connection (ours: 256); stay below instead of
        # collecting "too many outstanding requests" errors when many tasks share a connection.
        self._slots = trio.Semaphore(outstanding)
        self.msize = msize
        self.version = ""
        self.tags = TagPool()
        self.fids = FidPool()
        self._calls: dict[int, _Call] = {}
        self._send_lock = trio.Lock()
        self._reader = FrameReader(stream, msize)
        self.poll = poll  # how long a caller polls for its reply before it sleeps (_wait_for)
        self._closed: BaseException | None = None
        self._closed_event = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._soon: deque[tuple[Message, type[Message], Done]] = deque()
        self._soon_timer = False
        # Requests by type, and "waits": the calls that waited for replies (each at least one
        # round trip), when a test or benchmark counts them (None: not counted).
        self.counts: Counter[str] | None = None

    @classmethod
    async def dial(
        cls,
        address: Any,
        nursery: trio.Nursery,
        *,
        msize: int = DEFAULT_MSIZE,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Connection:
        """Dial `address`, negotiate the version, and run the reader task in `nursery`;
        dial and Tversion within `connect_timeout` (None: `timeout`), see bounds.Opening."""
        from .bounds import Opening

        opening = Opening(address, timeout if connect_timeout is None else connect_timeout)
        return await opening.connection(nursery, msize=msize, timeout=timeout)

    @classmethod
    def never(cls, reason: BaseException) -> Connection:
        """A connection that never came up: closed from the start, `reason` (the dial's
        error) its close_reason. A RemoteTree whose server was absent at start holds one."""
        conn = cls(_NoStream())
        conn._fail(reason)
        return conn

    @property
    def iounit(self) -> int:
        """The most data one Tread or Twrite can carry on this connection."""
        return self.msize - IOHDRSZ

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def close_reason(self) -> BaseException | None:
        """Why the connection was given up (the error every call on it gets), or None."""
        return self._closed

    async def wait_closed(self) -> BaseException:
        """Wait until the connection is given up, by either side; why.

        For a watcher that must know of a loss when it happens, not at the next call
        (RemoteTree redials in the background and fails its calls at once meanwhile).
        """
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    # --- lifetime -------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Negotiate the version and start the reader task in `nursery`."""
        await self._send(Tversion(NOTAG, self.msize, VERSION))
        try:
            frame = await self._reader.next_frame()
        except CodecError as e:  # an HTTP server, say: its first "frame" is far too large
            raise ProtocolError(f"not a 9P server: {e}") from None
        if frame is None:
            raise ProtocolError("connection closed: server hung up during Tversion")
        try:
            reply = codec.decode(frame)
        except CodecError as e:
            raise ProtocolError(f"bad Rversion: {e}") from None
        if isinstance(reply, Rerror):
            raise error_for(reply.ename)
        if not isinstance(reply, Rversion) or reply.tag != NOTAG:
            raise ProtocolError(f"expected Rversion, got {type(reply).__name__}")
        if reply.version != VERSION:
            raise ProtocolError(f"server speaks {reply.version!r}, not {VERSION}")
        if reply.msize > self.msize or reply.msize < 128:
            raise ProtocolError(f"server chose a bad msize {reply.msize}")
        self.msize = reply.msize
        self._reader.msize = reply.msize
        self.version = reply.version
        self._nursery = nursery
        nursery.start_soon(self._read_loop)

    async def aclose(self) -> None:
        if self._soon and self._closed is None:
            with trio.move_on_after(1, shield=True):  # the clunks of closed files, say
                while self._soon:
                    await self._send_parts([])
        self._fail(ProtocolError("connection closed"))
        await self.stream.aclose()

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._reader.next_frame()
                if frame is None:
                    raise ProtocolError("connection closed by server")
                try:
                    reply = codec.decode(frame)
                except CodecError as e:
                    if e.tag is not None and e.tag in self._calls:
                        log.warning("undecodable reply to tag %d: %s", e.tag, e)
                        self._deliver(e.tag, Rerror(e.tag, f"i/o error: bad reply: {e}"))
                        continue
                    raise ProtocolError(f"bad frame from server: {e}") from None
                self._deliver(reply.tag, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, CodecError) as e:
            err = e if isinstance(e, NinePError) else ProtocolError(f"connection closed: {e}")
            self._fail(err)
        except trio.Cancelled:
            # The scope that holds this connection is going (a deadline over a whole session,
            # say): no reply can be read any more, so none is waited for, a Tflush's included
            # (else each cancelled call would wait FLUSH_TIMEOUT for an Rflush we cannot read).
            self._fail(ProtocolError("connection closed"))
            raise

    def _deliver(self, tag: int, reply: Message) -> None:
        call = self._calls.get(tag)
        if call is None:
            # A tag is ours until its reply (or Rflush) is in, so this server has lost track
            # of our tags: the reply some caller waits for may never come. Close, don't hang.
            raise ProtocolError(f"protocol botch: {type(reply).__name__} for tag {tag}, which no request has")
        call.reply = reply
        call.event.set()
        if call.done is not None:
            self._release_tag(tag)
            self._done(call)

    def _done(self, call: _Call) -> None:
        try:
            call.done(self._result(call, call.want) if call.reply is not None else self._lost())  # type: ignore[misc]
        except ProtocolError as e:
            call.done(e)  # type: ignore[misc]
        except Exception:
            log.exception("after a reply to a request sent soon")

    def _lost(self) -> ProtocolError:
        return ProtocolError(str(self._closed or "connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
            self._closed_event.set()
        for tag, call in list(self._calls.items()):
            call.event.set()
            if call.done is not None and call.reply is None:
                self._release_tag(tag)
                self._done(call)
        while self._soon:
            _, _, done = self._soon.popleft()
            done(self._lost())

    async def _send(self, msg: Message) -> None:
        await send_frame(self.stream, self._send_lock, codec.encode_parts(msg), finish_within=FINISH_SEND)

    async def _send_parts(self, parts: list[bytes]) -> None:
        """Send `parts` in one write, with the `soon` requests waiting when our turn comes
        (taken only then: a send cancelled while it waits for the lock leaves them queued)."""

        def with_soon() -> None:
            if self._soon:
                parts[:0] = self._take_soon()

        try:
            await send_frame(self.stream, self._send_lock, parts, with_soon, finish_within=FINISH_SEND)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._fail(ProtocolError(f"connection closed: {e}"))
            raise ProtocolError(f"connection closed: {e}") from None

    # --- requests nobody waits for ----------------------------------------------------

    def soon(self, msg: Message, want: type[Message], done: Done | None = None) -> None:
        """Send `msg` with the next requests this connection sends, or SOON_DELAY from now.

        For requests nobody waits for, such as the Tclunk of a closed file. Riding
        along with the next write, they cost neither side a system call or a wakeup
        of their own, and they still reach the server before anything sent after them.
        `done` (if any) gets the reply of the wanted type or the NinePError, in the
        reader task; it must not block.
        """
        done = done or _ignore
        if self.counts is not None:
            self.counts[type(msg).__name__] += 1
        if self._closed is not None:
            done(self._lost())
            return
        self._soon.append((msg, want, done))
        if not self._soon_timer and self._nursery is not None:
            try:
                self._nursery.start_soon(self._send_soon_later)
            except RuntimeError:  # the nursery has closed: the next write (or aclose) takes it
                return
            self._soon_timer = True

    def _take_soon(self) -> list[bytes]:
        """The frames of up to SOON_BATCH waiting `soon` requests, their tags taken."""
        parts: list[bytes] = []
        soon = self._soon
        for _ in range(min(len(soon), SOON_BATCH)):
            msg, want, done = soon.popleft()
            tag = self.tags.get()
            call = self._calls[tag] = _Call(want, done)
            call.sent = True
            parts.extend(codec.encode_parts(_with_tag(msg, tag)))
        return parts

    async def _send_soon_later(self) -> None:
        try:
            await trio.sleep(SOON_DELAY)
            while self._soon and self._closed is None:
                await self._send_parts([])
        except ProtocolError:
            pass  # _fail told every `done`
        finally:
            self._soon_timer = False

    # --- the RPC ----------------------------------------------------------------------

    async def rpc(self, msg: Message, want: type[R]) -> R:
        """Send `msg` (its tag is replaced) and wait for a reply of type `want`."""
        (reply,) = await self.pipeline((msg, want))
        if isinstance(reply, NinePError):
            raise reply
        return reply  # type: ignore[return-value]

    async def pipeline(self, *requests: tuple[Message, type[Message]]) -> list[Message | NinePError]:
        """Send `requests` back to back in one write, then wait for every reply.

        Each result is the reply of the wanted type, or the NinePError it came back as
        (returned, not raised). Requests that depend on each other (a walk, then an open
        of the fid the walk makes) save their round trips this way, but intro(5) lets a
        server handle them in any order: a caller retries, in order, a dependent
        request that failed.
        """
        return await self.windowed(requests, len(requests))

    async def windowed(
        self, requests: Sequence[tuple[Message, type[Message]]], window: int, *, stop_on_error: bool = False
    ) -> list[Message | NinePError]:
        """Send `requests` with at most `window` of them unanswered (a sliding window: each
        reply lets the next one go; those that can go together go in one write). The
        results, in order, as `pipeline` gives them; with `stop_on_error`, nothing more is
        sent after an error, and the results end with it. No task per request: the
        replies come in order, so the oldest is the one to wait for.
        """
        if self._closed is not None:
            raise ProtocolError(str(self._closed))
        if self.counts is not None:
            self.counts["waits"] += 1
            self.counts.update(type(m).__name__ for m, _ in requests)
        # One slot a call, however many requests it has in flight (a few): taking several
        # one by one could leave every slot with callers that each wait for one more.
        slots = self._slots
        try:
            slots.acquire_nowait()  # the common case costs no pass through the scheduler
        except trio.WouldBlock:
            await slots.acquire()
        try:
            if self.timeout is None:
                return await self._exchange(requests, window, stop_on_error, None)
            with trio.CancelScope() as deadline:  # self.timeout for each step, not for the whole
                return await self._exchange(requests, window, stop_on_error, deadline)
            what = "+".join(sorted({type(m).__name__ for m, _ in requests}))
            raise TimedOut(f"timed out: no answer to {what} in {self.timeout} s")
        finally:
            slots.release()

    async def _exchange(
        self,
        requests: Sequence[tuple[Message, type[Message]]],
        window: int,
        stop_on_error: bool,
        deadline: trio.CancelScope | None,
    ) -> list[Message | NinePError]:
        out: list[Message | NinePError] = []
        pending: deque[tuple[int, _Call, type[Message]]] = deque()
        todo, sent = len(requests), 0
        try:
            while sent < todo or pending:
                if deadline is not None:
                    deadline.deadline = trio.current_time() + self.timeout  # type: ignore[operator]
                if sent < todo and len(pending) < window:
                    batch: list[_Call] = []
                    parts: list[bytes] = []
                    while sent < todo and len(pending) < window:
                        msg, want = requests[sent]
                        sent += 1
                        tag = self.tags.get()
                        call = self._calls[tag] = _Call()
                        pending.append((tag, call, want))
                        batch.append(call)
                        try:
                            parts.extend(codec.encode_parts(_with_tag(msg, tag)))
                        except (CodecError, struct.error) as e:  # an offset of 2**64, say
                            raise NinePError(f"invalid argument: {e}") from None
                    await self._send_parts(parts)
                    for call in batch:
                        call.sent = True
                tag, call, want = pending[0]
                if not call.event.is_set():
                    # (Event.wait on one that is set still makes a checkpoint: a pass through
                    # the scheduler for each reply already in, two more for a walk-open-read.)
                    await self._wait_for(call)
                pending.popleft()
                self._release_tag(tag)
                result = self._result(call, want)
                if want is Rread and isinstance(result, Rread):
                    asked = requests[len(out)][0].count  # type: ignore[attr-defined]
                    if len(result.data) > asked:  # read(5): at most count bytes
                        result = NinePError(
                            f"i/o error: protocol botch: Rread of {len(result.data)} bytes for a read of {asked}"
                        )
                out.append(result)
                if stop_on_error and isinstance(result, NinePError):
                    todo = sent
        except BaseException:
            # flush(5): a request the server has is flushed, and its tag kept until
            # Rflush says it is free; only then may another request use it.
            with trio.CancelScope(shield=True):
                for tag, call, _ in pending:
                    if call.sent and not call.event.is_set() and self._closed is None:
                        await self._flush(tag)
                    else:
                        self._release_tag(tag)
            raise
        return out

    async def _wait_for(self, call: _Call) -> None:
        """Until `call`'s reply is in: polled for up to `poll` seconds (most replies come in
        well under a millisecond, and a wake-up from epoll costs more than polling for
        them: poll_until), then asleep (a read of a cmd(3) file may wait for hours)."""
        if self.poll > 0 and await poll_until(call.event.is_set, time.perf_counter() + self.poll):
            return
        await call.event.wait()

    def _result(self, call: _Call, want: type[Message]) -> Message | NinePError:
        reply = call.reply
        if reply is None:
            raise self._lost()
        if isinstance(reply, want):
            return reply
        if isinstance(reply, Rerror):
            return error_for(reply.ename)
        raise ProtocolError(f"expected {want.__name__}, got {type(reply).__name__}")

    def _release_tag(self, tag: int) -> None:
        if self._calls.pop(tag, None) is not None:
            self.tags.put(tag)

    async def _flush(self, oldtag: int) -> None:
        ftag = self.tags.get()
        fcall = _Call()
        self._calls[ftag] = fcall
        try:
            with trio.move_on_after(FLUSH_TIMEOUT) as scope:
                await self._send(Tflush(ftag, oldtag))
                await fcall.event.wait()
            if scope.cancelled_caught:  # a server that never answers a flush cannot be trusted
                log.warning("no Rflush for tag %d after %ss; closing", oldtag, FLUSH_TIMEOUT)
                self._fail(TimedOut("timed out: no answer to Tflush"))
                await abort(self.stream)  # what it has not sent yet must never arrive
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._release_tag(ftag)
            self._release_tag(oldtag)

    # --- the 9P calls, one method each -------------------------------------------------

    async def auth(self, afid: int, uname: str, aname: str) -> Qid:
        return (await self.rpc(Tauth(0, afid, uname, aname), Rauth)).aqid

    async def authenticate(self, uname: str, aname: str, key: KeySpec = None) -> int:
        """Run the auth exchange (ninep/auth.py) if the server wants it; the afid, or NOFID.

        `key` is a private key, a path to one, or None for $NINEFS_KEY or the default key
        file when it exists. The caller clunks the afid after Tattach.
        """
        from . import auth

        afid = self.fids.get()
        try:
            await self.auth(afid, uname, aname)
        except NinePError:
            # Like Plan 9's clients: a server that refuses Tauth (for any reason) is tried
            # without; if it does want authentication, Tattach will say so.
            self.fids.put(afid)
            return NOFID
        try:
            private = auth.resolve_key(key)
            if private is None:
                raise NinePError(f"authentication required: {auth.no_key_reason()}")
            challenge = await self.read(afid, 0, 256)
            binding = auth.channel_binding(
                self.stream.getpeercert(binary_form=True) if isinstance(self.stream, trio.SSLStream) else None
            )
            await self.write(afid, 0, auth.client_response(private, challenge, uname, aname, binding))
            await self.read(afid, 0, 256)  # "ok USER", or the server's reason as Rerror
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.clunk(afid)
                except NinePError:
                    pass
            self.fids.put(afid)
            raise
        return afid

    async def attach_as(self, uname: str, aname: str, key: KeySpec = None) -> tuple[int, Qid]:
        """Authenticate if the server wants it, attach a new fid, let the afid go: (fid, qid)."""
        afid = await self.authenticate(uname, aname, key)
        fid = self.fids.get()
        try:
            qid = await self.attach(fid, uname, aname, afid)
        except BaseException:
            self.fids.put(fid)
            raise
        finally:
            if afid != NOFID:
                self.clunk_soon(afid)  # with the next request: no round trip of its own at start
        return fid, qid

    async def attach(self, fid: int, uname: str | None = None, aname: str = "", afid: int = NOFID) -> Qid:
        if uname is None:
            from . import auth

            uname = auth.local_user()
        return (await self.rpc(Tattach(0, fid, afid, uname, aname), Rattach)).qid

    async def walk(self, fid: int, newfid: int, names: Sequence[str]) -> list[Qid]:
        """One Twalk (at most 16 names); a short list means a partial walk, newfid unset."""
        return list((await self.rpc(Twalk(0, fid, newfid, tuple(names)), Rwalk)).qids)

    async def open(self, fid: int, mode: int) -> tuple[Qid, int]:
        r = await self.rpc(Topen(0, fid, mode), Ropen)
        return r.qid, r.iounit

    async def create(self, fid: int, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        r = await self.rpc(Tcreate(0, fid, name, perm, mode), Rcreate)
        return r.qid, r.iounit

    async def read(self, fid: int, offset: int, count: int) -> bytes:
        return bytes((await self.rpc(Tread(0, fid, offset, count), Rread)).data)

    async def read_view(self, fid: int, offset: int, count: int) -> bytes:
        """Like `read`, but large data may be a view of the reply frame (bytes-like, no copy)."""
        return (await self.rpc(Tread(0, fid, offset, count), Rread)).data

    async def write(self, fid: int, offset: int, data: bytes) -> int:
        return (await self.rpc(Twrite(0, fid, offset, data), Rwrite)).count

    async def clunk(self, fid: int) -> None:
        await self.rpc(Tclunk(0, fid), Rclunk)

    def clunk_soon(self, fid: int) -> None:
        """Clunk `fid` with the next requests (`soon`); it is free for reuse once Rclunk is in."""
        self.soon(Tclunk(0, fid), Rclunk, lambda _: self.fids.put(fid))

    async def remove(self, fid: int) -> None:
        await self.rpc(Tremove(0, fid), Rremove)

    async def stat(self, fid: int) -> Stat:
        return (await self.rpc(Tstat(0, fid), Rstat)).stat

    async def wstat(self, fid: int, stat: Stat) -> None:
        await self.rpc(Twstat(0, fid, stat), Rwstat)

    async def flush(self, oldtag: int) -> None:
        await self.rpc(Tflush(0, oldtag), Rflush)


class _NoStream(trio.abc.Stream):
    """The stream of a Connection.never: nothing was ever connected."""

    async def send_all(self, data: Any) -> None:
        raise trio.ClosedResourceError("never connected")

    async def wait_send_all_might_not_block(self) -> None:
        raise trio.ClosedResourceError("never connected")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise trio.ClosedResourceError("never connected")

    async def aclose(self) -> None:
        pass


def _with_tag(msg: Message, tag: int) -> Any:
    # Messages are frozen; rebuilding through __class__ is cheaper than dataclasses.replace.
    values = [getattr(msg, f) for f in msg.__dataclass_fields__]
    values[0] = tag
    return msg.__class__(*values)


def _ignore(_: Message | NinePError) -> None:
    pass
