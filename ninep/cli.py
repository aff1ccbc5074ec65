"""`ninefs ls|cat|write|stat|mkdir|rm|mv ADDR PATH…`: plan9port's 9p(1) for ninefs;
`ninefs cp SRC… DST` (ninep/copy.py), `ninefs ping ADDR`, and `ninefs key gen|authorize|show`.

Each command connects, does its work through the path API and exits; errors
print one line, with the path (or the address) and the server's 9P message, and
exit 1. Connecting has a deadline (--timeout, 10 s): a server that never answers
is an error, not a hang. A key given with --key is read before dialling, so a
bad one is an error naming the file even where no server would ask for it.

`ping` dials and exchanges Tversion only: it needs no key, so it is the readiness
probe for a server that requires one (version(5) comes before any auth).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import stat as st_mod
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

import trio

from . import auth
from .auth import DEFAULT_AUTHORIZED_KEYS, DEFAULT_KEY, KeyFileError, generate_key, local_user
from .bounds import CONNECT_TIMEOUT, Opening
from .client import single_error
from .codec import CodecError
from .constants import DMAPPEND, DMDIR, DMEXCL
from .errors import IsADirectory, NinePError
from .files import Client, connect
from .messages import Stat
from .transport import Address, parse_address

# The copier (ninep/copy.py, ~8 ms to import) is imported by cp and by a mv across
# directories only: ls, cat, and `mount` and `ns run` (which take --key from here), do not.
if TYPE_CHECKING:
    from .copy import Location

__all__ = ["add_key_option", "format_long", "key_path", "register"]

CHUNK = 1 << 20


def _mode_string(mode: int) -> str:
    kind = "d" if mode & DMDIR else ("a" if mode & DMAPPEND else ("l" if mode & DMEXCL else "-"))
    return kind + st_mod.filemode(mode & 0o777)[1:]


def format_long(entries: list[Stat]) -> list[str]:
    """`ls -l` lines: mode, links, owner, group, size, date, name; columns aligned."""
    if not entries:
        return []
    uw = max(len(e.uid) for e in entries)
    gw = max(len(e.gid) for e in entries)
    sw = max(len(str(e.length)) for e in entries)
    six_months_ago = time.time() - 182 * 86400
    lines = []
    for e in entries:
        t = time.localtime(e.mtime)
        when = time.strftime("%b %e %H:%M" if e.mtime > six_months_ago else "%b %e  %Y", t)
        lines.append(f"{_mode_string(e.mode)} 1 {e.uid:<{uw}} {e.gid:<{gw}} {e.length:>{sw}} {when} {e.name}")
    return lines


async def _ls(fs: Client, args: argparse.Namespace) -> None:
    for i, path in enumerate(args.paths or ["/"]):
        entries = await fs.ls(path)
        st = await fs.stat(path)
        if not st.is_dir:
            entries = [st]
        entries.sort(key=lambda e: e.name)
        if len(args.paths) > 1 and st.is_dir:
            print(("\n" if i else "") + f"{path}:")
        if args.long:
            print("\n".join(format_long(entries)))
        else:
            for e in entries:
                print(e.name + ("/" if e.is_dir and args.classify else ""))


async def _cat(fs: Client, args: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    for path in args.paths:
        async with fs.open(path, "rb") as f:
            if f.qid.is_dir:  # read(5) of a directory gives stat records: not for a terminal
                raise IsADirectory("is a directory", path)
            while data := await f.read(CHUNK):
                out.write(data)
                out.flush()


async def _write(fs: Client, args: argparse.Namespace) -> None:
    stdin = trio.wrap_file(sys.stdin.buffer)
    async with fs.open(args.path, "ab" if args.append else "wb") as f:
        while data := await stdin.read(CHUNK):
            await f.write(data)


async def _stat(fs: Client, args: argparse.Namespace) -> None:
    for path in args.paths:
        s = await fs.stat(path)
        print(
            f"{s.name!r} {_mode_string(s.mode)} (mode {s.mode:#o}) uid {s.uid} gid {s.gid} muid {s.muid} "
            f"length {s.length} mtime {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.mtime))} "
            f"qid (type {s.qid.type:#x} vers {s.qid.vers} path {s.qid.path:#x})"
        )


async def _mkdir(fs: Client, args: argparse.Namespace) -> None:
    for path in args.paths:
        await fs.mkdir(path, parents=args.parents)


async def _rm(fs: Client, args: argparse.Namespace) -> None:
    from .copy import normalize

    # Every path is checked before anything goes: `rm -r ADDR a /` must not take a first.
    for path in args.paths:
        if normalize(path) == "/" or (await fs.stat(path)).qid.path == fs.root_qid.path:
            raise NinePError("refusing to remove the root of the export", path)
    for path in args.paths:
        if args.recursive:
            await fs.rmtree(path)
        else:
            await fs.remove(path)


async def _mv(fs: Client, args: argparse.Namespace) -> None:
    src, dst = args.src, args.dst
    try:
        if (await fs.stat(dst)).is_dir:  # like mv: into an existing directory
            dst = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
    except FileNotFoundError:
        pass
    try:
        await fs.rename(src, dst)
    except FileExistsError:
        # POSIX rename replaces a file; wstat(5) refuses: remove it first, as 9pfuse does.
        if (await fs.stat(src)).is_dir or (await fs.stat(dst)).is_dir:
            raise
        await fs.remove(dst)
        await fs.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # 9P renames only within a directory; like mv(1) across devices: copy with modes and
        # times, directories too, then remove the source.
        from .copy import RemoteSide, move_across

        await move_across(RemoteSide(args.addr, fs), src, dst)


async def _session(
    args: argparse.Namespace, body: Callable[[Client, argparse.Namespace], Awaitable[None]]
) -> None:
    within = args.timeout or None
    key = auth.load_private_key(args.key) if args.key else None
    uname = args.uname if args.uname is not None else local_user()
    async with connect(args.addr, uname=uname, aname=args.aname, key=key, connect_timeout=within) as fs:
        await body(fs, args)


def _runner(
    body: Callable[[Client, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # One line for every failure, naming the path, or the address when no path is to blame.
        where = f"{args.addr}: "
        try:
            trio.run(partial(_session, args, body))
        except (KeyFileError, *_copy_errors()) as e:
            print(f"ninefs {args.command}: {e}", file=sys.stderr)
            return 1
        except NinePError as e:
            print(f"ninefs {args.command}: {'' if e.filename else where}{e}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            return 1
        except OSError as e:
            place = f"{e.filename}: " if e.filename else where
            print(f"ninefs {args.command}: {place}{_reason(e)}", file=sys.stderr)
            return 1
        except CodecError as e:  # something answered, but not in 9P
            print(f"ninefs {args.command}: {where}not a 9P server? bad answer: {e}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"ninefs {args.command}: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # a bug of ours or a server's surprise: still one line
            print(f"ninefs {args.command}: {where}{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0

    return run


def _copy_errors() -> tuple[type[Exception], ...]:
    """ninep.copy's CopyError, if that module was imported (nothing else raises one)."""
    copy = sys.modules.get(f"{__package__}.copy")
    return () if copy is None else (copy.CopyError,)


