"""Namespace files, in Plan 9's namespace(6) syntax, parsed whole before anything is applied.

    # comments start at a word
    mount [-abcCl] tcp!alpha!564 /n/alpha [spec]
    bind [-abcC] /n/alpha/bin /bin
    unmount [new] old
    cd /n/alpha
    . other.ns              # include, relative to this file
    mount $server /n/home   # $name and ${name} come from the environment
    machines [-abcCl] SOURCE [DIR]

`mount -l` (lazy, ours: Plan 9 has -a -b -c -C) dials the server at the first use of
something below the mount point, not at start; listing the directory above it does not
count. `machines` mounts many machines at DIR/NAME (DIR: /n): SOURCE is a machines file
(`NAME ADDRESS` a line, ninep.hostlist; relative to this file; read as the file is
parsed, each machine one `mount` line), or `dns!NAME!PORT`, a DNS name whose every
A/AAAA record (a Kubernetes headless Service) is a machine, named by its /dev/sysname
(namespaces.discovery; resolved when applied). The flags apply to each mount.

Every error names `file:line`. Parsing reads every line (and every included
file) first; applying builds into a namespace the caller throws away on error,
so nothing is ever half applied.

Applying dials every server at once, then applies the lines in order (so a bind of a
path in a mount meets it mounted). By default a server that does not answer fails the
whole file (all or nothing, what a library user wants). `start_down=True` is Plan 9's
newns, which goes on past a mount that fails: such a mount is made anyway, with one
warning; its mount point is there, what is below it fails with EIO ("host unreachable")
until the server answers, and then it joins, nothing restarted (ninep.remote). With
`status=True`, a namespace that mounts anything under /n shows /n/.status
(namespaces.status): a line per mount of a server, saying whether it is up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ninep.bounds import CONNECT_TIMEOUT
from ninep.errors import NinePError
from ninep.remote import RemoteTree, reason

from .namespace import MAFTER, MBEFORE, MCREATE, MREPL, Namespace

# Discovery (DNS) and /n/.status are imported by the lines that use them: `ninefs cpu`
# without a namespace file needs neither (issue #19).
if TYPE_CHECKING:
    from .discovery import Discovered

__all__ = ["NamespaceFileError", "Op", "apply", "parse", "parse_file"]

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
MAX_INCLUDE_DEPTH = 16


class NamespaceFileError(ValueError):
    """A namespace file that cannot be parsed or applied; the message starts with file:line."""


@dataclass(frozen=True, slots=True)
class Op:
    """One line: `bind`, `mount`, `unmount`, `cd` or `machines`, with its words and flags."""

    verb: str
    args: tuple[str, ...]
    flags: int
    where: str  # "file:line"
    lazy: bool = False  # mount -l: dial at first use


def _strip_comment(line: str) -> str:
    """Cut at a # that begins a word outside quotes ('#s' and a#b stay)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _expand(word: str, env: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise NamespaceFileError(f"{where}: ${name} is not set")
        return env[name]

    return _VAR.sub(sub, word)


_FLAG_BITS = {"a": MAFTER, "b": MBEFORE, "c": MCREATE, "C": 0}  # -C (cache) is accepted and ignored


def _flags(words: list[str], where: str, *, dials: bool) -> tuple[int, bool, list[str]]:
    flags, lazy = MREPL, False
    rest = list(words)
    while rest and rest[0].startswith("-") and len(rest[0]) > 1:
        for ch in rest.pop(0)[1:]:
            if ch == "l" and dials:
                lazy = True
            elif ch not in _FLAG_BITS:
                want = "-a, -b, -c, -C or -l" if dials else "-a, -b, -c or -C"
                raise NamespaceFileError(f"{where}: unknown flag -{ch} (want {want})")
            else:
                flags |= _FLAG_BITS[ch]
    if flags & MAFTER and flags & MBEFORE:
        raise NamespaceFileError(f"{where}: -a and -b cannot go together")
    return flags, lazy, rest


def _dial_string(address: str) -> str:
    """A machines file's address: a bare host name dials 9P's port, as `ninefs cpu -w` does."""
    return address if "!" in address or ":" in address or address.startswith("/") else f"tcp!{address}!564"


