"""Copying files and trees between local paths and 9P servers: `ninefs cp`, and `mv` across
directories (9P renames only within one, wstat(5)).

Sits on the path API (files.py), beside the CLI that uses it. Either side of a copy is a
`Side`: the local file system, or one attach on a server. Every file goes to a temporary
name in its target directory (`.NAME.ninefs-XXXXXX`) and is renamed once complete (a 9P
wstat of the name, os.replace locally), so a copy cut short by an error, a dead server or
^C never leaves a partial file under the final name; the temporary is removed (unless the
server holding it is the one that died). Reading and writing overlap: one task reads a
file a chunk (WINDOW iounits, pipelined as Treads) ahead while another writes the last
chunk (pipelined Twrites), and small files go several at once.

`ADDR:PATH` (parse_location): a dial string (`tcp!h!564`, `unix!/run/9p.sock`) ends at the
first ':' after its last '!'; otherwise an argument is remote when it has a ':' with no '/'
before it: `host:port:PATH`, `[v6]:port:PATH`, `host:PATH` (port 564). Anything else, and
anything starting with '/' or './', is local: `./a:b` is the local file a:b.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Protocol

import trio

from .constants import DMDIR
from .errors import NinePError
from .files import WINDOW, Client, File, split_path
from .messages import Stat

__all__ = [
    "Copier",
    "CopyError",
    "Entry",
    "LocalSide",
    "Location",
    "Options",
    "Progress",
    "RemoteSide",
    "Side",
    "first_error",
    "human_size",
    "move_across",
    "normalize",
    "parse_location",
]

DIAL_NETS = ("tcp", "tcp4", "tcp6", "net", "tls", "unix")
PARALLEL = 4  # files copied at once: small files are round trips, not bytes
CHUNKS = 8  # chunks read but not yet written, for all files together: bounds the memory held
LOCAL_CHUNK = 8 << 20
CLEANUP_TIMEOUT = 5.0
CHUNK_GRACE = 60.0  # how long ^C waits for the chunk on the wire (see _whole)


class CopyError(Exception):
    """What went wrong, in one line that names the path: "ADDR:/a/b: permission denied"."""


@dataclass(frozen=True, slots=True)
class Location:
    """One argument of cp: `addr` None for a local path."""

    addr: str | None
    path: str

    def __str__(self) -> str:
        return self.path if self.addr is None else f"{self.addr}:{self.path}"


def parse_location(text: str) -> Location:
    """Split `ADDR:PATH` (the module docstring has the rule); a bare ADDR: is the export's root."""
    if not text:
        raise ValueError("empty path")
    net, bang, _ = text.partition("!")
    if bang and net in DIAL_NETS:
        colon = text.find(":", text.rfind("!"))
        if colon < 0:
            raise ValueError(f"{text}: a dial string needs :PATH after it (ADDR:/ for the root)")
        return Location(text[:colon], text[colon + 1 :] or "/")
    if text.startswith("["):  # [::1]:564:PATH or [::1]:PATH
        end = text.find("]")
        if end > 0 and text[end + 1 : end + 2] == ":":
            rest = text[end + 2 :]
            port, sep, path = rest.partition(":")
            if sep and port.isdigit():
                return Location(text[: end + 2 + len(port)], path or "/")
            return Location(text[: end + 1], rest or "/")
    first = text.find(":")
    if first <= 0 or "/" in text[:first]:
        return Location(None, text)
    host, rest = text[:first], text[first + 1 :]
    port, sep, path = rest.partition(":")
    if sep and port.isdigit():
        return Location(f"{host}:{port}", path or "/")
    return Location(host, rest or "/")


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
def _blame(label: str) -> Iterator[None]:
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
        data = await trio.to_thread.run_sync(os.pread, self.fd, LOCAL_CHUNK, self.pos)
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

        await trio.to_thread.run_sync(write_all)

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
        with _blame(path):
            try:
                s = await trio.to_thread.run_sync(os.stat, path)
            except FileNotFoundError:
                return None
        return _local_entry(self.basename(path), s)

    async def listdir(self, path: str) -> list[Entry]:
        def scan() -> list[Entry]:
            out = []
            with os.scandir(path) as it:
                for e in it:
                    with _blame(e.path):  # a dangling symlink, say
                        out.append(_local_entry(e.name, e.stat()))  # follows symlinks, as cp -L
            return out

        with _blame(path):
            return await trio.to_thread.run_sync(scan)

    async def mkdir(self, path: str, perm: int) -> None:
        with _blame(path):
            os.mkdir(path, perm)

    async def set_attrs(self, path: str, perm: int | None, times: tuple[int, int] | None) -> None:
        with _blame(path):
            if perm is not None:
                os.chmod(path, perm)
            if times is not None:
                os.utime(path, ns=times)

    async def reader(self, path: str, entry: Entry) -> Reader:
        with _blame(path):
            return _LocalReader(os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    async def writer(self, path: str, perm: int) -> Writer:
        directory, name = _temporary_name(path, os.path.split)
        temp = os.path.join(directory, name)
        with _blame(path):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, perm)
        return _LocalWriter(fd, temp, path)

    async def remove_tree(self, path: str) -> None:
        with _blame(path):
            if os.path.isdir(path):
                await trio.to_thread.run_sync(shutil.rmtree, path)
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
        with _blame(self.label(path)):
            try:
                return _remote_entry(await self.fs.stat(path))
            except FileNotFoundError:
                return None

    async def listdir(self, path: str) -> list[Entry]:
        with _blame(self.label(path)):
            return [_remote_entry(st) for st in await self.fs.ls(path)]

    async def mkdir(self, path: str, perm: int) -> None:
        with _blame(self.label(path)):
            await self.fs.mkdir(path, perm)

    async def set_attrs(self, path: str, perm: int | None, times: tuple[int, int] | None) -> None:
        changes: dict[str, Any] = {}
        with _blame(self.label(path)):
            if perm is not None:
                st = await self.fs.stat(path)
                changes["mode"] = (st.mode & DMDIR) | perm  # wstat(5): DMDIR may not change
            if times is not None:
                changes["mtime"] = times[1] // 10**9
            await self.fs.wstat(path, **changes)

    async def reader(self, path: str, entry: Entry) -> Reader:
        with _blame(self.label(path)):
            return _RemoteReader(await self.fs.open(path, "rb"), entry.length)

    async def writer(self, path: str, perm: int) -> Writer:
        directory, name = _temporary_name(normalize(path), posixpath.split)
        temp = posixpath.join(directory, name)
        try:
            with _blame(self.label(path)):
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
        with _blame(self.label(path)):
            await self.fs.rmtree(path)


