"""The 9P2000 server: exports any `Tree` to many connections at once.

This part listens, admits connections (ninep/limits.py: caps, handshake deadlines)
and is the fault boundary around each one; session.py runs a connection, answers.py
answers its requests. A connection that misbehaves is answered with Rerror or closed,
and never disturbs another.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import trio

from .auth import Authenticator
from .codec import CodecError
from .limits import Admission, Limits, Slot
from .session import Session, Trace
from .transport import Address, keepalive, listener_address, listeners, parse_address
from .tree import Tree

__all__ = ["Limits", "Server"]

log = logging.getLogger("ninefs.server")


class Server:
    """Serves `tree` over 9P2000. `serve(address)` runs until cancelled."""

    def __init__(
        self,
        tree: Tree,
        *,
        limits: Limits = Limits(),
        trace: Trace | None = None,
        auth: Authenticator | None = None,
        host_key: str | None = None,
    ) -> None:
        self.tree = tree
        self.auth = auth  # None: no authentication; else every attach must prove a key
        self.host_key = host_key  # for tls! addresses: the key the TLS certificate is made from
        self.tls: ssl.SSLContext | None = None
        self.limits = limits
        self.trace = trace
        self.connections = 0
        self.addresses: list[Address] = []
        self.admission = Admission(limits)
        self.held = 0  # bytes held by every connection's requests and unsent replies (Limits.held_bytes)

    async def serve(
        self,
        address: str | Address,
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `address` and serve every connection; started() gives the bound addresses."""
        addr = parse_address(address, listening=True) if isinstance(address, str) else address
        if addr.network == "tls" and self.tls is None:
            from .tls import server_context

            self.tls = server_context(self.host_key) if self.host_key else server_context()
        lsn = await listeners(addr)
        await self.serve_listeners(lsn, task_status=task_status, network=addr.network)

    async def serve_listeners(
        self,
        lsn: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
        network: str = "tcp",
    ) -> None:
        self.addresses = [listener_address(x, network) for x in lsn]
        async with trio.open_nursery() as nursery:
            for x in lsn:
                nursery.start_soon(self._accept_loop, x, nursery)
            task_status.started(self.addresses)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:  # EMFILE and friends: wait and retry, never die
                    log.warning("accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._serve_accepted, stream)

    async def _serve_accepted(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        slot = self.admission.admit(peer.rpartition("!")[0] or peer)
        if slot is None:
            log.warning(
                "%s: refused: %d connections open, none still in its handshake", peer, len(self.admission)
            )
            await trio.aclose_forcefully(stream)
            return
        try:
            with slot.scope:
                await self._guarded(peer, self._serve_socket, stream, peer, slot)
        finally:
            self.admission.release(slot)
            await trio.aclose_forcefully(stream)
        if slot.scope.cancelled_caught:
            if slot.evicted:
                log.warning("%s: closed in its handshake, to make room for a new connection", peer)
            else:
                log.warning("%s: closed: handshake not done within %ss", peer, self.limits.handshake_timeout)

    async def _serve_socket(self, stream: trio.SocketStream, peer: str, slot: Slot) -> None:
        if isinstance(stream.socket.getsockname(), tuple):
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            keepalive(stream)  # a client that vanished without a FIN is noticed, its fids released
        conn: trio.abc.Stream = stream
        if self.tls is not None:
            conn = trio.SSLStream(stream, self.tls, server_side=True)
            await conn.do_handshake()  # within the slot's handshake deadline
        await self._serve_stream(conn, peer, slot)

    async def handle_stream(self, stream: trio.abc.Stream, peer: str = "?") -> None:
        """Serve one connection until it closes; usable with any trio stream."""
        await self._guarded(peer, self._serve_stream, stream, peer, None)

    async def _guarded(self, peer: str, serve: Callable[..., Any], *args: Any) -> None:
        """A connection is a fault boundary: whatever it raises ends it, and only it.

        Resets, TLS aborts, timeouts and protocol errors arrive plain or grouped by the
        connection's nursery; each gets one log line. Anything else is a bug of ours that
        this connection met: logged with its traceback, and the server goes on. Only
        cancellation (and KeyboardInterrupt) passes through.
        """
        try:
            await serve(*args)
        except* _LOST as group:
            e = _first(group)
            why = str(e) if str(e).startswith("connection") else f"connection lost: {type(e).__name__}: {e}"
            log.info("%s: %s", peer, why)
        except* Exception:
            log.exception("%s: connection failed", peer)

    async def _serve_stream(self, stream: trio.abc.Stream, peer: str, slot: Slot | None) -> None:
        self.connections += 1
        log.info("%s: connected", peer)
        try:
            try:
                await Session(self, stream, peer, slot).run()
            finally:
                await _close(stream)
        finally:
            self.connections -= 1
            log.info("%s: disconnected", peer)


# What a connection may raise when its peer goes away or misbehaves (ssl.SSLError is an OSError).
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError, CodecError)


def _first(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


async def _close(stream: trio.abc.Stream) -> None:
    """Close politely (TLS close_notify) if that is quick, else at once."""
    with trio.move_on_after(1) as scope:
        await stream.aclose()
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"tcp!{name[0]}!{name[1]}"
    return f"unix!{name or '-'}"
