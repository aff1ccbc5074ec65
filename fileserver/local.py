"""A directory of the host, exported as a tree, and confined to it.

9P maps onto the host file system the way u9fs does it: qid.path from the
inode, qid.vers from mtime and size, owners and groups as names, rename and
truncate through wstat, fsync on a null wstat. Plan 9's DMAPPEND and DMEXCL
have no host bit, so they live in an extended attribute (`user.ninefs.dm`).

Confinement: a node is a list of names below the root; ".." is resolved on
those names (at the root it stays there), and before any file is touched its
real path (all symlinks resolved) must lie inside the root. A symlink that
points inside works like its target; one that points out of the export is
not listed and cannot be walked. Permission checks are the host's, for the
user the server runs as.
"""

from __future__ import annotations

import errno
import grp
import os
import stat as st_mod
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ninep.constants import (
    DMAPPEND,
    DMDIR,
    DMEXCL,
    NOT_TOUCHED_U32,
    NOT_TOUCHED_U64,
    OACCMODE,
    OEXEC,
    ORDWR,
    OREAD,
    OTRUNC,
    OWRITE,
    QTAPPEND,
    QTDIR,
    QTEXCL,
    QTFILE,
)
from ninep.errors import Exists, IsADirectory, NinePError, NotFound, PermissionDenied
from ninep.messages import Qid, Stat
from ninep.tree import Tree, check_name, dir_perm, file_perm

from .owners import group_name, host_user_may, owns, user_name

__all__ = ["LocalTree"]

_XATTR = "user.ninefs.dm"
_EXTRA_BITS = DMAPPEND | DMEXCL
_WANTS = {1: "enter", 2: "write", 4: "read", 5: "read", 6: "read and write", 3: "write", 7: "use"}


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise NinePError(f"invalid argument: unknown group {name!r}") from None


@dataclass(eq=False, slots=True, weakref_slot=True)
class _Node:
    names: tuple[str, ...]
    qid: Qid
    uname: str
    fd: int | None = None
    omode: int | None = None
    regular: bool = True
    real: str | None = None  # the confined host path, checked when the node was made


