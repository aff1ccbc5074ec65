"""`ninefs ns run`: a command in a namespace of its own (Plan 9's rfork(RFNAMEG) + newns).

How it works (DESIGN.md, "Per-process namespace"):

1. This process unshares its mount namespace and makes every mount private,
   so nothing it mounts is seen outside, and nothing outside changes under it.
2. A private tmpfs holds two directories: `host`, a recursive bind of / taken
   now (the namespace's view of this machine, untouched by what follows), and
   `ns`, where the composed namespace (host root + the namespace file) is
   FUSE-mounted once, served by this process.
3. Each top-level mount point of the namespace (/n/alpha, /bin, ...) is
   bind-mounted from `ns` onto its real path. A mount point whose directory
   does not exist is created for the run and removed afterwards.
4. The command runs as our child, with our stdin/stdout/stderr, the exit
   status passed back, and SIGTERM/SIGHUP passed on (Ctrl-C reaches it from
   the terminal directly). When it exits we unmount everything; the kernel
   drops the namespace once its last process is gone.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import tempfile

import trio

from fileserver.local import LocalTree
from namespaces import Namespace, NamespaceFileError, Op, apply
from namespaces.cli import add_namespace_options, gather_ops, register_export

from . import linux
from .fuse import FuseOptions
from .mounter import add_cache_options, mount_tree

__all__ = ["register"]

log = logging.getLogger("ninefs.ns")


def _top_mount_points(ns: Namespace) -> list[tuple[str, ...]]:
    """Mount points not below another one (the root mount is the host itself)."""
    points = [p for p in ns.mount_points() if p]
    return [p for p in points if not any(q != p and p[: len(q)] == q for q in points)]


def _make_mount_point(real: str, is_dir: bool, created: list[str]) -> None:
    """Create a missing mount point (recording what we created, to remove it later)."""
    if os.path.lexists(real):
        return
    missing = []
    d = os.path.dirname(real)
    while not os.path.lexists(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        os.mkdir(d)
        created.append(d)
    if is_dir:
        os.mkdir(real)
    else:
        open(real, "x").close()
    created.append(real)


def _remove_created(created: list[str]) -> None:
    for path in reversed(created):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as e:
            log.warning("could not remove %s: %s", path, e)


async def _run_in_namespace(ops: list[Op], command: list[str], work: str, options: FuseOptions) -> int:
    host, mnt = os.path.join(work, "host"), os.path.join(work, "ns")
    uname = getpass.getuser()
    async with Namespace(LocalTree(host), uname=uname) as ns:
        try:
            cwd = await apply(ns, ops)
        except NamespaceFileError as e:
            print(f"ninefs ns run: {e}", file=sys.stderr)
            return 2
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            served = trio.Event()

            async def serve_fuse() -> None:
                try:
                    await mount_tree(
                        ns, mnt, uname=uname, options=options, fsname="ninefs-ns",
                        ready=ready.set, unmount_on_signals=False,
                    )  # fmt: skip
                finally:
                    served.set()

            nursery.start_soon(serve_fuse)
            with trio.fail_after(30):
                await ready.wait()
            created: list[str] = []
            bound: list[str] = []
            try:
                for path in _top_mount_points(ns):
                    real = "/" + "/".join(path)
                    source = os.path.join(mnt, *path)
                    # Syscalls that look through our own FUSE mount must not block the loop serving it.
                    is_dir = await trio.to_thread.run_sync(os.path.isdir, source)
                    await trio.to_thread.run_sync(_make_mount_point, real, is_dir, created)
                    await trio.to_thread.run_sync(linux.bind_mount, source, real)
                    bound.append(real)
                return await _run_command(command, cwd)
            finally:
                for real in reversed(bound):
                    try:
                        await trio.to_thread.run_sync(linux.unmount_detach, real)
                    except OSError as e:
                        log.warning("%s", e)
                await trio.to_thread.run_sync(_remove_created, created)
                import pyfuse3

                if not served.is_set():  # terminate() on a session already closed would crash
                    pyfuse3.terminate()


async def _run_command(command: list[str], cwd: str | None) -> int:
    # A ^C from the terminal reaches the command and us at once; we ignore it (see _run)
    # and must never be interrupted while we serve the command's files.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        try:
            proc = await trio.lowlevel.open_process(
                command, cwd=cwd or os.getcwd(), preexec_fn=_default_signals
            )
        except OSError as e:
            print(f"ninefs ns run: {command[0]}: {e.strerror or e}", file=sys.stderr)
            return 127 if isinstance(e, FileNotFoundError) else 126
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                async for signum in signals:
                    proc.send_signal(signum)

            nursery.start_soon(forward)
            await proc.wait()
            nursery.cancel_scope.cancel()
    code = proc.returncode
    return 128 - code if code < 0 else code


def _default_signals() -> None:
    # In the child: ^C, TERM and HUP act on the command as usual again.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="ninefs ns: %(message)s"
    )
    command = args.command or [os.environ.get("SHELL", "/bin/sh")]
    if command and command[0] == "--":
        command = command[1:]
    try:
        ops = gather_ops(args)
    except NamespaceFileError as e:
        print(f"ninefs ns run: {e}", file=sys.stderr)
        return 2
    # Ctrl-C at the terminal is for the command: this process only serves its namespace
    # (a KeyboardInterrupt while FUSE is mounted would tear it down under the command).
    # TERM and HUP are passed on while the command runs; ignored otherwise, so one that
    # arrives with the command's exit (a signal to the whole process group) cannot kill us
    # half way through cleaning up, when trio hands back what its receiver did not read.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if os.geteuid() != 0:
        print("ninefs ns run: needs root (it makes a mount namespace and FUSE mounts)", file=sys.stderr)
        return 1
    linux.unshare_mount_namespace()  # before trio starts any thread
    linux.make_rprivate("/")
    work = tempfile.mkdtemp(prefix="ninefs-ns-")
    try:
        linux.mount_tmpfs(work)
        os.mkdir(os.path.join(work, "host"))
        os.mkdir(os.path.join(work, "ns"))
        linux.rbind("/", os.path.join(work, "host"))
        options = FuseOptions(timeout=args.timeout, cache=args.cache, attr_cache=args.attr_cache)
        return trio.run(_run_in_namespace, ops, command, work, options)
    except OSError as e:
        print(f"ninefs ns run: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            linux.unmount_detach(work)
        except OSError:
            pass
        os.rmdir(work)


def register(sub: argparse._SubParsersAction) -> None:
    ns = sub.add_parser("ns", help="per-process namespaces: run a command in one, or export one")
    ns_sub = ns.add_subparsers(dest="ns_command", metavar="SUBCOMMAND", required=True)
    p = ns_sub.add_parser("run", help="run a command in a namespace of its own")
    add_namespace_options(p)
    p.add_argument(
        "--timeout", type=float, default=FuseOptions().timeout, help="deadline of every file operation"
    )
    add_cache_options(p)
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS (default: $SHELL)")
    p.set_defaults(run=_run)
    register_export(ns_sub)
