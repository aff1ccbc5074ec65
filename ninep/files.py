"""The path API people use: `async with ninep.connect("tcp!host!564") as fs:`.

Paths are slash-separated names from the attach root ("a/b", "/a/b" and
"./a/b" mean the same). Every call walks a fresh fid, does its work and clunks
it, so calls are independent and may run concurrently. Long paths are split
into walks of at most 16 names; reads and writes larger than the iounit are
split and pipelined. Errors name the path and are Python's own exception
classes (`FileNotFoundError`, ...), carrying the server's 9P string.
"""

from __future__ import annotations

import codecs
import functools
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from typing import Any

import trio

from .bounds import Opening, check_offset, check_stat, read_dir
from .client import Connection, single_error
from .constants import (
    DEFAULT_MSIZE,
    DMDIR,
    MAXWELEM,
    ORDWR,
    OREAD,
    OTRUNC,
    OWRITE,
    QTAPPEND,
)
from .errors import Exists, NinePError, NotADirectory, NotFound, ProtocolError, error_for
from .messages import Qid, Rread, Rwrite, Stat, Tread, Twrite
from .transport import Address

__all__ = ["Client", "File", "connect", "split_path"]

WINDOW = 8  # iounit-sized requests in flight at once for big reads and writes
CLUNK_TIMEOUT = 5.0


def split_path(path: str) -> list[str]:
    """The names to walk for `path`; "." and empty names vanish, ".." stays for the server."""
    return [n for n in path.split("/") if n and n != "."]


def _join(path: str) -> str:
    return "/" + "/".join(split_path(path))


@asynccontextmanager
async def connect(
    address: str | Address,
    *,
    uname: str | None = None,
    aname: str = "",
    msize: int = DEFAULT_MSIZE,
    key: Any = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    reconnect: bool = True,
) -> AsyncIterator[Client]:
    """Dial a 9P2000 server, negotiate, attach, and give a `Client` for the `async with` body.

    When the server asks for authentication, `key` (a private key or a path; default
    $NINEFS_KEY or ~/.config/ninefs/id_ed25519) proves who we are (ninep/auth.py).
    `timeout` is a deadline for every call (TimeoutError); TCP keepalive notices a dead peer.
    `connect_timeout` (default: `timeout`) is one deadline for dial, Tversion, Tauth and
    Tattach together; the TimeoutError names the address and the step that had no answer.
    With `reconnect`, a lost connection is dialled again by the next call: calls that can
    safely be repeated are; others report the loss; files opened before it must be reopened.
    """
    within = timeout if connect_timeout is None else connect_timeout
    with single_error():
        async with trio.open_nursery() as nursery:

            async def new_connection(opening: Opening | None = None) -> Connection:
                opening = opening or Opening(address, within)
                return await opening.connection(nursery, msize=msize, timeout=timeout)

            opening = Opening(address, within)
            conn = await new_connection(opening)
            try:
                with opening.step("Tauth/Tattach"):
                    client = await Client.attach(conn, uname=uname, aname=aname, key=key)
                client._redial = new_connection if reconnect else None
                try:
                    yield client
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(CLUNK_TIMEOUT):
                        await client.close()
                    conn = client.conn
            finally:
                await conn.aclose()
                nursery.cancel_scope.cancel()


def _named(e: NinePError, path: str) -> NinePError:
    """The error to raise for `path`; a lost connection stays a ProtocolError (see _again)."""
    if isinstance(e, ProtocolError):
        return e
    return error_for(e.ename, path)


