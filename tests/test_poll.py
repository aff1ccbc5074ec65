"""A reader that expects a message soon polls for it a while instead of sleeping in epoll
(transport.poll_pass): a wake-up costs more than the answer. It must stop polling
once nothing is expected: an idle mount or server burns no CPU."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import trio

from ninep import Connection, NinePError, dial
from ninep import codec as ninep_codec
from ninep.constants import NOTAG
from ninep.messages import Rstat, Rversion, Tstat
from ninep.polling import in_thread, poll_until

from .servers import server_process


class _Sleeps(trio.abc.Instrument):
    """Counts the loop's waits in epoll that may sleep (a timeout above zero)."""

    def __init__(self) -> None:
        self.sleeps = 0

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            self.sleeps += 1


async def _sleeps_during_stats(address: str, poll: float, n: int) -> int:
    stream = await dial(address)
    async with trio.open_nursery() as nursery:
        conn = Connection(stream, poll=poll)
        await conn.start(nursery)
        try:
            await conn.attach(0)
            await conn.stat(0)
            counter = _Sleeps()
            trio.lowlevel.add_instrument(counter)
            try:
                for _ in range(n):
                    await conn.stat(0)
            finally:
                trio.lowlevel.remove_instrument(counter)
            return counter.sleeps
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_a_client_waiting_for_replies_polls_instead_of_sleeping(tmp_path):
    with server_process(str(tmp_path)) as (address, _):
        slept = await _sleeps_during_stats(address, 0.0, 50)
        polled = await _sleeps_during_stats(address, 0.05, 50)  # far above any answer's time
    assert slept >= 45  # without polling, each reply is waited for asleep
    assert polled <= 5


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _unanswered(conn: Connection) -> None:
    with contextlib.suppress(NinePError):
        await conn.rpc(Tstat(0, 0), Rstat)


async def test_a_client_whose_request_waits_long_stops_polling():
    """A read of a cmd(3) file may wait for hours: its connection polls 1 ms, then sleeps."""
    ours, theirs = trio.socket.socketpair()
    server = trio.SocketStream(theirs)

    async def silent_server() -> None:
        await server.receive_some(8192)  # Tversion
        await server.send_all(ninep_codec.encode(Rversion(NOTAG, 8192, "9P2000")))
        while await server.receive_some(8192):  # nothing more is ever answered
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent_server)
        conn = Connection(trio.SocketStream(ours))
        await conn.start(nursery)
        nursery.start_soon(_unanswered, conn)
        await trio.sleep(0.05)
        cpu, wall = time.process_time(), time.perf_counter()
        await trio.sleep(0.5)
        used = time.process_time() - cpu
        elapsed = time.perf_counter() - wall
        nursery.cancel_scope.cancel()
    await conn.aclose()
    await server.aclose()
    assert used < 0.2 * elapsed


async def test_an_idle_server_stops_polling(tmp_path):
    """After its last reply a server polls 0.5 ms for the next request, then sleeps."""
    with server_process(str(tmp_path)) as (address, proc):
        stream = await dial(address)
        async with trio.open_nursery() as nursery:
            conn = Connection(stream)
            await conn.start(nursery)
            await conn.attach(0)
            for _ in range(20):
                await conn.stat(0)
            await trio.sleep(0.1)
            before = _cpu_seconds(proc.pid)
            await trio.sleep(1.0)
            used = _cpu_seconds(proc.pid) - before
            await conn.aclose()
            nursery.cancel_scope.cancel()
    assert used < 0.2


async def test_nobody_polls_while_a_thread_of_ours_runs():
    """A polling loop would keep the GIL from the thread whose call returned (an fsync in
    a thread took ~890 µs under a poll, ~310 µs without): poll_until gives up at once."""
    started, release = threading.Event(), threading.Event()

    def blocked() -> None:
        started.set()
        release.wait(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, blocked)
        await trio.to_thread.run_sync(started.wait, 10)
        t0 = time.perf_counter()
        assert not await poll_until(lambda: False, t0 + 5.0)
        assert time.perf_counter() - t0 < 1.0
        release.set()
    t0 = time.perf_counter()
    assert not await poll_until(lambda: False, t0 + 0.05)  # no thread: it polls, to the end
    assert time.perf_counter() - t0 >= 0.05
