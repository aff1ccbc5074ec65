"""A directory of the host, exported as a tree, and confined to it.

9P maps onto the host file system the way u9fs does it: qid.path from the
inode, qid.vers from mtime and size, owners and groups as names, rename and
truncate through wstat, fsync on a null wstat; past wstat(5), the owner and atime
change too, as chown(2) and utimensat(2) allow (docs/mount.md). Plan 9's DMAPPEND and DMEXCL
have no host bit, so they live in an extended attribute (`user.ninefs.dm`).

Confinement is by descriptors (fileserver/beneath.py): a node holds the
`Place` it names, an O_PATH descriptor of the file and the place of the
directory its name is in. A walk resolves one name relative to its directory's
descriptor, and every operation acts on the descriptor it holds (reads, stats,
opens, chmod) or on its own name in its directory's descriptor (remove, rename,
create), so a host that swaps directories and symlinks cannot move an operation
outside the root, and no path grows longer than one name. ".." is lexical, as
in Plan 9: the directory the fid was walked from (at the root it stays there).
A symlink that points inside works like its target; one that points out of the
export is not listed and cannot be walked. Removing or renaming a symlink acts
on the link; nothing is removed through a symlinked directory (a client sees it
as the directory, and its `rm -rf` of the link would empty the target).

Permission checks are the host's, for the user the server runs as; with
`check_users`, also for the attached user, as the host would check them:
search (x) on every directory walked through, write and search on a directory
to create or remove in it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat as st_mod
from collections.abc import Sequence
from dataclasses import dataclass

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
from ninep.errors import Exists, IsADirectory, NinePError, NotADirectory, PermissionDenied
from ninep.messages import Qid, Stat
from ninep.polling import in_thread
from ninep.posix import STATFS_NAME, dm_special, statfs_text, unix_special
from ninep.tree import Tree, check_name, dir_perm, file_perm

from .beneath import NOWHERE, Place, Root, proc_path
from .dmbits import EXTRA_BITS, XATTR, KnownBits, set_extra_bits
from .hostnames import host_name, wire_name
from .owners import group_id, group_name, host_user_may, is_root, may_set_special, owns, user_id, user_name
from .streams import is_stream

__all__ = ["LocalTree"]

_WANTS = {1: "enter", 2: "write", 4: "read", 5: "read", 6: "read and write", 3: "write", 7: "use"}
_WANT_OF = {OREAD: 4, OWRITE: 2, ORDWR: 6, OEXEC: 1}  # open(5) mode: the access bits it needs
_FLAGS_OF = {OREAD: os.O_RDONLY, OWRITE: os.O_WRONLY, ORDWR: os.O_RDWR, OEXEC: os.O_RDONLY}


@dataclass(eq=False, slots=True)
class _Node:
    place: Place  # the file this node names, held by descriptor (NOWHERE once clunked)
    qid: Qid
    uname: str
    fd: int | None = None
    omode: int | None = None
    regular: bool = True
    statfs: bool = False  # the synthetic .ninefs.statfs of directory `place` (ninep/posix.py)
    text: bytes | None = None  # its contents, made at open


class LocalTree(Tree):
    """The directory `root` of this host as a 9P tree; `read_only` refuses every change."""

    # Metadata calls on a local disk return at once (a listing too: its stats are lstats),
    # and so do reads and writes of regular files (io_never_blocks); those of a FIFO or a
    # device go to a thread, and a null wstat (fsync) does too.
    never_blocks = frozenset({"attach", "walk", "open", "create", "clunk", "remove", "stat", "readdir"})

    def __init__(self, root: str, *, read_only: bool = False, check_users: bool = False) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise NotADirectoryError(f"{root}: not a directory")
        self._beneath = Root(real)
        self.root = self._beneath.path
        self.read_only = read_only
        # With authenticated users (serve --authorized-keys), each attach acts as a host user:
        # mode bits are checked for that user, as the kernel would if that user did it.
        self.check_users = check_users
        self._exclusive: set[tuple[int, int]] = set()  # (dev, ino) of DMEXCL files open now
        self._bits = KnownBits()

    # --- host files as 9P sees them ------------------------------------------------------

    def _searcher(self, uname: str) -> str | None:
        """Whose search permission lookups check: the attached user's, with check_users."""
        return uname if self.check_users else None

    def _extra_bits(self, fd: int, s: os.stat_result) -> int:
        if st_mod.S_ISDIR(s.st_mode):
            return 0  # DMAPPEND and DMEXCL are for files (wstat refuses them on directories)
        return self._bits.of(proc_path(fd), s)

    def _qid(self, s: os.stat_result, extra: int, entry: tuple[int, int] | None = None) -> Qid:
        """The qid of the file `s` is the stat of; qid.path from the inode of its name,
        `entry`: a symlink's own, so that a client never takes a link to a directory for
        that directory (a FUSE mount would remove its files through either name)."""
        typ = QTDIR if st_mod.S_ISDIR(s.st_mode) else QTFILE
        if extra & DMAPPEND:
            typ |= QTAPPEND
        if extra & DMEXCL:
            typ |= QTEXCL
        if is_stream(s):
            vers = 0  # with length 0: read it afresh, as a device (docs/mount.md)
        else:
            vers = (s.st_mtime_ns // 1000 ^ s.st_size ^ (s.st_ctime_ns // 1000) << 7) & 0xFFFFFFFF
            vers = vers or 1  # never 0 for a file: an empty one is not a stream
        dev, ino = entry if entry is not None else (s.st_dev, s.st_ino)
        return Qid(typ, vers, (ino ^ (dev << 48)) & 0xFFFFFFFFFFFFFFFF)

    def _stat(self, s: os.stat_result, extra: int, name: str, entry: tuple[int, int] | None = None) -> Stat:
        st_mode = s.st_mode
        mode = st_mode & 0o777 | extra
        if st_mode & 0o7000:
            mode |= dm_special(st_mode)
        is_dir = st_mod.S_ISDIR(st_mode)
        if is_dir:
            mode |= DMDIR
        user = user_name(s.st_uid)
        return Stat(
            0,
            0,
            self._qid(s, extra, entry),
            mode,
            int(s.st_atime) & 0xFFFFFFFF,
            int(s.st_mtime) & 0xFFFFFFFF,
            0 if is_dir else s.st_size,
            name,
            user,
            group_name(s.st_gid),
            user,
        )

    def _may(self, node: _Node, want: int, s: os.stat_result) -> None:
        """Refuse unless the attached user may `want` (4 read, 2 write, 1 exec) on `s`'s file."""
        if self.check_users and not host_user_may(node.uname, s, want):
            raise PermissionDenied(f"permission denied: {node.uname} may not {_WANTS[want]} this")

    def _may_special(self, node: _Node, uid: int, gid: int, special: int) -> None:
        """With check_users the server's own rights act for the attached user: setuid and
        setgid only as chmod(2) would let that user set them."""
        if special and self.check_users and not may_set_special(node.uname, uid, gid, special):
            raise NinePError(f"operation not permitted: {node.uname} may not set setuid/setgid here")

    def _writable(self) -> None:
        if self.read_only:
            raise NinePError("read-only file system")

    # --- the tree interface ---------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> _Node:
        names = [n for n in aname.split("/") if n and n != "."]
        if ".." in names:
            raise PermissionDenied("permission denied: aname leads outside the exported tree")
        place = self._beneath.top
        s = os.fstat(place.fd)
        for name in names:
            place, s = self._beneath.lookup(place, host_name(name), self._searcher(uname))
        if not st_mod.S_ISDIR(s.st_mode):
            raise NinePError(f"not a directory: {aname}")
        return _Node(place, self._qid(s, 0, place.entry), uname)

    async def clone(self, node: _Node) -> _Node:
        return _Node(node.place, node.qid, node.uname, statfs=node.statfs)

    async def walk1(self, node: _Node, name: str) -> _Node:
        place = node.place
        if node.statfs:
            raise NotADirectory("walk in non-directory")
        if name in ("..", "."):
            self._beneath.search(place, self._searcher(node.uname))
            if name == ".." and place.parent is not None:  # lexical, as in Plan 9
                place = place.parent
            s = os.fstat(place.fd)
        elif name == STATFS_NAME and st_mod.S_ISDIR(os.fstat(place.fd).st_mode):
            self._beneath.search(place, self._searcher(node.uname))
            path = (place.ident[1] ^ (place.ident[0] << 48) ^ (1 << 63)) & 0xFFFFFFFFFFFFFFFF
            return _Node(place, Qid(QTFILE, 0, path), node.uname, statfs=True)
        else:
            place, s = self._beneath.lookup(place, host_name(name), self._searcher(node.uname))
        return _Node(place, self._qid(s, self._extra_bits(place.fd, s), place.entry), node.uname)

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        place = node.place
        acc = mode & OACCMODE
        if node.statfs:
            if mode != OREAD:
                raise PermissionDenied("permission denied: .ninefs.statfs is read-only")
            node.omode, node.text = mode, statfs_text(os.statvfs(place.fd))
            return node.qid, 0
        if acc in (OWRITE, ORDWR) or mode & OTRUNC:
            self._writable()
        s = os.fstat(place.fd)
        extra = self._extra_bits(place.fd, s)
        want = _WANT_OF[acc] | (2 if mode & OTRUNC else 0)
        is_dir = st_mod.S_ISDIR(s.st_mode)
        self._may(node, (want | 1) if is_dir else want, s)  # a listing stats entries: search too
        path = proc_path(place.fd)  # the file held, reopened: no name is looked up again
        if is_dir:
            if not os.access(path, os.R_OK | os.X_OK):
                raise PermissionDenied("permission denied")
            node.omode = mode
            node.qid = self._qid(s, extra, place.entry)
            return node.qid, 0
        if acc == OEXEC and not os.access(path, os.X_OK):
            raise PermissionDenied("permission denied")
        flags = _FLAGS_OF[acc]
        if mode & OTRUNC and not extra & DMAPPEND:
            flags |= os.O_TRUNC
        if extra & DMAPPEND:
            flags |= os.O_APPEND  # pwrite on an O_APPEND fd appends on Linux: open(5)'s DMAPPEND
        regular = st_mod.S_ISREG(s.st_mode)
        if not regular:
            flags |= os.O_NONBLOCK  # a FIFO or device must not block the whole server in open
        self._claim_exclusive(s, extra)
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except BaseException:
            self._exclusive.discard((s.st_dev, s.st_ino))
            raise
        if not regular:
            os.set_blocking(fd, True)
        node.fd, node.omode, node.regular = fd, mode, regular
        node.qid = self._qid(os.fstat(fd) if flags & os.O_TRUNC else s, extra, place.entry)
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
        if node.statfs:
            raise NotADirectory("not a directory")
        if name == STATFS_NAME:
            raise Exists("file already exists: .ninefs.statfs is the server's (ninep/posix.py)")
        try:
            name = host_name(name)
        except FileNotFoundError:
            raise NinePError("invalid argument: not the escaped form of a host name") from None
        dirp = node.place
        dstat = os.fstat(dirp.fd)
        self._may(node, 3, dstat)  # write and search, as the host checks for creat(2)
        extra = perm & EXTRA_BITS
        special = unix_special(perm)
        if special and self.check_users:  # _may_special looks at nothing else
            new_gid = dstat.st_gid if dstat.st_mode & st_mod.S_ISGID else os.getegid()
            self._may_special(node, os.geteuid(), new_gid, special)  # owned by the server's user
        if perm & DMDIR:
            if mode & OACCMODE not in (OREAD, OEXEC) or mode & OTRUNC:
                raise IsADirectory("is a directory: cannot create a directory open for writing")
            want = dir_perm(perm, dstat.st_mode) & 0o777
            try:
                os.mkdir(name, want, dir_fd=dirp.fd)
            except FileExistsError:
                raise Exists("file already exists") from None
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirp.fd)
            s = os.fstat(pfd)
            node.place = self._beneath.adopt(dirp, name, pfd, s)
            # Plan 9 applies no umask; a setgid directory's new directories stay setgid (Linux)
            os.chmod(proc_path(pfd), want | special | (s.st_mode & st_mod.S_ISGID))
            node.omode = mode
            node.qid = self._qid(os.fstat(pfd), 0)
            return node.qid, 0
        want = file_perm(perm, dstat.st_mode) & 0o777
        flags = _FLAGS_OF[mode & OACCMODE]
        try:
            fd = os.open(
                name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, want, dir_fd=dirp.fd
            )
        except FileExistsError:
            raise Exists("file already exists") from None
        try:
            os.fchmod(fd, want | special)
            if extra:
                os.setxattr(fd, XATTR, str(extra).encode())
                if extra & DMAPPEND:
                    fd, old = os.open(proc_path(fd), flags | os.O_APPEND | os.O_CLOEXEC), fd
                    os.close(old)
            pfd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            os.close(fd)
            os.unlink(name, dir_fd=dirp.fd)
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise NinePError("operation not supported: DMAPPEND/DMEXCL need user xattrs here") from None
            raise
        s = os.fstat(fd)
        if extra & DMEXCL:
            self._exclusive.add((s.st_dev, s.st_ino))
        node.place = self._beneath.adopt(dirp, name, pfd, s)
        node.fd, node.omode, node.regular = fd, mode, True
        node.qid = self._qid(s, extra)
        return node.qid, 0

    def wstat_never_blocks(self, node: _Node, st: Stat) -> bool:
        # Only a null wstat waits (fsync, in a thread); a rename to the name it has is one.
        renames = st.name != "" and node.place.parent is not None and st.name != wire_name(node.place.name)
        return renames or any(
            (
                st.length != NOT_TOUCHED_U64,
                st.mode != NOT_TOUCHED_U32,
                st.mtime != NOT_TOUCHED_U32,
                st.atime != NOT_TOUCHED_U32,
                st.gid != "",
                st.uid != "",
            )
        )

    def io_never_blocks(self, node: _Node) -> bool:
        return node.fd is not None and node.regular  # pread/pwrite of a file; FIFOs and devices wait

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        if node.text is not None:
            return node.text[offset : offset + count]
        fd = node.fd
        if fd is None:
            raise IsADirectory("is a directory")
        if node.regular:
            return os.pread(fd, count, offset)
        # FIFOs and devices may block: keep them off the event loop.
        return await in_thread(os.read, fd, count, abandon_on_cancel=True)

    async def readdir(self, node: _Node) -> Sequence[Stat]:
        dirp = node.place
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirp.fd)
        out = []
        try:
            with os.scandir(fd) as it:
                for dent in it:
                    name = dent.name
                    wire = wire_name(name)  # 9P names are UTF-8: others are escaped (hostnames.py)
                    try:
                        if dent.is_symlink():
                            place, s = self._beneath.lookup(dirp, name, self._searcher(node.uname))
                            out.append(self._stat(s, self._extra_bits(place.fd, s), wire, place.entry))
                            continue
                        s = dent.stat(follow_symlinks=False)
                        in_dir = f"{proc_path(fd)}/{name}"  # the name in the directory held
                        extra = (
                            0
                            if st_mod.S_ISDIR(s.st_mode)
                            else self._bits.of(in_dir, s, follow_symlinks=False)
                        )
                        out.append(self._stat(s, extra, wire))
                    except OSError:
                        continue  # dangling or escaping symlink, or removed meanwhile
        finally:
            os.close(fd)
        return out

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        self._writable()
        fd = node.fd
        if fd is None:
            raise IsADirectory("is a directory")
        if node.regular:
            return os.pwrite(fd, data, offset)
        return await in_thread(os.write, fd, data, abandon_on_cancel=True)

    async def stat(self, node: _Node) -> Stat:
        place = node.place
        s = os.fstat(place.fd)
        if node.statfs:
            return dataclasses.replace(self._stat(s, 0, STATFS_NAME), qid=node.qid, mode=0o444, length=0)
        name = wire_name(place.name) if place.parent is not None else "/"
        return self._stat(s, self._extra_bits(place.fd, s), name, place.entry)

    async def wstat(self, node: _Node, st: Stat) -> None:
        place = node.place
        parent = place.parent
        name_set = st.name != "" and (parent is None or st.name != wire_name(place.name))
        length_set = st.length != NOT_TOUCHED_U64
        mode_set = st.mode != NOT_TOUCHED_U32
        mtime_set = st.mtime != NOT_TOUCHED_U32
        gid_set = st.gid != ""
        # Ours, past wstat(5) (docs/mount.md): the owner and atime change too, as chown(2) and
        # utimensat(2) would let the user.
        atime_set = st.atime != NOT_TOUCHED_U32
        uid_set = st.uid != ""
        if not (name_set or length_set or mode_set or mtime_set or gid_set or atime_set or uid_set):
            # stat(5): a wstat that changes nothing asks for the file on stable storage.
            if not node.statfs:
                await in_thread(_fsync, place, node.fd)
            return
        self._writable()
        if node.statfs:
            raise PermissionDenied("permission denied: .ninefs.statfs is the server's")
        s = os.fstat(place.fd)
        is_dir = st_mod.S_ISDIR(s.st_mode)
        uid = user_id(st.uid) if uid_set else -1
        uid = -1 if uid == s.st_uid else uid  # the owner it has: chown(2) lets the owner do that
        if self.check_users:
            if name_set and parent is not None:
                self._may(node, 3, os.fstat(parent.fd))
            if length_set:
                self._may(node, 2, s)
            if (mode_set or mtime_set or gid_set or atime_set or uid_set) and not owns(node.uname, s):
                raise PermissionDenied(f"permission denied: {node.uname} does not own this")
            if uid >= 0 and not is_root(node.uname):
                raise NinePError(f"operation not permitted: only root may give a file away, not {node.uname}")
        if uid >= 0 and os.geteuid() != 0:
            raise NinePError("operation not permitted: the server's user may not change owners")
        # Check everything before changing anything: all changes or none (stat(5)).
        if name_set:
            if parent is None:
                raise PermissionDenied("permission denied: cannot rename the root")
            check_name(st.name)
            if st.name == STATFS_NAME:
                raise Exists("file already exists: .ninefs.statfs is the server's (ninep/posix.py)")
            try:
                new_name = host_name(st.name)
            except FileNotFoundError:
                raise NinePError("invalid argument: not the escaped form of a host name") from None
            try:
                os.stat(new_name, dir_fd=parent.fd, follow_symlinks=False)
                raise Exists("file already exists")
            except FileNotFoundError:
                pass
        if length_set and is_dir and st.length != 0:
            raise IsADirectory("is a directory: cannot set a directory's length")
        if mode_set and bool(st.mode & DMDIR) != is_dir:
            raise PermissionDenied("permission denied: cannot change the DMDIR bit")
        gid = group_id(st.gid) if gid_set else -1
        if mode_set:
            owner, group = s.st_uid if uid < 0 else uid, s.st_gid if gid < 0 else gid
            self._may_special(node, owner, group, unix_special(st.mode))
        extra = self._extra_bits(place.fd, s)
        if mode_set and st.mode & EXTRA_BITS != extra and is_dir:
            raise NinePError("invalid argument: DMAPPEND/DMEXCL apply to files only")
        path = proc_path(place.fd)  # the file held, whatever its name is now
        if length_set and not is_dir:
            os.truncate(path, st.length)
        if uid >= 0 or gid_set:
            os.chown(path, uid, gid)  # before chmod: it clears setuid/setgid, a mode asked stays
        if mode_set:
            os.chmod(path, st.mode & 0o777 | unix_special(st.mode))
            if st.mode & EXTRA_BITS != extra:
                set_extra_bits(path, st.mode & EXTRA_BITS)
        if atime_set or mtime_set:
            now = os.fstat(place.fd)  # after a truncate: the time it did not ask to set is kept
            atime = st.atime * 10**9 if atime_set else now.st_atime_ns
            os.utime(path, ns=(atime, st.mtime * 10**9 if mtime_set else now.st_mtime_ns))
        if name_set:
            self._beneath.rename(place, new_name)  # a symlink's own name, not its target's

    async def remove(self, node: _Node) -> None:
        try:
            self._writable()
            place = node.place
            if place.parent is None or node.statfs:
                raise PermissionDenied("permission denied: cannot remove the root")
            if place.below_link:
                raise PermissionDenied("permission denied: not removed through a symlinked directory")
            if self.check_users:  # write and search, as for unlink(2)
                self._may(node, 3, os.fstat(place.parent.fd))
            self._beneath.remove(place)
        finally:
            await self.clunk(node)

    async def clunk(self, node: _Node) -> None:
        if node.fd is not None:
            fd, node.fd = node.fd, None
            if node.qid.type & QTEXCL:
                s = os.fstat(fd)
                self._exclusive.discard((s.st_dev, s.st_ino))
            os.close(fd)
        node.omode, node.text = None, None
        node.place = NOWHERE  # its descriptors close when no other node or place holds them


def _fsync(place: Place, fd: int | None) -> None:
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(proc_path(place.fd), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
