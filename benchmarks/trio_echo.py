"""The bare-trio baseline server for bench_9p.py: framed request/response over TCP, nothing else.

Same framing style as 9P: every message is `size[4]` little-endian (size counts
itself) followed by `size - 4` bytes. A request is

    size[4] type[1] tag[2] want[4] padding...

and the server answers every request, in order, with one prepared frame of
exactly `want` bytes (at least 7). No decoding, no tasks per request, no
copies: this is what plain trio streams can do, the ceiling ninefs is measured
against.

    python benchmarks/trio_echo.py [--listen-port 0]

prints "trio_echo: serving on 127.0.0.1 PORT" and serves until killed.
"""

from __future__ import annotations

import argparse
import signal
import struct

import trio

SIZE = struct.Struct("<I")
WANT = struct.Struct("<I")


def reply_frame(want: int) -> bytes:
    want = max(want, 7)
    return SIZE.pack(want) + b"\x00" * (want - 4)


async def serve_conn(stream: trio.SocketStream) -> None:
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
    replies: dict[int, bytes] = {}
    buf = bytearray()
    async with stream:
        try:
            while True:
                # next frame
                while len(buf) < 4:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                size = SIZE.unpack_from(buf)[0]
                while len(buf) < size:
                    chunk = await stream.receive_some(max(size - len(buf), 65536))
                    if not chunk:
                        return
                    buf += chunk
                want = WANT.unpack_from(buf, 7)[0]
                del buf[:size]
                reply = replies.get(want)
                if reply is None:
                    reply = replies[want] = reply_frame(want)
                await stream.send_all(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"trio_echo: serving on 127.0.0.1 {listeners[0].socket.getsockname()[1]}", flush=True)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve_conn, listeners)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen-port", type=int, default=0)
    trio.run(main, ap.parse_args().listen_port)