# --- progress -----------------------------------------------------------------------------------


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}" if s >= 3600 else f"{s // 60}:{s % 60:02}"


class Progress:
    """Bytes done of the total, the rate over the last few seconds and the time left, redrawn
    on one line of `stream` at most ten times a second (`stream` None: count only)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.total = self.done = self.files = self.dirs = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._samples: deque[tuple[float, int]] = deque()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and now - self._drawn >= 0.1:
            self.draw(now)

    def rate(self, now: float) -> float:
        samples = self._samples
        samples.append((now, self.done))
        while len(samples) > 2 and now - samples[0][0] > 3.0:
            samples.popleft()
        t0, b0 = samples[0]
        if now - t0 < 0.05:
            t0, b0 = self.started, 0
        return (self.done - b0) / (now - t0) if now > t0 else 0.0

    def line(self, now: float) -> str:
        rate = self.rate(now)
        total = max(self.total, self.done)
        share = self.done / total if total else 1.0
        left = (total - self.done) / rate if rate > 0 else None
        eta = "ETA " + (_clock(left) if left is not None else "--:--")
        numbers = f"{human_size(self.done)} / {human_size(total)} {share:4.0%}  {human_size(rate)}/s  {eta}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        bar = width - len(numbers) - 3
        if bar < 10:
            return numbers[:width]
        filled = int(bar * share)
        return f"[{'#' * filled}{'-' * (bar - filled)}] {numbers}"

    def draw(self, now: float | None = None) -> None:
        assert self.stream is not None
        now = time.monotonic() if now is None else now
        self._drawn = now
        self.stream.write("\r" + self.line(now))
        self.stream.flush()

    def finish(self, complete: bool) -> None:
        """Draw the last state and end the line, so what follows starts on a line of its own
        (after a failure, only if a bar was drawn: a bar of nothing done says nothing)."""
        if self.stream is not None and (complete or self._drawn):
            self.draw()
            self.stream.write("\n")
            self.stream.flush()

    def summary(self) -> str:
        took = time.monotonic() - self.started
        files = f"{self.files} file{'' if self.files == 1 else 's'}"
        if self.dirs:
            files += f" in {self.dirs} director{'y' if self.dirs == 1 else 'ies'}"
        rate = human_size(self.done / took) + "/s" if took > 0 else "-"
        return f"copied {files}, {human_size(self.done)} in {took:.1f} s, {rate}"


# --- the copy ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    recursive: bool = False
    preserve: bool = False  # modes and mtimes (cp -p)
    umask: int = 0o022  # what a new file's mode loses without -p, as cp(1) does


@dataclass(frozen=True, slots=True)
class _Dir:
    src: Entry
    dst: str
    made: bool  # False: it existed, and the copy goes into it


@dataclass(frozen=True, slots=True)
class _File:
    side: Side
    src_path: str
    src: Entry
    dst: str
    old: Entry | None  # what is under the final name now, to be replaced


class Copier:
    """Plans copies (cp's rules for the target name), then runs them: directories first,
    files PARALLEL at a time, directory modes and times last (their contents change them)."""

    def __init__(self, dst: Side, options: Options, progress: Progress) -> None:
        self.dst, self.options, self.progress = dst, options, progress
        self.omitted: list[str] = []  # directories given without -r: cp(1) says so, goes on
        self._dirs: list[_Dir] = []
        self._files: list[_File] = []

    async def plan(self, sources: Sequence[tuple[Side, str]], target: str, *, exact: bool = False) -> None:
        """Plan copying each source to `target`, or into it when it is a directory (unless
        `exact`: then `target` is the new name, as for mv)."""
        dst = self.dst
        into = None if exact else await dst.lookup(target)
        if len(sources) > 1 and not (into and into.is_dir):
            raise CopyError(f"{dst.label(target)}: not a directory (copying more than one source)")
        for side, path in sources:
            src = await side.lookup(path)
            if src is None:
                raise CopyError(f"{side.label(path)}: no such file or directory")
            where = dst.join(target, side.basename(path)) if into and into.is_dir else target
            if src.is_dir and not self.options.recursive:
                self.omitted.append(side.label(path))
                continue
            if side is dst:
                if dst.same_place(path, where):
                    raise CopyError(f"{side.label(path)}: is the same file as {dst.label(where)}")
                if src.is_dir and dst.inside(where, path):
                    raise CopyError(f"{side.label(path)}: cannot copy a directory into itself")
            await self._plan_one(side, path, src, where, await dst.lookup(where), ())

    async def _plan_one(
        self, side: Side, path: str, src: Entry, where: str, old: Entry | None, above: tuple[object, ...]
    ) -> None:
        dst = self.dst
        if not src.is_dir:
            if old is not None and old.is_dir:
                raise CopyError(f"{dst.label(where)}: cannot overwrite a directory with a file")
            self._files.append(_File(side, path, src, where, old))
            self.progress.total += src.length
            return
        if src.ident in above:
            raise CopyError(f"{side.label(path)}: directory loop (a link to a directory above it)")
        if old is not None and not old.is_dir:
            raise CopyError(f"{dst.label(where)}: cannot overwrite a file with a directory")
        self._dirs.append(_Dir(src, where, made=old is None))
        there = {e.name: e for e in await dst.listdir(where)} if old is not None else {}
        for entry in sorted(await side.listdir(path), key=lambda e: e.name):
            await self._plan_one(
                side, side.join(path, entry.name), entry, dst.join(where, entry.name),
                there.get(entry.name), (*above, src.ident),
            )  # fmt: skip

    def _times(self, src: Entry) -> tuple[int, int] | None:
        return (src.atime_ns, src.mtime_ns) if self.options.preserve else None

    async def run(self) -> None:
        options, dst = self.options, self.dst
        for d in self._dirs:
            if d.made:
                # Writable by us while it fills, whatever its mode will be (as GNU cp does).
                await dst.mkdir(d.dst, (d.src.perm & ~options.umask) | 0o700)
                self.progress.dirs += 1
        files = iter(self._files)
        tokens = trio.Semaphore(CHUNKS)
        async with trio.open_nursery() as nursery:
            for _ in range(min(PARALLEL, len(self._files))):
                nursery.start_soon(self._copy_files, files, tokens)
        for d in reversed(self._dirs):
            if options.preserve:
                await dst.set_attrs(d.dst, d.src.perm, self._times(d.src))
            elif d.made and d.src.perm & ~options.umask != (d.src.perm & ~options.umask) | 0o700:
                await dst.set_attrs(d.dst, d.src.perm & ~options.umask, None)

    async def _copy_files(self, files: Iterator[_File], tokens: trio.Semaphore) -> None:
        for job in files:  # shared by the workers: each takes the next one not yet taken
            await self._copy_file(job, tokens)
            self.progress.files += 1

    async def _copy_file(self, job: _File, tokens: trio.Semaphore) -> None:
        options = self.options
        if options.preserve:
            perm: int | None = job.src.perm
        elif job.old is not None:
            perm = job.old.perm  # as cp(1) overwriting in place: the file keeps its mode
        else:
            perm = None
        reader = await job.side.reader(job.src_path, job.src)
        try:
            writer = await self.dst.writer(
                job.dst, perm if perm is not None else job.src.perm & ~options.umask
            )
            try:
                await self._pump(job, reader, writer, tokens)
                with _blame(self.dst.label(job.dst)):
                    await writer.commit(job.old is not None, perm, self._times(job.src))
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                    await writer.discard()
                raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    await reader.aclose()
                except (NinePError, OSError):
                    pass

    async def _pump(self, job: _File, reader: Reader, writer: Writer, tokens: trio.Semaphore) -> None:
        """Read ahead in one task, write in this one: both directions pipelined, both at once."""
        send, receive = trio.open_memory_channel[bytes](CHUNKS)

        async def read_ahead() -> None:
            async with send:
                while True:
                    await tokens.acquire()
                    with _blame(job.side.label(job.src_path)):
                        data = await reader.read()
                    if not data:
                        tokens.release()
                        return
                    await send.send(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            async with receive:
                async for data in receive:
                    try:
                        with _blame(self.dst.label(job.dst)):
                            await writer.write(data)
                    finally:
                        tokens.release()
                    self.progress.advance(len(data))


def first_error(exc: BaseException) -> BaseException:
    """The one to report from a nursery's group: ^C before anything, then the first failure."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return leaves[0]


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


async def move_across(side: RemoteSide, src: str, dst: str) -> None:
    """mv between directories of one server: copy with modes and times, directories too, then
    remove the source, only once every byte is under its new name."""
    old = await side.lookup(dst)
    if old is not None and old.is_dir:
        raise CopyError(f"{side.label(dst)}: file already exists")  # mv(1) would merge nothing either
    copier = Copier(side, Options(recursive=True, preserve=True, umask=0), Progress(None))
    await copier.plan([(side, src)], dst, exact=True)
    await copier.run()
    await side.remove_tree(src)
