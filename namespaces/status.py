"""A namespace's status file: one line per mount of a 9P server, read fresh at every open.

    /n/h1 tcp!10.231.3.1!5640 up 2026-12-01T15:29:58Z
    /n/h3 tcp!10.231.3.2!5640 down 2026-12-01T15:30:02Z connection refused

`MOUNTPOINT ADDRESS STATE SINCE [ERROR]`: STATE is the RemoteTree's (up, reconnecting,
down, or idle for a lazy mount not used yet), SINCE when it last changed (UTC), ERROR
why the server was lost while it is not up. A script can wait for a machine with
`grep -q '^/n/h3 .* up ' /n/.status`.

`StatusTree` is a tree of one file (its attach root), mounted by nsfile.apply at
/n/.status: a dot name, so `ls /n` and `/n/*` leave it out and `ls -a` shows it. Like
Plan 9's devices (and fileserver/dev.py) it says length 0 and qid.vers 0: a FUSE mount
reads it directly every time, never from its page cache (docs/mount.md), and the
content is taken at open, so the reads of one open see one moment.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from dataclasses import dataclass

from ninep.constants import OACCMODE, OREAD, QTFILE
from ninep.errors import NotADirectory, PermissionDenied
from ninep.messages import Qid, Stat
from ninep.tree import Tree

from .namespace import Namespace, _show

__all__ = ["STATUS_NAME", "StatusTree", "status_text"]

STATUS_NAME = ".status"
_QID = Qid(QTFILE, 0, 1)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def status_text(ns: Namespace) -> str:
    """The status file's content for `ns` now."""
    lines = []
    for path, address, tree in ns.remote_mounts():
        words = [_show(path), address, tree.state, _when(tree.state_since)]
        if tree.state != "up" and tree.last_error:
            words.append(tree.last_error)
        lines.append(" ".join(words) + "\n")
    return "".join(lines)


@dataclass(eq=False, slots=True)
class _Node:
    data: bytes | None = None  # the content as of open
    qid: Qid = _QID


class StatusTree(Tree):
    """One read-only file whose content is `text()` at each open."""

    def __init__(self, text: Callable[[], str], owner: str | None = None) -> None:
        self.text = text
        self.owner = owner or getpass.getuser()

    async def attach(self, uname: str, aname: str) -> _Node:
        return _Node()

    async def clone(self, node: _Node) -> _Node:
        return _Node()

    async def walk1(self, node: _Node, name: str) -> _Node:
        raise NotADirectory("walk in non-directory")

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        if mode & OACCMODE != OREAD or mode & ~OACCMODE:
            raise PermissionDenied("permission denied: the status file is read-only")
        node.data = self.text().encode("utf-8", "replace")
        return _QID, 0

    async def create(self, node: _Node, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        raise PermissionDenied("permission denied: the status file is read-only")

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        data = node.data or b""
        return data[offset : offset + count]

    async def readdir(self, node: _Node) -> list[Stat]:
        raise NotADirectory("not a directory")

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        raise PermissionDenied("permission denied: the status file is read-only")

    async def stat(self, node: _Node) -> Stat:
        now = int(time.time())
        return Stat(
            qid=_QID,
            mode=0o444,
            atime=now,
            mtime=now,
            length=0,  # a stream: read afresh, never from a cache
            name=STATUS_NAME,
            uid=self.owner,
            gid=self.owner,
            muid=self.owner,
        )

    async def wstat(self, node: _Node, stat: Stat) -> None:
        raise PermissionDenied("permission denied: the status file is read-only")

    async def remove(self, node: _Node) -> None:
        raise PermissionDenied("permission denied: the status file is read-only")

    def io_never_blocks(self, node: _Node) -> bool:
        return True
