"""One mount's conversation with the kernel over /dev/fuse, on trio.

The session answers INIT, then serves requests with a pool of worker tasks, without
libfuse. One worker at a time is the reader: it reads a request (waiting only when
none is queued) and runs the handler itself, so a request answered from memory (most
LOOKUPs and GETATTRs) costs no task switch. Only when the handler must wait (on the
server) does the reader hand reading to a parked worker, or a new one (up to
MAX_WORKERS), and finish its request as an ordinary worker, which parks afterwards.
The handler is a coroutine driven by hand until its first suspension (_resume passes
trio's traps on after that), which is how the reader knows it must hand over. Each
worker has a cancel scope: an INTERRUPT of its request cancels it (the 9P client then
flushes what it had asked, flush(5)), and the answer is EINTR.

The file system (TreeFS) sees values, never bytes: each opcode maps to one of its
methods in `opcodes.HANDLERS`, with the arguments pyfuse3 gave. Opcodes it lacks are
answered ENOSYS, which the kernel remembers for the ones that allow it (xattrs,
access); a request that cannot be parsed is answered EINVAL (or dropped, when not
even its header is whole), never a crash. The session ends when the kernel ends
the connection (ENODEV: unmounted, or aborted), on DESTROY, or when cancelled.

The file system may push invalidations (notify_* below): attributes and entries
the kernel must ask about again, because the mount learned they changed.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from ninep.polling import in_thread

from . import fuseabi as abi
from . import fusecodec as codec
from .fuseabi import FuseError, Op
from .fuseargs import Init
from .opcodes import HANDLERS

__all__ = ["MAX_WRITE", "FuseSession", "SessionOptions"]

log = logging.getLogger("ninefs.fuse")

MAX_WRITE = 1 << 20  # bytes per WRITE request (FUSE_MAX_PAGES: 256 pages)
MAX_WORKERS = 64  # requests handled at once
YIELD_EVERY = 8  # requests a worker answers in a row before it lets other tasks run
SPIN = 400e-6  # seconds the reader asks again for the next request before it waits (_read)
MAX_BACKGROUND = 64  # the kernel's readahead and async requests in flight at once (libfuse: 12)
_NO_REPLY = frozenset({Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT})


class _Worker:
    """A worker's cancel scope, and the request it is handling (for its EINTR)."""

    __slots__ = ("handed", "parked", "scope", "stealing", "unique", "unyielded")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.unique: int | None = None
        self.handed = False  # it gave reading to another worker while its request waited
        self.parked = False  # waiting to be the reader again
        self.stealing = False  # reading beside the reader (FuseSession._after_handing_over)
        self.unyielded = 0  # requests answered since it last let the loop's other tasks run


@types.coroutine
def _resume(coro: Any, trap: Any) -> Any:
    """Go on running `coro`, which suspended on `trap`, as if awaited from its start: what
    trio sends or throws back (the trap's outcome, a cancellation) goes on to it."""
    while True:
        try:
            value = yield trap
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(value)
            except StopIteration as done:
                return done.value


class SessionOptions:
    """What the session asks of the kernel at INIT."""

    def __init__(self, *, max_write: int = MAX_WRITE, max_background: int = MAX_BACKGROUND) -> None:
        self.max_write = max_write
        self.max_background = max_background


