"""`ninefs mount` and `ninefs umount`: a 9P server (or any tree) as a directory.

`mount` returns once the mount point answers (it restarts itself in the
background with --foreground and waits for it to say it is ready, like sshfs),
and the background process serves until `ninefs umount`, `fusermount3 -u`, or
SIGTERM/SIGINT, and then clunks every fid. Connecting has a deadline (--timeout,
else 10 s): a server that never answers makes the mount fail with one line and
leaves no process behind. `mount_tree` is the library form:
any tree, mounted for the life of one `await`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial

import trio

from ninep import RemoteTree, Tree, bounds
from ninep.auth import KeyFileError, load_private_key
from ninep.cli import add_key_option
from ninep.client import single_error
from ninep.errors import TimedOut
from ninep.transport import parse_address

from .fuse import FuseOptions, TreeFS
from .fusedev import MountSpec, fuse_mount, fuse_unmount
from .fusesession import FuseSession

__all__ = ["mount_tree", "register", "unmount"]

log = logging.getLogger("ninefs.mount")
STARTUP_MARGIN = 30.0  # beyond the child's own deadlines: starting Python and FUSE


async def mount_tree(
    tree: Tree,
    mountpoint: str,
    *,
    uname: str | None = None,
    aname: str = "",
    options: FuseOptions = FuseOptions(),
    fsname: str = "ninefs",
    ready: Callable[[], None] | None = None,
    unmount_on_signals: bool = True,
    counts: Counter[str] | None = None,
) -> None:
    """Mount `tree` on `mountpoint` and serve the kernel until unmounted, signalled or cancelled.

    `counts`, when given, counts the kernel's requests by opcode name (tests, benchmarks)."""
    ops = TreeFS(tree, uname=uname or getpass.getuser(), aname=aname, options=options)
    spec = MountSpec(
        mountpoint,
        fsname=fsname,
        read_only=options.read_only,
        allow_other=options.allow_other,
        # Without allow_other the kernel admits only the mounting user, and the server checks
        # rights; with it, the kernel must check modes, or every local user would act as us.
        default_permissions=options.allow_other,
    )
    with single_error():
        async with trio.open_nursery() as nursery:
            # An operation like any other: a tree that never answers fails the mount.
            with trio.move_on_after(options.timeout) as starting:
                await ops.start(nursery)
            if starting.cancelled_caught:
                raise TimedOut(
                    f"timed out: no answer to the attach and stat of the root within {options.timeout:g} s",
                    fsname,
                )
            fd = await fuse_mount(spec)
            session = FuseSession(fd, ops, counts=counts)
            ops.kernel = session
            try:
                # SIGTERM/SIGINT/SIGHUP unmount (ninefs mount); `ns run` and `cpu` pass False:
                # there a ^C belongs to the command, which still needs its files.
                receiver = (
                    trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                    if unmount_on_signals
                    else contextlib.nullcontext()
                )
                with receiver as signals:
                    if signals is not None:
                        nursery.start_soon(_terminate_on_signal, signals, session)
                    await session.run(ready)
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        fuse_unmount(mountpoint, fd)
                    except OSError as e:
                        log.warning("%s", e)
                    os.close(fd)
                    await ops.close()
                nursery.cancel_scope.cancel()


async def _terminate_on_signal(signals: trio.abc.ReceiveChannel, session: FuseSession) -> None:
    async for signum in signals:
        log.info("unmounting on %s", signal.Signals(signum).name)
        session.stop()
        return


def _timeouts(args: argparse.Namespace) -> tuple[float, float]:
    """The deadline of every operation and of connecting: --timeout sets both; without it,
    operations get FuseOptions' and connecting bounds.CONNECT_TIMEOUT."""
    if args.timeout is None:
        return FuseOptions().timeout, bounds.CONNECT_TIMEOUT
    return args.timeout, args.timeout


