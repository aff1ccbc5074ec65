"""The two sides of a copy (ninep/copy.py): this machine's files, and one attach on a 9P server.

Each is a `Side`: stats as `Entry` values, and files as a `Reader` and a `Writer`. A
`Writer` writes a temporary name in the target directory and gives it its final name only
once the file is whole (commit), or removes it (discard). Errors come out as `CopyError`,
one line naming the path the user gave.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

from .constants import DMDIR
from .errors import NinePError
from .files import WINDOW, Client, File, split_path
from .messages import Stat
from .polling import in_thread

__all__ = ["CopyError", "Entry", "LocalSide", "Reader", "RemoteSide", "Side", "Writer", "blame", "normalize"]

LOCAL_CHUNK = 8 << 20
CLEANUP_TIMEOUT = 5.0
CHUNK_GRACE = 60.0  # how long ^C waits for the chunk on the wire (see _whole)


class CopyError(Exception):
    """What went wrong, in one line that names the path: "ADDR:/a/b: permission denied"."""


def normalize(path: str) -> str:
    """A server path with '.' and '..' resolved as a walk would (".." at the root stays there)."""
    names: list[str] = []
    for name in split_path(path):
        if name == "..":
            if names:
                names.pop()
        else:
            names.append(name)
    return "/" + "/".join(names)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a copy needs of a file's stat, on either side."""

    name: str
    is_dir: bool
    perm: int  # the 0o777 bits: 9P2000 carries no more that every server keeps
    length: int
    mtime_ns: int
    atime_ns: int
    ident: object  # (st_dev, st_ino) locally, qid.path remotely: a loop or a self-copy shows


class Reader(Protocol):
    async def read(self) -> bytes:
        """The next chunk; b"" at the end."""
        ...

    async def aclose(self) -> None: ...


class Writer(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def commit(self, replace: bool, perm: int | None, times: tuple[int, int] | None) -> None:
        """Give the temporary its mode and times, then its final name (replacing the old file)."""
        ...

    async def discard(self) -> None:
        """Close and remove the temporary; quietly, since an error is already on its way."""
        ...


class Side(Protocol):
    """One side of a copy: paths, stats and files of one tree."""

    def label(self, path: str) -> str: ...
    def join(self, directory: str, name: str) -> str: ...
    def basename(self, path: str) -> str: ...
    def same_place(self, a: str, b: str) -> bool: ...
    def inside(self, path: str, top: str) -> bool: ...
    async def lookup(self, path: str) -> Entry | None: ...
    async def listdir(self, path: str) -> list[Entry]: ...
    async def mkdir(self, path: str, perm: int) -> None: ...
    async def set_attrs(self, path: str, perm: int | None, times: tuple[int, int] | None) -> None: ...
    async def reader(self, path: str, entry: Entry) -> Reader: ...
    async def writer(self, path: str, perm: int) -> Writer: ...
    async def remove_tree(self, path: str) -> None: ...


def _temporary_name(path: str, split: Callable[[str], tuple[str, str]]) -> tuple[str, str]:
    directory, name = split(path)
    # 255 bytes is the usual name limit; the prefix and suffix take 17 of them.
    return directory, f".{name[:200]}.ninefs-{secrets.token_hex(3)}"


@contextmanager
def blame(label: str) -> Iterator[None]:
    """Errors of this call as one CopyError naming `label`, the path the user gave."""
    try:
        yield
    except CopyError:
        raise
    except NinePError as e:
        raise CopyError(f"{label}: {e.ename}") from None
    except OSError as e:
        raise CopyError(f"{label}: {(e.strerror or str(e)).lower()}") from None


# --- the local file system ------------------------------------------------------------------


def _local_entry(name: str, s: os.stat_result) -> Entry:
    import stat as st_mod

    return Entry(
        name, st_mod.S_ISDIR(s.st_mode), s.st_mode & 0o777, s.st_size, s.st_mtime_ns, s.st_atime_ns,
        (s.st_dev, s.st_ino),
    )  # fmt: skip


class _LocalReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    async def read(self) -> bytes:
        data = await in_thread(os.pread, self.fd, LOCAL_CHUNK, self.pos)
        self.pos += len(data)
        return data

    async def aclose(self) -> None:
        os.close(self.fd)


class _LocalWriter:
    def __init__(self, fd: int, temp: str, final: str) -> None:
        self.fd, self.temp, self.final = fd, temp, final

    async def write(self, data: bytes) -> None:
        def write_all() -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

        await in_thread(write_all)

    async def commit(self, replace: bool, perm: int | None, times: tuple[int, int] | None) -> None:
        if perm is not None:
            os.fchmod(self.fd, perm)
        if times is not None:
            os.utime(self.fd, ns=times)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.temp, self.final)  # replaces the old file atomically

    async def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.temp)
        except OSError:
            pass


