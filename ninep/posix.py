"""What ninefs's own servers add to 9P2000 so that a POSIX client loses less.

Two conventions, both invisible to a 9P2000 peer that does not know them
(docs/mount.md, "POSIX where 9P2000 allows it"):

- **setuid, setgid, sticky** travel in the stat mode as 9P2000.u's bits
  (DMSETUID 0x80000, DMSETGID 0x40000, DMSETVTX 0x10000), which 9P2000 leaves
  unused. A server that does not keep them reports them cleared; the mount then
  refuses the chmod with EPERM instead of dropping them in silence.
- **statfs** is the file `.ninefs.statfs` in any directory of an exported host
  directory: walkable, never listed, read-only, one line of `name value` pairs
  from statvfs(3) of the file system holding that directory, e.g.
  `frsize 4096 blocks 262144 bfree 1000 bavail 900 files 65536 ffree 60000 namemax 255`.
  A server without it answers the walk "file does not exist"; the mount then
  reports fixed large numbers, as 9pfuse does.
"""

from __future__ import annotations

import os
import stat as st_mod

from .constants import DMSETGID, DMSETUID, DMSETVTX

__all__ = [
    "DM_SPECIAL",
    "STATFS_FIELDS",
    "STATFS_NAME",
    "dm_special",
    "parse_statfs",
    "statfs_text",
    "unix_special",
]

DM_SPECIAL = DMSETUID | DMSETGID | DMSETVTX
STATFS_NAME = ".ninefs.statfs"
STATFS_FIELDS = ("frsize", "blocks", "bfree", "bavail", "files", "ffree", "namemax")

_BITS = ((st_mod.S_ISUID, DMSETUID), (st_mod.S_ISGID, DMSETGID), (st_mod.S_ISVTX, DMSETVTX))


def dm_special(st_mode: int) -> int:
    """The 9P mode bits for the setuid, setgid and sticky bits of a Unix `st_mode`."""
    return sum(dm for unix, dm in _BITS if st_mode & unix)


def unix_special(mode: int) -> int:
    """The Unix setuid, setgid and sticky bits of a 9P `mode` that carries them."""
    if not mode & DM_SPECIAL:  # nearly every file: asked for each entry of every listing
        return 0
    return sum(unix for unix, dm in _BITS if mode & dm)


def statfs_text(v: os.statvfs_result) -> bytes:
    """The contents of `.ninefs.statfs` for the file system `v` describes."""
    values = (v.f_frsize, v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree, v.f_namemax)
    return (" ".join(f"{k} {n}" for k, n in zip(STATFS_FIELDS, values, strict=True)) + "\n").encode()


def parse_statfs(data: bytes) -> dict[str, int] | None:
    """The fields of a `.ninefs.statfs` text; None if it is not one (every field, u64s)."""
    words = data.decode("ascii", "replace").split()
    if len(words) % 2:
        return None
    fields: dict[str, int] = {}
    for k, v in zip(words[::2], words[1::2], strict=True):
        if v.isdigit() and int(v) < 1 << 64:
            fields[k] = int(v)
    if any(k not in fields for k in STATFS_FIELDS):
        return None
    return fields
