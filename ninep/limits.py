"""What one connection, one peer and the whole server may hold, and who gets a slot.

A server must survive clients that are broken or hostile: ones that connect and
say nothing, send half a frame and stop, ask for megabytes they never read, or
fill every connection slot from one address. Each limit here is in bytes as
well as counts, and every default is one a user never has to tune (each is a
`serve` option). docs/security.md lists them.

Connection slots are handed out by `Admission`. A connection that has not
finished its handshake (Tversion, and auth + attach where required) within
`handshake_timeout` is closed; when a new connection would pass a cap (all
connections, or one peer's), the oldest connection still in its handshake is
closed to make room. So connections that never finish their handshake cannot
lock out a client that does, whichever address they come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from .constants import DEFAULT_MSIZE

__all__ = ["Admission", "Limits", "Slot"]

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection (or the whole server) may hold at once."""

    msize: int = DEFAULT_MSIZE
    fids: int = 4096
    outstanding: int = 256
    connections: int = 256
    clunk_timeout: float = 10.0  # how long closing a connection may spend releasing its fids
    per_peer: int = 128  # connections from one address
    handshake_timeout: float = 10.0  # TLS, Tversion and (auth +) Tattach must be done by then
    frame_timeout: float = 30.0  # silence allowed in the middle of a frame
    # Bytes of requests being served and replies not sent yet: past this a connection's
    # next request is not read until some are sent (TCP's own back-pressure does the rest).
    held_bytes: int = 16 * MiB
    server_held_bytes: int = 128 * MiB  # the same, all connections together
    listing_bytes: int = 32 * MiB  # directory listings a connection keeps for its open fids
    name_bytes: int = 255  # one name in Twalk, Tcreate or Twstat (NAME_MAX)
    uname_bytes: int = 256
    aname_bytes: int = 4096
    auth_fids: int = 4  # afids one connection may hold at once
    handshake_frame: int = 8192  # largest frame before the first successful attach
    # Seconds a connection keeps asking for the next request after a reply before it sleeps
    # (polling.poll_until): a sequential client's next request comes ~100-300 us later.
    poll: float = 0.0005


@dataclass(eq=False, slots=True)
class Slot:
    """One connection's place in the server: closed by its scope."""

    host: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    attached: bool = False
    evicted: bool = False

    def handshake_done(self) -> None:
        if not self.attached:
            self.attached = True
            self.scope.deadline = math.inf


class Admission:
    """The connection slots of one server: caps on all and per peer, handshake deadlines."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.slots: list[Slot] = []  # oldest first

    def __len__(self) -> int:
        return len(self.slots)

    def admit(self, host: str) -> Slot | None:
        """A slot for a new connection from `host`, or None when every slot is in real use."""
        if len(self.slots) >= self.limits.connections and not self._evict(None):
            return None
        mine = sum(1 for s in self.slots if s.host == host)
        if mine >= self.limits.per_peer and not self._evict(host):
            return None
        slot = Slot(host)
        slot.scope.deadline = trio.current_time() + self.limits.handshake_timeout
        self.slots.append(slot)
        return slot

    def _evict(self, host: str | None) -> bool:
        for s in self.slots:
            if not s.attached and (host is None or s.host == host):
                s.evicted = True
                s.scope.cancel()
                self.slots.remove(s)
                return True
        return False

    def release(self, slot: Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
