"""`ninefs cpu ADDR -- CMD`: run a command on another machine that sees this one's files.

Like Plan 9's cpu(1) and u-root's cpu. The command runs through the remote
machine's `cmd` tree (Inferno's cmd(3)): clone a session, ask for `term`, exec.
stdin, stdout and stderr are streamed through n/data and n/stderr, and the
status read from n/wait becomes our exit status.

The caller's namespace reaches the command over the same connection the caller
opened (so it works through NAT): n/term is a byte pipe to the command's side,
and this process runs a 9P *server* for its namespace on it (9P inside 9P).
On the remote, a server running as root mounts /mnt/term for the command itself,
in a mount namespace of the command's own, and serves it from its own process
(mount.termmount: no second Python process per command); any other server starts
the command through `term_wrapper`: `ninefs ns run` with `mount -c fd!N
/mnt/term`. Either way the command, and only it, sees the caller's files at
/mnt/term.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pwd
import signal
import stat
import struct
import sys
import termios
import tty
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

import ninep
from ninep import bounds
from ninep.client import single_error
from ninep.command import Command, exit_status, start_command
from ninep.errors import NotFound, PermissionDenied
from ninep.transport import parse_address

if TYPE_CHECKING:
    from namespaces import Namespace
    from ninep.hostlist import Machine

    from .termmount import TermMounter

__all__ = ["register", "run_cpu", "term_helper", "term_wrapper"]

CHUNK = 1 << 16


def term_wrapper(fd: int, argv: list[str]) -> list[str]:
    """On the remote: run `argv` where 9P spoken on fd is mounted at /mnt/term."""
    return [sys.executable, "-m", "mount.cli", "ns", "run", "-e", f"mount -c fd!{fd} /mnt/term", "--", *argv]


def term_helper() -> TermMounter:
    """What `serve --machine` hands its cmd tree for `term`: the server mounts /mnt/term
    for each command itself where it can (as root), else runs it through `term_wrapper`."""
    from .termmount import TermMounter

    return TermMounter(term_wrapper)


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


def _winsize(fd: int) -> tuple[int, int]:
    """Our terminal's size: stdout's, else stdin's (`cpu -t ... > file`), else 24x80."""
    for each in (fd, 0):
        with contextlib.suppress(OSError):
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(each, termios.TIOCGWINSZ, b"\0" * 8))[:2]
            return rows, cols
    return 24, 80


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
    address: str,
    command: list[str],
    ns: Namespace,
    *,
    cwd: str | None = None,
    interactive: bool = False,
    key: object = None,
    uname: str | None = None,
    connect_timeout: float | None = None,
) -> int:
    """Run `command` on the machine at `address`, with `ns` at its /mnt/term; its exit status.

    `interactive`: the command gets a terminal on the remote side, sized like ours, and our
    terminal is put in raw mode so every key (^C included) reaches it. `key` and `uname`:
    who we are to the remote server (its authorized keys map the key to a user).
    """
    # Connecting has a deadline; the command itself may run (and be waited for) for hours.
    if connect_timeout is None:  # as it is now, not as it was at import
        connect_timeout = bounds.CONNECT_TIMEOUT
    async with ninep.connect(address, connect_timeout=connect_timeout, key=key, uname=uname) as fs:
        cmd = await start_command(fs, address, term=True)
        if interactive:
            await cmd.ctl_request("pty")
            rows, cols = _winsize(1)
            await cmd.ctl_request(f"winsize {rows} {cols}")
        if cwd is not None:  # --cwd: the caller's directory, as the remote command sees it
            command = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", f"/mnt/term{cwd}", *command]
        # Listen for signals before the command exists, so none arrives while nobody listens.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            try:
                await cmd.exec(command)
            except (NotFound, PermissionDenied) as e:
                # A server that starts the command itself says so in its Rerror; sh (and
                # `ns run`, the fallback) make it 127 for a program not found, 126 for one
                # that may not run.
                print(f"ninefs cpu: {address}: {e}", file=sys.stderr)
                return 127 if isinstance(e, NotFound) else 126
            return await _session(cmd, ns, address, interactive, signals)


