"""Plan 9's DMAPPEND and DMEXCL on host files: Linux has no mode bit for either, so an
exported directory (fileserver/local.py) keeps them in an extended attribute."""

from __future__ import annotations

import errno
import os
import time

from ninep.constants import DMAPPEND, DMEXCL
from ninep.errors import NinePError

__all__ = ["EXTRA_BITS", "XATTR", "KnownBits", "set_extra_bits", "xattr_bits"]

XATTR = "user.ninefs.dm"
EXTRA_BITS = DMAPPEND | DMEXCL


def xattr_bits(path: str, *, follow_symlinks: bool = True) -> int:
    """The DMAPPEND/DMEXCL bits the file at `path` has (0 without the attribute)."""
    try:
        # Most files have no such attribute: listing says so without an ENODATA to raise
        # and catch, which costs more than the system call.
        if XATTR not in os.listxattr(path, follow_symlinks=follow_symlinks):
            return 0
        return int(os.getxattr(path, XATTR, follow_symlinks=follow_symlinks)) & EXTRA_BITS
    except (OSError, ValueError):
        return 0


class KnownBits:
    """xattr_bits remembered by inode and ctime: a walk, an open and a stat of one file
    each need them (for the qid's type), and reading them is most of a walk's system
    calls. Setting or removing the attribute moves the file's ctime to the present, so a
    remembered answer is one for a ctime that has not moved since; and only for a ctime
    older than the clock's granularity when we read it (SETTLED_NS), or a change in the
    same tick could leave it where it was."""

    SETTLED_NS = 100_000_000
    LIMIT = 65536  # inodes remembered; past it, forgotten all at once

    def __init__(self) -> None:
        self._known: dict[tuple[int, int], tuple[int, int]] = {}  # (dev, ino) -> (ctime_ns, bits)

    def of(self, path: str, s: os.stat_result, *, follow_symlinks: bool = True) -> int:
        """The bits of the file at `path`, whose stat (taken before) is `s`."""
        key = (s.st_dev, s.st_ino)
        known = self._known.get(key)
        if known is not None and known[0] == s.st_ctime_ns:
            return known[1]
        bits = xattr_bits(path, follow_symlinks=follow_symlinks)
        if time.time_ns() - s.st_ctime_ns > self.SETTLED_NS:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            self._known[key] = (s.st_ctime_ns, bits)
        return bits


def set_extra_bits(path: str, extra: int) -> None:
    try:
        if extra:
            os.setxattr(path, XATTR, str(extra).encode())
        else:
            os.removexattr(path, XATTR)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NinePError("operation not supported: DMAPPEND/DMEXCL need user xattrs here") from None
        raise
