"""Command-line pieces of namespaces: the options that compose one, and `ninefs ns export`.

`ns export` is Plan 9's exportfs: a namespace composed from a namespace file,
served over 9P, so another machine can mount one machine's view of many.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ninep.bounds import CONNECT_TIMEOUT

# The namespace itself is imported by the functions that make one: `ninefs cpu` and
# `ns run` take these options while their parser is built, before they dial (issue #19).
if TYPE_CHECKING:
    from .nsfile import Op

__all__ = ["add_namespace_options", "add_start_options", "gather_ops", "register_export"]


def add_namespace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n", dest="nsfile", action="append", metavar="NSFILE", help="namespace file (namespace(6))"
    )
    p.add_argument("-e", dest="exec", action="append", metavar="LINE", help="one namespace-file line")
    p.add_argument("--bind", nargs=2, action="append", metavar=("NEW", "OLD"), help="bind NEW on OLD")
    p.add_argument(
        "--mount", nargs=2, action="append", metavar=("ADDR", "OLD"), help="mount a 9P server on OLD"
    )


def add_start_options(p: argparse.ArgumentParser) -> None:
    """How `ns run` and `ns export` start when a server does not answer (nsfile.apply)."""
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail unless every server answers at start (default: warn, and mount it when it answers)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        metavar="S",
        help=f"how long each server has to answer at start (default {CONNECT_TIMEOUT:g} s)",
    )


def gather_ops(args: argparse.Namespace) -> list[Op]:
    """Everything the command line says, in order: -n files, then -e lines, then --bind/--mount."""
    from .namespace import MCREATE, MREPL
    from .nsfile import Op, parse, parse_file

    ops: list[Op] = []
    for path in args.nsfile or []:
        ops += parse_file(path)
    for i, line in enumerate(args.exec or [], 1):
        ops += parse(line, f"-e#{i}")
    for new, old in args.bind or []:
        ops.append(Op("bind", (new, old), MREPL, f"--bind {new} {old}"))
    for addr, old in args.mount or []:
        ops.append(Op("mount", (addr, old), MREPL | MCREATE, f"--mount {addr} {old}"))
    return ops


def _warn(line: str) -> None:
    print(f"ninefs ns export: {line}", file=sys.stderr, flush=True)


async def _export(ops: list[Op], args: argparse.Namespace) -> int:
    import getpass

    from fileserver.serve import serve_tree  # here: `cpu` uses these options and no server

    from .namespace import Namespace
    from .nsfile import NamespaceFileError, apply

    listen, trace = args.listen, args.trace
    async with Namespace(uname=getpass.getuser()) as ns:
        try:
            await apply(
                ns, ops, start_down=not args.strict, warn=_warn, status=True,
                connect_timeout=args.connect_timeout,
            )  # fmt: skip
        except NamespaceFileError as e:
            print(f"ninefs ns export: {e}", file=sys.stderr)
            return 2
        await serve_tree(ns, listen, trace=trace)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    import logging
    from functools import partial

    import trio

    from ninep.client import single_error
    from ninep.remote import reason
    from ninep.transport import parse_address

    from .nsfile import NamespaceFileError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        parse_address(args.listen, listening=True)
    except ValueError as e:
        print(f"ninefs ns export: {e}", file=sys.stderr)
        return 2
    try:
        ops = gather_ops(args)
        with single_error():  # the error of the listener, not the namespace's group around it
            return trio.run(partial(_export, ops, args))
    except NamespaceFileError as e:
        print(f"ninefs ns export: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ninefs ns export: {args.listen}: {reason(e)}", file=sys.stderr)
        return 1


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="serve a composed namespace over 9P (exportfs)")
    add_namespace_options(p)
    p.add_argument("--listen", "-l", default="tcp!127.0.0.1!5640", help="where to listen")
    p.add_argument("--trace", action="store_true", help="print every 9P message")
    add_start_options(p)
    p.set_defaults(run=_run_export)
