"""A remote tree whose server is unreachable fails at once, and comes back by itself.

Real servers on loopback: `ninefs serve` subprocesses killed with SIGKILL (the kernel
refuses the redial), stopped with SIGSTOP (the kernel accepts TCP, nobody answers), or
killed with their port then taken by a socket that drops SYNs (a host that is not
there); and an in-loop server for a reset connection. Wall-clock bounds are generous on
purpose: "well under one connect deadline", not "fast".
"""

from __future__ import annotations

import errno
import pickle
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from ninep import ORDWR, OREAD, OWRITE, ProtocolError, client
from ninep.errors import Unreachable, errno_for
from ninep.remote import BACKOFF_MAX, GRACE, REDIAL_TIMEOUT, RemoteNode, RemoteTree
from ninep.transport import abort

from .servers import server_process, serving
from .test_server import SlowTree

MARGIN = 8.0  # on a loaded machine
RECOVERY = REDIAL_TIMEOUT + BACKOFF_MAX + MARGIN  # the longest the redial loop may take to notice
ROUNDS = 20

subprocesses = pytest.mark.slow


async def _state(tree: RemoteTree, *states: str) -> None:
    """Wait (a bounded while) until the tree is in one of `states`, without operations."""
    with trio.fail_after(MARGIN):
        while tree.state not in states:
            await trio.sleep(0.01)


async def _works_again(tree: RemoteTree, root: RemoteNode) -> float:
    """How long until a stat of "f" works again, asking every 50 ms."""
    start = trio.current_time()
    with trio.fail_after(RECOVERY):
        while True:
            try:
                await tree.walk_stat(root, ["f"])
                return trio.current_time() - start
            except Unreachable:
                await trio.sleep(0.05)


async def _fails_fast(tree: RemoteTree, root: RemoteNode) -> tuple[list[Unreachable], float]:
    """ROUNDS stats in a row, each expected to fail with Unreachable; the errors, the time."""
    errors = []
    start = trio.current_time()
    for _ in range(ROUNDS):
        with pytest.raises(Unreachable) as caught:
            await tree.walk_stat(root, ["f"])
        errors.append(caught.value)
    return errors, trio.current_time() - start


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@contextmanager
def _syns_dropped(port: int) -> Iterator[None]:
    """Take `port` with a listener whose backlog is full and that never accepts: the kernel
    drops new SYNs to it, as a host that is not there does (tests/test_client_deadlines.py)."""
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen(0)
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(c)
        yield
    finally:
        for c in fillers:
            c.close()
        lst.close()


def test_unreachable_is_eio_whatever_its_cause_says():
    e = Unreachable("host unreachable (reconnecting): connection timed out after 5 s", "tcp!h!564")
    assert e.errno == errno.EIO
    assert isinstance(e, ProtocolError) and isinstance(e, OSError)
    assert str(e) == "tcp!h!564: host unreachable (reconnecting): connection timed out after 5 s"
    assert errno_for(e.ename) == errno.EIO  # re-exported by our server, the far end sees EIO too
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is Unreachable and str(again) == str(e) and again.errno == errno.EIO


@subprocesses
async def test_while_a_killed_server_is_down_operations_fail_at_once_and_work_once_it_is_back(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"before")
    with server_process(str(tmp_path)) as (address, proc):
        async with RemoteTree.connect(address, connect_timeout=10) as tree:
            root = await tree.attach("u", "")
            opened, _, _ = await tree.walk_open(root, ["f"], OREAD)
            assert tree.state == "up" and tree.last_error is None
            _kill(proc)
            await _state(tree, "down")  # noticed without an operation; the redial was refused
            assert tree.last_error == "connection refused"
            errors, took = await _fails_fast(tree, root)
            assert took < REDIAL_TIMEOUT, f"{ROUNDS} failed operations took {took:.2f} s"
            e = errors[-1]
            assert e.errno == errno.EIO
            assert str(e) == f"{address}: host unreachable (reconnecting): connection refused"
            for op in (tree.read(opened, 0, 10), tree.stat(opened), tree.attach("u", "")):
                with pytest.raises(Unreachable):
                    await op
            await trio.sleep(2)  # a while down: the redial backs off
            with server_process(str(tmp_path), listen=address):  # the same port, a new process
                # A host that refuses is dialled again when asked, not after the backoff:
                # the first operation once the server is back finds it.
                assert (await tree.walk_stat(root, ["f"]))[1].length == 6
                assert tree.state == "up"
                assert await tree.read(opened, 0, 100) == b"before"  # walked and opened again
                new, _, _ = await tree.walk_create(root, [], "after", 0o644, OWRITE)
                assert await tree.write(new, 0, b"after") == 5
                await tree.clunk(new)
                assert (tmp_path / "after").read_bytes() == b"after"


