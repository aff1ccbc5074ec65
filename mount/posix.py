"""POSIX where 9P2000 allows it: what the mount checks before sending, and how it uses
the conventions of ninefs's own servers (ninep/posix.py) without needing them.

- Names: Linux's NAME_MAX is 255 bytes and so is our server's limit on a 9P name;
  a longer name is ENAMETOOLONG before anything is sent (a foreign server would say
  "file does not exist").
- Open modes: access mode 3 (O_WRONLY|O_RDWR) has no 9P mode: EINVAL, as sshfs says.
- Modes: open(5) limits a new file's permissions by its directory's, where POSIX
  applies only the umask (which the kernel has applied already), so after a create
  that got less than asked, one wstat asks for the rest; a server that refuses
  leaves the file as open(5) made it. setuid, setgid and sticky travel as 9P2000.u's
  bits; a chmod that sets them is checked with a stat, and refused with EPERM (the
  mode put back) where the server did not keep them.
- Owners and atime: wstat(5) changes neither; our servers take both (a host user name,
  or digits, in `uid`; `atime` not all ones). A new owner a server refuses, or takes
  without keeping, is EPERM; an atime it refuses is dropped, as before, and the rest
  of the wstat sent again. A file made by a process of another user than the mount's
  (an `allow_other` mount) is given to that user and group in the wstat after the
  create; a server that refuses leaves it the mount's user's, as open(5) made it.
- statfs: read from `.ninefs.statfs` of the root; a server without it (or anything
  else it says) gets 9pfuse's answer, "lots".
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import time
from collections.abc import Sequence
from typing import Any

from ninep.constants import DMSETGID, ORDWR, OREAD, OWRITE
from ninep.errors import NinePError
from ninep.messages import Stat
from ninep.posix import DM_SPECIAL, STATFS_NAME, dm_special, parse_statfs
from ninep.tree import Tree

from .fuseabi import FuseError, StatvfsData

__all__ = [
    "NAME_MAX",
    "Statfs",
    "check_name",
    "create_mode",
    "maker",
    "open_mode",
    "owner_name",
    "wstat_keeping",
    "wstat_mode",
]

log = logging.getLogger("ninefs.fuse")

NAME_MAX = 255
_OMODES = {os.O_RDONLY: OREAD, os.O_WRONLY: OWRITE, os.O_RDWR: ORDWR}


def check_name(name: bytes) -> None:
    """ENAMETOOLONG for a name longer than a 9P name may be."""
    if len(name) > NAME_MAX:
        raise FuseError(errno.ENAMETOOLONG)


def open_mode(flags: int) -> int:
    """The open(5) mode of open(2) `flags`' access mode; EINVAL for access mode 3."""
    try:
        return _OMODES[flags & os.O_ACCMODE]
    except KeyError:
        raise FuseError(errno.EINVAL) from None


def wstat_mode(old: int, st_mode: int) -> int:
    """The 9P mode that gives a file whose mode is `old` the permissions of `st_mode`."""
    return (old & ~(0o777 | DM_SPECIAL)) | (st_mode & 0o777) | dm_special(st_mode)


def maker(uid: int, gid: int, mount_uid: int, parent: Stat) -> tuple[str, str] | None:
    """The owner and group POSIX gives a file a process of `uid`:`gid` makes in the
    directory `parent` (its group where that is setgid), as 9P names; None for the mount's
    own user, whose files open(5) already makes."""
    if uid == mount_uid:
        return None
    if parent.mode & DMSETGID:
        return owner_name(uid), parent.gid
    try:
        return owner_name(uid), grp.getgrgid(gid).gr_name
    except KeyError:
        return owner_name(uid), str(gid)


async def create_mode(
    tree: Tree, node: Any, asked: int, got: int, owner: tuple[str, str] | None = None
) -> tuple[int, bool]:
    """The mode a file just created on `node` has, after asking for `asked` where the
    create gave `got` (open(5)'s rule), and whether it was given to `owner` (`maker`'s
    owner and group, which our servers take in the same wstat). Best effort: a refusal
    keeps `got` and open(5)'s owner, the mount's user."""
    changes: dict[str, Any] = {}
    if asked != got:
        changes["mode"] = asked
    if owner is not None:
        changes["uid"], changes["gid"] = owner
    if not changes:
        return got, False
    try:
        await tree.wstat(node, Stat.dont_touch(**changes))
        if asked & DM_SPECIAL:
            return (await tree.stat(node)).mode, owner is not None  # kept or not: the server says
    except (NinePError, OSError) as e:
        log.debug("%s after create: %s", changes, e)
        if owner is not None and asked != got:  # all or none: the mode alone, as 9P2000 allows
            return (await create_mode(tree, node, asked, got))[0], False
        return got, False
    return asked, owner is not None


