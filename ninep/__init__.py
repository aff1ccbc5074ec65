"""ninep: the 9P2000 protocol on trio — codec, transport, server, client, the tree interface.

The bottom layer of ninefs; it imports nothing from the other packages.
"""

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
from .files import Client, File, connect
from .messages import Qid, Stat
from .remote import RemoteTree
from .server import Limits, Server
from .transport import Address, dial, parse_address
from .tree import Tree

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
    "Limits",
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
]