def _machines(args: list[str], filename: str, where: str) -> list[Op]:
    flags, lazy, rest = _flags(args, where, dials=True)
    if not 1 <= len(rest) <= 2:
        raise NamespaceFileError(f"{where}: usage: machines [-abcCl] SOURCE [DIR]")
    source, directory = rest[0], (rest[1] if len(rest) > 1 else "/n").rstrip("/")
    from .discovery import is_dns_source

    if is_dns_source(source):
        parts = source.split("!")
        if len(parts) != 3 or not parts[1] or not parts[2].isdigit() or not 0 < int(parts[2]) < 65536:
            raise NamespaceFileError(f"{where}: {source}: want dns!NAME!PORT")
        return [Op("machines", (source, directory), flags, where, lazy)]
    from ninep.hostlist import read_machines

    path = source if os.path.isabs(source) else os.path.join(os.path.dirname(filename), source)
    try:
        machines = read_machines(path)
    except ValueError as e:
        raise NamespaceFileError(f"{where}: {e}") from None
    return [
        Op("mount", (_dial_string(m.address), f"{directory}/{m.name}"), flags, where, lazy) for m in machines
    ]


def parse(
    text: str,
    filename: str = "<namespace>",
    env: Mapping[str, str] | None = None,
    *,
    _depth: int = 0,
) -> list[Op]:
    """Every operation of a namespace file (includes expanded), or NamespaceFileError."""
    env = os.environ if env is None else env
    ops: list[Op] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{filename}:{lineno}"
        line = _strip_comment(raw).strip()
        if not line:
            continue
        try:
            words = [_expand(w, env, where) for w in shlex.split(line)]
        except NamespaceFileError:
            raise
        except ValueError as e:
            raise NamespaceFileError(f"{where}: {e}") from None
        verb, args = words[0], words[1:]
        if verb == ".":
            if len(args) != 1:
                raise NamespaceFileError(f"{where}: usage: . file")
            if _depth >= MAX_INCLUDE_DEPTH:
                raise NamespaceFileError(f"{where}: includes nest deeper than {MAX_INCLUDE_DEPTH}")
            path = args[0] if os.path.isabs(args[0]) else os.path.join(os.path.dirname(filename), args[0])
            ops += parse_file(path, env, _depth=_depth + 1, where=where)
        elif verb in ("bind", "mount"):
            flags, lazy, rest = _flags(args, where, dials=verb == "mount")
            want = (2, 2) if verb == "bind" else (2, 3)
            if not want[0] <= len(rest) <= want[1]:
                usage = "bind [-abcC] new old" if verb == "bind" else "mount [-abcCl] addr old [spec]"
                raise NamespaceFileError(f"{where}: usage: {usage}")
            ops.append(Op(verb, tuple(rest), flags, where, lazy))
        elif verb == "machines":
            ops += _machines(args, filename, where)
        elif verb == "unmount":
            if not 1 <= len(args) <= 2:
                raise NamespaceFileError(f"{where}: usage: unmount [new] old")
            ops.append(Op(verb, tuple(args), 0, where))
        elif verb == "cd":
            if len(args) != 1:
                raise NamespaceFileError(f"{where}: usage: cd dir")
            ops.append(Op(verb, tuple(args), 0, where))
        else:
            raise NamespaceFileError(
                f"{where}: unknown command {verb!r} (bind, mount, unmount, cd, machines, .)"
            )
    return ops


def parse_file(
    path: str, env: Mapping[str, str] | None = None, *, _depth: int = 0, where: str | None = None
) -> list[Op]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        prefix = f"{where}: " if where else ""
        raise NamespaceFileError(f"{prefix}{path}: {e.strerror}") from None
    return parse(text, path, env, _depth=_depth)


