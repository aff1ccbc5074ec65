"""`ninefs cpu ADDR -- CMD`: run a command on another machine that sees this one's files.

Like Plan 9's cpu(1) and u-root's cpu. The command runs through the remote
machine's `cmd` tree (Inferno's cmd(3)): clone a session, ask for `term`, exec.
stdin, stdout and stderr are streamed through n/data and n/stderr, and the
status read from n/wait becomes our exit status.

The caller's namespace reaches the command over the same connection the caller
opened (so it works through NAT): n/term is a byte pipe to the command's side,
and this process runs a 9P *server* for its namespace on it (9P inside 9P).
On the remote, the command is started through `term_wrapper`: `ninefs ns run`
with `mount -c fd!N /mnt/term`, so the command, and only it, sees the caller's
files at /mnt/term.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import signal
import stat
import struct
import sys
import termios
import tty
from collections.abc import Iterator
from functools import partial
from typing import Any

import trio

import ninep
from fileserver.local import LocalTree
from namespaces import Namespace, NamespaceFileError, apply
from namespaces.cli import add_namespace_options, gather_ops
from ninep import bounds
from ninep.client import single_error
from ninep.constants import ORDWR, OREAD

__all__ = ["register", "run_cpu", "term_wrapper"]

CHUNK = 1 << 16


def term_wrapper(fd: int, argv: list[str]) -> list[str]:
    """On the remote: run `argv` where 9P spoken on fd is mounted at /mnt/term."""
    return [sys.executable, "-m", "mount.cli", "ns", "run", "-e", f"mount -c fd!{fd} /mnt/term", "--", *argv]


class _FidStream(trio.abc.Stream):
    """A trio stream over an open 9P file (n/term): reads and writes in order, one at a time."""

    def __init__(self, conn: ninep.Connection, fid: int) -> None:
        self.conn = conn
        self.fid = fid
        self.unit = conn.iounit

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.conn.read(self.fid, 0, min(max_bytes or self.unit, self.unit))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for i in range(0, len(view), self.unit):
            await self.conn.write(self.fid, 0, view[i : i + self.unit])

    async def wait_send_all_might_not_block(self) -> None:
        return

    async def send_eof(self) -> None:
        return

    async def aclose(self) -> None:
        return  # the fid is clunked with the connection


async def _open(fs: ninep.Client, path: str, mode: int) -> int:
    fid, _ = await fs.walk_fid(path)
    await fs.conn.open(fid, mode)
    return fid


def _exit_code(status: str) -> int:
    """n/wait's "pid N exit 3" or "pid N killed 9" as a shell's $?."""
    words = status.split()
    if len(words) >= 4 and words[2] == "exit" and words[3].isdigit():
        return int(words[3])
    if len(words) >= 4 and words[2] == "killed" and words[3].isdigit():
        return 128 + int(words[3])
    return 1


def _winsize(fd: int) -> tuple[int, int]:
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    return rows, cols


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """Keys go to the remote terminal as typed (^C, ^D, arrows); restored however we leave."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _stdin_stream() -> trio.abc.ReceiveStream | None:
    """stdin as a cancellable stream (a terminal, pipe or socket), or None for anything
    epoll cannot wait on (files, /dev/null): those never block for long."""
    mode = os.fstat(0).st_mode
    if os.isatty(0) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return trio.lowlevel.FdStream(os.dup(0))
    return None


async def run_cpu(
    address: str, command: list[str], ns: Namespace, *, cwd: str | None = None, interactive: bool = False
) -> int:
    """Run `command` on the machine at `address`, with `ns` at its /mnt/term; its exit status.

    `interactive`: the command gets a terminal on the remote side, sized like ours, and our
    terminal is put in raw mode so every key (^C included) reaches it.
    """
    # Connecting has a deadline; the command itself may run (and be waited for) for hours.
    async with ninep.connect(address, connect_timeout=bounds.CONNECT_TIMEOUT) as fs:
        conn = fs.conn
        try:
            ctl = await _open(fs, "/cmd/clone", ORDWR)
        except FileNotFoundError:
            raise ninep.NinePError(
                f"{address}: no /cmd here (serve it with --machine --allow-exec)"
            ) from None
        n = (await conn.read(ctl, 0, 64)).decode().strip()
        await conn.write(ctl, 0, b"term")
        term = await _open(fs, f"/cmd/{n}/term", ORDWR)
        data = await _open(fs, f"/cmd/{n}/data", ORDWR)
        err = await _open(fs, f"/cmd/{n}/stderr", OREAD)
        wait = await _open(fs, f"/cmd/{n}/wait", OREAD)
        if interactive:
            await conn.write(ctl, 0, b"pty")
            rows, cols = _winsize(1)
            await conn.write(ctl, 0, f"winsize {rows} {cols}".encode())
        if cwd is not None:  # --cwd: the caller's directory, as the remote command sees it
            command = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", f"/mnt/term{cwd}", *command]
        # Listen for signals before the command exists, so none arrives while nobody listens.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            await conn.write(ctl, 0, f"exec {shlex.join(command)}".encode())
            return await _session(conn, ctl, term, data, err, wait, ns, address, interactive, signals)


