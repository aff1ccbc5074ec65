"""The client side of a machine's `cmd` tree (Inferno's cmd(3)): start a command, talk to it.

What `ninefs cpu` (one machine, with the caller's files at /mnt/term) and the fan-out
(`ninefs cpu -w`, `run_all`: many machines, as pdsh does) share. The tree itself, and
the meaning of each file, is fileserver/cmd.py; this module only drives it:

    clone -> n (the open fid becomes n/ctl)
    open n/data, n/stderr (before exec: cmd(3) discards stderr nobody has open), n/wait
    write ctl "exec ARGV" -> the server starts the command itself, no process in between

With `term` the command is instead started by the server's term wrapper, which mounts
9P spoken on n/term at /mnt/term for it (a second process on the remote side: only
`cpu` asks for that).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import trio

from .constants import ORDWR, OREAD
from .errors import NinePError
from .files import Client

__all__ = ["Command", "exit_status", "start_command"]


@dataclass(slots=True)
class Command:
    """A session of a cmd tree: its number, and the fids this client holds open in it."""

    fs: Client
    n: str
    ctl: int
    data: int
    stderr: int
    wait: int
    term: int | None = None

    async def ctl_request(self, request: str) -> None:
        """One ctl request (cmd(3): one per write): `signal INT`, `winsize 24 80`, `kill`."""
        await self.fs.conn.write(self.ctl, 0, request.encode())

    async def exec(self, argv: list[str]) -> None:
        await self.ctl_request(f"exec {shlex.join(argv)}")

    async def send_input(self, data: bytes) -> None:
        """Write the command's stdin, in iounit pieces (n/data is append-only: in order)."""
        conn = self.fs.conn
        view = memoryview(data)
        for i in range(0, len(view), conn.iounit):
            await conn.write(self.data, 0, view[i : i + conn.iounit])

    async def close_input(self) -> None:
        """End of file for the command's stdin (a zero-length write to n/data)."""
        await self.fs.conn.write(self.data, 0, b"")

    async def status(self) -> str:
        """Block until the command exits; n/wait's line ("pid 12 exit 3")."""
        return (await self.fs.conn.read(self.wait, 0, 256)).decode()


async def _open(fs: Client, path: str, mode: int) -> int:
    fid, _ = await fs.walk_fid(path)
    try:
        await fs.conn.open(fid, mode)
    except BaseException:
        await fs.conn.clunk(fid)
        raise
    return fid


async def start_command(fs: Client, address: str, *, term: bool = False) -> Command:
    """A new session of the cmd tree at /cmd of the server at `address` (for errors), its
    files open, ready for `exec`."""
    try:
        ctl = await _open(fs, "/cmd/clone", ORDWR)
    except FileNotFoundError:
        raise NinePError("no /cmd here (serve it with --machine --allow-exec)", address) from None
    n = (await fs.conn.read(ctl, 0, 64)).decode().strip()
    fids: dict[str, int] = {}
    if term:
        await fs.conn.write(ctl, 0, b"term")

    async def open_one(name: str, mode: int) -> None:
        fids[name] = await _open(fs, f"/cmd/{n}/{name}", mode)

    # The three (four) walks and opens are independent: one round trip for all of them.
    async with trio.open_nursery() as nursery:
        for name, mode in (("data", ORDWR), ("stderr", OREAD), ("wait", OREAD)):
            nursery.start_soon(open_one, name, mode)
        if term:
            nursery.start_soon(open_one, "term", ORDWR)
    return Command(fs, n, ctl, fids["data"], fids["stderr"], fids["wait"], fids.get("term"))


def exit_status(status: str) -> int:
    """n/wait's "pid N exit 3" or "pid N killed 9" as a shell's $? (3, 137)."""
    words = status.split()
    if len(words) >= 4 and words[2] == "exit" and words[3].isdigit():
        return int(words[3])
    if len(words) >= 4 and words[2] == "killed" and words[3].isdigit():
        return 128 + int(words[3])
    return 1
