"""Host file names onto 9P names and back: every host name has exactly one 9P name.

9P names are UTF-8 (intro(5)); a Linux name is any bytes but "/" and NUL. A host
name that is not valid UTF-8 is sent with each byte that does not decode (always
0x80-0xFF) as the private-use character U+F700 + byte: b"caf\\xe9" is "caf\\uf7e9".
So that this stays reversible, a host name that itself holds one of those 128
characters (U+F780-U+F7FF) has that character's own three bytes escaped the same
way. A 9P name maps back by turning each U+F780-U+F7FF into its byte; a 9P name
that is not the escape of its own host name (a valid UTF-8 sequence spelled in
escapes) names no file, so each file has one name. Python's surrogateescape does
the same with U+DC80 + byte, but lone surrogates are not valid UTF-8 on the wire.
"""

from __future__ import annotations

import os
import re

from ninep.errors import NotFound

__all__ = ["host_name", "wire_name"]

_BASE = 0xF700  # byte b (0x80-0xFF) <-> U+F700 + b
_HOST_SPECIAL = re.compile("[\udc80-\udcff\uf780-\uf7ff]")  # in an os.fsdecode'd host name
_WIRE_ESCAPE = re.compile("[\uf780-\uf7ff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    if c < 0xE000:  # a surrogate from os.fsdecode: an undecodable byte
        return chr(_BASE + c - 0xDC00)
    return "".join(chr(_BASE + b) for b in m.group().encode())  # U+F7xx itself, byte by byte


def wire_name(host: str) -> str:
    """The 9P name of host name `host` (as os.listdir gives it: surrogateescape)."""
    if host.isascii() or not _HOST_SPECIAL.search(host):
        return host
    return _HOST_SPECIAL.sub(_escape, host)


def host_name(name: str) -> str:
    """The host name (for os calls: surrogateescape) of 9P name `name`; NotFound if `name`
    is not the one 9P name of any host name."""
    if name.isascii() or not _WIRE_ESCAPE.search(name):
        return name
    raw = b"".join(bytes([ord(c) - _BASE]) if 0xF780 <= ord(c) <= 0xF7FF else c.encode() for c in name)
    host = os.fsdecode(raw)
    if wire_name(host) != name:
        raise NotFound("file does not exist: not the escaped form of a host name")
    return host
