"""ninep: the 9P2000 protocol on trio — codec, transport, server, client, the tree interface.

The bottom layer of ninefs; it imports nothing from the other packages.

Names are imported when first used (PEP 562): a command that only dials a server (`ninefs
cpu -w`) does not pay for the server, the codec's fast paths or the tree adapters.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Connection
    from .codec import CodecError, decode, decode_stat, decode_stats, encode, encode_stat
    from .constants import (
        DMAPPEND,
        DMDIR,
        DMEXCL,
        NOFID,
        NOTAG,
        OEXEC,
        ORCLOSE,
        ORDWR,
        OREAD,
        OTRUNC,
        OWRITE,
        QTAPPEND,
        QTAUTH,
        QTDIR,
        QTEXCL,
        QTFILE,
    )
    from .errors import NinePError, ProtocolError, Unreachable, errno_for, error_for
    from .fanout import HostResult, run_all
    from .files import Client, File, connect
    from .hostlist import Machine
    from .messages import Qid, Stat
    from .remote import RemoteTree
    from .server import Limits, Server
    from .transport import Address, dial, parse_address
    from .tree import Tree

_WHERE = {
    "Address": "transport",
    "Client": "files",
    "CodecError": "codec",
    "Connection": "client",
    "DMAPPEND": "constants",
    "DMDIR": "constants",
    "DMEXCL": "constants",
    "File": "files",
    "Limits": "server",
    "NOFID": "constants",
    "NOTAG": "constants",
    "NinePError": "errors",
    "OEXEC": "constants",
    "ORCLOSE": "constants",
    "ORDWR": "constants",
    "OREAD": "constants",
    "OTRUNC": "constants",
    "OWRITE": "constants",
    "ProtocolError": "errors",
    "QTAPPEND": "constants",
    "QTAUTH": "constants",
    "QTDIR": "constants",
    "QTEXCL": "constants",
    "QTFILE": "constants",
    "Qid": "messages",
    "HostResult": "fanout",
    "Machine": "hostlist",
    "RemoteTree": "remote",
    "Server": "server",
    "Stat": "messages",
    "Tree": "tree",
    "Unreachable": "errors",
    "connect": "files",
    "decode": "codec",
    "decode_stat": "codec",
    "decode_stats": "codec",
    "dial": "transport",
    "encode": "codec",
    "encode_stat": "codec",
    "errno_for": "errors",
    "error_for": "errors",
    "parse_address": "transport",
    "run_all": "fanout",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ninep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DMAPPEND",
    "DMDIR",
    "DMEXCL",
    "NOFID",
    "NOTAG",
    "OEXEC",
    "ORCLOSE",
    "ORDWR",
    "OREAD",
    "OTRUNC",
    "OWRITE",
    "QTAPPEND",
    "QTAUTH",
    "QTDIR",
    "QTEXCL",
    "QTFILE",
    "Address",
    "Client",
    "CodecError",
    "Connection",
    "File",
    "HostResult",
    "Limits",
    "Machine",
    "NinePError",
    "ProtocolError",
    "Qid",
    "RemoteTree",
    "Server",
    "Stat",
    "Tree",
    "Unreachable",
    "connect",
    "decode",
    "decode_stat",
    "decode_stats",
    "dial",
    "encode",
    "encode_stat",
    "errno_for",
    "error_for",
    "parse_address",
    "run_all",
]
