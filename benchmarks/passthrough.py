"""A bare pyfuse3 passthrough of a host directory: the ceiling for any pyfuse3 file system.

    python benchmarks/passthrough.py SOURCE MOUNTPOINT [--cache SECONDS]

No network, no protocol: every FUSE request is answered with the matching
system call on SOURCE, in the trio loop, as pyfuse3's examples/passthroughfs.py
does. It speaks to the kernel the way ninefs' adapter does (default_permissions,
no writeback cache, entry/attribute timeouts of --cache seconds, readdir with
attributes), so bench_mount.py can tell the cost of pyfuse3 itself from the
cost of 9P. Prints "ready" on stdout once mounted; stops on SIGTERM/SIGINT or
an unmount.

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

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


def _fail(e: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: str, cache: float) -> None:
        super().__init__()
        self.source = os.path.abspath(source)
        self.cache = cache
        self.root_ino = os.lstat(self.source).st_ino
        self.paths: dict[int, str] = {ROOT: self.source}  # our inode -> one of its paths
        self.lookups: defaultdict[int, int] = defaultdict(int)
        self.dirs: dict[
            int, tuple[str, list[tuple[str, pyfuse3.EntryAttributes]]]
        ] = {}  # fh -> path, listing
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
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _learn(self, ino: int, path: str) -> None:
        self.lookups[ino] += 1
        self.paths[ino] = path

    def _attr(self, s: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(s.st_ino)
        a.generation = 0
        a.entry_timeout = self.cache
        a.attr_timeout = self.cache
        a.st_mode = s.st_mode
        a.st_nlink = s.st_nlink
        a.st_uid = s.st_uid
        a.st_gid = s.st_gid
        a.st_rdev = s.st_rdev
        a.st_size = s.st_size
        a.st_blksize = s.st_blksize
        a.st_blocks = s.st_blocks
        a.st_atime_ns = s.st_atime_ns
        a.st_mtime_ns = s.st_mtime_ns
        a.st_ctime_ns = s.st_ctime_ns
        return a

    def _lstat(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            return self._attr(os.lstat(path))
        except OSError as e:
            raise _fail(e) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    # --- lookup and attributes -------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
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

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._lstat(self._path(inode))

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
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

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        try:
            v = os.statvfs(self.source)
        except OSError as e:
            raise _fail(e) from None
        s = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(s, f, getattr(v, f))
        s.f_namemax = v.f_namemax
        return s

    # --- directories -------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        if not os.path.isdir(path):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self.dirs[fh] = (path, [])
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if fh not in self.dirs:
            raise pyfuse3.FUSEError(errno.EBADF)
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
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break
            self._learn(attr.st_ino, os.path.join(path, name))  # readdirplus counts as a lookup

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
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
            raise pyfuse3.FUSEError(errno.EINVAL)
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

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as e:
            raise _fail(e) from None
        return pyfuse3.FileInfo(fh=fd)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask & 0o7777)
            attr = self._attr(os.fstat(fd))
        except OSError as e:
            raise _fail(e) from None
        self._learn(attr.st_ino, path)
        return pyfuse3.FileInfo(fh=fd), attr

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

    # --- the rest of POSIX, as a passthrough would -----------------------------------------------

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as e:
            raise _fail(e) from None

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.symlink(os.fsdecode(target), path)
        except OSError as e:
            raise _fail(e) from None
        attr = self._lstat(path)
        self._learn(attr.st_ino, path)
        return attr


async def _serve(source: str, mountpoint: str, cache: float) -> None:
    ops = Passthrough(source, cache)
    options = set(pyfuse3.default_options) | {"fsname=passthrough", "subtype=passthrough"}
    if os.getuid() == 0:
        options.add("allow_other")
    pyfuse3.init(ops, mountpoint, options)
    try:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

                nursery.start_soon(stop_on_signal)
                print("ready", flush=True)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--cache", type=float, default=1.0, help="kernel entry/attribute timeout (s)")
    args = ap.parse_args()
    try:
        trio.run(_serve, args.source, args.mountpoint, args.cache)
    except RuntimeError as e:
        print(f"passthrough: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