class LocalSide:
    """This machine's files, through os in worker threads (a big read must not stall the 9P tasks)."""

    def label(self, path: str) -> str:
        return path

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name) if name else directory

    def basename(self, path: str) -> str:
        return os.path.basename(os.path.normpath(path))

    def same_place(self, a: str, b: str) -> bool:
        return os.path.realpath(a) == os.path.realpath(b)

    def inside(self, path: str, top: str) -> bool:
        return os.path.realpath(path).startswith(os.path.realpath(top).rstrip("/") + "/")

    async def lookup(self, path: str) -> Entry | None:
        with blame(path):
            try:
                s = await in_thread(os.stat, path)
            except FileNotFoundError:
                return None
        return _local_entry(self.basename(path), s)

    async def listdir(self, path: str) -> list[Entry]:
        def scan() -> list[Entry]:
            out = []
            with os.scandir(path) as it:
                for e in it:
                    with blame(e.path):  # a dangling symlink, say
                        out.append(_local_entry(e.name, e.stat()))  # follows symlinks, as cp -L
            return out

        with blame(path):
            return await in_thread(scan)

    async def mkdir(self, path: str, perm: int) -> None:
        with blame(path):
            os.mkdir(path, perm)

    async def set_attrs(self, path: str, perm: int | None, times: tuple[int, int] | None) -> None:
        with blame(path):
            if perm is not None:
                os.chmod(path, perm)
            if times is not None:
                os.utime(path, ns=times)

    async def reader(self, path: str, entry: Entry) -> Reader:
        with blame(path):
            return _LocalReader(os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    async def writer(self, path: str, perm: int) -> Writer:
        directory, name = _temporary_name(path, os.path.split)
        temp = os.path.join(directory, name)
        with blame(path):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, perm)
        return _LocalWriter(fd, temp, path)

    async def remove_tree(self, path: str) -> None:
        with blame(path):
            if os.path.isdir(path):
                await in_thread(shutil.rmtree, path)
            else:
                os.unlink(path)


# --- a 9P server ------------------------------------------------------------------------------


def _remote_entry(st: Stat) -> Entry:
    return Entry(
        st.name, st.is_dir, st.mode & 0o777, st.length, st.mtime * 10**9, st.atime * 10**9, st.qid.path
    )


