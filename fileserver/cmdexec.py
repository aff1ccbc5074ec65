"""Starting a cmd(3) command with the rights of the user a key maps to.

The part of the cmd tree (fileserver.cmd) that decides whose command it starts.
Without authentication every command is the server's own: it inherits the
server's user, environment and working directory, and the name a client claims
at attach picks nothing. Under authentication (`ninefs serve --authorized-keys`)
a key is a user (DESIGN.md, "Trust boundaries"), and a command runs as the host
account that user names, as login(1) would start it:

- its uid, primary gid and every supplementary group (initgroups(3));
- an environment of its own: HOME, USER, LOGNAME and SHELL from passwd, a
  standard PATH (login.defs' ENV_PATH, ENV_SUPATH for root), and only the
  terminal type, locale and time zone taken from the server's;
- the working directory it asked for (`dir PATH`), entered by the command
  itself once it is that user, so it cannot start where the host would not let
  it go (subprocess's cwd= changes directory before dropping privileges). With
  no `dir`, it starts in the tree's directory or its home, or in / if it may
  enter neither.

Only root can start commands as someone else: a server running as anyone else
starts commands for its own user and refuses the others with an Rerror.

A command may need a step with root's rights before it becomes its user (cpu's
/mnt/term: a mount namespace of its own and a FUSE mount in it, mount.termmount).
CPython's subprocess changes user before preexec_fn runs, so for those commands
the child changes user itself, after that step, in subprocess's order (groups,
gid, uid); everything above holds for them as for any other.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ninep.errors import PermissionDenied, ename_for, error_for

from .owners import host_account, user_name

__all__ = ["open_command"]

PATH = "/usr/local/bin:/usr/bin:/bin"
SUPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KEPT = ("TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")  # from the server's env


async def open_command(
    argv: Sequence[str],
    *,
    user: str | None,
    dir: str | None,
    default_dir: str | None,
    preexec: Callable[[], None] | None = None,
    as_root: Callable[[int, int], None] | None = None,
    **options: Any,
) -> trio.Process:
    """`trio.lowlevel.open_process(argv)` as host user `user` (None: as the server itself).

    `dir` is where the command asked to run (`dir PATH`); `default_dir` the tree's
    default. `preexec` runs in the child just before exec (after the change of user).
    `as_root` runs in the child first, with the server's rights, given the uid and gid the
    command will run as (cpu's /mnt/term: a mount namespace and a mount, which the user
    may not make); the change of user then comes after it.
    Raises NinePError for a user it may not run as, a `dir` it cannot enter, or an
    `as_root` that failed.
    """
    account = host_account(user) if user is not None else None
    if user is not None and account is None:
        raise PermissionDenied(f"permission denied: no host user {user}")
    me = os.geteuid()
    if account is not None and account[0].pw_uid != me and me != 0:
        raise PermissionDenied(
            f"permission denied: this server runs as {user_name(me)} and cannot start commands as {user}"
        )
    if account is None and as_root is None:
        return await trio.lowlevel.open_process(argv, cwd=dir or default_dir, preexec_fn=preexec, **options)
    # The child reports why it failed on this pipe as "ERRNO WHAT": subprocess only says
    # "Exception occurred in preexec_fn". The fds stay open in the child until exec.
    report, told = os.pipe()

    def fail(e: OSError, what: str) -> None:
        os.write(told, f"{e.errno or 0} {what}".encode())
        raise e

    if account is None:  # the server's own command, with a step as root first
        assert as_root is not None
        uid, gid, ids, dirs = os.getuid(), os.getgid(), None, [dir or default_dir or "."]
    else:
        pw, groups = account
        uid, gid, ids = pw.pw_uid, pw.pw_gid, (pw.pw_uid, pw.pw_gid, groups)
        dirs = [dir] if dir is not None else [d for d in (default_dir, pw.pw_dir, "/") if d]
        options["env"] = environment(pw)
        if ids[0] != me and as_root is None:  # subprocess changes user, before enter() runs
            options.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups)
            ids = None
        elif ids[0] == me:
            ids = None

    def enter() -> None:  # in the child: the step as root, the change of user, the directory
        if as_root is not None:
            try:
                as_root(uid, gid)
            except OSError as e:
                where = f" ({e.filename})" if e.filename else ""
                fail(e, f"term: {e.strerror or e}{where}")
        if ids is not None:  # as subprocess does it: groups, then gid, then uid
            os.setgroups(ids[2])
            os.setregid(ids[1], ids[1])
            os.setreuid(ids[0], ids[0])
        for i, d in enumerate(dirs):
            try:
                os.chdir(d)
                break
            except OSError as e:
                if i == len(dirs) - 1:
                    fail(e, f"dir {d}")
        if preexec is not None:
            preexec()

    try:
        return await trio.lowlevel.open_process(argv, preexec_fn=enter, **options)
    except subprocess.SubprocessError:
        os.close(told)
        told = -1
        code, _, what = os.read(report, 4096).decode(errors="replace").partition(" ")
        if code.isdigit():
            raise error_for(f"{ename_for(int(code))}: {what}") from None
        raise
    finally:
        os.close(report)
        if told >= 0:
            with contextlib.suppress(OSError):
                os.close(told)


def environment(pw: pwd.struct_passwd) -> dict[str, str]:
    """What a command started for `pw`'s account finds in its environment."""
    env = {k: os.environ[k] for k in _KEPT if k in os.environ}
    env.update(
        HOME=pw.pw_dir,
        USER=pw.pw_name,
        LOGNAME=pw.pw_name,
        SHELL=pw.pw_shell or "/bin/sh",
        PATH=SUPATH if pw.pw_uid == 0 else PATH,
    )
    return env