async def _cp(args: argparse.Namespace, sources: list[Location], target: Location, umask: int) -> int:
    from .copy import Copier, CopyError, LocalSide, Options, Progress, RemoteSide

    within = args.timeout or None
    key = auth.load_private_key(args.key) if args.key else None
    uname = args.uname if args.uname is not None else local_user()
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(sys.stderr if show else None)
    local = LocalSide()
    sides: dict[str, RemoteSide] = {}  # one connection per address, whichever side it is on
    async with AsyncExitStack() as stack:

        async def side(place: Location) -> LocalSide | RemoteSide:
            if place.addr is None:
                return local
            if place.addr not in sides:
                try:
                    fs = await stack.enter_async_context(
                        connect(place.addr, uname=uname, aname=args.aname, key=key,
                                connect_timeout=within, reconnect=False)
                    )  # fmt: skip
                except (OSError, CodecError) as e:
                    reason = _reason(e) if isinstance(e, OSError) else f"not a 9P server? bad answer: {e}"
                    raise CopyError(f"{place.addr}: {reason}") from None
                sides[place.addr] = RemoteSide(place.addr, fs)
            return sides[place.addr]

        copier = Copier(await side(target), Options(args.recursive, args.preserve, umask), progress)
        places = [(await side(s), s.path) for s in sources]  # every server dialled: ^C may come
        complete = False

        async def work() -> None:
            nonlocal complete
            await copier.plan(places, target.path)
            await copier.run()
            complete = True

        try:
            if await _interrupted(work):
                raise KeyboardInterrupt  # after the clean-up, with every connection still up for it
        finally:
            progress.finish(complete)
    for place in copier.omitted:
        print(f"ninefs cp: {place}: omitting directory (use -r)", file=sys.stderr)
    if not args.quiet and (progress.files or progress.dirs or not copier.omitted):
        print(progress.summary(), file=sys.stderr)
    return 1 if copier.omitted else 0


