"""Discovery for the namespace-file verb `machines dns!NAME!PORT [DIR]`: one mount per address.

A DNS name with many A/AAAA records (a Kubernetes headless Service, a round-robin name)
stands for a set of machines. Each address is dialled (all at once), and each machine
that answers is named by its own /dev/sysname (what `ninefs serve --machine` exports,
fileserver/dev.py: the host name and a newline), so it is mounted at DIR/SYSNAME. An
address that does not answer, or has no usable sysname, or one another machine took
already, is named by its address, with a warning. A machines file (`machines FILE`) needs
none of this: nsfile expands it to mounts as it parses (ninep.hostlist.read_machines).

It sits between nsfile (which calls it while applying) and Namespace (which dials).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import trio

from ninep.constants import OREAD
from ninep.errors import NinePError
from ninep.remote import RemoteTree
from ninep.transport import DEFAULT_PORT

from .namespace import Namespace

__all__ = ["Discovered", "discover", "is_dns_source", "resolve"]

MAX_SYSNAME = 64


@dataclass(frozen=True, slots=True)
class Discovered:
    """One machine found: where it is mounted, its address, its tree, and what to warn of."""

    mount_point: str
    address: str
    tree: RemoteTree
    warning: str | None = None


def is_dns_source(source: str) -> bool:
    return source.startswith("dns!")


def _dns_source(source: str) -> tuple[str, int]:
    parts = source.split("!")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"{source}: want dns!NAME!PORT")
    if len(parts) == 2:
        return parts[1], DEFAULT_PORT
    if not parts[2].isdigit() or not 0 < int(parts[2]) < 65536:
        raise ValueError(f"{source}: bad port {parts[2]!r}")
    return parts[1], int(parts[2])


async def resolve(source: str) -> list[str]:
    """The dial strings `dns!NAME!PORT` stands for: one per address, in the resolver's order."""
    name, port = _dns_source(source)
    try:
        infos = await trio.socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"{name}: {e.strerror}") from None
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = f"tcp!{sockaddr[0]}!{port}"
        if address not in out:
            out.append(address)
    if not out:
        raise OSError(f"{name}: no addresses")
    return out


async def _sysname(tree: RemoteTree, uname: str, timeout: float) -> str | None:
    """The machine's /dev/sysname, if it has one that makes a file name."""
    with trio.move_on_after(timeout):
        try:
            root = await tree.attach(uname, "")
            try:
                node, _qid, _iounit, data = await tree.walk_open_read(root, ["dev", "sysname"], OREAD, 256)
                await tree.clunk(node)
            finally:
                await tree.clunk(root)
        except (NinePError, OSError):
            return None
        name = (data or b"").decode("utf-8", "replace").strip()
        if name and len(name) <= MAX_SYSNAME and "/" not in name and name not in (".", ".."):
            return name
    return None


async def discover(
    ns: Namespace, source: str, directory: str, *, start_down: bool, lazy: bool, connect_timeout: float
) -> list[Discovered]:
    """Every machine `source` (dns!NAME!PORT) names, dialled and named; an address that does
    not answer is an error unless `start_down` (then it is mounted, named by its address)."""
    addresses = await resolve(source)
    trees: dict[str, RemoteTree] = {}

    async def dial(address: str) -> None:
        trees[address] = await ns.dial(
            address, start_down=start_down, lazy=lazy, connect_timeout=connect_timeout
        )

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(dial, address)
    names: dict[str, str | None] = {}

    async def name(address: str) -> None:
        tree = trees[address]
        names[address] = None if tree.state != "up" else await _sysname(tree, ns.uname, connect_timeout)

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(name, address)
    found: list[Discovered] = []
    taken: set[str] = set()
    base = directory.rstrip("/") or ""
    for address in addresses:
        tree, sysname = trees[address], names[address]
        host = address.split("!")[1]
        warning = None
        if sysname is None:
            if lazy:
                pass  # not dialled yet: named by its address, which is no surprise
            elif tree.state != "up":
                warning = f"{address}: {tree.last_error} (named by its address; it joins when it answers)"
            else:
                warning = f"{address}: no /dev/sysname: named by its address"
        elif sysname in taken:
            warning = f"{address}: sysname {sysname} taken by another address: named by its address"
            sysname = None
        label = sysname or host
        taken.add(label)
        found.append(Discovered(f"{base}/{label}", address, tree, warning))
    return found
