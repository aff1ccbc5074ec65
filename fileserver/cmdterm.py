"""The cmd tree's side of cpu(1)'s /mnt/term: what the mount layer hands it, and the rules
that follow from the caller serving its namespace only once `exec` is answered.

A session that wrote `term` to ctl has n/term, a byte pipe to the command's side, and its
command must see the caller's namespace at /mnt/term. How is the mount layer's to decide
(fileserver sits below mount): `serve --machine` gives the tree a `TermWrapper`, in
practice mount.cpu.term_helper()'s mount.termmount.TermMounter. Its `prepare` gives a
`TermMount` when this server can mount FUSE itself (as root): the child enters it with
`in_child` before it becomes its user, and the tree serves it from this process for the
session's life (`serve_term`). Otherwise `wrap` (or a bare wrapper callable) names what to
run instead of the command, handed the pipe's end as an inherited fd (`ns run`).

Kept apart from fileserver.cmd so the cmd(3) tree itself stays a module of its own size;
only the tree imports this.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import trio

from ninep.errors import NinePError

__all__ = ["TERM", "TermMount", "TermMounter", "TermWrapper", "check_term_dir", "exec_later", "serve_term"]

TERM = "/mnt/term"  # where a command sees its caller's files


class TermMount(Protocol):
    """One command's /mnt/term, from opening /dev/fuse to the end of its mount."""

    def in_child(self, uid: int, gid: int) -> None:
        """In the child, with the server's rights: a mount namespace with /mnt/term in it."""

    async def serve(self, peer: socket.socket, uname: str) -> None:
        """9P on `peer` (the caller's namespace) as the mount, until the kernel or a cancel
        ends it; never raises but Cancelled. Owns `peer` and the mount's device."""

    def close(self) -> None:
        """Let the mount go (aborted, if still there); also when `serve` never ran."""


@runtime_checkable
class TermMounter(Protocol):
    def wrap(self, fd: int, argv: list[str]) -> list[str]:
        """The fallback: what to run instead of `argv`, given the fd of the pipe's end."""

    def prepare(self) -> TermMount | None:
        """A mount for the next command, or None when this server cannot make one."""


# Given the fd the command will find its end of the term pipe on, and the command: what
# to run instead, so that the command sees the caller's namespace (see `term` in
# fileserver.cmd); or a TermMounter, which mounts it for the command itself where it can.
TermWrapper = Callable[[int, list[str]], list[str]] | TermMounter


def check_term_dir(dir: str | None) -> None:
    """A `dir` in /mnt/term cannot be entered before exec: the caller serves it only once
    exec is answered (it would wait for ever)."""
    if dir is not None and (os.path.normpath(dir) + "/").startswith(TERM + "/"):
        raise NinePError(f"dir: {dir}: {TERM} is there only once the command runs: cd in the command")


def exec_later(argv: list[str]) -> list[str]:
    """A program in /mnt/term is exec'd by a shell that is already running: our exec
    returns before anything is read from the caller, who serves /mnt/term only then."""
    if (os.path.normpath(argv[0]) + "/").startswith(TERM + "/"):
        return ["/bin/sh", "-c", 'exec "$@"', argv[0], *argv]
    return argv


async def serve_term(mount: TermMount, peer: socket.socket, uname: str, scope: trio.CancelScope) -> None:
    """The task serving one session's /mnt/term; the session cancels `scope` when it ends."""
    try:
        with scope:
            await mount.serve(peer, uname)
    finally:
        mount.close()
        peer.close()