@subprocesses
async def test_a_dead_host_fails_operations_at_once_instead_of_a_connect_deadline_each(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"x")
    with server_process(str(tmp_path)) as (address, proc):
        port = int(address.rsplit("!", 1)[1])
        async with RemoteTree.connect(address, connect_timeout=10) as tree:
            root = await tree.attach("u", "")
            _kill(proc)
            with _syns_dropped(port):
                await _state(tree, "reconnecting", "down")
                # The first may wait out the grace of the first redial, which hangs on SYNs
                # nobody answers; none waits for its 5 s deadline.
                errors, took = await _fails_fast(tree, root)
                assert took < REDIAL_TIMEOUT, f"{ROUNDS} failed operations took {took:.2f} s"
                assert tree.state == "down"
                assert str(errors[-1]).startswith(f"{address}: host unreachable (reconnecting): ")
            with server_process(str(tmp_path), listen=address):
                await _works_again(tree, root)
            await _state(tree, "down", "up")
            start = trio.current_time()
        # Leaving the block is not held up by the redial loop (it is cancelled).
        assert trio.current_time() - start < MARGIN


@subprocesses
async def test_a_silent_server_fails_operations_at_once_after_the_first_timeout(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(client, "FLUSH_TIMEOUT", 1.0)  # the wait for an Rflush that never comes
    (tmp_path / "f").write_bytes(b"x")
    with server_process(str(tmp_path)) as (address, proc):
        async with RemoteTree.connect(address, connect_timeout=10) as tree:
            root = await tree.attach("u", "")
            proc.send_signal(signal.SIGSTOP)  # its kernel still accepts; it answers nothing
            try:
                start = trio.current_time()
                with trio.move_on_after(1):  # the caller's deadline, as the mount's
                    await tree.walk_stat(root, ["f"])
                    pytest.fail("a stopped server answered")
                assert trio.current_time() - start < 1 + 1 + MARGIN  # deadline + Tflush
                await _state(tree, "reconnecting", "down")
                assert tree.last_error == "timed out: no answer to Tflush"
                # The redial connects and waits for an Rversion: operations do not.
                errors, took = await _fails_fast(tree, root)
                assert took < REDIAL_TIMEOUT, f"{ROUNDS} failed operations took {took:.2f} s"
                assert errors[-1].errno == errno.EIO
            finally:
                proc.send_signal(signal.SIGCONT)
            await _works_again(tree, root)
            assert tree.state == "up"


@subprocesses
async def test_a_write_in_flight_when_the_connection_breaks_is_reported_never_repeated(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"before")
    with server_process(str(tmp_path)) as (address, proc):
        async with RemoteTree.connect(address, connect_timeout=10) as tree:
            root = await tree.attach("u", "")
            node, _, _ = await tree.walk_open(root, ["f"], OWRITE)
            proc.send_signal(signal.SIGSTOP)
            caught: list[OSError] = []

            async def write() -> None:
                try:
                    await tree.write(node, 0, b"LOST?!")
                except OSError as e:
                    caught.append(e)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await trio.sleep(0.3)  # the Twrite is on the wire, unanswered
                _kill(proc)  # its unread data makes the kernel reset the connection
            assert len(caught) == 1
            assert caught[0].errno == errno.EIO
            assert "connection lost during the operation; it may or may not have happened" in str(caught[0])
            assert not isinstance(caught[0], Unreachable)
            with server_process(str(tmp_path), listen=address):
                await _works_again(tree, root)
                await trio.sleep(0.5)
                assert (tmp_path / "f").read_bytes() == b"before"  # not sent again behind our back
                assert await tree.write(node, 0, b"AGAIN!") == 6  # the caller may, knowingly
                assert (tmp_path / "f").read_bytes() == b"AGAIN!"


async def test_a_reset_connection_to_a_live_server_costs_a_wait_not_an_error():
    slow = SlowTree()
    async with serving(slow) as address, RemoteTree.connect(address) as tree:
        root = await tree.attach("u", "")
        node, _, _ = await tree.walk_create(root, [], "slow", 0o644, ORDWR)
        assert await tree.write(node, 0, b"data") == 4
        got: list[bytes] = []

        async def read() -> None:
            got.append(bytes(await tree.read(node, 0, 10)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.fail_after(MARGIN):
                await slow.reading.wait()
            start = trio.current_time()
            await abort(tree.conn.stream)  # a reset: the read in flight is lost with it
            slow.release.set()
        # Repeated on the next connection (the file found again, open in its mode).
        assert got == [b"data"]
        assert trio.current_time() - start < GRACE + MARGIN
        assert tree.state == "up"
        assert tree.last_error is not None and "connection closed" in tree.last_error
        assert (await tree.stat(node)).length == 4


@subprocesses
async def test_without_reconnect_a_lost_connection_stays_lost_and_says_so(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"x")
    with server_process(str(tmp_path)) as (address, proc):
        async with RemoteTree.connect(address, reconnect=False) as tree:
            root = await tree.attach("u", "")
            _kill(proc)
            await _state(tree, "down")
            with server_process(str(tmp_path), listen=address):
                await trio.sleep(0.5)
                with pytest.raises(ProtocolError, match="connection closed") as caught:
                    await tree.walk_stat(root, ["f"])
                assert not isinstance(caught.value, Unreachable)
                assert tree.state == "down"