async def _session(
    conn: ninep.Connection,
    ctl: int,
    term: int,
    data: int,
    err: int,
    wait: int,
    ns: Namespace,
    address: str,
    interactive: bool,
    signals: Any,
) -> int:
    """Stream a started command's stdio, serve /mnt/term, pass signals; its exit status."""
    stdout = trio.wrap_file(sys.stdout.buffer)
    stderr = trio.wrap_file(sys.stderr.buffer)

    async def pump_out(fid: int, out: trio._file_io.AsyncIOWrapper) -> None:
        while chunk := await conn.read(fid, 0, conn.iounit):
            await out.write(chunk)
            await out.flush()

    async def pump_in() -> None:
        stream = _stdin_stream()
        if stream is None:  # a regular file never blocks for long: read it in a thread
            stdin = trio.wrap_file(sys.stdin.buffer)
            read = stdin.read1
        else:
            read = stream.receive_some
        try:
            while chunk := await read(CHUNK):
                await conn.write(data, 0, chunk)
        except ninep.NinePError:
            return  # the command stopped reading
        finally:
            if stream is not None:
                await stream.aclose()
                os.set_blocking(0, True)  # FdStream made the shared file description non-blocking
        await conn.write(data, 0, b"")  # end of file for the command

    async def pass_winch() -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                rows, cols = _winsize(1)
                with contextlib.suppress(ninep.NinePError):
                    await conn.write(ctl, 0, f"winsize {rows} {cols}".encode())

    async def pass_signals() -> None:
        # Ctrl-C, TERM and HUP here go to the remote command's process group.
        async for signum in signals:
            name = signal.Signals(signum).name.removeprefix("SIG")
            with contextlib.suppress(ninep.NinePError):
                await conn.write(ctl, 0, f"signal {name}".encode())

    server = ninep.Server(ns)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, _FidStream(conn, term), f"cpu:{address}")
        nursery.start_soon(pump_in)
        nursery.start_soon(pass_signals)
        if interactive:
            nursery.start_soon(pass_winch)
        with _raw_terminal(0) if interactive else contextlib.nullcontext():
            async with trio.open_nursery() as outputs:
                outputs.start_soon(pump_out, data, stdout)
                outputs.start_soon(pump_out, err, stderr)
                status = (await conn.read(wait, 0, 256)).decode()
        nursery.cancel_scope.cancel()
    return _exit_code(status)


async def _main(args: argparse.Namespace, command: list[str]) -> int:
    async with Namespace(LocalTree("/"), uname=args.uname or os.environ.get("USER", "none")) as ns:
        try:
            await apply(ns, gather_ops(args))
        except NamespaceFileError as e:
            print(f"ninefs cpu: {e}", file=sys.stderr)
            return 2
        interactive = args.tty if args.tty is not None else (sys.stdin.isatty() and sys.stdout.isatty())
        return await run_cpu(
            args.addr, command, ns, cwd=os.getcwd() if args.cwd else None, interactive=interactive
        )


def _run(args: argparse.Namespace) -> int:
    # Options may also follow ADDR (`ninefs cpu ADDR --cwd -- make`): they end at "--".
    rest = args.command
    if "--" in rest:
        i = rest.index("--")
        late, command = rest[:i], rest[i + 1 :]
        if late:
            extra = argparse.ArgumentParser(prog="ninefs cpu ADDR")
            _options(extra)
            extra.parse_args(late, namespace=args)
    else:
        command = rest
    command = command or ["/bin/sh", "-i"]
    try:
        with single_error(), _first_os_error():  # a connect that timed out, a server that died
            return trio.run(partial(_main, args, command))
    except NamespaceFileError as e:
        print(f"ninefs cpu: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else f"{args.addr}: "
        print(f"ninefs cpu: {where}{e.strerror or e}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _first_os_error() -> Iterator[None]:
    """A group of OSErrors only (a server that died fails every task reading from it at
    once) as its first one: one line for the user, not a traceback of the group."""
    try:
        yield
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if group.split(OSError)[1] is not None or not isinstance(first, OSError):
            raise
        raise first from None


def _options(p: argparse.ArgumentParser) -> None:
    add_namespace_options(p)
    p.add_argument("--cwd", action="store_true", help="run in /mnt/term + this directory")
    p.add_argument("--uname", "-u", default=None)
    p.add_argument(
        "-t",
        dest="tty",
        action="store_true",
        default=None,
        help="a remote terminal (default: if ours is one)",
    )
    p.add_argument("-T", dest="tty", action="store_false", help="no remote terminal")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cpu", help="run a command on another machine that sees this one's files at /mnt/term")
    p.add_argument("addr", help="the machine: a server started with --machine --allow-exec")
    _options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="[OPTIONS] -- CMD ARGS (default: /bin/sh)")
    p.set_defaults(run=_run)