def owner_name(uid: int) -> str:
    """The 9P name a chown to host uid `uid` sends: the user's name, or the digits."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else None


async def wstat_at(tree: Tree, node: Any, names: Sequence[str], stat: Stat) -> None:
    """wstat(5) of `node`, or of what `names` walk to from it, the walk going with the
    Twstat (walk_wstat: one round trip, not two)."""
    if names:
        await tree.walk_wstat(node, names, stat)
    else:
        await tree.wstat(node, stat)


def checks_after(changes: dict[str, Any]) -> bool:
    """Whether wstat_keeping must stat the file after its wstat: a new owner, or a setuid,
    setgid or sticky bit, which a server may take without keeping."""
    return "uid" in changes or bool(changes.get("mode", 0) & DM_SPECIAL)


async def wstat_keeping(
    tree: Tree, node: Any, changes: dict[str, Any], old_mode: int, names: Sequence[str] = ()
) -> dict[str, Any]:
    """wstat(5) with `changes`; setuid, setgid or sticky in them are kept, or EPERM; so is
    a new owner (`uid`). An `atime` the server refuses is left out (wstat(5) has none).
    Returns the changes made.

    `names`: the file is what they walk to from `node` (wstat_at; rsync's times on a file
    it has closed). Only for changes that need no stat after (not checks_after)."""
    assert not (names and checks_after(changes))
    special = changes.get("mode", 0) & DM_SPECIAL
    try:
        await wstat_at(tree, node, names, Stat.dont_touch(**changes))
    except NinePError:
        if special or "uid" in changes:
            raise FuseError(errno.EPERM) from None
        if "atime" not in changes:
            raise
        # Not one of ours, or not for this user: what 9P2000 can do, as before (all or
        # none: the refused wstat changed nothing).
        rest = {k: v for k, v in changes.items() if k != "atime"}
        if rest:
            await wstat_at(tree, node, names, Stat.dont_touch(**rest))
        return rest
    if "uid" in changes and _uid((await tree.stat(node)).uid) != _uid(changes["uid"]):
        raise FuseError(errno.EPERM)  # a server that took the wstat but not the owner
    if special and (await tree.stat(node)).mode & DM_SPECIAL != special:
        # A server without the convention (ninep/posix.py) dropped them: refuse, not lose.
        with contextlib.suppress(NinePError, OSError):
            await tree.wstat(node, Stat.dont_touch(mode=old_mode))
        raise FuseError(errno.EPERM)
    return changes


class Statfs:
    """The exported file system's statvfs, from the server's `.ninefs.statfs` when it has one."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.supported = True  # until the server says otherwise
        self._fields: dict[str, int] | None = None
        self._when = -float("inf")

    async def read(self, tree: Tree, root: Any) -> StatvfsData:
        if self.supported and time.monotonic() - self._when >= self.ttl:
            try:
                node, _, _, data = await tree.walk_open_read(root, [STATFS_NAME], OREAD, 4096)
            except FileNotFoundError:
                self.supported = False  # not one of ours: never ask again
            except NinePError as e:
                log.debug("%s: %s", STATFS_NAME, e)
                return _statvfs(None)
            else:
                if not tree.clunk_soon(node):
                    await tree.clunk(node)
                self._fields = parse_statfs(data or b"")
                self.supported = self._fields is not None
                self._when = time.monotonic()
        return _statvfs(self._fields if self.supported else None)


def _statvfs(f: dict[str, int] | None) -> StatvfsData:
    s = StatvfsData()
    s.f_namemax = NAME_MAX
    if f is None:
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30  # 9P has no statfs; like 9pfuse, say "lots"
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        return s
    s.f_bsize = s.f_frsize = f["frsize"] or 4096
    s.f_blocks, s.f_bfree, s.f_bavail = f["blocks"], f["bfree"], f["bavail"]
    s.f_files, s.f_ffree, s.f_favail = f["files"], f["ffree"], f["ffree"]
    s.f_namemax = min(f["namemax"], NAME_MAX) or NAME_MAX
    return s
