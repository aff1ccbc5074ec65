"""`ninefs`: the single command-line entry point.

Each subcommand belongs to the package that implements it; this module only
gathers them (mount sits at the top of the layers, so it may import them all).
The FUSE code (mounter.py, nsrun.py and what they import) is imported only for
the commands that mount, and for help: `serve`, `ls` or `cat` run on a host
without FUSE and never load it (issue #17).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading

__all__ = ["main"]

# Commands whose parser is built alone, so starting them imports only what they use:
# `cpu -w` over a fleet starts in a fraction of the time the whole parser costs, and
# `ns run` does not load the server, the copier and the key commands.
_ALONE = {"cpu", "ns"}

# Commands after which the process only exits, so it may skip the interpreter's teardown:
# freeing every module and object of trio, the client and the namespace took 25-35 ms of
# `ninefs cpu HOST -- true` (a tenth of it) and ~60 ms of `ns run` over 64 machines (#19).
_QUICK_EXIT = {"cpu", "ns"}


def parser(*, mounts: bool = True) -> argparse.ArgumentParser:
    """The command line; without `mounts`, no `mount`, `umount` or `ns` (no FUSE code)."""
    return _parser(mounts=mounts)[0]


def _parser(
    *, mounts: bool, only: str | None = None
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    p = argparse.ArgumentParser(
        prog="ninefs",
        description="Plan 9's namespaces on Linux: 9P2000 file servers, clients and mounts.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if only == "ns":
        from . import nsrun

        nsrun.register(sub)
        return p, sub
    from . import cpu

    if only == "cpu":
        cpu.register(sub)
        return p, sub
    import fileserver.serve
    import ninep.cli
    from namespaces.machine import open_machine

    from . import demo

    fileserver.serve.register(
        sub,
        machine=lambda a: open_machine(
            a.dir,
            allow_exec=a.allow_exec,
            allow_control=a.allow_control,
            read_only=a.ro,
            term_wrapper=cpu.term_helper(),
            check_users=bool(a.authorized_keys),
        ),
    )
    ninep.cli.register(sub)
    if mounts:
        from . import mounter, nsrun

        mounter.register(sub)
        nsrun.register(sub)
    cpu.register(sub)
    demo.register(sub)
    return p, sub


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: this process's own) and give its exit status."""
    whole = argv is None  # the process is ours: it ends with the command
    argv = sys.argv[1:] if argv is None else argv
    # The command is the first word (the top level has no options but -h); one that is
    # not a mounting one is parsed without them. Anything else (mount, ns, -h, a typo)
    # gets every command, so help and errors list them all.
    if argv and argv[0] in _ALONE:
        p, sub = _parser(mounts=False, only=argv[0])
    else:
        p, sub = _parser(mounts=False)
        if not argv or argv[0] not in sub.choices:
            p = parser()
    args = p.parse_args(argv)
    try:
        status = args.run(args)
    except KeyboardInterrupt:
        status = 130
    if whole and argv[0] in _QUICK_EXIT:
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """End the process with `status` as the interpreter's own exit would, less its teardown:
    atexit handlers run and stdout and stderr are flushed, then os._exit. Anything out of
    the ordinary (a thread still running, a flush that fails) returns instead, for the
    interpreter to handle and report as it always has."""
    if not isinstance(status, int):
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    try:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                stream.flush()
    except BaseException:
        return
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