async def apply(
    ns: Namespace,
    ops: list[Op],
    *,
    start_down: bool = False,
    warn: Callable[[str], None] | None = None,
    status: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> str | None:
    """Apply `ops` to `ns`; give the last `cd` directory. Errors name file:line.

    Every server is dialled at once first, each within `connect_timeout`; then the lines
    are applied in order. `start_down`: a server that does not answer is mounted anyway
    and joins when it answers, and `warn` gets one line for it ("/n/h3: ADDRESS: why (it
    joins when it answers)"). `status`: /n/.status, if anything is mounted under /n."""
    trees: dict[int, RemoteTree] = {}
    roots: dict[int, Any] = {}
    found: dict[int, list[Discovered]] = {}
    failed: dict[int, Exception] = {}

    async def dial(i: int, op: Op) -> None:
        try:
            if op.verb == "mount":
                tree = trees[i] = await ns.dial(
                    op.args[0], start_down=start_down, lazy=op.lazy, connect_timeout=connect_timeout
                )
                if tree.state == "up":
                    # Attached here too, at once with the others (a round trip each); one that
                    # fails is attached again in its turn, for its error in its place.
                    with contextlib.suppress(NinePError, OSError):
                        with trio.fail_after(connect_timeout):
                            roots[i] = await tree.attach(ns.uname, op.args[2] if len(op.args) > 2 else "")
            else:
                from .discovery import discover

                found[i] = await discover(
                    ns, *op.args, start_down=start_down, lazy=op.lazy, connect_timeout=connect_timeout
                )
        except (OSError, ValueError) as e:
            failed[i] = e

    async with trio.open_nursery() as nursery:
        for i, op in enumerate(ops):
            if op.verb == "machines" or (op.verb == "mount" and isinstance(_mountable(op.args[0]), str)):
                nursery.start_soon(dial, i, op)
    cwd = None
    for i, op in enumerate(ops):
        try:
            if i in failed:
                e = failed[i]
                if op.verb == "machines" and start_down and not isinstance(e, ValueError):
                    if warn is not None:
                        warn(f"{op.args[0]}: {e} (nothing mounted at {op.args[1] or '/'})")
                    continue
                if isinstance(e, OSError):
                    e = OSError(f"{op.args[0]}: {reason(e)}")  # "connection refused", not trio's words
                raise e
            if op.verb == "bind":
                new, old = op.args
                if not ns.has_root and os.path.isabs(new) and os.path.isdir(new):
                    # A namespace without the host at / (ns export) still takes binds of host
                    # directories, so one namespace file serves `ns run` and `ns export` alike.
                    await ns.mount(_mountable(new), old, op.flags, source=new)
                else:
                    await ns.bind(new, old, op.flags)
            elif op.verb == "mount":
                addr, old = op.args[0], op.args[1]
                spec = op.args[2] if len(op.args) > 2 else ""
                tree = trees.get(i)
                await ns.mount(
                    tree or _mountable(addr), old, op.flags, spec, source=addr, root=roots.pop(i, None)
                )
                if tree is not None and tree.state == "down" and warn is not None:
                    warn(f"{old}: {addr}: {tree.last_error} (it joins when it answers)")
            elif op.verb == "machines":
                for machine in found[i]:
                    await ns.mount(machine.tree, machine.mount_point, op.flags, source=machine.address)
                    if machine.warning is not None and warn is not None:
                        warn(f"{machine.mount_point}: {machine.warning}")
            elif op.verb == "unmount":
                if len(op.args) == 2:
                    await ns.unmount(op.args[1], op.args[0])
                else:
                    await ns.unmount(op.args[0])
            elif op.verb == "cd":
                cwd = op.args[0]
        except (OSError, ValueError) as e:
            raise NamespaceFileError(f"{op.where}: {op.verb} {' '.join(op.args)}: {e}") from None
    under_n = any(len(path) > 1 and path[0] == "n" for path, _, _ in ns.remote_mounts())
    if status and under_n:
        from .status import STATUS_NAME, StatusTree, status_text

        if ("n", STATUS_NAME) not in ns.table:
            await ns.mount(StatusTree(lambda: status_text(ns), ns.uname), "/n/" + STATUS_NAME)
    return cwd


def _mountable(addr: str) -> object:
    """A dial string, or an absolute local directory (exported in-process, like a bind of the host)."""
    if addr.startswith("/") and os.path.isdir(addr):
        from fileserver.local import LocalTree

        return LocalTree(addr)
    return addr
