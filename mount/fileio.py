"""Reading and writing open files through the mount: readahead, write-behind, appends.

Sequential reads are fetched a window (READAHEAD) at a time, AHEAD windows ahead,
and the kernel's concurrent reads wait on the same fetch; a read-only open knows
the file's length, so no Tread asks only for "end of file". Sequential writes are
sent behind the writer (write-behind, WRITE_BEHIND in flight per open file); a small
write past the start waits up to HOLD for the one that continues it, and they go as one
Twrite (a SQLite transaction's 12 writes are 3-4), but never past anything that waits for
it.

Nothing written is lost silently (DESIGN.md). A write-behind that fails (the server
refused it, the connection broke under it and the file was walked again on a new
one, or it timed out) is counted on the file, as the kernel's errseq counts
writeback errors: every descriptor open on the file reports it once at its next
write, once at its next fsync and once at close, and flush and fsync first wait for
every write-behind of the file. So an fsync that succeeds means every byte written
before it is on the server.

An O_APPEND write goes where the server's file ends, not where the kernel thinks it
ends (its idea of the size may be older than a write through another mount): such
opens are direct I/O, and each write is placed at the length a Tstat gives just
before it, one append at a time per file; a DMAPPEND file the server appends to
itself (open(5)). Across mounts the Tstat and the Twrite are still two steps, as
NFS's are (docs/mount.md).
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ninep.constants import DMAPPEND
from ninep.messages import Stat
from ninep.tree import Tree

from .fuseabi import FuseError
from .fuseop import errno_of, fuse_op
from .inodes import Inode

__all__ = ["AHEAD", "MERGE", "READAHEAD", "WRITE_BEHIND", "Behind", "FileIO", "Handle", "OpenFile", "Window"]

log = logging.getLogger("ninefs.fuse")

WRITE_BEHIND = 16  # writes in flight per open file before a writer waits
MERGE = 64 << 10  # a small write that continues one not yet sent joins it, up to this
HOLD = 0.002  # how long a small write-behind waits for the write that continues it
READAHEAD = 1 << 20
AHEAD = 3  # windows a sequential reader has on their way beyond the one it reads
# What a lost write is reported as: its own errno when it says why (no space), else EIO.
_KEPT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(eq=False, slots=True)
class Behind:
    """A write the writer was told is done, on its way to the server."""

    handle: Handle
    off: int
    data: bytearray
    done: trio.Event = field(default_factory=trio.Event)  # on the server, or counted lost
    go: trio.Event = field(default_factory=trio.Event)  # send it now: no more joins it

    @property
    def end(self) -> int:
        return self.off + len(self.data)


@dataclass(eq=False, slots=True)
class OpenFile:
    """What the open handles of one file share: its write-behind and its lost writes."""

    handles: int = 0
    behind: set[Behind] = field(default_factory=set)  # in flight, or held for joining
    lost: int = 0  # write-behinds lost so far (the kernel's errseq): a new one is reported
    lost_errno: int = errno.EIO
    appending: trio.Lock = field(default_factory=trio.Lock)  # one O_APPEND write at a time
    queued: Behind | None = None  # the small write-behind not sent yet, which the next may join

    def send_queued(self) -> None:
        """Someone waits for the write-behind: the one held for joining goes now."""
        if self.queued is not None:
            self.queued.go.set()


@dataclass(eq=False, slots=True)
class Handle:
    """An open file or directory: a node of its own, opened once."""

    inode: Inode
    node: Any
    iounit: int
    writable: bool
    stream: bool  # synthetic file (length 0 at open): no page cache, writes in order
    direct: bool = False  # changed behind the kernel's back: bypass its size and pages
    append: bool = False  # O_APPEND: the mount, not the kernel, says where each write goes
    entries: list[Stat] | None = None
    file: OpenFile = field(default_factory=OpenFile)  # shared with the file's other handles
    # file.lost when this handle last reported a loss at a write, an fsync, a close
    seen: dict[str, int] = field(default_factory=dict)
    limiter: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(WRITE_BEHIND))
    windows: dict[int, Window] = field(default_factory=dict)  # readahead, by window number
    next_off: int = 0  # where a sequential reader reads next
    length: int = -1  # a read-only open: the file's length then (-1: not known)
    writes_at_open: int = 0  # the inode's count of writes through this mount then
    listed: float = 0.0  # when a directory handle read its entries
    prefetched: bool = False  # its first read came with the opendir, at `listed`
    vers: int = 0  # a directory's qid.vers when opened
    memory: bool = False  # a directory's entries are our own listing, not one the server just sent


@dataclass(eq=False, slots=True)
class Window:
    """READAHEAD bytes of a file starting at a multiple of READAHEAD, fetched once."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes = b""
    error: BaseException | None = None
    writes: int = 0  # the inode's count of writes through this mount when it was fetched


