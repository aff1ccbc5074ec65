"""`ninefs serve --machine`: a whole machine as one tree, composed as a namespace.

    /fs     a directory of the machine (default: the serving user's home)
    /proc   its processes (fileserver.proc)
    /dev    machine facts: sysname, ncpu, load, mem, time, random, log (fileserver.dev)
    /cmd    the right to run programs, Inferno's cmd(3) (only with --allow-exec)

It lives here, above fileserver, because composing trees is this package's job.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fileserver.cmd import TermWrapper, open_cmd_tree
from fileserver.dev import DevTree
from fileserver.local import LocalTree
from fileserver.proc import ProcTree

from .namespace import MCREATE, MREPL, Namespace

__all__ = ["open_machine"]


@asynccontextmanager
async def open_machine(
    fs_dir: str | None = None,
    *,
    allow_exec: bool = False,
    allow_control: bool = False,
    read_only: bool = False,
    term_wrapper: TermWrapper | None = None,
    check_users: bool = False,
) -> AsyncIterator[Namespace]:
    """The machine's namespace for the `async with` body; commands it ran are killed after."""
    dev = DevTree()
    try:
        # check_users (authenticated servers): each user walks /fs as itself, with the
        # host's permission checks for that user, reads the env of and signals only its own
        # processes in /proc, and runs /cmd commands as itself.
        async with Namespace(uname=getpass.getuser(), per_user=check_users) as ns:
            await ns.mount(
                LocalTree(fs_dir or os.path.expanduser("~"), read_only=read_only, check_users=check_users),
                "/fs",
                MREPL | MCREATE,
            )
            await ns.mount(ProcTree(allow_control=allow_control, check_users=check_users), "/proc")
            await ns.mount(dev, "/dev")
            if allow_exec:
                async with open_cmd_tree(
                    dir=fs_dir, term_wrapper=term_wrapper, check_users=check_users
                ) as cmd:
                    await ns.mount(cmd, "/cmd")
                    yield ns
            else:
                yield ns
    finally:
        await dev.close()
