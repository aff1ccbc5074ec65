"""`ninefs ns run`: a command in a namespace of its own (Plan 9's rfork(RFNAMEG) + newns).

How it works (DESIGN.md, "Per-process namespace"):

1. This process unshares its mount namespace and makes every mount private,
   so nothing it mounts is seen outside, and nothing outside changes under it.
2. A tmpfs mounted in that namespace only holds two directories: `host`, a copy
   of the mount tree taken now (the namespace's view of this machine, untouched
   by what follows), and `ns`, where the composed namespace (host root + the
   namespace file) is FUSE-mounted once, served by this process. The tmpfs is
   mounted on /tmp and at once covered by a copy of what /tmp showed, so no path
   reaches it: we reach it through a descriptor (/proc/self/fd/N).
3. Each top-level mount point of the namespace (/n/alpha, /bin, ...) is
   bind-mounted from `ns` onto its real path. A mount point that does not exist
   is made in this namespace only: the nearest directory above it that exists
   is covered by a tmpfs holding a bind of each of its entries and the missing
   names (for /, the command's root becomes that tmpfs: chroot). The machine's
   file system is never written.
4. The command runs as our child, with our stdin/stdout/stderr, the exit
   status passed back, SIGTERM/SIGHUP passed on (Ctrl-C reaches it from the
   terminal directly), and SIGKILL when we die, however we die. Everything we
   mounted lives only in this namespace: the kernel drops it when its last
   process is gone, a crash included; nothing is left to clean up outside.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys

import trio

from fileserver.local import LocalTree
from namespaces import Namespace, NamespaceFileError, Op, apply
from namespaces.cli import add_namespace_options, add_start_options, gather_ops, register_export
from ninep.polling import in_thread

from . import linux
from .fuse import FuseOptions
from .mounter import add_cache_options, mount_tree, positive_seconds

__all__ = ["register"]

log = logging.getLogger("ninefs.ns")


_WORK_ON = "/tmp"  # where the private tmpfs is mounted (and covered again): any directory would do


def _top_mount_points(ns: Namespace) -> list[tuple[str, ...]]:
    """Mount points not below another one (the root mount is the host itself)."""
    points = [p for p in ns.mount_points() if p]
    return [p for p in points if not any(q != p and p[: len(q)] == q for q in points)]


def _bind_points(ns: Namespace) -> list[tuple[str, ...]]:
    """Where the namespace is bound onto the machine: each top mount point, except that
    those in a directory this machine does not have are bound once, by the highest such
    directory (64 machines at /n/NAME on a host without /n: one bind of /n, not 64; the
    namespace's /n holds nothing but them, and /n/.status)."""
    chosen = set()
    for p in _top_mount_points(ns):
        while len(p) > 1 and not os.path.lexists("/" + "/".join(p[:-1])):
            p = p[:-1]
        chosen.add(p)
    return sorted(p for p in chosen if not any(q != p and p[: len(q)] == q for q in chosen))


def _private_work_area() -> tuple[str, LocalTree]:
    """A tmpfs of this namespace that no path reaches, holding `host` (this machine's
    files, as LocalTree) and `ns` (for the FUSE mount); the path to it, via our fd."""
    host_copy = linux.clone_tree("/")
    cover = linux.clone_tree(_WORK_ON)
    try:
        linux.mount_tmpfs(_WORK_ON)
        fd = os.open(_WORK_ON, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        os.mkdir(os.path.join(_WORK_ON, "host"))
        os.mkdir(os.path.join(_WORK_ON, "ns"))
        linux.attach_tree(host_copy, os.path.join(_WORK_ON, "host"))
        # LocalTree holds its root by descriptor from here on: the path may be covered.
        host = LocalTree(os.path.join(_WORK_ON, "host"))
        linux.attach_tree(cover, _WORK_ON)
    finally:
        os.close(host_copy)
        os.close(cover)
    return f"/proc/self/fd/{fd}", host


def _existing_ancestor(real: str) -> str:
    d = os.path.dirname(real)
    while not os.path.lexists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise NotADirectoryError(f"not a directory: {d} (on the way to the mount point {real})")
    return d


def _make_mount_points(missing: list[tuple[str, bool]], work: str, cwd: str) -> None:
    """Make each missing (path, is_dir) appear in this mount namespace only.

    The nearest existing directory above one is covered by a tmpfs with the same owner
    and mode, holding a bind of each of its entries (a copy of each symlink) and the
    missing names; for /, our root (and the command's) becomes that tmpfs. The entries are
    the real ones; only names made directly in that directory, inside or outside, are not
    shared for the run (and a rename between two entries is across mounts: EXDEV)."""
    wanted: dict[str, list[tuple[str, bool]]] = {}
    for real, is_dir in missing:
        wanted.setdefault(_existing_ancestor(real), []).append((real, is_dir))
    # Deepest first: a shadow of / then binds the shadows below it with the rest.
    for i, above in enumerate(sorted(wanted, key=lambda d: (d == "/", -d.count("/"), d))):
        place = os.path.join(work, f"shadow{i}")
        os.mkdir(place)
        st = os.stat(above)
        linux.mount_tmpfs(place, f"mode={st.st_mode & 0o7777:o},uid={st.st_uid},gid={st.st_gid}")
        for entry in os.scandir(above):
            _copy_entry(entry, os.path.join(place, entry.name))
        for real, is_dir in wanted[above]:
            inside = os.path.join(place, os.path.relpath(real, above))
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            if is_dir:
                os.mkdir(inside)
            else:
                open(inside, "x").close()
        if above == "/":
            os.chroot(place)
            os.chdir(cwd)
        else:
            linux.move_mount(place, above)


def _copy_entry(entry: os.DirEntry, target: str) -> None:
    """An entry of a covered directory, as it was: a symlink copied, anything else bound."""
    try:
        linux.copy_entry(entry, entry.path, target)
    except FileNotFoundError:
        log.debug("%s went away while we looked", entry.path)


def _warn(line: str) -> None:
    print(f"ninefs ns run: {line}", file=sys.stderr, flush=True)


async def _run_in_namespace(
    ops: list[Op],
    command: list[str],
    work: str,
    host: LocalTree,
    cwd: str,
    options: FuseOptions,
    args: argparse.Namespace,
) -> int:
    mnt = os.path.join(work, "ns")
    uname = getpass.getuser()
    started = trio.current_time()
    async with Namespace(host, uname=uname) as ns:
        try:
            # Plan 9's newns goes on past a mount that fails; --strict is all or nothing.
            ns_cwd = await apply(
                ns, ops, start_down=not args.strict, warn=_warn, status=True,
                connect_timeout=args.connect_timeout,
            )  # fmt: skip
        except NamespaceFileError as e:
            print(f"ninefs ns run: {e}", file=sys.stderr)
            return 2
        log.debug("namespace applied in %.3f s", trio.current_time() - started)
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
            bound: list[str] = []
            try:
                points = [("/" + "/".join(p), os.path.join(mnt, *p)) for p in _bind_points(ns)]
                missing = []
                for real, source in points:
                    if not os.path.lexists(real):
                        # Syscalls that look through our own FUSE mount must not block the loop serving it.
                        missing.append((real, await in_thread(os.path.isdir, source)))
                if missing:
                    await in_thread(_make_mount_points, missing, work, cwd)
                for real, source in points:
                    await in_thread(linux.bind_mount, source, real)
                    bound.append(real)
                log.debug("%d mount points ready in %.3f s", len(points), trio.current_time() - started)
                return await _run_command(command, ns_cwd or cwd)
            finally:
                for real in reversed(bound):
                    try:
                        await in_thread(linux.unmount_detach, real)
                    except OSError as e:
                        log.warning("%s", e)
                if not served.is_set():
                    nursery.cancel_scope.cancel()  # unmounts (mount_tree's finally)


async def _run_command(command: list[str], cwd: str) -> int:
    # A ^C from the terminal reaches the command and us at once; we ignore it (see _run)
    # and must never be interrupted while we serve the command's files.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        try:
            pid = await _spawn(command, cwd)
        except OSError as e:
            print(f"ninefs ns run: {command[0]}: {e.strerror or e}", file=sys.stderr)
            return 127 if isinstance(e, FileNotFoundError) else 126
        pidfd = os.pidfd_open(pid)
        try:
            async with trio.open_nursery() as nursery:

                async def forward() -> None:
                    async for signum in signals:
                        os.kill(pid, signum)  # not reaped before the wait below: still ours

                nursery.start_soon(forward)
                await trio.lowlevel.wait_readable(pidfd)
                nursery.cancel_scope.cancel()
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


async def _spawn(command: list[str], cwd: str) -> int:
    """Start the command as our child, forked by this (the main) thread; its pid.

    Not trio.lowlevel.open_process: that forks in a worker thread, and PR_SET_PDEATHSIG
    fires when the *thread* that forked exits (prctl(2)), which a worker does when idle.
    Nor subprocess.Popen here: it waits for the exec, and an exec of a program on our
    own FUSE mount (/n/alpha/bin/tool) needs this loop to serve it. So: fork, and learn
    how the exec went from a close-on-exec pipe, read without blocking the loop."""
    parent = os.getpid()
    r, w = os.pipe()  # both close-on-exec (PEP 446)
    pid = os.fork()
    if pid == 0:  # the child: only what is safe after fork in a threaded process, then exec
        try:
            os.close(r)
            os.closerange(3, w)
            os.closerange(w + 1, os.sysconf("SC_OPEN_MAX"))
            _in_child(parent)
            os.chdir(cwd)
            os.execvp(command[0], command)
        except OSError as e:
            os.write(w, str(e.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(w)
    async with trio.lowlevel.FdStream(r) as stream:
        report = b""
        while chunk := await stream.receive_some():
            report += chunk
    if report:  # the exec failed: the child is gone already
        os.waitpid(pid, 0)
        err = int(report)
        raise OSError(err, os.strerror(err))
    return pid


def _in_child(parent: int) -> None:
    # ^C, TERM and HUP act on the command as usual again; and without us to serve its
    # files (killed, crashed) the command goes too, rather than run on in a dead namespace.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    linux.die_with_parent(parent)


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
    cwd = os.getcwd()
    try:
        linux.unshare_mount_namespace()  # before trio starts any thread
        linux.make_rprivate("/")
        # Nothing below needs undoing: it is all in our mount namespace, which goes with us.
        work, host = _private_work_area()
        # a namespace's commands may change user (su, setpriv): the kernel checks their modes
        options = FuseOptions(
            timeout=args.timeout,
            cache=args.cache,
            attr_cache=args.attr_cache,
            negative_cache=args.negative_cache,
            allow_other=True,
        )
        return trio.run(_run_in_namespace, ops, command, work, host, cwd, options, args)
    except OSError as e:
        print(f"ninefs ns run: {e}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:
    ns = sub.add_parser("ns", help="per-process namespaces: run a command in one, or export one")
    ns_sub = ns.add_subparsers(dest="ns_command", metavar="SUBCOMMAND", required=True)
    p = ns_sub.add_parser("run", help="run a command in a namespace of its own")
    add_namespace_options(p)
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=FuseOptions().timeout,
        help="deadline of every file operation",
    )
    add_cache_options(p)
    add_start_options(p)
    p.add_argument("--verbose", "-v", action="store_true", help="debug log on stderr")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS (default: $SHELL)")
    p.set_defaults(run=_run)
    register_export(ns_sub)
