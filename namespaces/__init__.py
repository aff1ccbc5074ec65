"""namespaces: Plan 9's bind, mount and union directories; a namespace is itself a tree.

Sits above fileserver and ninep; mount (FUSE, `ns run`) sits above it.

Names are imported when first used (PEP 562), as in ninep: `ninefs cpu` takes the
namespace options of namespaces.cli before it needs a namespace, and one without
`-n`/`-e` never loads the namespace-file parser, discovery or /n/.status (issue #19).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .namespace import MAFTER, MBEFORE, MCREATE, MREPL, MountFlag, Namespace, split
    from .nsfile import NamespaceFileError, Op, apply, parse, parse_file

_WHERE = {
    "MAFTER": "namespace",
    "MBEFORE": "namespace",
    "MCREATE": "namespace",
    "MREPL": "namespace",
    "MountFlag": "namespace",
    "Namespace": "namespace",
    "NamespaceFileError": "nsfile",
    "Op": "nsfile",
    "apply": "nsfile",
    "parse": "nsfile",
    "parse_file": "nsfile",
    "split": "namespace",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'namespaces' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