async def _whole(call: Callable[[], Awaitable[Any]], what: str) -> Any:
    """`call` (a chunk's pipelined Treads or Twrites) shielded from cancellation: a batch
    cancelled while the socket is full is left half sent, some of it flushed and some not,
    and the server's answers to tags already given up break the connection (client.py), so
    the temporary could not be removed. ^C takes effect once the chunk is through."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + CHUNK_GRACE
        return await call()
    raise NinePError(f"timed out: {what} of a chunk took over {CHUNK_GRACE:g} s")


class _RemoteReader:
    def __init__(self, f: File, length: int) -> None:
        self.f, self.length = f, length
        self.chunk = WINDOW * f.iounit  # one call keeps WINDOW Treads in flight (Client.pread)
        self.done = False

    async def read(self) -> bytes:
        if self.done:
            return b""
        pos = self.f.tell()
        want = self.chunk if self.length - pos > self.f.iounit else self.f.iounit
        data = await _whole(partial(self.f.read, want), "reading")
        # A short read at or past the length stat gave is the end: no extra round trip to hear
        # it again. A file that says length 0 (a stream) is read until it says nothing.
        if not data or (len(data) < want and self.f.tell() >= self.length > 0):
            self.done = True
        return data

    async def aclose(self) -> None:
        await self.f.close()


class _RemoteWriter:
    def __init__(self, side: RemoteSide, f: File, temp: str, final: str) -> None:
        self.side, self.fs, self.f, self.temp, self.final = side, side.fs, f, temp, final
        self.kept = False  # the old file is gone: the temporary is all there is

    async def write(self, data: bytes) -> None:
        await _whole(partial(self.f.write, data), "writing")  # WINDOW Twrites in flight (Client.pwrite)

    async def commit(self, replace: bool, perm: int | None, times: tuple[int, int] | None) -> None:
        changes: dict[str, Any] = {"name": posixpath.basename(self.final)}
        if perm is not None:
            changes["mode"] = perm
        if times is not None:
            changes["mtime"] = times[1] // 10**9
        if replace:
            # wstat(5) will not rename onto an existing name: remove it first, as 9pfuse does.
            await self.fs.remove(self.final)
        try:
            # One Twstat on the open fid: mode, mtime and name at once, all or none (stat(5)).
            await self.f.conn.wstat(self.f.fid, Stat.dont_touch(**changes))
        except NinePError as e:
            if not replace:
                raise
            self.kept = True
            where = self.side.label(self.final)
            raise CopyError(f"{where}: {e.ename}; the old file is removed, the copy is {self.temp}") from None
        await self.f.close()

    async def discard(self) -> None:
        await self.f.close()
        if self.kept:
            return
        try:
            await self.fs.remove(self.temp)
        except (NinePError, OSError):
            pass  # a server that died keeps its temporary; the final name is untouched anyway


class RemoteSide:
    """One attach on a server; `addr` as the user wrote it, for messages."""

    def __init__(self, addr: str, fs: Client) -> None:
        self.addr, self.fs = addr, fs

    def label(self, path: str) -> str:
        return f"{self.addr}:{path}"

    def join(self, directory: str, name: str) -> str:
        return posixpath.join(normalize(directory), name) if name else normalize(directory)

    def basename(self, path: str) -> str:
        return posixpath.basename(normalize(path))

    def same_place(self, a: str, b: str) -> bool:
        return normalize(a) == normalize(b)

    def inside(self, path: str, top: str) -> bool:
        return normalize(path).startswith(normalize(top).rstrip("/") + "/")

    async def lookup(self, path: str) -> Entry | None:
        with blame(self.label(path)):
            try:
                return _remote_entry(await self.fs.stat(path))
            except FileNotFoundError:
                return None

    async def listdir(self, path: str) -> list[Entry]:
        with blame(self.label(path)):
            return [_remote_entry(st) for st in await self.fs.ls(path)]

    async def mkdir(self, path: str, perm: int) -> None:
        with blame(self.label(path)):
            await self.fs.mkdir(path, perm)

    async def set_attrs(self, path: str, perm: int | None, times: tuple[int, int] | None) -> None:
        changes: dict[str, Any] = {}
        with blame(self.label(path)):
            if perm is not None:
                st = await self.fs.stat(path)
                changes["mode"] = (st.mode & DMDIR) | perm  # wstat(5): DMDIR may not change
            if times is not None:
                changes["mtime"] = times[1] // 10**9
            await self.fs.wstat(path, **changes)

    async def reader(self, path: str, entry: Entry) -> Reader:
        with blame(self.label(path)):
            return _RemoteReader(await self.fs.open(path, "rb"), entry.length)

    async def writer(self, path: str, perm: int) -> Writer:
        directory, name = _temporary_name(normalize(path), posixpath.split)
        temp = posixpath.join(directory, name)
        try:
            with blame(self.label(path)):
                f = await self.fs.open(temp, "xb", perm=perm)
        except BaseException:
            # Cancelled (^C) with the Tcreate sent: the server may have made it all the same.
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    await self.fs.remove(temp)
                except (NinePError, OSError):
                    pass
            raise
        return _RemoteWriter(self, f, temp, normalize(path))

    async def remove_tree(self, path: str) -> None:
        with blame(self.label(path)):
            await self.fs.rmtree(path)
