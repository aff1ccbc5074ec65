"""Namespace files, in Plan 9's namespace(6) syntax, parsed whole before anything is applied.

    # comments start at a word
    mount [-abcC] tcp!alpha!564 /n/alpha [spec]
    bind [-abcC] /n/alpha/bin /bin
    unmount [new] old
    cd /n/alpha
    . other.ns              # include, relative to this file
    mount $server /n/home   # $name and ${name} come from the environment

Every error names `file:line`. Parsing reads every line (and every included
file) first; applying builds into a namespace the caller throws away on error,
so nothing is ever half applied.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from .namespace import MAFTER, MBEFORE, MCREATE, MREPL, Namespace

__all__ = ["NamespaceFileError", "Op", "apply", "parse", "parse_file"]

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
MAX_INCLUDE_DEPTH = 16


class NamespaceFileError(ValueError):
    """A namespace file that cannot be parsed or applied; the message starts with file:line."""


@dataclass(frozen=True, slots=True)
class Op:
    """One line: `bind`, `mount`, `unmount` or `cd`, with its words and flags."""

    verb: str
    args: tuple[str, ...]
    flags: int
    where: str  # "file:line"


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


def _flags(words: list[str], where: str) -> tuple[int, list[str]]:
    flags = MREPL
    rest = list(words)
    while rest and rest[0].startswith("-") and len(rest[0]) > 1:
        for ch in rest.pop(0)[1:]:
            if ch not in _FLAG_BITS:
                raise NamespaceFileError(f"{where}: unknown flag -{ch} (want -a, -b, -c or -C)")
            flags |= _FLAG_BITS[ch]
    if flags & MAFTER and flags & MBEFORE:
        raise NamespaceFileError(f"{where}: -a and -b cannot go together")
    return flags, rest


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
            flags, rest = _flags(args, where)
            want = (2, 2) if verb == "bind" else (2, 3)
            if not want[0] <= len(rest) <= want[1]:
                usage = "bind [-abcC] new old" if verb == "bind" else "mount [-abcC] addr old [spec]"
                raise NamespaceFileError(f"{where}: usage: {usage}")
            ops.append(Op(verb, tuple(rest), flags, where))
        elif verb == "unmount":
            if not 1 <= len(args) <= 2:
                raise NamespaceFileError(f"{where}: usage: unmount [new] old")
            ops.append(Op(verb, tuple(args), 0, where))
        elif verb == "cd":
            if len(args) != 1:
                raise NamespaceFileError(f"{where}: usage: cd dir")
            ops.append(Op(verb, tuple(args), 0, where))
        else:
            raise NamespaceFileError(f"{where}: unknown command {verb!r} (bind, mount, unmount, cd, .)")
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


async def apply(ns: Namespace, ops: list[Op]) -> str | None:
    """Apply `ops` to `ns` in order; give the last `cd` directory. Errors name file:line."""
    cwd = None
    for op in ops:
        try:
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
                await ns.mount(_mountable(addr), old, op.flags, spec, source=addr)
            elif op.verb == "unmount":
                if len(op.args) == 2:
                    await ns.unmount(op.args[1], op.args[0])
                else:
                    await ns.unmount(op.args[0])
            elif op.verb == "cd":
                cwd = op.args[0]
        except (OSError, ValueError) as e:
            raise NamespaceFileError(f"{op.where}: {op.verb} {' '.join(op.args)}: {e}") from None
    return cwd


def _mountable(addr: str) -> object:
    """A dial string, or an absolute local directory (exported in-process, like a bind of the host)."""
    if addr.startswith("/") and os.path.isdir(addr):
        from fileserver.local import LocalTree

        return LocalTree(addr)
    return addr