def _again(repeatable: bool) -> Callable[[Any], Any]:
    """For Client calls: after a lost connection, reconnect and repeat the call if that is
    harmless; otherwise say the connection was lost (the call may or may not have happened)."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        async def call(self: Client, *args: Any, **kwargs: Any) -> Any:
            conn = self.conn
            try:
                return await fn(self, *args, **kwargs)
            except ProtocolError:
                if self._redial is None:
                    raise
                await self._recover(conn)
                if not repeatable:
                    raise NinePError(
                        f"i/o error: connection lost during {fn.__name__}; reconnected, "
                        "but it may or may not have happened"
                    ) from None
                return await fn(self, *args, **kwargs)

        return call

    return wrap


class Client:
    """A path-based view of one attach on a 9P connection; `conn` has the raw calls."""

    def __init__(
        self, conn: Connection, root_fid: int, root_qid: Qid, uname: str, aname: str, key: Any = None
    ) -> None:
        self.conn = conn
        self.root_fid = root_fid
        self.root_qid = root_qid
        self.uname = uname
        self.aname = aname
        self.key = key
        self._redial: Callable[[], Awaitable[Connection]] | None = None  # set by connect()
        self._lock = trio.Lock()

    async def _recover(self, broken: Connection) -> None:
        """Dial again after `broken` failed (once, however many calls noticed)."""
        async with self._lock:
            if self.conn is not broken:
                return
            assert self._redial is not None
            try:
                with trio.fail_after(5):
                    conn = await self._redial()
                    fid, qid = await conn.attach_as(self.uname, self.aname, self.key)
            except (OSError, trio.TooSlowError) as e:
                raise ProtocolError(f"connection lost; reconnecting failed: {e or 'timed out'}") from None
            await broken.aclose()
            self.conn, self.root_fid, self.root_qid = conn, fid, qid

    @classmethod
    async def attach(
        cls, conn: Connection, *, uname: str | None = None, aname: str = "", key: Any = None
    ) -> Client:
        if uname is None:
            from .auth import local_user  # cryptography: only when attaching

            uname = local_user()
        fid, qid = await conn.attach_as(uname, aname, key)
        return cls(conn, fid, qid, uname, aname, key)

    async def close(self) -> None:
        if not self.conn.closed:
            await self._clunk(self.root_fid)

    # --- fids ----------------------------------------------------------------------

    async def _clunk(self, fid: int) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(CLUNK_TIMEOUT):
                await self.conn.clunk(fid)
        except NinePError:
            pass  # clunk(5): the fid is released even when the server complains
        finally:
            self.conn.fids.put(fid)

    async def walk_fid(self, path: str) -> tuple[int, Qid]:
        """A new fid for `path` and its qid; the caller clunks it. Raises if any name fails."""
        names = split_path(path)
        fid = self.conn.fids.get()
        qid = self.root_qid
        start = self.root_fid
        try:
            # walk(5): at most 16 names per Twalk; the rest walk the new fid in place.
            first = True
            while first or names:
                step, names = names[:MAXWELEM], names[MAXWELEM:]
                try:
                    qids = await self.conn.walk(start, fid, step)
                except NinePError as e:
                    if not first:
                        await self._clunk_quiet(fid)
                    raise _named(e, _join(path)) from None
                except trio.Cancelled:
                    # The walk may have created the fid before the flush: clunk blindly.
                    await self._clunk_quiet(fid)
                    raise
                if len(qids) != len(step):
                    if not first:
                        await self._clunk_quiet(fid)
                    last = qids[-1] if qids else qid
                    if not last.is_dir:
                        raise NotADirectory("not a directory", _join(path))
                    raise NotFound("file does not exist", _join(path))
                if qids:
                    qid = qids[-1]
                start = fid
                first = False
        except BaseException:
            self.conn.fids.put(fid)
            raise
        return fid, qid

    async def _clunk_quiet(self, fid: int) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(CLUNK_TIMEOUT):
                await self.conn.clunk(fid)
        except NinePError:
            pass

    @asynccontextmanager
    async def fid(self, path: str) -> AsyncIterator[tuple[int, Qid]]:
        """A walked fid for the `async with` body, clunked afterwards."""
        fid, qid = await self.walk_fid(path)
        try:
            yield fid, qid
        finally:
            await self._clunk(fid)

    async def _call(self, path: str, op: Callable[[int], Awaitable[Any]]) -> Any:
        async with self.fid(path) as (fid, _):
            try:
                return await op(fid)
            except NinePError as e:
                raise _named(e, _join(path)) from None

    # --- metadata -----------------------------------------------------------------------

    @_again(repeatable=True)
    async def stat(self, path: str) -> Stat:
        return await self._call(path, self.conn.stat)

    @_again(repeatable=True)
    async def exists(self, path: str) -> bool:
        try:
            async with self.fid(path):
                return True
        except FileNotFoundError:
            return False

    @_again(repeatable=False)
    async def wstat(self, path: str, **fields: Any) -> None:
        """Change the given stat fields (name, length, mode, mtime, gid) all at once."""
        check_stat(fields, _join(path))
        st = Stat.dont_touch(**fields)
        await self._call(path, lambda fid: self.conn.wstat(fid, st))

    @_again(repeatable=False)
    async def chmod(self, path: str, perm: int) -> None:
        st = await self.stat(path)
        await self.wstat(path, mode=(st.mode & ~0o777) | (perm & 0o777))

    @_again(repeatable=False)
    async def truncate(self, path: str, length: int) -> None:
        await self.wstat(path, length=length)

    @_again(repeatable=False)
    async def utime(self, path: str, mtime: int) -> None:
        await self.wstat(path, mtime=mtime)

    @_again(repeatable=False)
    async def rename(self, src: str, dst: str) -> None:
        """Rename within one directory (wstat(5) can do no more); else OSError EXDEV."""
        src_dir, src_name = posixpath.split(_join(src))
        dst_dir, dst_name = posixpath.split(_join(dst))
        if not src_name or not dst_name:
            raise NinePError("invalid argument: cannot rename the root", _join(src))
        if src_dir != dst_dir:
            raise NinePError("cross-device link: 9P renames only within a directory", _join(src))
        await self.wstat(src, name=dst_name)

    @_again(repeatable=False)
    async def fsync(self, path: str) -> None:
        await self.wstat(path)  # stat(5): a wstat that touches nothing means "commit to disk"

    # --- directories ----------------------------------------------------------------------

    @_again(repeatable=True)
    async def ls(self, path: str = "/") -> list[Stat]:
        """The entries of a directory, with their stat; a file lists as itself."""
        async with self.fid(path) as (fid, qid):
            try:
                if not qid.is_dir:
                    return [await self.conn.stat(fid)]
                await self.conn.open(fid, OREAD)
                return await read_dir(self.conn, fid)
            except NinePError as e:
                raise _named(e, _join(path)) from None

    @_again(repeatable=True)
    async def listdir(self, path: str = "/") -> list[str]:
        return [st.name for st in await self.ls(path)]

    async def walk(self, top: str = "/") -> AsyncIterator[tuple[str, list[str], list[str]]]:
        """Like os.walk, top down: (dirpath, dirnames, filenames) for every directory."""
        stack = [_join(top)]
        while stack:
            d = stack.pop()
            entries = await self.ls(d)
            dirs = [e.name for e in entries if e.is_dir]
            files = [e.name for e in entries if not e.is_dir]
            yield d, dirs, files
            stack.extend(posixpath.join(d, n) for n in reversed(dirs))

    @_again(repeatable=False)
    async def mkdir(
        self, path: str, perm: int = 0o777, *, parents: bool = False, exist_ok: bool = False
    ) -> None:
        names = split_path(path)
        if not names:
            if exist_ok or parents:
                return
            raise Exists("file already exists", "/")
        if parents:
            for i in range(1, len(names)):
                await self.mkdir("/".join(names[:i]), perm, exist_ok=True)
        try:
            await self._create("/".join(names), DMDIR | (perm & 0o777), OREAD)
        except FileExistsError:
            if not (exist_ok or parents) or not (await self.stat(path)).is_dir:
                raise

    async def _create(self, path: str, perm: int, mode: int) -> tuple[int, Qid, int]:
        """Create `path`; give the open fid, qid and iounit."""
        parent, name = posixpath.split(_join(path))
        if not name:
            raise Exists("file already exists", "/")
        fid, _ = await self.walk_fid(parent)
        try:
            qid, iounit = await self.conn.create(fid, name, perm, mode)
        except NinePError as e:
            await self._clunk(fid)
            raise _named(e, _join(path)) from None
        except BaseException:
            await self._clunk(fid)
            raise
        return fid, qid, iounit

    @_again(repeatable=False)
    async def remove(self, path: str) -> None:
        fid, _ = await self.walk_fid(path)
        try:
            await self.conn.remove(fid)  # remove(5): the fid is clunked either way
        except NinePError as e:
            raise _named(e, _join(path)) from None
        finally:
            self.conn.fids.put(fid)

    @_again(repeatable=False)
    async def rmtree(self, path: str) -> None:
        entries = await self.ls(path)
        if (await self.stat(path)).is_dir:
            for e in entries:
                sub = posixpath.join(_join(path), e.name)
                if e.is_dir:
                    await self.rmtree(sub)
                else:
                    await self.remove(sub)
        await self.remove(path)

    # --- contents ------------------------------------------------------------------------

    def open(self, path: str, mode: str = "r", *, perm: int = 0o666) -> _Opening:
        """Open like Python's open(): r, w, a, x, r+, w+, a+ with optional b; text is UTF-8.

        `async with fs.open(path) as f:` closes the file afterwards; `f = await fs.open(path)`
        leaves closing to the caller.
        """
        return _Opening(self._open(path, mode, perm))

    async def _open(self, path: str, mode: str, perm: int) -> File:
        plus = "+" in mode
        binary = "b" in mode
        kind = mode.replace("b", "").replace("+", "").replace("t", "")
        if kind not in ("r", "w", "a", "x") or len(kind) != 1:
            raise ValueError(f"invalid mode {mode!r}")
        acc = ORDWR if plus else (OREAD if kind == "r" else OWRITE)
        if kind == "r":
            fid, qid, iounit = await self._open_existing(path, acc)
        elif kind == "x":
            fid, qid, iounit = await self._create(path, perm & 0o777, acc)
        else:
            trunc = OTRUNC if kind == "w" else 0
            fid, qid, iounit = await self._open_or_create(path, acc, trunc, perm)
        f = File(self, fid, qid, iounit or self.conn.iounit, _join(path), acc, binary)
        if kind == "a":
            try:
                f._pos = (await self.conn.stat(fid)).length
            except BaseException:
                await f.close()
                raise
            f._append = True
        return f

    async def _open_existing(self, path: str, mode: int) -> tuple[int, Qid, int]:
        fid, _ = await self.walk_fid(path)
        try:
            qid, iounit = await self.conn.open(fid, mode)
        except NinePError as e:
            await self._clunk(fid)
            raise _named(e, _join(path)) from None
        except BaseException:
            await self._clunk(fid)
            raise
        return fid, qid, iounit

    async def _open_or_create(self, path: str, acc: int, trunc: int, perm: int) -> tuple[int, Qid, int]:
        for _ in range(3):  # someone may create or remove it between our walk and our create
            try:
                return await self._open_existing(path, acc | trunc)
            except FileNotFoundError:
                pass
            try:
                return await self._create(path, perm & 0o777, acc)
            except FileExistsError:
                continue
        raise NinePError("i/o error: file keeps appearing and vanishing", _join(path))

    @_again(repeatable=True)
    async def read_bytes(self, path: str) -> bytes:
        async with self.open(path, "rb") as f:
            return await f.read()

    async def read_text(self, path: str) -> str:
        return (await self.read_bytes(path)).decode("utf-8")

    @_again(repeatable=False)
    async def write_bytes(self, path: str, data: bytes, *, append: bool = False, perm: int = 0o666) -> int:
        """Write `data` to `path`, creating it, or truncating it unless `append`."""
        async with self.open(path, "ab" if append else "wb", perm=perm) as f:
            return await f.write(data)

    async def write_text(self, path: str, text: str, *, append: bool = False) -> int:
        return await self.write_bytes(path, text.encode("utf-8"), append=append)

    # --- big transfers, pipelined ---------------------------------------------------------------

    async def pread(self, fid: int, offset: int, count: int, iounit: int, path: str = "") -> bytes:
        """Up to `count` bytes at `offset`, as iounit-sized Treads, WINDOW of them in flight."""
        check_offset(offset, offset, path)
        if count <= iounit:
            return await self._read1(fid, offset, count, path)
        spans = [(o, min(iounit, offset + count - o)) for o in range(offset, offset + count, iounit)]
        replies = await self.conn.windowed(
            [(Tread(0, fid, o, n), Rread) for o, n in spans], WINDOW, stop_on_error=True
        )
        pieces: list[bytes] = []
        for (_, n), reply in zip(spans, replies, strict=False):
            if isinstance(reply, NinePError):
                raise _named(reply, path)
            data = reply.data  # type: ignore[attr-defined]
            pieces.append(data)
            if len(data) < n:  # short read: end of file here
                break
        return b"".join(pieces)

    async def _read1(self, fid: int, offset: int, count: int, path: str) -> bytes:
        try:
            return await self.conn.read_view(fid, offset, count)
        except NinePError as e:
            raise _named(e, path) from None

    async def pwrite(
        self, fid: int, offset: int, data: bytes, iounit: int, path: str = "", *, ordered: bool = False
    ) -> int:
        """Write all of `data` at `offset`, pipelining iounit-sized Twrites unless `ordered`."""
        check_offset(offset, offset + len(data), path)
        view = memoryview(data)
        if len(data) <= iounit or ordered:
            done = 0
            while done < len(data) or not data:
                n = await self._write1(fid, offset + done, view[done : done + iounit], path)
                if n == 0 and data:
                    raise NinePError("i/o error: server wrote nothing", path)
                done += n
                if not data:
                    break
            return done
        spans = [view[o : o + iounit] for o in range(0, len(data), iounit)]
        requests = [(Twrite(0, fid, offset + k * iounit, b), Rwrite) for k, b in enumerate(spans)]
        replies = await self.conn.windowed(requests, WINDOW, stop_on_error=True)
        for b, reply in zip(spans, replies, strict=False):
            if isinstance(reply, NinePError):
                raise _named(reply, path)
            n = reply.count  # type: ignore[attr-defined]
            if n != len(b):
                raise NinePError(f"i/o error: short write ({n} of {len(b)} bytes)", path)
        return len(data)

    async def _write1(self, fid: int, offset: int, data: bytes, path: str) -> int:
        try:
            return await self.conn.write(fid, offset, data)
        except NinePError as e:
            raise _named(e, path) from None


class _Opening:
    """What `Client.open` returns: awaitable, and an async context manager."""

    def __init__(self, coro: Coroutine[Any, Any, File]) -> None:
        self._coro = coro
        self._file: File | None = None

    def __await__(self) -> Generator[Any, None, File]:
        return self._coro.__await__()

    async def __aenter__(self) -> File:
        self._file = await self._coro
        return self._file

    async def __aexit__(self, *exc: object) -> None:
        if self._file is not None:
            await self._file.close()


class File:
    """An open remote file: read, write, seek, readline and line iteration, like io's files."""

    def __init__(
        self, client: Client, fid: int, qid: Qid, iounit: int, path: str, mode: int, binary: bool
    ) -> None:
        self.client = client
        self.conn = client.conn  # the connection `fid` belongs to
        self.fid = fid
        self.qid = qid
        self.iounit = iounit
        self.path = path
        self.mode = mode
        self.binary = binary
        self.closed = False
        self._pos = 0
        self._append = False
        self._buf = b""  # read-ahead for readline; starts at _pos
        self._decoder = None if binary else codecs.getincrementaldecoder("utf-8")()

    async def __aenter__(self) -> File:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.conn is self.client.conn:
                await self.client._clunk(self.fid)

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path}: I/O operation on closed file")
        if self.conn is not self.client.conn:
            raise NinePError(
                "i/o error: the connection was lost and made again; open the file again", self.path
            )

    def tell(self) -> int:
        return self._pos

    async def seek(self, offset: int, whence: int = 0) -> int:
        self._check()
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        elif whence == 2:
            pos = (await self.stat()).length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        self._buf = b""
        return pos

    async def stat(self) -> Stat:
        return await self.client.conn.stat(self.fid)

    async def read(self, n: int = -1) -> Any:
        """Up to `n` bytes (all to end of file when n < 0); str in text mode (n counts bytes)."""
        self._check()
        if n < 0:
            chunks = [self._buf]
            pos = self._pos + len(self._buf)
            want = self.iounit  # most files fit in one read; pipeline only once one does not
            while True:
                data = await self.client.pread(self.fid, pos, want, self.iounit, self.path)
                if not data:
                    break
                chunks.append(data)
                pos += len(data)
                want = WINDOW * self.iounit
            out = b"".join(chunks)
        else:
            out = self._buf[:n]
            if len(out) < n:
                more = await self.client.pread(
                    self.fid, self._pos + len(self._buf), n - len(out), self.iounit, self.path
                )
                out = bytes(more) if not out else out + more  # no second copy of a big read
        self._buf = self._buf[len(out) :] if len(out) <= len(self._buf) else b""
        self._pos += len(out)
        return self._text(out, final=n < 0)

    def _text(self, data: bytes, final: bool = False) -> Any:
        if self._decoder is None:
            return data
        return self._decoder.decode(data, final)

    async def readline(self) -> Any:
        self._check()
        while b"\n" not in self._buf:
            more = await self.client.pread(
                self.fid, self._pos + len(self._buf), self.iounit, self.iounit, self.path
            )
            if not more:
                break
            self._buf += more
        i = self._buf.find(b"\n")
        line = self._buf if i < 0 else self._buf[: i + 1]
        self._buf = self._buf[len(line) :]
        self._pos += len(line)
        return self._text(line)

    def __aiter__(self) -> File:
        return self

    async def __anext__(self) -> Any:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def write(self, data: Any) -> int:
        self._check()
        raw = data if isinstance(data, (bytes, bytearray, memoryview)) else str(data).encode("utf-8")
        if self._append:
            self._pos = (await self.stat()).length
        self._buf = b""
        ordered = bool(self.qid.type & QTAPPEND)
        n = await self.client.pwrite(self.fid, self._pos, raw, self.iounit, self.path, ordered=ordered)
        self._pos += n
        return n if self.binary else len(data)

    async def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        check_stat({"length": size}, self.path)
        try:
            await self.client.conn.wstat(self.fid, Stat.dont_touch(length=size))
        except NinePError as e:
            raise _named(e, self.path) from None
        return size

    async def fsync(self) -> None:
        await self.client.conn.wstat(self.fid, Stat.dont_touch())
