"""namespaces: Plan 9's bind, mount and union directories; a namespace is itself a tree.

Sits above fileserver and ninep; mount (FUSE, `ns run`) sits above it.
"""

from .namespace import MAFTER, MBEFORE, MCREATE, MREPL, MountFlag, Namespace, split
from .nsfile import NamespaceFileError, Op, apply, parse, parse_file

__all__ = [
    "MAFTER",
    "MBEFORE",
    "MCREATE",
    "MREPL",
    "MountFlag",
    "Namespace",
    "NamespaceFileError",
    "Op",
    "apply",
    "parse",
    "parse_file",
    "split",
]
