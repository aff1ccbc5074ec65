"""Copying files and trees between local paths and 9P servers: `ninefs cp`, and `mv` across
directories (9P renames only within one, wstat(5)).

Sits on the path API (files.py), beside the CLI that uses it. Either side of a copy is a
`Side` (copysides.py): the local file system, or one attach on a server; the bar and the
summary are progress.py's. Every file goes to a temporary
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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import trio

from .copysides import (
    CLEANUP_TIMEOUT,
    CopyError,
    Entry,
    LocalSide,
    Reader,
    RemoteSide,
    Side,
    Writer,
    blame,
    normalize,
)
from .errors import NinePError
from .progress import Progress, human_size

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
                with blame(self.dst.label(job.dst)):
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
                    with blame(job.side.label(job.src_path)):
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
                        with blame(self.dst.label(job.dst)):
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
