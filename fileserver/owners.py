"""Host user and group ids as the names 9P carries (stat(5) has names, not numbers)."""

from __future__ import annotations

import grp
import pwd
from functools import lru_cache

__all__ = ["group_name", "user_name"]


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
