"""A bare passthrough of a host directory on ninefs' FUSE session: the ceiling for the mount.

    python benchmarks/passthrough.py SOURCE MOUNTPOINT [--cache SECONDS]

No network, no protocol: every FUSE request is answered with the matching
system call on SOURCE, in the trio loop (as libfuse's passthrough example
does), on the same session ninefs mounts with
(mount/fusesession.py, mounted as mount/mounter.py's mount_tree does: mount(2)
as root, fusermount3 otherwise). It speaks to the kernel the way ninefs does
(default_permissions, no writeback cache, entry/attribute timeouts of --cache
seconds, readdir with attributes), so bench_mount.py can tell the cost of the
FUSE layer itself from the cost of 9P. Prints "ready" on stdout once mounted;
stops on SIGTERM/SIGINT/SIGHUP or an unmount.

As root the mount is allow_other (as it was before issue #17). Symlinks show
as symlinks, but the session answers READLINK with EINVAL and SYMLINK with
EPERM itself (9P2000 has none), so `readlink` and `symlink` below are not
reached.

Inode numbers are the host's (the source root is inode 1); hard links share an
inode and are reached through any one of their names.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat as st_mod
import sys
from collections import defaultdict
from typing import Any

import trio

from mount.fuseabi import ROOT_ID, Attr, FileInfo, FuseError, StatvfsData
from mount.fusecodec import DirentBuffer
from mount.fusedev import MountSpec, fuse_mount, fuse_unmount
from mount.fusesession import FuseSession

ROOT = ROOT_ID


def _fail(e: OSError) -> FuseError:
    return FuseError(e.errno or errno.EIO)


class Passthrough:
    """The FUSE operations FuseSession calls (as mount/fuse.py's TreeFS has them), on SOURCE."""

    def __init__(self, source: str, cache: float) -> None:
        self.source = os.path.abspath(source)
        self.cache = cache
        self.root_ino = os.lstat(self.source).st_ino
        self.paths: dict[int, str] = {ROOT: self.source}  # our inode -> one of its paths
        self.lookups: defaultdict[int, int] = defaultdict(int)
        self.dirs: dict[int, tuple[str, list[tuple[str, Attr]]]] = {}  # fh -> path, listing
        self._next_dir_fh = 1 << 40  # dir handles live above every fd number

    # --- inodes --------------------------------------------------------------------------

    def _ino(self, host_ino: int) -> int:
        if host_ino == self.root_ino:
            return ROOT
        if host_ino == ROOT:  # never a visible file on ext4/xfs/btrfs, but keep the numbers apart
            return self.root_ino
        return host_ino

    def _path(self, ino: int) -> str:
        try:
            return self.paths[ino]
        except KeyError:
            raise FuseError(errno.ESTALE) from None

    def _learn(self, ino: int, path: str) -> None:
        self.lookups[ino] += 1
        self.paths[ino] = path

    def _attr(self, s: os.stat_result) -> Attr:
        return Attr(
            st_ino=self._ino(s.st_ino),
            generation=0,
            entry_timeout=self.cache,
            attr_timeout=self.cache,
            st_mode=s.st_mode,
            st_nlink=s.st_nlink,
            st_uid=s.st_uid,
            st_gid=s.st_gid,
            st_rdev=s.st_rdev,
            st_size=s.st_size,
            st_blksize=s.st_blksize,
            st_blocks=s.st_blocks,
            st_atime_ns=s.st_atime_ns,
            st_mtime_ns=s.st_mtime_ns,
            st_ctime_ns=s.st_ctime_ns,
        )

    def _lstat(self, path: str) -> Attr:
        try:
            return self._attr(os.lstat(path))
        except OSError as e:
            raise _fail(e) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    # --- lookup and attributes -------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Attr:
        n = os.fsdecode(name)
        if n == ".":
            path = self._path(parent_inode)
        elif n == "..":
            here = self._path(parent_inode)
            path = here if parent_inode == ROOT else os.path.dirname(here)
        else:
            path = os.path.join(self._path(parent_inode), n)
        attr = self._lstat(path)
        self._learn(attr.st_ino, path)
        return attr

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if ino != ROOT:
                self.paths.pop(ino, None)

    async def getattr(self, inode: int, ctx: Any = None, fh: int | None = None) -> Attr:
        return self._lstat(self._path(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Attr:
        target: int | str = fh if fh is not None and fh < self._next_dir_fh else self._path(inode)
        try:
            if fields.update_size:
                if isinstance(target, int):
                    os.ftruncate(target, attr.st_size)
                else:
                    os.truncate(target, attr.st_size)
            if fields.update_mode:
                os.chmod(target, st_mod.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                os.chown(target, uid, gid)
            if fields.update_atime or fields.update_mtime:
                old = os.stat(target)
                atime = attr.st_atime_ns if fields.update_atime else old.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns
                os.utime(target, ns=(atime, mtime))
            s = os.fstat(target) if isinstance(target, int) else os.lstat(target)
        except OSError as e:
            raise _fail(e) from None
        return self._attr(s)

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True  # default_permissions: the kernel checks modes

    async def statfs(self, ctx: Any) -> StatvfsData:
        try:
            v = os.statvfs(self.source)
        except OSError as e:
            raise _fail(e) from None
        return StatvfsData(
            f_bsize=v.f_bsize,
            f_frsize=v.f_frsize,
            f_blocks=v.f_blocks,
            f_bfree=v.f_bfree,
            f_bavail=v.f_bavail,
            f_files=v.f_files,
            f_ffree=v.f_ffree,
            f_favail=v.f_favail,
            f_namemax=v.f_namemax,
        )

    # --- directories -------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        if not os.path.isdir(path):
            raise FuseError(errno.ENOTDIR)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self.dirs[fh] = (path, [])
        return fh

    async def readdir(self, fh: int, start_id: int, buf: DirentBuffer) -> None:
        if fh not in self.dirs:
            raise FuseError(errno.EBADF)
        path, entries = self.dirs[fh]
        if start_id == 0:  # one listing per pass; later calls continue it by index
            entries = []
            try:
                with os.scandir(path) as it:
                    for e in it:
                        try:
                            entries.append((e.name, self._attr(e.stat(follow_symlinks=False))))
                        except FileNotFoundError:
                            continue
            except OSError as e:
                raise _fail(e) from None
            entries.sort(key=lambda x: x[0])
            self.dirs[fh] = (path, entries)
        for i in range(start_id, len(entries)):
            name, attr = entries[i]
            if not buf.add(os.fsencode(name), attr, i + 1):
                break
            if buf.plus:  # an entry of READDIRPLUS counts as a lookup (fuse.h)
                self._learn(attr.st_ino, os.path.join(path, name))

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Attr:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode & ~ctx.umask & 0o7777)
        except OSError as e:
            raise _fail(e) from None
        attr = self._lstat(path)
        self._learn(attr.st_ino, path)
        return attr

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.rmdir(self._child(parent_inode, name))
        except OSError as e:
            raise _fail(e) from None

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.unlink(self._child(parent_inode, name))
        except OSError as e:
            raise _fail(e) from None

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        if flags:
            raise FuseError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        try:
            os.rename(old, new)
            ino = self._ino(os.lstat(new).st_ino)
        except OSError as e:
            raise _fail(e) from None
        if ino in self.paths:
            self.paths[ino] = new

    # --- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> FileInfo:
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as e:
            raise _fail(e) from None
        return FileInfo(fh=fd, keep_cache=True)  # as this passthrough always asked

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[FileInfo, Attr]:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask & 0o7777)
            attr = self._attr(os.fstat(fd))
        except OSError as e:
            raise _fail(e) from None
        self._learn(attr.st_ino, path)
        return FileInfo(fh=fd, keep_cache=True), attr

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise _fail(e) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            return os.pwrite(fh, buf, off)
        except OSError as e:
            raise _fail(e) from None

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            (os.fdatasync if datasync else os.fsync)(fh)
        except OSError as e:
            raise _fail(e) from None

    async def release(self, fh: int) -> None:
        try:
            os.close(fh)
        except OSError as e:
            raise _fail(e) from None

    # --- the rest of POSIX, as a passthrough would (the session does not ask these yet) ----------

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as e:
            raise _fail(e) from None

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Attr:
        path = self._child(parent_inode, name)
        try:
            os.symlink(os.fsdecode(target), path)
        except OSError as e:
            raise _fail(e) from None
        attr = self._lstat(path)
        self._learn(attr.st_ino, path)
        return attr


async def _serve(source: str, mountpoint: str, cache: float) -> None:
    """Mount and serve as mount/mounter.py's mount_tree does, until unmounted or signalled."""
    ops = Passthrough(source, cache)
    mountpoint = os.path.abspath(mountpoint)
    spec = MountSpec(
        mountpoint,
        fsname="passthrough",
        subtype="passthrough",
        allow_other=os.getuid() == 0,
        default_permissions=True,
    )
    fd = await fuse_mount(spec)
    session = FuseSession(fd, ops)
    try:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        session.stop()
                        return

                nursery.start_soon(stop_on_signal)
                await session.run(lambda: print("ready", flush=True))
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            try:
                fuse_unmount(mountpoint, fd)
            finally:
                os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--cache", type=float, default=1.0, help="kernel entry/attribute timeout (s)")
    args = ap.parse_args()
    try:
        trio.run(_serve, args.source, args.mountpoint, args.cache)
    except OSError as e:
        print(f"passthrough: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
