"""Several dependent 9P requests in one write over a Client's connection: a walk and what
follows it on the new fid (stat, open, create, the first read or write, remove) sent
together, so that a stat or a small read costs one round trip instead of two or three.

intro(5) lets a server handle the requests of one write in any order, and ours runs each
as its own task, so a request may run before the walk (or open) it depends on and be
refused for it. `walk_then` therefore sends each refused request again, in order, once
what it needs is done, and reports an error only if that second try fails too.

These are the operations ninep/fsspec.py's `9p://` file system is made of; nothing here is
fsspec's. Part of ninep: imports only ninep and trio.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Callable
from typing import Any

import trio

from . import messages as m
from .bounds import MAX_DIR_BYTES, MAX_DIR_ENTRIES
from .codec import decode_stats
from .constants import MAXWELEM, OREAD, OTRUNC, OWRITE, QTAPPEND
from .errors import Exists, IsADirectory, NinePError, NotADirectory, NotFound, ProtocolError, error_for
from .files import WINDOW, Client, _again, split_path
from .messages import Qid, Stat

__all__ = [
    "RM_AT_ONCE",
    "Request",
    "abs_path",
    "cat",
    "ls",
    "named",
    "open_read",
    "open_write",
    "pipe",
    "remove",
    "rmtree",
    "stat",
    "walk_then",
]

Request = tuple[m.Message, type[m.Message]]
RM_AT_ONCE = 32


def abs_path(path: str) -> str:
    return "/" + "/".join(split_path(path))


def named(e: NinePError, path: str) -> NinePError:
    return e if isinstance(e, ProtocolError) else error_for(e.ename, path)


async def walk_then(
    client: Client, path: str, then: Callable[[int], list[Request]], *, consumes: bool = False
) -> tuple[int, Qid, list[Any]]:
    """Walk a new fid to `path` and send `then(fid)` in the same write: one round trip.

    Gives the fid (the caller clunks it, unless `consumes`: a Tremove gives it up either
    way), its qid, and the replies; raises the path-named error of the first that failed.
    """
    conn, names = client.conn, split_path(path)
    if len(names) > MAXWELEM:  # walk(5): 16 names a Twalk; the long way, then the rest
        fid, qid = await client.walk_fid(path)
        walk: list[Request] = []
    else:
        fid, qid = conn.fids.get(), client.root_qid
        walk = [(m.Twalk(0, client.root_fid, fid, tuple(names)), m.Rwalk)]
    requests = then(fid)
    try:
        replies = await conn.pipeline(*walk, *requests)
    except BaseException:
        await client._clunk(fid)  # the server may or may not have made the fid
        raise
    if walk:
        walked = replies.pop(0)
        if isinstance(walked, NinePError) or len(walked.qids) < len(names):
            conn.fids.put(fid)  # walk(5): no newfid, so nothing else happened either
            if isinstance(walked, NinePError):
                raise named(walked, abs_path(path))
            last = walked.qids[-1] if walked.qids else client.root_qid
            if not last.is_dir:
                raise NotADirectory("not a directory", abs_path(path))
            raise NotFound("file does not exist", abs_path(path))
        qid = walked.qids[-1] if names else qid
    try:
        for i, reply in enumerate(replies):
            if isinstance(reply, NinePError):
                (again,) = await conn.pipeline(requests[i])
                if isinstance(again, NinePError):
                    # A consumed fid is gone after the first Tremove, whatever it said:
                    # that answer is the one to report, unless it was about ordering.
                    first = consumes and reply.errno != errno.EBADF  # EBADF: ran before the walk
                    raise named(reply if first else again, abs_path(path))
                replies[i] = again
    except BaseException:
        if consumes:
            conn.fids.put(fid)
        else:
            await client._clunk(fid)
        raise
    return fid, qid, replies


@_again(repeatable=True)
async def stat(client: Client, path: str) -> Stat:
    fid, _, (rstat,) = await walk_then(client, path, lambda f: [(m.Tstat(0, f), m.Rstat)])
    client.conn.clunk_soon(fid)  # rides along with the next request: no round trip of its own
    return rstat.stat


@_again(repeatable=True)
async def ls(client: Client, path: str) -> tuple[bool, list[Stat]]:
    """A directory's entries from its reads alone (no stat per entry); a file lists as itself.

    The walk says whether it is a directory before anything is opened: opening a device or
    a clone file to find out could start something or block."""
    fid, qid, (rstat,) = await walk_then(client, path, lambda f: [(m.Tstat(0, f), m.Rstat)])
    conn = client.conn
    try:
        if not qid.is_dir:
            return False, [rstat.stat]
        ropen, rread = await conn.pipeline(
            (m.Topen(0, fid, OREAD), m.Ropen), (m.Tread(0, fid, 0, conn.iounit), m.Rread)
        )
        if isinstance(ropen, NinePError):
            raise named(ropen, abs_path(path))
        if isinstance(rread, NinePError):  # ran before the open
            rread = m.Rread(0, await conn.read(fid, 0, conn.iounit))
        data, offset, out = bytes(rread.data), 0, []
        while data:
            out.extend(decode_stats(data))
            offset += len(data)
            if len(out) > MAX_DIR_ENTRIES or offset > MAX_DIR_BYTES:
                raise NinePError("i/o error: directory listing too big", abs_path(path))
            data = await conn.read(fid, offset, conn.iounit)
        return True, out
    except NinePError as e:
        raise named(e, abs_path(path)) from None
    finally:
        conn.clunk_soon(fid)


@_again(repeatable=True)
async def cat(client: Client, path: str, start: int | None, end: int | None) -> bytes:
    """The bytes of [start, end) (negative: from the end), in as few round trips as fit:
    walk, open, stat and the first read in one, the rest pipelined (Client.pread)."""
    conn, p = client.conn, abs_path(path)
    lo = start if start is not None and start >= 0 else 0
    hi = end if end is not None and end >= 0 else None
    first = conn.iounit if hi is None else max(0, min(conn.iounit, hi - lo))
    fid, qid, (ropen, rstat, rread) = await walk_then(
        client,
        path,
        lambda f: [
            (m.Topen(0, f, OREAD), m.Ropen),
            (m.Tstat(0, f), m.Rstat),
            (m.Tread(0, f, lo, first), m.Rread),
        ],
    )
    try:
        if qid.is_dir:
            raise IsADirectory("is a directory", p)
        size, iounit = rstat.stat.length, ropen.iounit or conn.iounit
        want_lo = lo if start is None or start >= 0 else max(0, size + start)
        want_hi = hi if end is None or end >= 0 else max(0, size + end)
        if want_lo != lo:  # negative start: the first read was for the wrong place
            lo, data = want_lo, b""
        else:
            data = bytes(rread.data)
        stop = want_hi if want_hi is not None else (size if size else None)
        if stop is not None and stop <= lo:
            return b""
        got = lo + len(data)
        if stop is None:  # a stream (length 0): read until it says end of file
            pieces = [data]
            while more := await client.pread(fid, got, WINDOW * iounit, iounit, p):
                pieces.append(more)
                got += len(more)
            return b"".join(pieces)
        full = len(data) == first or len(data) == iounit  # short only at end of file
        if got < stop and (full or not data):
            data += await client.pread(fid, got, stop - got, iounit, p)
        return data[: stop - lo]
    finally:
        conn.clunk_soon(fid)


async def open_write(
    client: Client, path: str, kind: str, data: bytes = b"", auto_mkdir: bool = False
) -> tuple[int, Qid, int, int, int]:
    """Open `path` for writing as Python's w (create or truncate), x (create, FileExistsError
    if it exists) or a (create or append), the first iounit of `data` riding along; with
    `auto_mkdir`, make missing parents. Gives fid, qid, iounit, the offset writing starts
    at, and how many bytes of `data` went out."""
    conn, p = client.conn, abs_path(path)
    head = [(data[: conn.iounit],)] if data and kind != "a" else []
    parent, name = posixpath.split(p)
    if not name:
        raise IsADirectory("is a directory", p)
    for _ in range(3):  # someone may create or remove it between our walk and our create
        if kind != "x":
            mode = OWRITE | (OTRUNC if kind == "w" else 0)
            try:
                fid, qid, (ropen, *rest) = await walk_then(
                    client,
                    p,
                    lambda f: [
                        (m.Topen(0, f, mode), m.Ropen),
                        *[(m.Twrite(0, f, 0, h), m.Rwrite) for (h,) in head],
                        *([(m.Tstat(0, f), m.Rstat)] if kind == "a" else []),
                    ],
                )
            except FileNotFoundError:
                pass
            else:
                if qid.is_dir:
                    await client._clunk(fid)
                    raise IsADirectory("is a directory", p)
                at = rest[0].stat.length if kind == "a" else 0
                return fid, qid, ropen.iounit or conn.iounit, at, rest[0].count if head else 0
        try:
            fid, _, (rcreate, *rest) = await walk_then(
                client,
                parent,
                lambda f: [
                    (m.Tcreate(0, f, name, 0o666, OWRITE), m.Rcreate),
                    *[(m.Twrite(0, f, 0, h), m.Rwrite) for (h,) in head],
                ],
            )
        except FileExistsError:
            if kind == "x":
                raise Exists("file already exists", p) from None
            continue
        except FileNotFoundError:
            if not auto_mkdir:
                raise
            await client.mkdir(parent, parents=True, exist_ok=True)
            auto_mkdir = False
            continue
        return fid, rcreate.qid, rcreate.iounit or conn.iounit, 0, rest[0].count if head else 0
    raise NinePError("i/o error: file keeps appearing and vanishing", p)


@_again(repeatable=False)
async def pipe(client: Client, path: str, data: bytes, exclusive: bool, auto_mkdir: bool) -> None:
    fid, qid, iounit, _, sent = await open_write(client, path, "x" if exclusive else "w", data, auto_mkdir)
    try:
        if sent < len(data):
            ordered = bool(qid.type & QTAPPEND)
            await client.pwrite(fid, sent, data[sent:], iounit, abs_path(path), ordered=ordered)
    finally:
        await client._clunk(fid)  # awaited: a server may act on the clunk of a written file


@_again(repeatable=False)
async def remove(client: Client, path: str) -> None:
    if not split_path(path):
        raise PermissionError(f"{abs_path(path)}: refusing to remove the root of the tree")
    await walk_then(client, path, lambda f: [(m.Tremove(0, f), m.Rremove)], consumes=True)


async def rmtree(client: Client, path: str, limiter: trio.CapacityLimiter | None = None) -> None:
    """Everything under `path`, then `path`: the files of a directory removed concurrently
    (at most RM_AT_ONCE requests out), each a Twalk+Tremove in one round trip."""
    limiter = limiter or trio.CapacityLimiter(RM_AT_ONCE)

    async def remove_one(sub: str) -> None:
        async with limiter:
            await remove(client, sub)

    is_dir, entries = await ls(client, path)
    if is_dir:
        async with trio.open_nursery() as nursery:
            for e in entries:
                sub = posixpath.join(abs_path(path), e.name)
                if e.is_dir:
                    nursery.start_soon(rmtree, client, sub, limiter)
                else:
                    nursery.start_soon(remove_one, sub)
    await remove(client, path)


async def open_read(client: Client, path: str) -> tuple[int, Qid, int, Stat]:
    fid, qid, (ropen, rstat) = await walk_then(
        client, path, lambda f: [(m.Topen(0, f, OREAD), m.Ropen), (m.Tstat(0, f), m.Rstat)]
    )
    if qid.is_dir:
        await client._clunk(fid)
        raise IsADirectory("is a directory", abs_path(path))
    return fid, qid, ropen.iounit or client.conn.iounit, rstat.stat
