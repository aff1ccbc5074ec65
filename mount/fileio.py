"""Reading and writing open files through the mount: readahead and write-behind.

Sequential reads are fetched a window (READAHEAD) at a time, AHEAD windows ahead,
and the kernel's concurrent reads wait on the same fetch; a read-only open knows
the file's length, so no Tread asks only for "end of file". Sequential writes are
sent behind the writer (write-behind, WRITE_BEHIND in flight per file), and an
error is reported at the next write, flush (close) or fsync.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from ninep.messages import Stat
from ninep.tree import Tree

from .fuseop import errno_of, fuse_op
from .inodes import Inode

__all__ = ["AHEAD", "READAHEAD", "WRITE_BEHIND", "FileIO", "Handle", "Window"]

log = logging.getLogger("ninefs.fuse")

WRITE_BEHIND = 16  # writes in flight per open file before a writer waits
READAHEAD = 1 << 20
AHEAD = 3  # windows a sequential reader has on their way beyond the one it reads


@dataclass(eq=False, slots=True)
class Handle:
    """An open file or directory: a node of its own, opened once."""

    inode: Inode
    node: Any
    iounit: int
    writable: bool
    stream: bool  # synthetic file (length 0 at open): no page cache, writes in order
    direct: bool = False  # changed behind the kernel's back: bypass its size and pages
    entries: list[Stat] | None = None
    error: OSError | None = None
    in_flight: list[tuple[int, int]] = field(default_factory=list)  # (offset, end) being written
    limiter: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(WRITE_BEHIND))
    idle: trio.Event = field(default_factory=trio.Event)
    windows: dict[int, Window] = field(default_factory=dict)  # readahead, by window number
    next_off: int = 0  # where a sequential reader reads next
    length: int = -1  # a read-only open: the file's length then (-1: not known)
    writes_at_open: int = 0  # the inode's count of writes through this mount then
    listed: float = 0.0  # when a directory handle read its entries


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

    async def _drain_inode(self, inode: Inode) -> None:
        """Wait until write-behind on this inode is done, so a stat sees every write."""
        if not inode.open_handles:
            return  # the common case: nothing open, nothing to scan on this hot path
        for h in list(self.handles.values()):
            if h.inode is inode and h.in_flight:
                await h.idle.wait()

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles.get(fh)
        if h is not None and not h.in_flight and off == h.next_off:
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
        if h.in_flight:
            await self._drain(h)
        sequential = off == h.next_off or (off // READAHEAD) in h.windows
        h.next_off = off + size
        if h.stream or not sequential or self.nursery is None:
            return bytes(await self.tree.read(h.node, off, size))  # pyfuse3 wants bytes, not a view
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

    @fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        self._raise_pending(h)
        h.windows.clear()
        h.inode.stat_time = 0.0
        h.inode.writes += 1
        if h.stream or self.nursery is None:
            n = await self.tree.write(h.node, off, bytes(buf))
            return n
        end = off + len(buf)
        if any(o < end and off < e for o, e in h.in_flight):
            await self._drain(h)  # an overlapping rewrite must land after the earlier write
        await h.limiter.acquire()
        h.in_flight.append((off, end))
        h.idle = trio.Event() if h.idle.is_set() else h.idle
        self.nursery.start_soon(self._write_behind, h, off, bytes(buf))
        return len(buf)

    async def _write_behind(self, h: Handle, off: int, data: bytes) -> None:
        try:
            with trio.fail_after(self.options.timeout):
                n = await self.tree.write(h.node, off, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write: {n} of {len(data)} bytes")
        except (OSError, trio.TooSlowError) as e:
            if h.error is None:
                h.error = e if isinstance(e, OSError) else OSError(errno.ETIMEDOUT, "write timed out")
            log.warning("write-behind at offset %d failed: %s", off, e)
        except Exception as e:
            log.exception("write-behind failed")
            if h.error is None:
                h.error = OSError(errno.EIO, str(e))
        finally:
            h.in_flight.remove((off, off + len(data)))
            h.limiter.release()
            if not h.in_flight:
                h.idle.set()

    def _raise_pending(self, h: Handle) -> None:
        if h.error is not None:
            e, h.error = h.error, None
            raise pyfuse3.FUSEError(errno_of(e))

    async def _drain(self, h: Handle) -> None:
        while h.in_flight:
            await h.idle.wait()
        self._raise_pending(h)

    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None and (h.in_flight or h.error is not None):
            await self._flush(h)

    @fuse_op
    async def _flush(self, h: Handle) -> None:
        await self._drain(h)

    @fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles[fh]
        await self._drain(h)
        if h.writable:
            await self.tree.wstat(h.node, Stat.dont_touch())  # stat(5): a null wstat is fsync