class LocalTree(Tree):
    """The directory `root` of this host as a 9P tree; `read_only` refuses every change."""

    # Metadata calls on a local disk return at once, and so do reads and writes of regular
    # files (io_never_blocks); those of a FIFO or a device go to a thread, and a null wstat
    # (fsync) does too.
    never_blocks = frozenset({"attach", "walk", "open", "create", "clunk", "remove", "stat"})

    def __init__(self, root: str, *, read_only: bool = False, check_users: bool = False) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise NotADirectoryError(f"{root}: not a directory")
        self.root = real
        self._prefix = real if real.endswith(os.sep) else real + os.sep  # "/" exports everything
        self.read_only = read_only
        # With authenticated users (serve --authorized-keys), each attach acts as a host user:
        # mode bits are checked for that user, as the kernel would if that user did it.
        self.check_users = check_users
        self._exclusive: set[tuple[int, int]] = set()  # (dev, ino) of DMEXCL files open now
        # Every node alive, so a rename can move the others that name the file or lie below
        # it: a fid names a file, not a path (intro(5)).
        self._nodes: weakref.WeakSet[_Node] = weakref.WeakSet()

    def _track(self, node: _Node) -> _Node:
        self._nodes.add(node)
        return node

    # --- paths and confinement --------------------------------------------------

    def _real(self, names: Sequence[str]) -> str:
        """The host path for `names`, all symlinks resolved; never outside the root."""
        path = os.path.join(self.root, *names)
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self._prefix):
            raise PermissionDenied("permission denied: leads outside the exported tree")
        return real

    def _node_real(self, node: _Node) -> str:
        """The node's host path; resolved (and confinement checked) once per node.

        Resolving on every message made realpath the server's biggest cost. A node's
        path is checked again whenever it is made anew (walk) or renamed.
        """
        if node.real is None:
            node.real = self._real(node.names)
        return node.real

    def _extra_bits(self, real: str) -> int:
        try:
            return int(os.getxattr(real, _XATTR, follow_symlinks=False)) & _EXTRA_BITS
        except (OSError, ValueError):
            return 0

    def _qid(self, s: os.stat_result, extra: int) -> Qid:
        typ = QTDIR if st_mod.S_ISDIR(s.st_mode) else QTFILE
        if extra & DMAPPEND:
            typ |= QTAPPEND
        if extra & DMEXCL:
            typ |= QTEXCL
        vers = (s.st_mtime_ns // 1000 ^ s.st_size ^ (s.st_ctime_ns // 1000) << 7) & 0xFFFFFFFF
        return Qid(typ, vers, (s.st_ino ^ (s.st_dev << 48)) & 0xFFFFFFFFFFFFFFFF)

    def _stat_real(self, real: str, name: str) -> Stat:
        s = os.stat(real)
        extra = self._extra_bits(real)
        mode = st_mod.S_IMODE(s.st_mode) & 0o777 | extra
        if st_mod.S_ISDIR(s.st_mode):
            mode |= DMDIR
        user = user_name(s.st_uid)
        return Stat(
            qid=self._qid(s, extra),
            mode=mode,
            atime=int(s.st_atime) & 0xFFFFFFFF,
            mtime=int(s.st_mtime) & 0xFFFFFFFF,
            length=0 if st_mod.S_ISDIR(s.st_mode) else s.st_size,
            name=name,
            uid=user,
            gid=group_name(s.st_gid),
            muid=user,
        )

    def _may(self, node: _Node, real: str, want: int, s: os.stat_result | None = None) -> None:
        """Refuse unless the attached user may `want` (4 read, 2 write, 1 exec) on `real`."""
        if not self.check_users:
            return
        if not host_user_may(node.uname, s or os.stat(real), want):
            raise PermissionDenied(f"permission denied: {node.uname} may not {_WANTS[want]} this")

    def _writable(self) -> None:
        if self.read_only:
            raise NinePError("read-only file system")

    # --- the tree interface ---------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> _Node:
        names = tuple(n for n in aname.split("/") if n and n != ".")
        if ".." in names:
            raise PermissionDenied("permission denied: aname leads outside the exported tree")
        real = self._real(names)
        s = os.stat(real)
        if not st_mod.S_ISDIR(s.st_mode):
            raise NinePError(f"not a directory: {aname}")
        return self._track(_Node(names, self._qid(s, 0), uname))

    async def clone(self, node: _Node) -> _Node:
        return self._track(_Node(node.names, node.qid, node.uname, real=node.real))

    async def walk1(self, node: _Node, name: str) -> _Node:
        if name == "..":
            names = node.names[:-1]
        elif name == ".":
            names = node.names
        else:
            names = (*node.names, name)
        s = None
        if name not in ("..", ".", "") and "/" not in name and "\0" not in name:
            # The directory's own path is resolved and confined already: one lstat tells
            # whether `name` adds a symlink to resolve. Only then is the whole path resolved
            # (realpath costs an lstat per component, on every walk of every file).
            real = os.path.join(self._node_real(node), name)
            try:
                s = os.lstat(real)
            except FileNotFoundError:
                raise NotFound("file does not exist") from None
            if st_mod.S_ISLNK(s.st_mode):
                s = None
        if s is None:
            real = self._real(names)
            try:
                s = os.stat(real)
            except FileNotFoundError:
                raise NotFound("file does not exist") from None
        return self._track(_Node(names, self._qid(s, self._extra_bits(real)), node.uname, real=real))

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        real = self._node_real(node)
        acc = mode & OACCMODE
        if acc in (OWRITE, ORDWR) or mode & OTRUNC:
            self._writable()
        s = os.stat(real)
        extra = self._extra_bits(real)
        want = {OREAD: 4, OWRITE: 2, ORDWR: 6, OEXEC: 1}[acc] | (2 if mode & OTRUNC else 0)
        self._may(node, real, want, s)
        if st_mod.S_ISDIR(s.st_mode):
            if not os.access(real, os.R_OK | os.X_OK):
                raise PermissionDenied("permission denied")
            node.omode = mode
            node.qid = self._qid(s, extra)
            return node.qid, 0
        if acc == OEXEC and not os.access(real, os.X_OK):
            raise PermissionDenied("permission denied")
        flags = {OREAD: os.O_RDONLY, OWRITE: os.O_WRONLY, ORDWR: os.O_RDWR, OEXEC: os.O_RDONLY}[acc]
        if mode & OTRUNC and not extra & DMAPPEND:
            flags |= os.O_TRUNC
        if extra & DMAPPEND:
            flags |= os.O_APPEND  # pwrite on an O_APPEND fd appends on Linux: open(5)'s DMAPPEND
        regular = st_mod.S_ISREG(s.st_mode)
        if not regular:
            flags |= os.O_NONBLOCK  # a FIFO or device must not block the whole server in open
        self._claim_exclusive(s, extra)
        try:
            fd = os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            self._exclusive.discard((s.st_dev, s.st_ino))
            raise
        if not regular:
            os.set_blocking(fd, True)
        node.fd, node.omode, node.regular = fd, mode, regular
        node.qid = self._qid(os.fstat(fd), extra)
        return node.qid, 0

    def _claim_exclusive(self, s: os.stat_result, extra: int) -> None:
        if extra & DMEXCL:
            key = (s.st_dev, s.st_ino)
            if key in self._exclusive:
                raise NinePError("file in use: exclusive-use file already open")
            self._exclusive.add(key)

    async def create(self, node: _Node, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        self._writable()
        check_name(name)
        dreal = self._node_real(node)
        dstat = os.stat(dreal)
        self._may(node, dreal, 2, dstat)
        dmode = dstat.st_mode
        names = (*node.names, name)
        path = os.path.join(dreal, name)
        if os.path.lexists(path):
            raise Exists("file already exists")
        extra = perm & _EXTRA_BITS
        if perm & DMDIR:
            if mode & OACCMODE not in (OREAD, OEXEC) or mode & OTRUNC:
                raise IsADirectory("is a directory: cannot create a directory open for writing")
            want = dir_perm(perm, dmode) & 0o777
            os.mkdir(path, want)
            os.chmod(path, want)  # Plan 9 applies no umask
            node.names, node.real = names, path
            node.omode = mode
            node.qid = self._qid(os.stat(path), 0)
            return node.qid, 0
        want = file_perm(perm, dmode) & 0o777
        acc = mode & OACCMODE
        flags = {OREAD: os.O_RDONLY, OWRITE: os.O_WRONLY, ORDWR: os.O_RDWR, OEXEC: os.O_RDONLY}[acc]
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, want)
        try:
            os.fchmod(fd, want)
            if extra:
                os.setxattr(fd, _XATTR, str(extra).encode())
                if extra & DMAPPEND:
                    os.close(fd)
                    fd = os.open(path, flags | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise NinePError("operation not supported: DMAPPEND/DMEXCL need user xattrs here") from None
            raise
        s = os.fstat(fd)
        if extra & DMEXCL:
            self._exclusive.add((s.st_dev, s.st_ino))
        node.names, node.fd, node.omode, node.regular = names, fd, mode, True
        node.real = path
        node.qid = self._qid(s, extra)
        return node.qid, 0

    def io_never_blocks(self, node: _Node) -> bool:
        return node.fd is not None and node.regular  # pread/pwrite of a file; FIFOs and devices wait

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        fd = node.fd
        if fd is None:
            raise IsADirectory("is a directory")
        if node.regular:
            return os.pread(fd, count, offset)
        # FIFOs and devices may block: keep them off the event loop.
        return await trio.to_thread.run_sync(os.read, fd, count, abandon_on_cancel=True)

    async def readdir(self, node: _Node) -> Sequence[Stat]:
        real = self._node_real(node)
        out = []
        with os.scandir(real) as it:
            for entry in it:
                try:
                    entry.name.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # 9P names are UTF-8; a name that is not cannot be sent
                try:
                    target = self._real((*node.names, entry.name)) if entry.is_symlink() else entry.path
                    out.append(self._stat_real(target, entry.name))
                except OSError:
                    continue  # dangling or escaping symlink, or removed meanwhile
        return out

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        self._writable()
        fd = node.fd
        if fd is None:
            raise IsADirectory("is a directory")
        if node.regular:
            return os.pwrite(fd, data, offset)
        return await trio.to_thread.run_sync(os.write, fd, data, abandon_on_cancel=True)

    async def stat(self, node: _Node) -> Stat:
        real = self._node_real(node)
        return self._stat_real(real, node.names[-1] if node.names else "/")

    async def wstat(self, node: _Node, st: Stat) -> None:
        real = self._node_real(node)
        name_set = st.name != "" and (not node.names or st.name != node.names[-1])
        length_set = st.length != NOT_TOUCHED_U64
        mode_set = st.mode != NOT_TOUCHED_U32
        mtime_set = st.mtime != NOT_TOUCHED_U32
        gid_set = st.gid != ""
        if not (name_set or length_set or mode_set or mtime_set or gid_set):
            # stat(5): a wstat that changes nothing asks for the file on stable storage.
            await trio.to_thread.run_sync(_fsync_path, real, node.fd)
            return
        self._writable()
        s = os.stat(real)
        is_dir = st_mod.S_ISDIR(s.st_mode)
        if self.check_users:
            if name_set:
                self._may(node, os.path.dirname(real), 2)
            if length_set:
                self._may(node, real, 2, s)
            if (mode_set or mtime_set or gid_set) and not owns(node.uname, s):
                raise PermissionDenied(f"permission denied: {node.uname} does not own this")
        # Check everything before changing anything: all changes or none (stat(5)).
        new_path = None
        if name_set:
            if not node.names:
                raise PermissionDenied("permission denied: cannot rename the root")
            check_name(st.name)
            new_path = os.path.join(os.path.dirname(real), st.name)
            if os.path.lexists(new_path):
                raise Exists("file already exists")
        if length_set and is_dir and st.length != 0:
            raise IsADirectory("is a directory: cannot set a directory's length")
        if mode_set and bool(st.mode & DMDIR) != is_dir:
            raise PermissionDenied("permission denied: cannot change the DMDIR bit")
        gid = _group_id(st.gid) if gid_set else -1
        if mode_set and st.mode & _EXTRA_BITS != self._extra_bits(real) and is_dir:
            raise NinePError("invalid argument: DMAPPEND/DMEXCL apply to files only")
        if length_set and not is_dir:
            os.truncate(real, st.length)
        if mode_set:
            os.chmod(real, st.mode & 0o777)
            extra = st.mode & _EXTRA_BITS
            if extra != self._extra_bits(real):
                _set_extra_bits(real, extra)
        if mtime_set:
            os.utime(real, (s.st_atime, st.mtime))
        if gid_set:
            os.chown(real, -1, gid)
        if new_path is not None:
            os.rename(real, new_path)
            old_names = node.names
            new_names = (*old_names[:-1], st.name)
            n = len(old_names)
            for other in list(self._nodes):
                if other.names[:n] == old_names:
                    other.names = new_names + other.names[n:]
                    other.real = None

    async def remove(self, node: _Node) -> None:
        try:
            self._writable()
            if not node.names:
                raise PermissionDenied("permission denied: cannot remove the root")
            real = self._node_real(node)
            self._may(node, os.path.dirname(real), 2)
            if node.qid.type & QTDIR:
                os.rmdir(real)
            else:
                try:
                    os.unlink(real)
                except IsADirectoryError:  # made a directory since it was walked
                    os.rmdir(real)
        finally:
            await self.clunk(node)

    async def clunk(self, node: _Node) -> None:
        if node.fd is not None:
            fd, node.fd = node.fd, None
            if node.qid.type & QTEXCL:
                s = os.fstat(fd)
                self._exclusive.discard((s.st_dev, s.st_ino))
            os.close(fd)
        node.omode = None


def _fsync_path(real: str, fd: int | None) -> None:
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_extra_bits(real: str, extra: int) -> None:
    try:
        if extra:
            os.setxattr(real, _XATTR, str(extra).encode())
        else:
            os.removexattr(real, _XATTR)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NinePError("operation not supported: DMAPPEND/DMEXCL need user xattrs here") from None
        raise