async def _interrupted(work: Callable[[], Awaitable[None]]) -> bool:
    """Run `work`; whether a ^C (SIGINT) cancelled it first. The ^C is a cancellation, met at
    a checkpoint, inside the connections' scope: not a KeyboardInterrupt raised wherever the
    main task happens to be, nor one that cancels the connections' own tasks, which the
    clean-up (removing a temporary) still needs."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await work()
            nursery.cancel_scope.cancel()
            return False
    return True


def _run_cp(args: argparse.Namespace) -> int:
    from .copy import CopyError, first_error, parse_location

    try:
        places = [parse_location(text) for text in [*args.sources, args.target]]
    except ValueError as e:
        print(f"ninefs cp: {e}", file=sys.stderr)
        return 2
    umask = os.umask(0)
    os.umask(umask)
    try:
        return trio.run(_cp, args, places[:-1], places[-1], umask)
    except BaseException as group:  # every failure, ^C too, ends as one line
        e = first_error(group)
    if isinstance(e, KeyboardInterrupt):
        print("ninefs cp: interrupted", file=sys.stderr)
        return 130
    if isinstance(e, (CopyError, KeyFileError)):
        print(f"ninefs cp: {e}", file=sys.stderr)
    elif isinstance(e, OSError):
        place = f"{e.filename}: " if e.filename else ""
        print(f"ninefs cp: {place}{_reason(e)}", file=sys.stderr)
    elif isinstance(e, Exception):  # a bug of ours or a server's surprise: still one line
        print(f"ninefs cp: {type(e).__name__}: {e}", file=sys.stderr)
    else:
        raise e
    return 1


def _connect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uname", "-u", default=None, help="user name to attach as (default: yours)")
    p.add_argument("--aname", "-A", default="", help="tree to attach (default: the server's main tree)")
    add_key_option(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        metavar="S",
        help=f"deadline for connecting: dial, version, auth, attach (default {CONNECT_TIMEOUT:g} s; 0: none)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("addr", help="server address: tcp!host!port, unix!/path or host:port")
    _connect_options(p)


def key_path(value: str) -> str:
    """--key's type: absolute at parse time, so a later chdir (a daemon's) finds the same file."""
    return os.path.abspath(os.path.expanduser(value))


def add_key_option(p: argparse.ArgumentParser) -> None:
    """--key/-k as every command that may authenticate takes it (mount and cpu too)."""
    p.add_argument(
        "--key",
        "-k",
        type=key_path,
        default=None,
        metavar="KEY",
        help=f"private key, when the server asks (default $NINEFS_KEY, or {DEFAULT_KEY})",
    )


def _key_gen(args: argparse.Namespace) -> int:
    comment = args.comment or f"{local_user()}@{socket.gethostname()}"
    try:
        generate_key(args.out, comment)
    except FileExistsError:
        print(f"ninefs key gen: {args.out}: already exists (remove it, or give --out)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ninefs key gen: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"private key: {args.out} (mode 0600)\npublic key:  {args.out}.pub")
    print("to let it in as USER, on the server (or into a file for --authorized-keys):")
    print(f"  ninefs key authorize {args.out}.pub --user USER [--file {DEFAULT_AUTHORIZED_KEYS}]")
    return 0


def _key_authorize(args: argparse.Namespace) -> int:
    try:
        auth.check_user(args.user)
        if args.pub == "-":
            key = auth.parse_public_line(sys.stdin.read(), "(stdin)")
        else:
            key = auth.load_public_key(args.pub)
        entry = auth.authorize(args.file, key, args.user, replace=args.replace)
    except KeyFileError as e:
        print(f"ninefs key authorize: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"ninefs key authorize: --user: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}:{entry.lineno}: {entry.line()}")
    return 0


def _key_show(args: argparse.Namespace) -> int:
    try:
        key = auth.resolve_key(args.key)
        if key is None:
            raise KeyFileError(DEFAULT_KEY, auth.no_key_reason())
        path = args.key or os.environ.get("NINEFS_KEY") or DEFAULT_KEY
        mine = auth.public_key(key)
        try:  # the comment `key gen` gave it, when the .pub beside it is this key's
            beside = auth.load_public_key(path + ".pub")
        except KeyFileError:
            beside = None
        comment = (
            beside.comment if beside and beside.raw == mine.raw else f"{local_user()}@{socket.gethostname()}"
        )
    except KeyFileError as e:
        print(f"ninefs key show: {e}", file=sys.stderr)
        return 1
    print(auth.public_key(key, comment).line())
    return 0


def _reason(e: OSError) -> str:
    """An OSError in a user's words: trio's "all attempts to connect ... failed" says why
    only in its cause, so say that (one errno for every address tried: "connection refused")."""
    cause = e.__cause__
    if e.errno is None and isinstance(cause, BaseExceptionGroup):
        codes = {x.errno for x in cause.exceptions if isinstance(x, OSError)}
        if len(codes) == 1 and None not in codes:
            return os.strerror(codes.pop()).lower()
    return e.strerror or str(e)


async def _ping(args: argparse.Namespace, address: Address) -> None:
    for i in range(args.count):
        if i:
            await trio.sleep(args.interval)
        start = trio.current_time()
        with single_error():
            async with trio.open_nursery() as nursery:
                conn = await Opening(address, args.timeout or None).connection(nursery)
                took = trio.current_time() - start
                await conn.aclose()
        print(f"{args.addr}: {conn.version}, msize {conn.msize}, {took * 1000:.1f} ms", flush=True)


def _run_ping(args: argparse.Namespace) -> int:
    try:
        address = parse_address(args.addr)
    except ValueError as e:
        print(f"ninefs ping: {e}", file=sys.stderr)
        return 2
    try:
        trio.run(_ping, args, address)
    except KeyboardInterrupt:
        return 130
    except NinePError as e:
        print(f"ninefs ping: {args.addr}: {e.ename}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ninefs ping: {args.addr}: {_reason(e)}", file=sys.stderr)
        return 1
    except CodecError as e:  # something answered, but not in 9P
        print(f"ninefs ping: {args.addr}: not a 9P server? bad answer to Tversion: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a server's surprise: still one line
        print(f"ninefs ping: {args.addr}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value}: want 1 or more")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("key", help="keys for authenticated connections")
    key_sub = p.add_subparsers(dest="key_command", metavar="SUBCOMMAND", required=True)
    g = key_sub.add_parser("gen", help="make an Ed25519 key pair")
    g.add_argument("--out", "-o", default=DEFAULT_KEY, help=f"private key file (default {DEFAULT_KEY})")
    g.add_argument("--comment", "-C", default=None, help="comment in the .pub line (default user@host)")
    g.set_defaults(run=_key_gen)
    a = key_sub.add_parser("authorize", help="let a public key in as a user (add it to authorized keys)")
    a.add_argument("pub", metavar="PUB", help="the key's .pub file, or - for its line on stdin")
    a.add_argument("--user", "-u", required=True, help="the user the key acts as")
    a.add_argument(
        "--file",
        "-f",
        type=key_path,
        default=DEFAULT_AUTHORIZED_KEYS,
        help=f"authorized-keys file (default {DEFAULT_AUTHORIZED_KEYS}; made 0600 if new)",
    )
    a.add_argument("--replace", action="store_true", help="if the key is listed, for whomever, list it anew")
    a.set_defaults(run=_key_authorize)
    s = key_sub.add_parser("show", help="print the .pub line of a private key")
    s.add_argument("key", nargs="?", type=key_path, default=None, metavar="KEY", help="default: as --key")
    s.set_defaults(run=_key_show)

    p = sub.add_parser("ping", help="check that a 9P server answers (Tversion; no key needed)")
    p.add_argument("addr", help="server address: tcp!host!port, unix!/path or host:port")
    p.add_argument(
        "--timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        metavar="S",
        help=f"deadline for dial and Tversion, each time (default {CONNECT_TIMEOUT:g} s; 0: none)",
    )
    p.add_argument("--count", "-c", type=_positive, default=1, metavar="N", help="round trips (default 1)")
    p.add_argument(
        "--interval", "-i", type=float, default=1.0, metavar="S", help="between round trips (default 1 s)"
    )
    p.set_defaults(run=_run_ping)

    p = sub.add_parser(
        "cp",
        help="copy files and trees between here and 9P servers (ADDR:PATH), or between servers",
        description="Each SRC and DST is a local path or ADDR:PATH: a dial string ends at the first ':' "
        "after its last '!' (tcp!h!564:/a, unix!/run/9p.sock:/a); otherwise host:port:PATH, "
        "[v6]:port:PATH or host:PATH (port 564). A local name with ':' in it: ./a:b. Files are "
        "written under a temporary name (.NAME.ninefs-XXXXXX) and renamed when complete.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="local path or ADDR:PATH")
    p.add_argument("target", metavar="DST", help="local path or ADDR:PATH (a directory if several SRC)")
    p.add_argument(
        "-r", "-R", dest="recursive", action="store_true", help="copy directories and their contents"
    )
    p.add_argument("-p", dest="preserve", action="store_true", help="keep modes and modification times")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr: bytes, rate, ETA (default: when stderr is a terminal)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line at the end")
    _connect_options(p)
    p.set_defaults(run=_run_cp)

    p = sub.add_parser("ls", help="list directories on a 9P server")
    _common(p)
    p.add_argument("-l", dest="long", action="store_true", help="long listing, like ls -l")
    p.add_argument("-F", dest="classify", action="store_true", help="mark directories with /")
    p.add_argument("paths", nargs="*", help="directories or files on the server (default /)")
    p.set_defaults(run=_runner(_ls))

    p = sub.add_parser("cat", help="print files from a 9P server")
    _common(p)
    p.add_argument("paths", nargs="+", help="files on the server, printed one after another")
    p.set_defaults(run=_runner(_cat))

    p = sub.add_parser("write", help="write stdin to a file (create or truncate; -a appends)")
    _common(p)
    p.add_argument("-a", dest="append", action="store_true", help="append instead of truncating")
    p.add_argument("path", help="the file on the server")
    p.set_defaults(run=_runner(_write))

    p = sub.add_parser("stat", help="show the 9P stat of files")
    _common(p)
    p.add_argument("paths", nargs="+", help="files or directories on the server")
    p.set_defaults(run=_runner(_stat))

    p = sub.add_parser("mkdir", help="make directories")
    _common(p)
    p.add_argument(
        "-p", dest="parents", action="store_true", help="make parents as needed, no error if existing"
    )
    p.add_argument("paths", nargs="+", help="directories to make on the server")
    p.set_defaults(run=_runner(_mkdir))

    p = sub.add_parser("rm", help="remove files or (empty) directories")
    _common(p)
    p.add_argument("-r", dest="recursive", action="store_true", help="remove directories and their contents")
    p.add_argument("paths", nargs="+", help="files or directories on the server (never its root)")
    p.set_defaults(run=_runner(_rm))

    p = sub.add_parser(
        "mv", help="rename (within a directory), or move: copy with modes and times, then remove"
    )
    _common(p)
    p.add_argument("src", help="what to move, on the server")
    p.add_argument("dst", help="its new name, or a directory to move it into")
    p.set_defaults(run=_runner(_mv))
