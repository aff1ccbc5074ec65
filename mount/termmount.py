"""cpu's /mnt/term made by the server itself: no second process on the remote side.

The cmd tree (fileserver.cmd) runs a command that asked for `term` with the
caller's namespace at /mnt/term. A server running as root does it all in its
own process, as Plan 9's cpu server does: `TermMounter.prepare` opens
/dev/fuse; the child, still root after fork, unshares its mount namespace,
makes every mount private, makes /mnt/term exist there (if the host has none,
/mnt is covered, in that namespace only, by a tmpfs holding a bind of each of
its entries and `term`: nothing is written on the host's disk) and mounts the
device there (allow_other + default_permissions, as `ns run`: the command may
change user, and the kernel then checks modes); then it becomes its user and
execs. The server serves that mount (TreeFS on FuseSession, as mount_tree does)
from a 9P client on its end of the term pipe, whose other end is the caller's
namespace server, until the kernel drops the mount (the namespace dies with its
last process: ENODEV) or the session closes (the device is closed: the mount
is aborted).

Anyone else cannot mount, and gets the fallback: the command is run through
`ninefs ns run` (mount.cpu.term_wrapper), which needs root too and says so.

The FUSE and 9P client code is imported only when a mount is served: `serve`
without cpu callers, `ls` and `cat` never load it (issue #17).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

import trio

from ninep import bounds

from . import linux
from .fusedev import MountSpec, mount_device

__all__ = ["TermMounter"]

log = logging.getLogger("ninefs.cpu")

TERM = "/mnt/term"
_SPEC = MountSpec(TERM, fsname="ninefs-term", allow_other=True, default_permissions=True)


class TermMounter:
    """What `serve --machine` hands its cmd tree: a mount per command where it can,
    `wrapper` (argv for the fallback, given the fd of the pipe's end) where not."""

    def __init__(self, wrapper: Callable[[int, list[str]], list[str]]) -> None:
        self._wrapper = wrapper

    def wrap(self, fd: int, argv: list[str]) -> list[str]:
        return self._wrapper(fd, argv)

    def prepare(self) -> TermMount | None:
        # mount(2) needs CAP_SYS_ADMIN; and with no /mnt at all we would have to cover /
        # (`ns run` does that, with a chroot): both are the fallback's.
        if os.geteuid() != 0 or not os.path.isdir(os.path.dirname(TERM)):
            return None
        try:
            fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            log.info("%s: /dev/fuse: %s; through ns run instead", TERM, e.strerror)
            return None
        return TermMount(fd, cover=not (os.path.isdir(TERM) and not os.path.islink(TERM)))


class TermMount:
    """One command's /mnt/term: the device, the child's step, and the serving of it."""

    def __init__(self, fd: int, *, cover: bool) -> None:
        self.fd = fd
        self.cover = cover  # the host has no /mnt/term directory: cover /mnt in the child

    def in_child(self, uid: int, gid: int) -> None:
        """Between fork and exec, as root: only syscalls and what is already imported."""
        linux.unshare_mount_namespace()  # the child has one thread: the kernel allows it
        linux.make_rprivate("/")  # nothing we mount is seen outside
        if self.cover:
            _cover(os.path.dirname(TERM), os.path.basename(TERM))
        mount_device(self.fd, _SPEC, rootmode=0o40000, uid=uid, gid=gid)

    async def serve(self, peer: socket.socket, uname: str) -> None:
        from ninep.client import single_error

        stream = trio.SocketStream(trio.socket.from_stdlib_socket(peer))
        try:
            with single_error():
                await self._serve(stream, uname)
        except trio.TooSlowError:
            log.warning(
                "%s: the caller did not serve its namespace within %g s", TERM, bounds.CONNECT_TIMEOUT
            )
        except OSError as e:
            if e.errno != errno.ENODEV:  # the command was gone before it looked: not news
                log.warning("%s: %s", TERM, e.strerror or e)
        except Exception as e:  # a caller that speaks no 9P on term ends its mount, not the server
            log.warning("%s: %s: %s", TERM, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            await stream.aclose()

    async def _serve(self, stream: trio.SocketStream, uname: str) -> None:
        from ninep.client import Connection
        from ninep.remote import RemoteTree

        from .fuse import FuseOptions, TreeFS
        from .fusesession import FuseSession

        async with trio.open_nursery() as nursery:
            conn = Connection(stream)
            ops = TreeFS(RemoteTree(conn, uname=uname), uname=uname, options=FuseOptions(allow_other=True))
            try:
                # The caller serves its namespace once our exec is answered: it has as
                # long to begin as a connect has, then the command finds no files there.
                with trio.fail_after(bounds.CONNECT_TIMEOUT):
                    await conn.start(nursery)
                    await ops.start(nursery)
                session = FuseSession(self.fd, ops)
                ops.kernel = session
                await session.run()
            finally:
                with trio.CancelScope(shield=True):
                    await ops.close()
                    await conn.aclose()
                nursery.cancel_scope.cancel()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _cover(directory: str, name: str) -> None:
    """Make `directory`/`name` a directory in this mount namespace only: a tmpfs like
    `directory` (owner, mode) covers it, with a bind of each entry (a copy of each symlink),
    reached through a descriptor of the covered directory, and `name`."""
    st = os.stat(directory)
    below = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        linux.mount_tmpfs(directory, f"mode={st.st_mode & 0o7777:o},uid={st.st_uid},gid={st.st_gid}")
        for entry in os.scandir(below):
            if entry.name == name:
                continue  # not a directory (else we would mount on it): ours replaces it
            target = os.path.join(directory, entry.name)
            with contextlib.suppress(FileNotFoundError):  # went away while we looked
                linux.copy_entry(entry, f"/proc/self/fd/{below}/{entry.name}", target)
        os.mkdir(os.path.join(directory, name), 0o555)
    finally:
        os.close(below)