async def _session(cmd: Command, ns: Namespace, address: str, interactive: bool, signals: Any) -> int:
    """Stream a started command's stdio, serve /mnt/term, pass signals; its exit status."""
    conn = cmd.fs.conn
    assert cmd.term is not None
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
                await cmd.send_input(chunk)
        except ninep.NinePError:
            return  # the command stopped reading
        finally:
            if stream is not None:
                await stream.aclose()
                os.set_blocking(0, True)  # FdStream made the shared file description non-blocking
        await cmd.close_input()

    async def pass_winch() -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                rows, cols = _winsize(1)
                with contextlib.suppress(ninep.NinePError):
                    await cmd.ctl_request(f"winsize {rows} {cols}")

    async def pass_signals() -> None:
        # Ctrl-C, TERM and HUP here go to the remote command's process group.
        async for signum in signals:
            name = signal.Signals(signum).name.removeprefix("SIG")
            with contextlib.suppress(ninep.NinePError):
                await cmd.ctl_request(f"signal {name}")

    from ninep.server import Server

    server = Server(ns)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, _FidStream(conn, cmd.term), f"cpu:{address}")
        nursery.start_soon(pump_in)
        nursery.start_soon(pass_signals)
        if interactive:
            nursery.start_soon(pass_winch)
        with _raw_terminal(0) if interactive else contextlib.nullcontext():
            async with trio.open_nursery() as outputs:
                outputs.start_soon(pump_out, cmd.data, stdout)
                outputs.start_soon(pump_out, cmd.stderr, stderr)
                status = await cmd.status()
        nursery.cancel_scope.cancel()
    return exit_status(status)


