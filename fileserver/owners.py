"""Host user and group ids as the names 9P carries (stat(5) has names, not numbers)."""

from __future__ import annotations

import grp
import os
import pwd
from functools import lru_cache

from ninep.errors import NinePError

__all__ = [
    "group_id",
    "group_name",
    "host_user_may",
    "is_root",
    "may_set_special",
    "owns",
    "user_id",
    "user_name",
]


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_id(name: str) -> int:
    """The host uid a wstat's owner names: a host user, or digits for one without a name."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise NinePError(f"invalid argument: unknown user {name!r}") from None


def group_id(name: str) -> int:
    """The host gid a wstat's group names: a host group, or digits."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise NinePError(f"invalid argument: unknown group {name!r}") from None


@lru_cache(maxsize=256)
def _ids(uname: str) -> tuple[int, frozenset[int]] | None:
    """A host user's uid and all its group ids; None for a name the host does not know."""
    try:
        pw = pwd.getpwnam(uname)
    except KeyError:
        return None
    return pw.pw_uid, frozenset(os.getgrouplist(uname, pw.pw_gid))


def owns(uname: str, st: os.stat_result) -> bool:
    ids = _ids(uname)
    return ids is not None and (ids[0] == 0 or ids[0] == st.st_uid)


def is_root(uname: str) -> bool:
    ids = _ids(uname)
    return ids is not None and ids[0] == 0


def host_user_may(uname: str, st: os.stat_result, want: int) -> bool:
    """The kernel's check (owner, group, other bits; root may do anything) for `uname`.

    A name unknown to the host is "other". `want` is 4 read, 2 write, 1 execute/search.
    """
    ids = _ids(uname)
    if ids is not None and ids[0] == 0:
        return True
    mode = st.st_mode
    if ids is not None and ids[0] == st.st_uid:
        have = (mode >> 6) & 7
    elif ids is not None and st.st_gid in ids[1]:
        have = (mode >> 3) & 7
    else:
        have = mode & 7
    return have & want == want


def host_account(uname: str) -> tuple[pwd.struct_passwd, list[int]] | None:
    """`uname`'s passwd entry and every group it is in, read now; None for a name the host lacks."""
    try:
        pw = pwd.getpwnam(uname)
    except KeyError:
        return None
    return pw, os.getgrouplist(uname, pw.pw_gid)


def may_set_special(uname: str, uid: int, gid: int, bits: int) -> bool:
    """May host user `uname` give a file owned by `uid`:`gid` the setuid/setgid/sticky
    `bits`? As chmod(2) allows: root, or the owner (setgid only in the file's group)."""
    ids = _ids(uname)
    if ids is None:
        return False
    if ids[0] == 0:
        return True
    return ids[0] == uid and (not bits & 0o2000 or gid in ids[1])
