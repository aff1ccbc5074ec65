"""What a client grants a server: how long opening a session may take, how big a listing
may grow, and which values the wire can carry at all.

A client trusts nothing a server does not send: a host that never answers the SYN, a
server that accepts and never answers Tversion, a directory that never ends. Each gets
a deadline or a limit here, and an error that names the address or the path, so the
command line can print one line and the library raise one exception. `client.py`,
`files.py` and `remote.py` use these; nothing here does I/O but wait for a deadline.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from .client import Connection
from .codec import decode_stats
from .constants import DEFAULT_MSIZE
from .errors import NinePError, TimedOut
from .messages import Stat
from .transport import Address, dial

__all__ = ["CONNECT_TIMEOUT", "MAX_DIR_BYTES", "MAX_DIR_ENTRIES", "Opening", "check_offset", "check_stat"]

# The deadline the command line, mounts, namespaces and cpu give dial, Tversion, Tauth and
# Tattach together, unless told otherwise: longer than any real handshake, far shorter than
# TCP's own ~130 s of SYN retries to a silent host.
CONNECT_TIMEOUT = 10.0

# A directory listing is held in memory whole; past these, it is an error, not a hang that
# eats the machine (a million entries is far beyond any real directory's).
MAX_DIR_ENTRIES = 1_000_000
MAX_DIR_BYTES = 256 << 20

MAX_OFFSET = 1 << 63  # 9P's offsets are u64, but Plan 9's (and Linux's) are signed 64-bit
MAX_TIME = (1 << 32) - 1  # atime, mtime: u32 seconds; all ones means "don't touch"


class Opening:
    """One deadline over the steps of opening a session, and the error that names the step.

    `timeout` None: no deadline. The deadline starts when the Opening is made, so dial,
    Tversion, auth and attach share it; each step runs in `with opening.step(...)`.
    """

    def __init__(self, address: str | Address, timeout: float | None) -> None:
        self.address = str(address)
        self.timeout = timeout
        self.deadline = math.inf if timeout is None else trio.current_time() + timeout

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run one step (`dial`, or the T-messages it waits for) within the deadline."""
        with trio.move_on_at(self.deadline) as scope:
            yield
        if scope.cancelled_caught:
            raise TimedOut(self.expired(what), self.address)

    def expired(self, what: str) -> str:
        seconds = f"{self.timeout:g} s"
        if what == "dial":
            return f"connection timed out after {seconds}"
        return f"timed out: no answer to {what} within {seconds}"

    async def connection(
        self, nursery: trio.Nursery, *, msize: int = DEFAULT_MSIZE, timeout: float | None = None
    ) -> Connection:
        """Dial and negotiate the version (`timeout`: the connection's deadline per call)."""
        with self.step("dial"):
            stream = await dial(self.address)
        conn = Connection(stream, msize=msize, timeout=timeout)
        try:
            with self.step("Tversion"):
                await conn.start(nursery)
        except BaseException:
            await conn.aclose()
            raise
        return conn


async def read_dir(
    conn: Connection, fid: int, path: str | None = None, first: bytes | None = None
) -> list[Stat]:
    """Every entry of the open directory `fid`, at most MAX_DIR_ENTRIES / MAX_DIR_BYTES;
    `first`: what a read at offset 0 already gave (sent with the open)."""
    out: list[Stat] = []
    offset = 0
    while data := (first if first is not None else await conn.read(fid, offset, conn.iounit)):
        first = None
        out.extend(decode_stats(data))
        offset += len(data)
        if len(out) > MAX_DIR_ENTRIES:
            raise NinePError(f"i/o error: directory listing has more than {MAX_DIR_ENTRIES} entries", path)
        if offset > MAX_DIR_BYTES:
            raise NinePError(f"i/o error: directory listing has more than {MAX_DIR_BYTES} bytes", path)
    return out


def check_offset(offset: int, end: int, path: str | None) -> None:
    """EINVAL for file positions 9P's peers cannot take (lseek(2) says the same)."""
    if offset < 0 or offset >= MAX_OFFSET:
        raise NinePError(f"invalid argument: offset {offset} is past 2**63-1", path)
    if end > MAX_OFFSET:
        raise NinePError(f"invalid argument: offset {offset} and {end - offset} bytes go past 2**63", path)


def check_stat(fields: dict[str, Any], path: str | None) -> None:
    """EOVERFLOW for times a u32 cannot hold, EINVAL for lengths past 2**63 (utimensat(2),
    truncate(2)): refused here with the path, not as a codec error from deep inside."""
    for name in ("atime", "mtime"):
        t = fields.get(name)
        if t is not None and not 0 <= t < MAX_TIME:
            raise OSError(errno.EOVERFLOW, f"value too large: {name} {t} does not fit 9P's 32-bit time", path)
    length = fields.get("length")
    if length is not None and not 0 <= length < MAX_OFFSET:
        raise NinePError(f"invalid argument: length {length} is past 2**63-1", path)
