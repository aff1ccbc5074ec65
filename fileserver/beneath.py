"""Names resolved beneath an exported directory by descriptors, never by path strings.

LocalTree sits on this. Every file reached in an export is a `Place`: an
O_PATH descriptor of the file, the place of the directory its name is in, and
that name. One name is resolved at a time, relative to its directory's
descriptor, with O_NOFOLLOW: such a lookup cannot leave the directory, and a
host that swaps a directory for a symlink (or exchanges two names with
renameat2) meanwhile changes nothing for a descriptor already held; there is no
path to resolve again. This is openat2's RESOLVE_BENEATH done by hand, which
also runs where openat2 does not and lets a symlink be followed instead of
refused: its text is resolved the same way, one component at a time, starting
from the place that physically holds the link (or from the root, for an
absolute link naming a path inside the export), ".." going back along places
already held and never above the root, with at most 40 links per lookup, like
the kernel. The text of a magic link (/proc/self/fd/N) is a path like any other
and resolved as such, so no magic link is ever followed (RESOLVE_NO_MAGICLINKS).

Removing and renaming act on a place's own name in its directory's descriptor
(unlinkat, renameat2), so a symlink is removed or renamed itself, never its
target. Descriptors are shared: places are reference-counted Python objects,
each descriptor closed when the last node or child place holding it goes, and
a name walked again from the same directory object reuses the place already
open for it while that name still names the same inode.

What descriptors cannot prevent: a directory that the host moves out of the
export (a rename needing write access outside it) stays reachable through
places already held inside it, as with any open directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as st_mod
import weakref
from collections.abc import Callable

from ninep.errors import Exists, NotADirectory, NotFound, PermissionDenied

from .owners import host_user_may

__all__ = ["NOWHERE", "Place", "Root", "proc_path"]

_MAX_LINKS = 40  # path_resolution(7): Linux follows at most 40 symlinks in one lookup
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def proc_path(fd: int) -> str:
    """A path naming exactly the file `fd` holds: getxattr, chmod, utime, truncate and a
    reopen for reading or writing take a path, and an O_PATH descriptor serves none of
    them directly (they fail with EBADF)."""
    return f"/proc/self/fd/{fd}"


class Place:
    """A file reached beneath the root: `fd` (O_PATH) holds it; its name `name` is in the
    directory `parent`. For a symlink, `fd` holds the link's target and `up` the directory
    that target is in (where ".." in a link's text leads); otherwise `up` is `parent`."""

    __slots__ = ("__weakref__", "below_link", "entry", "fd", "ident", "is_link", "name", "parent", "up")

    def __init__(
        self,
        fd: int,
        parent: Place | None,
        up: Place | None,
        name: str,
        entry: tuple[int, int],
        ident: tuple[int, int],
        is_link: bool = False,
    ) -> None:
        self.fd = fd
        self.parent = parent
        self.up = up
        self.name = name
        self.entry = entry  # (st_dev, st_ino) of the name itself: the link, for a symlink
        self.ident = ident  # (st_dev, st_ino) of the file `fd` holds
        self.is_link = is_link
        # Walked through a symlink to a directory: a 9P client sees that link as the
        # directory, so its `rm -rf` of the link would empty the target (LocalTree.remove).
        self.below_link = parent is not None and (parent.is_link or parent.below_link)

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        if self.fd >= 0:
            try:
                _close(self.fd)
            except OSError:
                pass


NOWHERE = Place(-1, None, None, "", (0, 0), (0, 0))  # what a clunked node holds


class _Hops:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = _MAX_LINKS


def _ident(s: os.stat_result) -> tuple[int, int]:
    return s.st_dev, s.st_ino


class Root:
    """The exported directory `path` and the places held beneath it."""

    def __init__(self, path: str) -> None:
        real = os.path.realpath(path)
        fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if not os.path.isdir(proc_path(fd)):
            os.close(fd)
            raise OSError(errno.ENOENT, "an export needs /proc/self/fd (procfs)")
        ident = _ident(os.fstat(fd))
        self.path = real
        self._prefix = real if real.endswith(os.sep) else real + os.sep  # "/" exports everything
        self.top = Place(fd, None, None, "/", ident, ident)
        # Places open now by (id of their directory's place, name), reused by the next walk
        # of that name; a live child keeps its directory's place alive, so an id here is
        # never a dead object's.
        self._known: weakref.WeakValueDictionary[tuple[int, str], Place] = weakref.WeakValueDictionary()
        # Every place alive, so a rename can rename the other places of the same name.
        self._all: weakref.WeakSet[Place] = weakref.WeakSet()

    # --- lookups ----------------------------------------------------------------------

    def lookup(
        self, dirp: Place, name: str, uname: str | None, hops: _Hops | None = None
    ) -> tuple[Place, os.stat_result]:
        """`name` in directory `dirp` and its stat; a symlink is followed beneath the root.

        With `uname`, that host user must be allowed to search every directory looked in.
        """
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise NotFound("file does not exist")
        self.search(dirp, uname)
        known = self._known.get((id(dirp), name))
        if known is not None and not known.is_link:
            try:
                s = os.stat(name, dir_fd=dirp.fd, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound("file does not exist") from None
            if _ident(s) == known.entry:  # still that file: its descriptor keeps the inode
                return known, s
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirp.fd)
        except FileNotFoundError:
            raise NotFound("file does not exist") from None
        try:
            s = os.fstat(fd)
            if st_mod.S_ISLNK(s.st_mode):
                text = os.readlink("", dir_fd=fd)  # readlinkat(2) of the O_PATH link itself
        except BaseException:
            os.close(fd)
            raise
        if not st_mod.S_ISLNK(s.st_mode):
            return self.adopt(dirp, name, fd, s), s
        os.close(fd)
        hops = hops or _Hops()
        hops.left -= 1
        if hops.left < 0:
            raise OSError(errno.ELOOP, "too many levels of symbolic links")
        # A link is read and followed on every walk; the place already open for it is kept
        # while the link and what it leads to are the same files.
        target, ts = self._follow(dirp, text, uname, hops)
        if known is not None and known.entry == _ident(s) and known.ident == target.ident:
            return known, ts
        link = Place(os.dup(target.fd), dirp, target.up, name, _ident(s), target.ident, is_link=True)
        self._known[(id(dirp), name)] = link
        self._all.add(link)
        return link, ts

    def adopt(self, dirp: Place, name: str, fd: int, s: os.stat_result) -> Place:
        """The place of `name` in `dirp`, not a symlink, held by `fd` (O_PATH) with stat `s`."""
        place = Place(fd, dirp, dirp, name, _ident(s), _ident(s))
        self._known[(id(dirp), name)] = place
        self._all.add(place)
        return place

    def _follow(
        self, start: Place, text: str, uname: str | None, hops: _Hops
    ) -> tuple[Place, os.stat_result]:
        """What a symlink's `text` names, found from `start`, the directory holding it."""
        cur = start
        if text.startswith("/"):
            if text != self.path and not text.startswith(self._prefix):
                raise PermissionDenied("permission denied: a symlink leads outside the exported tree")
            cur, text = self.top, text[len(self._prefix) :]
        s: os.stat_result | None = None
        for part in text.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if s is not None and not st_mod.S_ISDIR(s.st_mode):
                    raise NotADirectory("not a directory")
                self.search(cur, uname)
                if cur.up is not None:
                    cur, s = cur.up, None
                elif self.path == "/":  # path_resolution(7): ".." at "/" is "/"
                    cur, s = self.top, None
                else:
                    raise PermissionDenied("permission denied: a symlink leads outside the exported tree")
                continue
            cur, s = self.lookup(cur, part, uname, hops)
        return cur, s if s is not None else os.fstat(cur.fd)

    def search(self, dirp: Place, uname: str | None) -> None:
        """Refuse unless host user `uname` may search (x) directory `dirp`; None: no check."""
        if uname is not None and not host_user_may(uname, os.fstat(dirp.fd), 1):
            raise PermissionDenied(f"permission denied: {uname} may not enter this")

    # --- changes by name in the directory --------------------------------------------

    def _check_entry(self, place: Place) -> tuple[Place, os.stat_result]:
        """The directory of `place` and the lstat of its name there, once that name is
        still the entry walked."""
        parent = place.parent
        if parent is None:
            raise PermissionDenied("permission denied: not for the root")
        try:
            s = os.stat(place.name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound("file does not exist") from None
        if _ident(s) != place.entry:  # renamed or replaced behind our back
            raise NotFound("file does not exist: the name now names another file")
        return parent, s

    def remove(self, place: Place) -> None:
        """Unlink the name of `place` (a symlink itself, not its target); rmdir a directory."""
        parent, s = self._check_entry(place)
        # Not a link: the name's inode is the one `place.fd` holds, so `s` is its stat too.
        if place.is_link or not st_mod.S_ISDIR(s.st_mode):
            try:
                os.unlink(place.name, dir_fd=parent.fd)
            except IsADirectoryError:  # made a directory since it was walked
                os.rmdir(place.name, dir_fd=parent.fd)
        else:
            os.rmdir(place.name, dir_fd=parent.fd)
        if self._known.get((id(parent), place.name)) is place:
            del self._known[(id(parent), place.name)]

    def rename(self, place: Place, new: str) -> None:
        """Rename `place` (a symlink itself) to `new` in its directory; never replaces a file."""
        parent, _ = self._check_entry(place)
        old = place.name
        _rename_noreplace(parent.fd, old, new)
        for other in list(self._all):  # every place of that name: a fid names a file (intro(5))
            p = other.parent
            if p is not None and other.name == old and other.entry == place.entry and p.ident == parent.ident:
                other.name = new
                if self._known.get((id(p), old)) is other:
                    del self._known[(id(p), old)]
                    self._known.setdefault((id(p), new), other)


def _rename_noreplace(dirfd: int, old: str, new: str) -> None:
    """renameat2(RENAME_NOREPLACE): wstat(5) must not rename onto an existing name."""
    if _renameat2 is not None:
        if _renameat2(dirfd, os.fsencode(old), dirfd, os.fsencode(new), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise Exists("file already exists")
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err))
    # A file system without RENAME_NOREPLACE: check, then rename (a race only with the host).
    try:
        os.stat(new, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(old, new, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        return
    raise Exists("file already exists")