async def _mount_remote(args: argparse.Namespace, ready: Callable[[], None]) -> None:
    timeout, connect_timeout = _timeouts(args)
    options = FuseOptions(
        timeout=timeout,
        cache=args.cache,
        attr_cache=args.attr_cache,
        negative_cache=args.negative_cache,
        read_only=args.ro,
        allow_other=args.allow_other,
    )
    async with RemoteTree.connect(
        args.addr,
        uname=args.uname,
        aname=args.aname,
        key=args.key,
        reconnect=not args.no_reconnect,
        connect_timeout=connect_timeout,  # and the attach the mount starts with
    ) as tree:
        await mount_tree(
            tree,
            args.mountpoint,
            uname=args.uname,
            aname=args.aname,
            options=options,
            fsname=args.addr,
            ready=ready,
        )


def unmount(mountpoint: str, *, lazy: bool = False) -> subprocess.CompletedProcess:
    """Unmount a FUSE mount point (fusermount3 -u, or umount as root)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u", *(["-z"] if lazy else []), mountpoint]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), mountpoint]
    return subprocess.run(cmd, capture_output=True, text=True)


def _run_mount(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="ninefs mount: %(message)s"
    )
    # Everything that can be checked here is, before a background process is started:
    # its errors would reach the user the same way, but later and after a fork.
    try:
        parse_address(args.addr)
    except ValueError as e:
        print(f"ninefs mount: {e}", file=sys.stderr)
        return 2
    mp = os.path.abspath(args.mountpoint)
    if problem := _not_a_directory(mp):
        print(f"ninefs mount: {args.mountpoint}: {problem}", file=sys.stderr)
        return 1
    args.mountpoint = mp
    if args.key is not None:
        try:
            load_private_key(args.key)  # a bad key is named now, whether the server asks or not
        except KeyFileError as e:
            print(f"ninefs mount: {e}", file=sys.stderr)
            return 1
    if not args.foreground:
        return _background(args)
    ready_fd = args.ready_fd

    def ready() -> None:
        if ready_fd is not None:
            # Like sshfs: once mounted, a background mount lets go of the caller's terminal
            # and pipes, so `$(ninefs mount ...)` and subprocess.run return.
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    try:
        trio.run(partial(_mount_remote, args, ready))
    except KeyFileError as e:
        print(f"ninefs mount: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else f"{args.addr}: "
        print(f"ninefs mount: {where}{_why(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # still one line, and an exit that lets the caller go
        print(f"ninefs mount: {args.addr}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _not_a_directory(path: str) -> str | None:
    """Why `path` cannot be a mount point, in ls's words."""
    try:
        st = os.stat(path)
    except OSError as e:
        return "no such directory" if e.errno == errno.ENOENT else (e.strerror or str(e))
    return None if stat.S_ISDIR(st.st_mode) else "not a directory"


def _why(e: OSError) -> str:
    """An OSError in a few words: trio's "all attempts to connect ... failed" keeps the
    errno in its cause (one for every address tried: "connection refused")."""
    leaves = e.__cause__.exceptions if isinstance(e.__cause__, BaseExceptionGroup) else ()
    codes = {x.errno for x in leaves if isinstance(x, OSError) and x.errno}
    if e.errno is None and len(codes) == 1:
        return os.strerror(codes.pop()).lower()
    return e.strerror or str(e) or type(e).__name__


def _background(args: argparse.Namespace) -> int:
    """Start the mount in a new session and return once it is ready (or failed)."""
    r, w = os.pipe()
    argv = [sys.executable, "-m", "mount.cli", "mount", "--foreground", "--ready-fd", str(w)]
    if args.timeout is not None:
        argv.append(f"--timeout={args.timeout}")
    argv += [
        *cache_argv(args),
        f"--aname={args.aname}",
    ]
    if args.uname:
        argv.append(f"--uname={args.uname}")
    if args.key:
        argv.append(f"--key={args.key}")
    if args.no_reconnect:
        argv.append("--no-reconnect")
    if args.ro:
        argv.append("--ro")
    if args.allow_other:
        argv.append("--allow-other")
    argv += [args.addr, args.mountpoint]
    proc = subprocess.Popen(
        argv, pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL, cwd=_package_root()
    )
    os.close(w)
    # The child has its own deadlines (connecting, the first stat); this one is for a child
    # stuck anywhere else: it is stopped, not left behind with nothing mounted.
    timeout, connect_timeout = _timeouts(args)
    patience = connect_timeout + timeout + STARTUP_MARGIN
    with os.fdopen(r, "rb") as ready:
        said = ready.readline() if select.select([ready], [], [], patience)[0] else None
    if said == b"ready\n":
        return 0
    if said is None:
        _stop(proc, args.mountpoint)
        print(f"ninefs mount: {args.addr}: not mounted within {patience:g} s", file=sys.stderr)
        return 1
    return proc.wait() or 1