class FileIO:
    """The file-I/O half of TreeFS (mount/fuse.py), which sets these up."""

    tree: Tree
    nursery: trio.Nursery | None
    options: Any  # FuseOptions
    handles: dict[int, Handle]
    files: dict[int, OpenFile]  # by inode number, while the file has handles open

    # --- open files ----------------------------------------------------------------

    def _opened(self, h: Handle) -> None:
        """`h` is a new handle: it shares its file's write-behind, and reports only what
        that loses from now on."""
        f = self.files.get(h.inode.ino)
        if f is None:
            f = self.files[h.inode.ino] = OpenFile()
        f.handles += 1
        h.file = f
        h.seen = dict.fromkeys(("write", "fsync", "close"), f.lost)

    def _closed(self, h: Handle) -> None:
        h.file.handles -= 1
        if h.file.handles <= 0 and self.files.get(h.inode.ino) is h.file:
            del self.files[h.inode.ino]

    def _report_lost(self, h: Handle, at: str) -> None:
        """A write-behind of this file lost since `h` last reported one `at` this kind of call
        (write, fsync, close) fails this call, once (errseq, as the kernel's)."""
        f = h.file
        if h.seen[at] != f.lost:
            h.seen[at] = f.lost
            raise FuseError(f.lost_errno)

    async def _drain_inode(self, inode: Inode) -> None:
        """Wait for the write-behind of this file in flight now, so what follows sees it."""
        f = self.files.get(inode.ino)
        if f is not None and f.behind:
            f.send_queued()
            for b in list(f.behind):
                if not b.done.is_set():  # (a wait on a set Event is still a checkpoint)
                    await b.done.wait()

    async def _drain(self, h: Handle) -> None:
        await self._drain_inode(h.inode)

    # --- reading -------------------------------------------------------------------

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles.get(fh)
        if h is not None and not h.file.behind and off == h.next_off:
            k, start = divmod(off, READAHEAD)
            w = h.windows.get(k)
            if (
                w is not None
                and w.done.is_set()
                and w.error is None
                and w.writes == h.inode.writes
                # the end of the file, or inside a window whose next one is on its way
                and (len(w.data) < READAHEAD or (start + size <= READAHEAD and k + AHEAD in h.windows))
            ):
                h.next_off = off + size
                return bytes(w.data[start : start + size])
        return await self._read(fh, off, size)

    @fuse_op
    async def _read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        await self._drain(h)  # a read sees the writes before it
        sequential = off == h.next_off or (off // READAHEAD) in h.windows
        h.next_off = off + size
        if h.stream or not sequential or self.nursery is None:
            return bytes(await self.tree.read(h.node, off, size))  # the reply is bytes, not a view
        # Sequential: whole windows fetched once each (the kernel sends several reads at a
        # time, and they wait on the same fetch), and the next window fetched ahead.
        first, last = off // READAHEAD, (off + size - 1) // READAHEAD
        parts: list[bytes] = []
        want = size
        for k in range(first, last + 1):
            w = await self._window(h, k)
            data = w.data
            start = off - k * READAHEAD if k == first else 0
            piece = data[start : start + want]
            parts.append(piece)
            want -= len(piece)
            if len(data) < READAHEAD:
                # The window ended short: the end of the file as of its read, which is the
                # end for this open (close-to-open, as NFS) unless this mount wrote it since.
                if want and h.inode.writes != w.writes:
                    parts.append(await self.tree.read(h.node, off + size - want, want))
                break
        else:
            for ahead in range(last + 1, last + 1 + AHEAD):
                if ahead not in h.windows:
                    self._start_window(h, ahead)
        for k in [k for k in h.windows if k < first - 1]:
            del h.windows[k]  # what a sequential reader has passed
        return b"".join(parts)

    def _start_window(self, h: Handle, k: int) -> Window:
        w = h.windows[k] = Window(writes=h.inode.writes)
        assert self.nursery is not None
        self.nursery.start_soon(self._fetch_window, h, k, w)
        return w

    async def _window(self, h: Handle, k: int) -> Window:
        w = h.windows.get(k)
        if w is None or w.writes != h.inode.writes:  # written through another handle since
            w = self._start_window(h, k)
        if not w.done.is_set():  # a checkpoint in a handler hands reading to another worker
            await w.done.wait()
        if w.error is not None:
            h.windows.pop(k, None)
            raise w.error
        return w

    async def _fetch_window(self, h: Handle, k: int, w: Window) -> None:
        try:
            with trio.fail_after(self.options.timeout):
                off, parts, got = k * READAHEAD, [], 0
                while got < READAHEAD:  # a window may need several Treads when iounit is small
                    data = await self.tree.read(h.node, off + got, READAHEAD - got)
                    if not data:
                        break
                    parts.append(data)
                    got += len(data)
                    if 0 <= h.length <= off + got and h.inode.writes == h.writes_at_open:
                        break  # the length the open saw: no Tread just to hear "end of file"
                w.data = parts[0] if len(parts) == 1 else b"".join(parts)  # one part: no copy
        except Exception as e:  # handed to the reader that waits for this window
            w.error = e
        finally:
            w.done.set()

    # --- writing -------------------------------------------------------------------

    @fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        self._report_lost(h, "write")
        h.windows.clear()
        h.inode.stat_time = 0.0
        h.inode.writes += 1
        if h.append:
            h.inode.written_at = 0.0  # the end is the server's: only it knows the length now
            return await self._append(h, bytes(buf))
        h.inode.written_end = max(h.inode.written_end, off + len(buf))
        h.inode.written_at = time.time()
        if h.stream or self.nursery is None:
            return await self.tree.write(h.node, off, bytes(buf))
        f, end = h.file, off + len(buf)
        for b in list(f.behind):
            if b.off < end and off < b.end:
                f.send_queued()
                await b.done.wait()  # an overlapping rewrite must land after the earlier write
        q = f.queued
        if q is not None and q.handle is h and q.end == off and len(q.data) + len(buf) <= MERGE:
            # It continues the write not yet sent (SQLite's journal, a log's lines): one
            # Twrite for both, nothing between the check and the join to let it go.
            q.data += buf
            return len(buf)
        f.send_queued()
        try:  # without the checkpoint acquire() makes: a write that need not wait is not handed off
            h.limiter.acquire_nowait()
        except trio.WouldBlock:
            await h.limiter.acquire()
        q = Behind(h, off, bytearray(buf))
        f.behind.add(q)
        if len(buf) < MERGE:
            f.queued = q
        if off == 0 or len(buf) >= MERGE:
            # A file's first write is often its only one (cp, tar x, git checkout): it goes
            # now, not when close(2) asks for it
            q.go.set()
        self.nursery.start_soon(self._write_behind, q)
        return len(buf)

    async def _append(self, h: Handle, data: bytes) -> int:
        """An O_APPEND write, at the end of the file as the server has it now.

        With direct I/O the kernel passes the offset it computed from the size it was
        told, which another mount's (or the host's) append, or a stale attribute, may
        have overtaken. One append at a time per file, after the write-behind before it,
        so the Tstat counts every byte this mount wrote.
        """
        async with h.file.appending:
            await self._drain(h)
            # open(5): the server writes a DMAPPEND file at its end, whatever the offset
            dmappend = h.inode.stat.mode & DMAPPEND
            off = 0 if dmappend else (await self.tree.stat(h.node)).length
            return await self.tree.write(h.node, off, data)

    async def _write_behind(self, q: Behind) -> None:
        h, f, off = q.handle, q.handle.file, q.off
        data = b""
        try:
            if not q.go.is_set():
                with trio.move_on_after(HOLD):
                    await q.go.wait()
            if f.queued is q:
                f.queued = None
            data = bytes(q.data)
            with trio.fail_after(self.options.timeout):
                n = await self.tree.write(h.node, off, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write: {n} of {len(data)} bytes")
        except (OSError, trio.TooSlowError) as e:
            self._lost(h, off, len(data), e)
        except Exception as e:
            log.exception("write-behind failed")
            self._lost(h, off, len(data), e)
        finally:
            if f.queued is q:  # cancelled while held
                f.queued = None
            f.behind.discard(q)
            q.done.set()
            h.limiter.release()

    def _lost(self, h: Handle, off: int, size: int, e: BaseException) -> None:
        """A write the writer was told had succeeded did not reach the server."""
        code = errno_of(e)
        h.file.lost += 1
        h.file.lost_errno = code if code in _KEPT_ERRNOS else errno.EIO
        log.warning("%s: %d bytes written at offset %d lost: %s", h.inode.name, size, off, e or "timed out")

    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None and h.writable and (h.file.behind or h.seen["close"] != h.file.lost):
            await self._flush(h)

    @fuse_op
    async def _flush(self, h: Handle) -> None:
        await self._drain(h)  # close(2) waits for every write-behind of the file, as NFS's does
        self._report_lost(h, "close")

    @fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles[fh]
        await self._drain(h)
        self._report_lost(h, "fsync")
        if h.writable:
            await self.tree.wstat(h.node, Stat.dont_touch())  # stat(5): a null wstat is fsync
