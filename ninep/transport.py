"""Moving 9P frames over trio streams, and Plan 9 dial strings.

A frame is `size[4]` little-endian followed by `size - 4` bytes (intro(5)). The
`FrameReader` cuts a byte stream into frames and refuses any frame larger than
the negotiated msize: that is a protocol error that closes this connection
only. Addresses are Plan 9 dial strings (`tcp!host!port`, `unix!/path`) or
`host:port`.
"""

from __future__ import annotations

import math
import os
import select
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .codec import CodecError
from .constants import DEFAULT_MSIZE
from .polling import poll_until

__all__ = ["Address", "FrameReader", "FrameTooLarge", "abort", "dial", "listeners", "parse_address"]

DEFAULT_PORT = 564  # 9P's registered port
_SIZE = struct.Struct("<I")
BIG_FRAME = 32768  # frames this big are received into a buffer of their own, not joined from chunks


_tuned = False


def tune_allocator() -> None:
    """Let glibc keep freed memory for the next frame instead of returning it to the kernel.

    A 1 MiB frame is allocated, filled and freed thousands of times a second. By default
    glibc serves blocks that big with mmap and gives them back at once, so every frame
    page-faults its memory in again: measured here, that cost ~60% of big-transfer
    throughput. Raising the mmap and trim thresholds keeps up to 256 MiB of freed heap
    for reuse. Called once by every connection and server; a no-op off glibc.
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    try:
        import ctypes

        # The running program's own symbols, libc's among them: ctypes.util.find_library
        # would run `ldconfig -p` in a subprocess (~2 ms, and a fork of a big process).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value on 64-bit
    mallopt(m_trim_threshold, 256 << 20)


async def send_frame(
    stream: trio.abc.SendStream,
    lock: trio.Lock,
    parts: Sequence[bytes],
    before: Callable[[], None] | None = None,
    *,
    finish_within: float | None = None,
) -> None:
    """Send one frame's parts back to back under `lock`; `before` runs once it is our turn
    (and may still add to `parts`, when that is a list).

    `finish_within` (a client's sends): once the first byte is out, the rest is sent even
    if the caller is cancelled meanwhile, for at most that many seconds: a frame cut short
    would leave the next one starting in the middle of it (and requests the server has, which
    the caller thinks unsent). Past that, BrokenResourceError: the peer stopped reading.

    Big data go out as they are, uncopied (codec.encode_parts). An uncontended lock is
    taken without a checkpoint: one pass through the scheduler less per message. On a
    socket it is not even taken unless the write must wait: with the lock free nobody is
    in the middle of a frame, and no other task runs before this one awaits.
    """
    if not lock.locked() and isinstance(stream, trio.SocketStream):
        if before is not None:
            before()
        left = [p for p in parts if len(p)]
        size = sum(map(len, left)) if finish_within is not None else 0
        _write_parts(stream.socket, left)
        if not left:
            return
        lock.acquire_nowait()  # free a moment ago, and nothing else has run since
        try:
            started = finish_within is not None and sum(map(len, left)) < size  # some bytes are out
            await _send_parts(stream.socket, left, finish_within, started=started)
        finally:
            lock.release()
        return
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        if before is not None:
            before()
        if isinstance(stream, trio.SocketStream):
            await _send_parts(stream.socket, [p for p in parts if len(p)], finish_within)
        else:
            for part in parts:
                await stream.send_all(part)
    finally:
        lock.release()


# Sockets are read and written with the system call first and a wait only when it would
# block. trio's own socket methods pass through the scheduler after every call that did
# not block, to be a checkpoint; for a one-frame request and its answer those passes cost
# more than the system calls (measured: ~30 us of a ~200 us round trip). Callers that loop
# without blocking checkpoint on their own (FrameReader, every few frames).


def _fileno(sock: trio.socket.SocketType) -> int:
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("connection closed")
    return fd


def _write_parts(sock: trio.socket.SocketType, parts: list[Any]) -> None:
    """Write as much of `parts` as the socket takes now; what is left stays in `parts`."""
    while parts:
        try:
            sent = os.writev(_fileno(sock), parts)
        except BlockingIOError:
            return
        except OSError as e:
            raise trio.BrokenResourceError(f"connection lost: {e.strerror or e}") from e
        while sent:
            n = len(parts[0])
            if sent < n:
                parts[0] = memoryview(parts[0])[sent:]
                break
            sent -= n
            del parts[0]


async def _send_parts(
    sock: trio.socket.SocketType,
    parts: list[Any],
    finish_within: float | None = None,
    *,
    started: bool = False,
) -> None:
    """All of `parts`, gathered into as few writev calls as the socket buffer allows;
    with `finish_within`, shielded from cancellation once some bytes are out (send_frame)."""
    if finish_within is not None and not started:
        size = sum(map(len, parts))
        while True:  # cancellable while nothing is out
            _write_parts(sock, parts)
            if not parts:
                return
            if sum(map(len, parts)) < size:
                break
            await trio.lowlevel.wait_writable(sock)
    if finish_within is not None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + finish_within) as finishing:
            await _send_parts(sock, parts)
        if finishing.cancelled_caught:
            raise trio.BrokenResourceError(
                "connection lost: the peer stopped reading in the middle of a frame"
            )
        return
    while True:
        _write_parts(sock, parts)
        if not parts:
            return
        await trio.lowlevel.wait_writable(sock)


class FrameTooLarge(CodecError):
    pass


class FrameReader:
    """Reads whole frames from a stream; `msize` may change after Tversion."""

    # Frames returned without waiting for the socket before one pass through the
    # scheduler: a peer that keeps us busy must not starve our other tasks.
    FAIR = 8

    def __init__(
        self, stream: trio.abc.ReceiveStream, msize: int = DEFAULT_MSIZE, *, frame_timeout: float = math.inf
    ) -> None:
        tune_allocator()
        self.stream = stream
        self.msize = msize
        # Silence allowed in the middle of a frame: a peer that sends half a frame and
        # stops is a broken (or hostile) peer, and its connection is closed.
        self.frame_timeout = frame_timeout
        self._buf = b""  # received bytes not yet returned as a frame
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._unwaited = 0  # frames since we last waited for the socket
        # Until when (time.perf_counter) to keep asking for the next frame before sleeping
        # in epoll, given the time now; None or a past time: sleep at once. See polling.poll_until.
        self.poll: Callable[[float], float] | None = None
        self._peek: select.poll | None = None  # (_readable)

    async def _receive(self, n: int, partial: bool = True) -> bytes:
        """Up to `n` bytes; `partial`: inside a frame, where silence has a limit."""
        sock = self._sock
        if sock is None:
            if not partial:
                return await self.stream.receive_some(n)
            with trio.move_on_after(self.frame_timeout):
                return await self.stream.receive_some(n)
            raise self._silent()
        polled = partial or self.poll is None  # only between frames, when asked to
        while True:
            try:
                return os.read(_fileno(sock), n)
            except BlockingIOError:
                if not polled:
                    polled = True
                    if await poll_until(self._readable, self.poll(time.perf_counter())):  # type: ignore[misc]
                        continue
                await self._wait(sock, partial)
            except OSError as e:
                raise trio.BrokenResourceError(f"connection lost: {e.strerror or e}") from e

    def _readable(self) -> bool:
        """A read of the socket would not block (bytes, the end, or an error wait)."""
        if self._peek is None:
            self._peek = select.poll()
            self._peek.register(_fileno(self._sock), select.POLLIN)  # type: ignore[arg-type]
        return bool(self._peek.poll(0))

    async def _receive_into(self, view: memoryview) -> int:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                return os.readv(_fileno(sock), (view,))
            except BlockingIOError:
                await self._wait(sock, True)
            except OSError as e:
                raise trio.BrokenResourceError(f"connection lost: {e.strerror or e}") from e

    async def _wait(self, sock: trio.socket.SocketType, partial: bool) -> None:
        self._unwaited = 0
        if not partial:
            await trio.lowlevel.wait_readable(sock)
            return
        with trio.move_on_after(self.frame_timeout):
            await trio.lowlevel.wait_readable(sock)
            return
        raise self._silent()

    def _silent(self) -> CodecError:
        return CodecError(f"half a frame, then nothing for {self.frame_timeout:g} s")

    def has_frame(self) -> bool:
        """A whole frame is already received: next_frame will not wait for the peer."""
        buf = self._buf
        return len(buf) >= 4 and len(buf) >= _SIZE.unpack_from(buf)[0]

    async def next_frame(self) -> bytes | None:
        """The next frame, or None at a clean end of stream."""
        self._unwaited += 1
        if self._unwaited >= self.FAIR:
            self._unwaited = 0
            await trio.lowlevel.checkpoint()
        buf = self._buf
        while len(buf) < 4:
            chunk = await self._receive(65536, partial=bool(buf))
            if not chunk:
                if buf:
                    raise CodecError("connection closed in the middle of a frame")
                return None
            buf += chunk
        size = _SIZE.unpack_from(buf)[0]
        if size < 7:
            raise CodecError(f"frame size {size} is shorter than a 9P header")
        if size > self.msize:
            raise FrameTooLarge(f"frame of {size} bytes is larger than msize {self.msize}")
        if len(buf) < size and size >= BIG_FRAME and self._sock is not None:
            # A big frame: let the kernel copy the rest straight into its final buffer.
            frame = bytearray(size)
            have = len(buf)
            frame[:have] = buf
            view = memoryview(frame)
            while have < size:
                n = await self._receive_into(view[have:])
                if not n:
                    raise CodecError("connection closed in the middle of a frame")
                have += n
            self._buf = b""
            return frame  # type: ignore[return-value]  # bytes-like; decoded data are views of it
        if len(buf) < size:
            # Gather the rest as chunks and join once: big frames are copied one time, not per chunk.
            chunks = [buf]
            have = len(buf)
            while have < size:
                chunk = await self._receive(max(size - have, 65536))
                if not chunk:
                    raise CodecError("connection closed in the middle of a frame")
                chunks.append(chunk)
                have += len(chunk)
            buf = b"".join(chunks)
        if len(buf) == size:
            self._buf = b""
            return buf
        self._buf = buf[size:]
        return buf[:size]


@dataclass(frozen=True, slots=True)
class Address:
    """Where a 9P server is: network "tcp" (host, port) or "unix" (path)."""

    network: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.network == "unix":
            return f"unix!{self.path}"
        if self.network == "fd":
            return f"fd!{self.port}"
        return f"{self.network}!{self.host}!{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.network in ("unix", "fd"):
            return True
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def parse_address(text: str, *, listening: bool = False) -> Address:
    """Parse `tcp!host!port`, `tcp!host`, `unix!/path`, `host:port`, `host` or a socket path.

    For listening, `tcp!*!port` means every address and `*` is kept as the host.
    """
    if not text:
        raise ValueError("empty address")
    if "!" in text:
        parts = text.split("!")
        net = parts[0]
        if net == "unix":
            if len(parts) != 2 or not parts[1]:
                raise ValueError(f"bad unix address {text!r}: want unix!/path")
            return Address("unix", path=parts[1])
        if net == "fd":  # a connected socket this process inherited (cpu's /mnt/term)
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"bad fd address {text!r}: want fd!N")
            return Address("fd", port=int(parts[1]))
        if net in ("tcp", "net", "tcp4", "tcp6", "tls"):
            if len(parts) not in (2, 3) or not parts[1]:
                raise ValueError(f"bad address {text!r}: want {net}!host!port")
            port = _port(parts[2], text) if len(parts) == 3 else DEFAULT_PORT
            return Address("tls" if net == "tls" else "tcp", host=parts[1], port=port)
        raise ValueError(f"unknown network {net!r} in {text!r} (tcp or unix)")
    if text.startswith("/") or text.startswith("./"):
        return Address("unix", path=text)
    if text.startswith("["):  # [::1]:564
        host, _, rest = text[1:].partition("]")
        port = _port(rest[1:], text) if rest.startswith(":") else DEFAULT_PORT
        return Address("tcp", host=host, port=port)
    host, sep, port_text = text.rpartition(":")
    if sep and ":" not in host:
        return Address("tcp", host=host or ("*" if listening else "localhost"), port=_port(port_text, text))
    return Address("tcp", host=text, port=DEFAULT_PORT)


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r} in {whole!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {whole!r}")
    return port


async def dial(address: str | Address) -> trio.abc.Stream:
    """Connect to a 9P server."""
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.network == "unix":
        return await trio.open_unix_socket(addr.path)
    if addr.network == "fd":
        import socket

        return trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=addr.port)))
    stream = await trio.open_tcp_stream(addr.host, addr.port)
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
    keepalive(stream)
    if addr.network == "tls":
        from .tls import client_wrap

        try:
            return await client_wrap(stream, f"{addr.host}!{addr.port}")
        except BaseException:
            await stream.aclose()
            raise
    return stream


async def abort(stream: trio.abc.Stream) -> None:
    """Close `stream` now and drop what it has not sent yet (SO_LINGER 0: a TCP reset).

    For a connection given up with requests on it: closed gracefully, its kernel would
    still deliver them once the network is back, and a write its caller was told had
    failed would land later, over what was written since (on a new connection).
    """
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        try:
            inner.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # not a socket that lingers (a Unix socket says so): closing is enough
    await trio.aclose_forcefully(stream)


def keepalive(stream: trio.SocketStream, idle: int = 30, interval: int = 10, count: int = 3) -> None:
    """Let the kernel probe a quiet peer: a dead one breaks the connection (and every call
    waiting on it) after about idle + interval * count seconds instead of never."""
    sock = stream.socket
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        opt = getattr(trio.socket, name, None)
        if opt is not None:
            sock.setsockopt(trio.socket.IPPROTO_TCP, opt, value)


async def listeners(address: str | Address) -> list[trio.SocketListener]:
    """Listening sockets for `tcp!host!port` (port 0 picks one) or `unix!/path`."""
    addr = parse_address(address, listening=True) if isinstance(address, str) else address
    if addr.network == "unix":
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            if os.path.exists(addr.path):
                _remove_stale_socket(addr.path)
            await sock.bind(addr.path)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return [trio.SocketListener(sock)]
    host = None if addr.host in ("*", "") else addr.host
    return await trio.open_tcp_listeners(addr.port, host=host)


def _remove_stale_socket(path: str) -> None:
    """Reuse a socket path only when nobody is listening on it any more."""
    import socket
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise FileExistsError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"{path}: a server is already listening there")
    finally:
        probe.close()


def listener_address(listener: trio.SocketListener, network: str = "tcp") -> Address:
    """The address a listener actually bound (the port, when 0 was asked)."""
    sock = listener.socket
    if sock.family == trio.socket.AF_UNIX:
        return Address("unix", path=sock.getsockname())
    host, port = sock.getsockname()[:2]
    return Address(network, host=host, port=port)