def _me() -> str:
    """Who we are, from the password database: not $USER, which sudo, cron and
    containers leave unset or wrong."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _warn(line: str) -> None:
    print(f"ninefs cpu: {line}", file=sys.stderr)


async def _main(args: argparse.Namespace, command: list[str]) -> int:
    from fileserver.local import LocalTree
    from namespaces import Namespace, NamespaceFileError, apply
    from namespaces.cli import gather_ops

    async with Namespace(LocalTree("/"), uname=_me()) as ns:
        try:
            # As `ns run`: a machine of the caller's namespace that does not answer is one
            # warning, and its part of /mnt/term joins when it answers.
            await apply(ns, gather_ops(args), start_down=True, warn=_warn, status=True)
        except NamespaceFileError as e:
            print(f"ninefs cpu: {e}", file=sys.stderr)
            return 2
        interactive = args.tty if args.tty is not None else (sys.stdin.isatty() and sys.stdout.isatty())
        return await run_cpu(
            args.addr,
            command,
            ns,
            cwd=os.getcwd() if args.cwd else None,
            interactive=interactive,
            key=args.key,
            uname=args.uname,
            connect_timeout=args.connect_timeout,
        )


def _split_late_options(args: argparse.Namespace) -> list[str]:
    """Options may also follow ADDR (`ninefs cpu ADDR --cwd -- make`): they end at "--"."""
    rest = args.command
    if "--" not in rest:
        return rest
    i = rest.index("--")
    late, command = rest[:i], rest[i + 1 :]
    if late:
        extra = argparse.ArgumentParser(prog="ninefs cpu ADDR")
        _options(extra)
        extra.parse_args(late, namespace=args)
    return command


def _load_key(args: argparse.Namespace) -> bool:
    """An explicit --key read now (once for every host), so a bad one is one line naming
    it, whether or not a server asks; False when it could not be read."""
    if args.key is None:
        return True
    from ninep.auth import load_private_key

    try:
        args.key = load_private_key(args.key)
    except OSError as e:
        print(f"ninefs cpu: {e}", file=sys.stderr)
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    from namespaces import NamespaceFileError

    if args.hosts or args.all:
        return _run_fanout(args) if _load_key(args) else 1
    if args.addr is None:
        print("ninefs cpu: no machine: give ADDR, or -w HOSTS for many", file=sys.stderr)
        return 2
    command = _split_late_options(args) or ["/bin/sh", "-i"]
    if not _load_key(args):  # after the options that follow ADDR, -k among them
        return 1
    try:
        parse_address(args.addr)
    except ValueError as e:
        print(f"ninefs cpu: {e}", file=sys.stderr)
        return 2
    if args.tty and not os.isatty(0):  # raw mode needs a terminal to put in it (issue #18)
        print("ninefs cpu: -t: stdin is not a terminal", file=sys.stderr)
        return 2
    try:
        with single_error(), _first_os_error():  # a connect that timed out, a server that died
            return trio.run(partial(_main, args, command))
    except NamespaceFileError as e:
        print(f"ninefs cpu: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from ninep.remote import reason

        where = f"{e.filename}: " if e.filename else f"{args.addr}: "
        print(f"ninefs cpu: {where}{reason(e)}", file=sys.stderr)
        return 1


def _run_fanout(args: argparse.Namespace) -> int:
    """`-w HOSTS` (or `-n NSFILE --all`): the command on every machine, as pdsh runs it."""
    from ninep.fanout import resolve_hosts

    from .fanout import fan_out

    # With -w there is no ADDR: what argparse took for it is the command's first word.
    command = ([args.addr] if args.addr is not None else []) + args.command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("ninefs cpu: -w needs a command: ninefs cpu -w HOSTS -- CMD", file=sys.stderr)
        return 2
    try:
        hosts = resolve_hosts(args.hosts or [])
        if args.all:
            hosts = resolve_hosts([*hosts, *_machines_in_namespace(args)])
        if args.exclude:
            gone = {m.name for m in resolve_hosts(args.exclude)}
            hosts = [m for m in hosts if m.name not in gone]
    except ValueError as e:
        print(f"ninefs cpu: {e}", file=sys.stderr)
        return 2
    if not hosts:
        print("ninefs cpu: no hosts to run on", file=sys.stderr)
        return 2
    stdin = b""
    if not args.nostdin and not sys.stdin.isatty():
        stdin = sys.stdin.buffer.read()  # the same bytes for every host (clush's broadcast)
    mode = "json" if args.json else "group" if args.group else "lines"
    return trio.run(
        partial(
            fan_out,
            hosts,
            command,
            mode=mode,
            prefix=not args.no_prefix,
            outdir=args.outdir,
            fanout=args.fanout,
            connect_timeout=args.connect_timeout,
            timeout=args.timeout,
            stdin=stdin,
            key=args.key,
            uname=args.uname,
        )
    )


def _machines_in_namespace(args: argparse.Namespace) -> list[Machine]:
    """`--all`: every machine the namespace files mount directly under /n (/n/NAME)."""
    from namespaces import NamespaceFileError
    from namespaces.cli import gather_ops
    from namespaces.namespace import split
    from ninep.fanout import machine_for
    from ninep.hostlist import Machine

    try:
        ops = gather_ops(args)
    except NamespaceFileError as e:
        raise ValueError(str(e)) from None
    found: list[Machine] = []
    for op in ops:
        if op.verb == "mount":
            addr, old = op.args[0], split(op.args[1])
            if len(old) == 2 and old[0] == "n" and not addr.startswith("/"):
                found.append(Machine(old[1], machine_for(addr).address))
    if not found:
        raise ValueError("--all: the namespace mounts no machine under /n")
    return found


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
        raise first from first.__cause__  # its cause says why (trio: every attempt to connect)


def _options(p: argparse.ArgumentParser) -> None:
    from namespaces.cli import add_namespace_options

    add_namespace_options(p)
    p.add_argument("--cwd", action="store_true", help="run in /mnt/term + this directory")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=bounds.CONNECT_TIMEOUT,
        metavar="S",
        help=f"per machine, to connect and start the command (default {bounds.CONNECT_TIMEOUT:g} s)",
    )
    p.add_argument("--uname", "-u", default=None, help="the user to attach as (default: yours)")
    p.add_argument(
        "--key",
        "-k",
        type=lambda v: os.path.abspath(os.path.expanduser(v)),  # as ninep.cli.key_path does
        default=None,
        help="private key, when the server asks (default $NINEFS_KEY)",
    )
    p.add_argument(
        "-t",
        dest="tty",
        action="store_true",
        default=None,
        help="a remote terminal (default: if ours is one)",
    )
    p.add_argument("-T", dest="tty", action="store_false", help="no remote terminal")


def _fanout_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many machines at once (pdsh, clush)")
    g.add_argument(
        "-w",
        dest="hosts",
        action="append",
        metavar="HOSTS",
        help="run on these: node[1-16],tcp!10.0.0.[1-4]!564 or ^FILE (a machines file); no /mnt/term",
    )
    g.add_argument("-x", dest="exclude", action="append", metavar="HOSTS", help="but not on these")
    g.add_argument("--all", action="store_true", help="with -n NSFILE: every machine it mounts at /n/NAME")
    g.add_argument("-f", dest="fanout", type=int, default=64, metavar="N", help="hosts at once (default 64)")
    g.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="per host, to finish (default none)"
    )
    g.add_argument("-N", dest="no_prefix", action="store_true", help="no 'HOST: ' before each line")
    g.add_argument("-b", dest="group", action="store_true", help="identical results once, under their hosts")
    g.add_argument("--json", action="store_true", help="one JSON record per host")
    g.add_argument("--outdir", metavar="DIR", help="write DIR/HOST/{stdout,stderr,status}")
    g.add_argument("--nostdin", action="store_true", help="do not send our stdin to every host")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cpu",
        help="run a command on another machine that sees this one's files at /mnt/term, or on many (-w)",
    )
    p.add_argument("addr", nargs="?", help="the machine: a server started with --machine --allow-exec")
    _options(p)
    _fanout_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="[OPTIONS] -- CMD ARGS (default: /bin/sh)")
    p.set_defaults(run=_run)
