"""Which host files are streams: content made when read, whatever length they say.

The mount (docs/mount.md) reads and writes a file directly, past the kernel's page
cache, when its stat says length 0 and qid.vers 0; every other file is a file, cached
and mmappable, however empty. LocalTree gives qid.vers 0 to the host files that are
streams, found here: FIFOs and devices, and the files of /proc, /sys and their kind,
which say length 0 and hold text made when they are read. The machine trees (dev,
proc, cmd) are streams throughout and say so themselves.
"""

from __future__ import annotations

import os
import stat as st_mod

__all__ = ["is_stream"]

# File systems whose files say length 0 and are read for content made then (/proc, /sys)
_PSEUDO_FS = frozenset({"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "configfs"})
_fs_types: dict[int, str] = {}  # st_dev -> file system type, from /proc/self/mountinfo


def is_stream(s: os.stat_result) -> bool:
    """A FIFO or device, or an empty file of /proc or /sys: content made when read."""
    if st_mod.S_ISDIR(s.st_mode):
        return False
    if not st_mod.S_ISREG(s.st_mode):
        return True
    return s.st_size == 0 and _fs_type(s.st_dev) in _PSEUDO_FS


def _fs_type(dev: int) -> str:
    fstype = _fs_types.get(dev)
    if fstype is None:
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:  # "id parent major:minor root point options ... - fstype source ..."
                    fields = line.split()
                    major, minor = fields[2].split(":")
                    _fs_types[os.makedev(int(major), int(minor))] = fields[fields.index("-") + 1]
        except (OSError, ValueError, IndexError):
            pass
        fstype = _fs_types.setdefault(dev, "")
    return fstype
