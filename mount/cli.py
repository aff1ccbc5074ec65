"""`ninefs`: the single command-line entry point.

Each subcommand belongs to the package that implements it; this module only
gathers them (mount sits at the top of the layers, so it may import them all).
"""

from __future__ import annotations

import argparse
import sys

import fileserver.serve
import ninep.cli
from namespaces.machine import open_machine

from . import cpu, demo, mounter, nsrun

__all__ = ["main"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ninefs",
        description="Plan 9's namespaces on Linux: 9P2000 file servers, clients and mounts.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fileserver.serve.register(
        sub,
        machine=lambda a: open_machine(
            a.dir,
            allow_exec=a.allow_exec,
            allow_control=a.allow_control,
            read_only=a.ro,
            term_wrapper=cpu.term_wrapper,
            check_users=bool(a.authorized_keys),
        ),
    )
    ninep.cli.register(sub)
    mounter.register(sub)
    nsrun.register(sub)
    cpu.register(sub)
    demo.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
