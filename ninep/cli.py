"""`ninefs ls|cat|write|stat|mkdir|rm|mv ADDR PATH…`: plan9port's 9p(1) for ninefs.

Each command connects, does its work through the path API and exits; errors
print one line, with the path (or the address) and the server's 9P message, and
exit 1. Connecting has a deadline (--timeout, 10 s): a server that never answers
is an error, not a hang.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import socket
import stat as st_mod
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from .auth import DEFAULT_KEY, generate_key
from .bounds import CONNECT_TIMEOUT
from .constants import DMAPPEND, DMDIR, DMEXCL
from .errors import NinePError
from .files import Client, connect
from .messages import Stat

__all__ = ["format_long", "register"]

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
    except OSError as e:
        if e.errno != errno.EXDEV or (await fs.stat(src)).is_dir:
            raise
        # 9P renames only within a directory; like mv(1) across devices: copy, then remove.
        async with fs.open(src, "rb") as fin, fs.open(dst, "xb") as fout:
            while data := await fin.read(CHUNK):
                await fout.write(data)
        await fs.remove(src)


async def _session(
    args: argparse.Namespace, body: Callable[[Client, argparse.Namespace], Awaitable[None]]
) -> None:
    within = args.timeout or None
    async with connect(
        args.addr, uname=args.uname, aname=args.aname, key=args.key, connect_timeout=within
    ) as fs:
        await body(fs, args)


def _runner(
    body: Callable[[Client, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # One line for every failure, naming the path, or the address when no path is to blame.
        where = f"{args.addr}: "
        try:
            trio.run(partial(_session, args, body))
        except NinePError as e:
            print(f"ninefs {args.command}: {'' if e.filename else where}{e}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            return 1
        except OSError as e:
            place = f"{e.filename}: " if e.filename else where
            print(f"ninefs {args.command}: {place}{e.strerror or e}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"ninefs {args.command}: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # a bug of ours or a server's surprise: still one line
            print(f"ninefs {args.command}: {where}{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0

    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("addr", help="server address: tcp!host!port, unix!/path or host:port")
    p.add_argument("--uname", "-u", default=None, help="user name to attach as (default: yours)")
    p.add_argument("--aname", "-A", default="", help="tree to attach (default: the server's main tree)")
    p.add_argument(
        "--key", "-k", default=None, help=f"private key, when the server asks (default {DEFAULT_KEY})"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        metavar="S",
        help=f"deadline for connecting: dial, version, auth, attach (default {CONNECT_TIMEOUT:g} s; 0: none)",
    )


def _key_gen(args: argparse.Namespace) -> int:
    comment = args.comment or f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        line = generate_key(args.out, comment)
    except FileExistsError:
        print(f"ninefs key gen: {args.out}: already exists (remove it, or give --out)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ninefs key gen: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"private key: {args.out} (mode 0600)\npublic key:  {args.out}.pub")
    print("for a server's --authorized-keys file (the last word is the user it maps to):")
    print(line.rsplit(" ", 1)[0] + " " + getpass.getuser())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("key", help="keys for authenticated connections")
    key_sub = p.add_subparsers(dest="key_command", metavar="SUBCOMMAND", required=True)
    g = key_sub.add_parser("gen", help="make an Ed25519 key pair")
    g.add_argument("--out", "-o", default=DEFAULT_KEY, help=f"private key file (default {DEFAULT_KEY})")
    g.add_argument("--comment", "-C", default=None, help="comment in the .pub line (default user@host)")
    g.set_defaults(run=_key_gen)

    p = sub.add_parser("ls", help="list directories on a 9P server")
    _common(p)
    p.add_argument("-l", dest="long", action="store_true", help="long listing, like ls -l")
    p.add_argument("-F", dest="classify", action="store_true", help="mark directories with /")
    p.add_argument("paths", nargs="*")
    p.set_defaults(run=_runner(_ls))

    p = sub.add_parser("cat", help="print files from a 9P server")
    _common(p)
    p.add_argument("paths", nargs="+")
    p.set_defaults(run=_runner(_cat))

    p = sub.add_parser("write", help="write stdin to a file (create or truncate; -a appends)")
    _common(p)
    p.add_argument("-a", dest="append", action="store_true", help="append instead of truncating")
    p.add_argument("path")
    p.set_defaults(run=_runner(_write))

    p = sub.add_parser("stat", help="show the 9P stat of files")
    _common(p)
    p.add_argument("paths", nargs="+")
    p.set_defaults(run=_runner(_stat))

    p = sub.add_parser("mkdir", help="make directories")
    _common(p)
    p.add_argument(
        "-p", dest="parents", action="store_true", help="make parents as needed, no error if existing"
    )
    p.add_argument("paths", nargs="+")
    p.set_defaults(run=_runner(_mkdir))

    p = sub.add_parser("rm", help="remove files or (empty) directories")
    _common(p)
    p.add_argument("-r", dest="recursive", action="store_true", help="remove directories and their contents")
    p.add_argument("paths", nargs="+")
    p.set_defaults(run=_runner(_rm))

    p = sub.add_parser("mv", help="rename a file within its directory")
    _common(p)
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(run=_runner(_mv))