def _stop(proc: subprocess.Popen, mountpoint: str) -> None:
    """End a mount process that never got ready: SIGTERM (which unmounts, once mounted),
    then SIGKILL and a lazy unmount of anything it left."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        unmount(mountpoint, lazy=True)


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mounted(path: str) -> bool:
    """Whether `path` is a mount point in our mount namespace. From mountinfo, not stat:
    a mount whose server died answers stat with ENOTCONN, and must still be unmountable."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            table = f.read().decode(errors="surrogateescape")
    except OSError:
        return True  # cannot tell: let the unmount say
    for line in table.splitlines():
        fields = line.split(" ")
        # proc(5): field 5 is the mount point, with space, tab, newline and backslash as octal escapes
        if len(fields) > 4 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]) == path:
            return True
    return False


def _run_umount(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    if not _mounted(mp):  # asked first: lstat of a dead mount fails as if nothing were there
        problem = "not mounted" if os.path.lexists(mp) else "no such directory"
        print(f"ninefs umount: {args.mountpoint}: {problem}", file=sys.stderr)
        return 1
    r = unmount(args.mountpoint, lazy=args.lazy)
    if r.returncode:
        msg = (r.stderr or r.stdout).strip().splitlines()
        print(f"ninefs umount: {msg[-1] if msg else args.mountpoint + ': failed'}", file=sys.stderr)
        return 1
    return 0


def seconds(text: str) -> float:
    """The type of a time option: seconds, 0 or more (a negative deadline or cache is no
    setting anyone means)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: want seconds, 0 or more")
    return value


def positive_seconds(text: str) -> float:
    """A deadline: seconds above 0."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text}: want seconds above 0")
    return value


def add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--attr-cache",
        type=seconds,
        metavar="S",
        default=FuseOptions().attr_cache,
        help="how long ninefs (and the kernel) trust a stat or listing seen (s); longer is faster, staler",
    )
    p.add_argument(
        "--cache",
        type=seconds,
        metavar="S",
        default=None,
        help="how long the kernel may keep names and attributes (s; default: what is left of --attr-cache)",
    )
    p.add_argument(
        "--negative-cache",
        type=seconds,
        metavar="S",
        default=None,
        help="how long a name found missing is remembered as missing (s; default: --attr-cache)",
    )


def cache_argv(args: argparse.Namespace) -> list[str]:
    """The cache options as given, for a command line of our own (the background mount)."""
    argv = [f"--attr-cache={args.attr_cache}"]
    if args.cache is not None:
        argv.append(f"--cache={args.cache}")
    if args.negative_cache is not None:
        argv.append(f"--negative-cache={args.negative_cache}")
    return argv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a 9P server on a directory (FUSE)")
    p.add_argument("addr", help="server address: tcp!host!port, unix!/path or host:port")
    p.add_argument("mountpoint", help="an existing directory to show the tree on")
    p.add_argument("--aname", "-A", default="", help="tree to attach (default: the server's main tree)")
    p.add_argument("--uname", "-u", default=None, help="user name to attach as (default: yours)")
    p.add_argument("--ro", action="store_true", help="mount read-only")
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users' processes use the mount (the kernel then checks modes; "
        "non-root needs user_allow_other in /etc/fuse.conf)",
    )
    add_key_option(p)
    p.add_argument(
        "--no-reconnect", action="store_true", help="when the server goes away, fail instead of reconnecting"
    )
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground until unmounted")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=None,
        metavar="S",
        help=f"deadline of every operation and of connecting (s; default {FuseOptions().timeout:g}, "
        f"and {bounds.CONNECT_TIMEOUT:g} to connect)",
    )
    add_cache_options(p)
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--verbose", "-v", action="store_true", help="debug log on stderr (with --foreground)")
    p.set_defaults(run=_run_mount)

    p = sub.add_parser("umount", help="unmount a ninefs mount point")
    p.add_argument("mountpoint", help="where the tree is mounted")
    p.add_argument("--lazy", "-l", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(run=_run_umount)