class FuseSession:
    """Serves `fs` on the mounted /dev/fuse descriptor `fd` until the kernel lets go."""

    def __init__(
        self,
        fd: int,
        fs: Any,
        options: SessionOptions | None = None,
        *,
        counts: Counter[str] | None = None,
    ) -> None:
        self.fd = fd
        self.fs = fs
        self.options = options or SessionOptions()
        self.counts = counts  # requests by opcode name, when a test or benchmark counts them
        self.minor = abi.KERNEL_MINOR
        self._running: dict[int, trio.CancelScope] = {}
        self._has_reader = False  # one worker at a time reads /dev/fuse (the others are busy or parked)
        self._parked = trio.lowlevel.ParkingLot()  # idle workers, waiting to be the reader
        self._workers = 0
        self._on_server = 0  # requests whose handler waits (on the server) right now
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._bufsize = self.options.max_write + 4096

    # --- the loop ---------------------------------------------------------------------

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """INIT, then serve; returns when the connection ends (or raises if INIT fails)."""
        await self._init()
        if ready is not None:
            ready()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._stopping:
                return
            self._has_reader = True
            self._start_worker()

    def stop(self) -> None:
        self._stopping = True  # also when asked before the workers started (during INIT)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _read_ready(self, buf: bytearray, spin: bool) -> int | None:
        """A request already queued, read into `buf` without waiting in epoll: its length;
        0 if there is none; None when the kernel ended the connection.

        `spin`: nothing else of ours is running (no request waits on the server). A program
        that stats file after file, or closes the file it just opened, sends its next
        request soon after our reply (tens of microseconds: most of it is its own wake-up);
        asking again for up to SPIN seconds catches it without sleeping in epoll, whose
        wake-up costs more than the answer itself (polling.poll_until). Each try yields
        the CPU first, so that the program, if it was woken on ours, runs at once.
        """
        until = 0.0
        while True:
            try:
                return os.readv(self.fd, [buf])
            except BlockingIOError:
                if not spin:
                    return 0
                now = time.perf_counter()
                if not until:
                    until = now + SPIN
                elif now >= until:
                    return 0
                os.sched_yield()
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue  # interrupted before we read it: the kernel dropped it
                if e.errno == errno.ENODEV:
                    return None  # unmounted
                raise

    async def _read(self, buf: bytearray, spin: bool = False) -> int | None:
        """One request into `buf`, waiting for it if need be (_read_ready)."""
        while True:
            n = self._read_ready(buf, spin)
            if n != 0:
                return n
            await trio.lowlevel.wait_readable(self.fd)
            spin = False

    async def _init(self) -> None:
        buf = bytearray(max(self._bufsize, 8192))
        while True:
            n = await self._read(buf)
            if n is None:
                raise OSError(errno.ENODEV, "FUSE connection ended before INIT")
            try:
                req = codec.parse(memoryview(buf)[:n])
            except codec.BadRequest as e:
                if e.unique is not None:
                    self._send(codec.reply_error(e.unique, e.errno))
                continue
            if req.opcode != Op.INIT:
                self._send(codec.reply_error(req.unique, errno.EIO))
                continue
            init: Init = req.args
            if init.major > abi.KERNEL_MAJOR:
                # fuse.h: answer with the major we speak and expect INIT again
                self._send(
                    codec.reply(req.unique, abi.INIT_OUT.pack(abi.KERNEL_MAJOR, abi.KERNEL_MINOR, *[0] * 9))
                )
                continue
            if init.major < abi.KERNEL_MAJOR or init.minor < abi.MIN_MINOR:
                self._send(codec.reply_error(req.unique, errno.EPROTO))
                raise OSError(errno.EPROTO, f"FUSE protocol {init.major}.{init.minor} is too old (need 7.12)")
            self.minor = min(init.minor, abi.KERNEL_MINOR)
            want = (
                abi.FUSE_ASYNC_READ
                | abi.FUSE_ATOMIC_O_TRUNC
                | abi.FUSE_BIG_WRITES
                | abi.FUSE_EXPORT_SUPPORT
                | abi.FUSE_AUTO_INVAL_DATA
                | abi.FUSE_DO_READDIRPLUS
                | abi.FUSE_ASYNC_DIO
                | abi.FUSE_PARALLEL_DIROPS
                | abi.FUSE_MAX_PAGES
            ) & init.flags
            bg = self.options.max_background
            out = codec.init_out(
                self.minor, init.max_readahead, want, bg, bg * 3 // 4, self.options.max_write
            )
            if self.minor < 23:
                out = out[:24]  # FUSE_COMPAT_22_INIT_OUT_SIZE
            self._send(codec.reply(req.unique, out))
            return

    def _start_worker(self) -> None:
        """A new worker that reads from now on (the caller gave it the reader's part)."""
        assert self._nursery is not None
        self._workers += 1
        self._nursery.start_soon(self._worker)

    def _hand_over(self) -> None:
        """The reader's request waits (on the server): another worker reads meanwhile."""
        if len(self._parked):
            self._parked.unpark()
        elif self._workers < MAX_WORKERS:
            self._start_worker()
        else:
            self._has_reader = False  # the first worker to finish becomes the reader

    async def _worker(self) -> None:
        """Read and handle requests while the reader; park when another has taken over.

        A request answered from memory (most lookups and getattrs) is handled by the reader
        inline, with no task switch; one that must wait hands reading over first (_handle)."""
        buf = bytearray(self._bufsize)
        view = memoryview(buf)
        w = _Worker()
        try:
            while True:
                # One cancel scope for many requests, waited or not (entering one costs more
                # than answering a LOOKUP from memory: 16 us here): only an INTERRUPT of the
                # request in hand cancels it, and then that request is answered EINTR and a
                # new scope begins.
                with trio.CancelScope() as w.scope:
                    while True:
                        spin = False
                        while not w.handed:
                            n = await self._read(buf, spin)
                            if n is None:
                                self.stop()
                                return
                            await self._handle(view[:n], w)
                            spin = not self._on_server
                            await self._maybe_yield(w)
                        if not await self._after_handing_over(w, buf, view):
                            return
                if w.unique is not None:  # interrupted (the caller got a signal)
                    self._send(codec.reply_error(w.unique, errno.EINTR))
                    w.unique = None
                # (a late INTERRUPT of an answered request, or one of a request read after ours)
                if (w.handed or w.parked) and not await self._after_handing_over(w, buf, view):
                    return
        finally:
            self._workers -= 1

    async def _maybe_yield(self, w: _Worker) -> None:
        w.unyielded += 1
        if w.unyielded >= YIELD_EVERY and not w.handed:  # answered from memory:
            w.unyielded = 0  # let the loop's other tasks (the 9P client) run
            await trio.lowlevel.checkpoint()

    async def _after_handing_over(self, w: _Worker, buf: bytearray, view: memoryview) -> bool:
        """Our request, which made us give reading to another worker, is answered: go on
        with the requests already queued, then park until we are the reader again (or be it
        now if nobody is). False when the kernel ended the connection.

        The program our reply woke sends its next request at once (a close after an open,
        the next file's open): read here without waiting, it is answered with no wake-up
        of the reader, no scheduler pass, and no park. The reader meanwhile waits in
        epoll; two tasks may read /dev/fuse, but only one may wait on it."""
        w.handed = False
        while self._has_reader:
            n = self._read_ready(buf, not self._on_server)
            if n is None:
                self.stop()
                return False
            if not n:
                w.parked = True
                await self._parked.park()  # unparked: we are the reader (_hand_over)
                w.parked = False
                return True
            w.stealing = True  # a request of ours that waits hands nothing over: the reader reads
            try:
                await self._handle(view[:n], w)
            finally:
                w.stealing = False
            w.handed = False
            await self._maybe_yield(w)
        self._has_reader = True
        return True

    async def _handle(self, data: memoryview, w: _Worker) -> None:
        try:
            req = codec.parse(data, self.minor)
        except codec.BadRequest as e:
            log.warning("bad FUSE request: %s", e)
            if e.unique is not None:
                self._send(codec.reply_error(e.unique, e.errno))
            return
        op = req.opcode
        if self.counts is not None:
            self.counts[abi.OP_NAMES.get(op, str(op))] += 1
        if op == Op.INTERRUPT:
            scope = self._running.get(req.args.unique)
            if scope is not None:
                scope.cancel()
            return
        handler = HANDLERS.get(op)
        if handler is None:
            if op not in _NO_REPLY:
                self._send(codec.reply_error(req.unique, errno.ENOSYS))
            return
        if op in _NO_REPLY:
            try:
                await handler(self, req)
            except Exception:
                log.exception("%s failed", abi.OP_NAMES.get(op))
            return
        unique = w.unique = req.unique
        self._running[unique] = w.scope
        try:
            # Run the handler here until it must wait; only then does another worker take over
            # reading (a trio coroutine suspends by yielding a trap, which _resume passes on).
            coro = handler(self, req)
            try:
                trap = coro.send(None)
            except StopIteration as done:
                body = done.value
            else:
                if not w.handed:
                    w.handed = True
                    if not w.stealing:
                        self._hand_over()
                self._on_server += 1
                try:
                    body = await _resume(coro, trap)
                finally:
                    self._on_server -= 1
            out = codec.reply(unique, body)
        except FuseError as e:
            out = codec.reply_error(unique, e.errno)
        except Exception:
            log.exception("%s failed", abi.OP_NAMES.get(op))
            out = codec.reply_error(unique, errno.EIO)
        finally:
            del self._running[unique]
        w.unique = None  # not reached when interrupted: the worker answers EINTR
        self._send(out)
        if op == Op.DESTROY:
            self.stop()

    def _send(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as e:
            # ENOENT: the request was interrupted and is gone; ENODEV: the mount is gone
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("FUSE reply: %s", e)

    # --- notifications -------------------------------------------------------------------

    def notify_inval_inode(self, ino: int, *, attr_only: bool = True) -> None:
        """The kernel asks getattr again for `ino` (and, unless attr_only, rereads its pages).

        Attributes only is safe from inside a request; dropping pages is not (a READ of
        the inode in flight holds page locks the kernel would wait for), so that goes
        out from a thread of its own."""
        msg = codec.notify_inval_inode(ino, -1 if attr_only else 0, 0)
        if attr_only:
            self._notify(msg)
        else:
            self._notify_later(msg)

    def notify_inval_entry(self, parent: int, name: bytes) -> None:
        """The kernel looks `name` up in `parent` again. From a thread: the kernel takes the
        directory's lock, which a request of ours in that directory may hold."""
        self._notify_later(codec.notify_inval_entry(parent, name))

    def notify_store(self, ino: int, data: bytes) -> None:
        """The kernel's page cache of `ino` holds `data` from its start, so a read(2) that
        follows the open asks us nothing.

        Only for an inode nobody has open: storing locks the pages, and a READ in flight
        holds those locks until we answer it, which we could not while we wait here."""
        self._notify_parts([codec.notify_store_header(ino, 0, len(data)), data])

    def _notify(self, msg: bytes) -> None:
        self._notify_parts([msg])

    def _notify_parts(self, parts: list[bytes]) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as e:  # ENOENT: the kernel does not know the inode (any more)
            if e.errno not in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
                log.debug("FUSE notify: %s", e)

    def _notify_later(self, msg: bytes) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._notify_in_thread, msg)

    async def _notify_in_thread(self, msg: bytes) -> None:
        await in_thread(self._notify, msg, abandon_on_cancel=True)
