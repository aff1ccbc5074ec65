"""The serving machine's facts as small read-only text files, like Plan 9's /dev (cons(3)).

`DevTree` is one directory of synthetic files a shell can `cat`: `sysname`,
`cputype`, `ncpu`, `load`, `mem`, `uptime`, `time`, `random` and `log` (the
server's own log messages, like /dev/kprint). It is one of the machine trees
that `ninefs serve --machine` composes, so a remote machine's resources read
like local files: `cat /n/beta/dev/load`.

Values are fresh on every read: a file's content is computed when it is
opened and reads are served from that snapshot, so a sequence of reads
through one open sees one consistent value (as Plan 9's synthetic files do).
Like them, every file reports length 0 and qid.vers 0, which tells a mount it is a
stream, to read afresh (docs/mount.md); `random` never ends.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ninep.constants import DMDIR, OACCMODE, OREAD, QTDIR, QTFILE
from ninep.errors import IsADirectory, NotADirectory, NotFound, PermissionDenied
from ninep.messages import Qid, Stat
from ninep.tree import Tree, is_null_wstat

__all__ = ["DevTree", "LogRing", "ncpu"]

LOG_LINES = 1000
RANDOM_MAX = 1 << 20  # one read of `random` gives at most this much (an Rread never holds more)


class LogRing(logging.Handler):
    """The last `maxlen` lines logged, for the `log` file: a bounded ring, never growing."""

    def __init__(self, maxlen: int = LOG_LINES) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[str] = deque(maxlen=maxlen)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        self._ring_lock = threading.Lock()  # emit may come from worker threads

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._ring_lock:
            self.lines.extend(text.splitlines() or [""])  # a traceback is several lines

    def snapshot(self) -> bytes:
        with self._ring_lock:
            lines = list(self.lines)
        return "".join(line + "\n" for line in lines).encode("utf-8", "replace")


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, by field name."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def ncpu() -> int:
    """The processors this server may run on: what nproc(1) says, not just what is installed."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}\n"


def _mem() -> str:
    info = _meminfo()
    total = info.get("MemTotal", 0)
    free = info.get("MemFree", 0)
    available = info.get("MemAvailable", free)
    return f"total {total}\nfree {free}\navailable {available}\n"


def _uptime() -> str:
    with open("/proc/uptime") as f:
        return f.read().split()[0] + "\n"


def _time() -> str:
    # Plan 9's /dev/time: seconds since the epoch, then the same instant in nanoseconds.
    ns = time.time_ns()
    return f"{ns // 10**9} {ns}\n"


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    path: int
    content: Callable[[DevTree], bytes] | None  # None: `random`, endless and never snapshotted

    @property
    def qid(self) -> Qid:
        return Qid(QTFILE, 0, self.path)


def _text(fn: Callable[[], str]) -> Callable[[DevTree], bytes]:
    return lambda _tree: fn().encode("utf-8")


_ROOT_QID = Qid(QTDIR, 0, 0)
_ENTRIES = [
    _Entry("sysname", 1, _text(lambda: socket.gethostname() + "\n")),
    _Entry("cputype", 2, _text(lambda: platform.machine() + "\n")),
    _Entry("ncpu", 3, _text(lambda: f"{ncpu()}\n")),
    _Entry("load", 4, _text(_load)),
    _Entry("mem", 5, _text(_mem)),
    _Entry("uptime", 6, _text(_uptime)),
    _Entry("time", 7, _text(_time)),
    _Entry("random", 8, None),
    _Entry("log", 9, lambda tree: tree.log_handler.snapshot()),
]
_BY_NAME = {e.name: e for e in _ENTRIES}


@dataclass(eq=False, slots=True)
class _Node:
    entry: _Entry | None  # None: the directory itself
    data: bytes | None = None  # the content as of open

    @property
    def qid(self) -> Qid:
        return _ROOT_QID if self.entry is None else self.entry.qid


class DevTree(Tree):
    """The machine's /dev; owned by `owner` (default: the serving user).

    The tree installs `log_handler` on the `logger` ("ninefs" by default, so all
    of the server's messages) and takes it off again in `close()`. It does not
    change the logger's level: lines below the level the program logs at do not
    reach the ring.
    """

    def __init__(
        self, owner: str | None = None, *, logger: str = "ninefs", log_lines: int = LOG_LINES
    ) -> None:
        self.owner = owner or getpass.getuser()
        self.log_handler = LogRing(log_lines)
        self._logger = logging.getLogger(logger)
        self._logger.addHandler(self.log_handler)

    def _stat(self, entry: _Entry | None) -> Stat:
        now = int(time.time())  # synthetic files are as new as the moment you look
        if entry is None:
            qid, mode, name = _ROOT_QID, DMDIR | 0o555, "/"
        else:
            qid, mode, name = entry.qid, 0o444, entry.name
        return Stat(
            qid=qid,
            mode=mode,
            atime=now,
            mtime=now,
            length=0,
            name=name,
            uid=self.owner,
            gid=self.owner,
            muid=self.owner,
        )

    # --- the tree interface ------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> _Node:
        if aname not in ("", "/"):
            raise NotFound(f"file does not exist: no tree named {aname!r}")
        return _Node(None)

    async def clone(self, node: _Node) -> _Node:
        return _Node(node.entry)

    async def walk1(self, node: _Node, name: str) -> _Node:
        if node.entry is not None:
            raise NotADirectory("walk in non-directory")
        if name in ("..", "."):
            return _Node(None)
        entry = _BY_NAME.get(name)
        if entry is None:
            raise NotFound("file does not exist")
        return _Node(entry)

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        if mode & OACCMODE != OREAD or mode & ~OACCMODE:  # OTRUNC, ORCLOSE: also writes
            raise PermissionDenied("permission denied")
        if node.entry is not None and node.entry.content is not None:
            node.data = node.entry.content(self)
        return node.qid, 0

    async def create(self, node: _Node, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        raise PermissionDenied("permission denied")

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        if node.entry is None:
            raise IsADirectory("is a directory")
        if node.entry.content is None:  # random: endless, the offset means nothing
            return os.urandom(min(count, RANDOM_MAX))
        data = node.data or b""
        return data[offset : offset + count]

    async def readdir(self, node: _Node) -> Sequence[Stat]:
        return [self._stat(e) for e in _ENTRIES]

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        raise PermissionDenied("permission denied")

    async def stat(self, node: _Node) -> Stat:
        return self._stat(node.entry)

    async def wstat(self, node: _Node, stat: Stat) -> None:
        if is_null_wstat(stat):
            return  # stat(5): a null wstat asks for a sync, and there is nothing to sync
        raise PermissionDenied("permission denied")

    async def remove(self, node: _Node) -> None:
        raise PermissionDenied("permission denied")

    async def clunk(self, node: _Node) -> None:
        node.data = None

    async def close(self) -> None:
        self._logger.removeHandler(self.log_handler)
        self.log_handler.close()
