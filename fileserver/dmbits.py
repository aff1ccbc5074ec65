"""Plan 9's DMAPPEND and DMEXCL on host files: Linux has no mode bit for either, so an
exported directory (fileserver/local.py) keeps them in an extended attribute."""

from __future__ import annotations

import errno
import os

from ninep.constants import DMAPPEND, DMEXCL
from ninep.errors import NinePError

__all__ = ["EXTRA_BITS", "XATTR", "set_extra_bits", "xattr_bits"]

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
