"""Clients against servers that misbehave: every wait has a deadline, every excess a limit.

The servers here are small raw trio socket servers on loopback, written for each
fault: one that accepts and never answers, one that answers with tags nobody
asked for, one whose directory never ends, one that sends more than was asked.
"Silent host" is a listening socket whose backlog is full, so the kernel drops
our SYN, as a host that does not answer would (all traffic stays on loopback).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import pytest
import trio

import ninep
from ninep import codec
from ninep.constants import DMDIR, NOTAG, QTDIR
from ninep.messages import (
    Message,
    Qid,
    Rattach,
    Rclunk,
    Rerror,
    Rflush,
    Ropen,
    Rread,
    Rstat,
    Rversion,
    Rwalk,
    Rwstat,
    Stat,
    Tattach,
    Tauth,
    Tclunk,
    Tflush,
    Topen,
    Tread,
    Tstat,
    Tversion,
    Twalk,
    Twstat,
)

from .fuse_helpers import fuse_available, ninefs_mounts
from .servers import ninefs_command, serving

ROOT = Qid(QTDIR, 0, 1)
FILE = Qid(0, 0, 2)
MARGIN = 8.0  # on a loaded machine; the point is "within the deadline", not "fast"

Handler = Callable[[trio.SocketStream], Awaitable[None]]
Answer = Callable[[Message, dict[int, str]], list[Message]]


# --- servers that misbehave ------------------------------------------------------------


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """Run `handler` for every connection to a new loopback port; yield its dial string."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handler, listeners))
        try:
            yield f"tcp!127.0.0.1!{port}"
        finally:
            nursery.cancel_scope.cancel()


async def never_answers(stream: trio.SocketStream) -> None:
    """Accept, read everything, answer nothing."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


def speaking(answer: Answer) -> Handler:
    """A handler that decodes each T-message and sends what `answer` gives back."""

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        fids: dict[int, str] = {}
        try:
            while data := await stream.receive_some(65536):
                buf += data
                while len(buf) >= 4 and len(buf) >= (size := struct.unpack_from("<I", buf)[0]):
                    frame, buf = buf[:size], buf[size:]
                    for reply in answer(codec.decode(frame), fids):
                        await stream.send_all(codec.encode(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    return handle


def entry(name: str, qid: Qid = FILE, length: int = 0) -> Stat:
    mode = (DMDIR | 0o755) if qid.type & QTDIR else 0o644
    return Stat(qid=qid, mode=mode, length=length, name=name, uid="u", gid="g", muid="u")


def honest(
    msg: Message, fids: dict[int, str], *, read: Callable[[str, Tread], Message] | None = None
) -> list[Message]:
    """A tiny correct server: a root directory holding one file "f"; `read` answers Treads."""
    tag = msg.tag
    if isinstance(msg, Tversion):
        return [Rversion(NOTAG, min(msg.msize, 8192), "9P2000")]
    if isinstance(msg, Tauth):
        return [Rerror(tag, "authentication not required")]
    if isinstance(msg, Tattach):
        fids[msg.fid] = "/"
        return [Rattach(tag, ROOT)]
    if isinstance(msg, Twalk):
        at = fids.get(msg.fid)
        if at is None:
            return [Rerror(tag, "fid unknown or out of range")]
        if not msg.wnames:
            fids[msg.newfid] = at
            return [Rwalk(tag, ())]
        if at == "/" and msg.wnames == ("f",):
            fids[msg.newfid] = "f"
            return [Rwalk(tag, (FILE,))]
        return [Rerror(tag, "file does not exist")]
    if isinstance(msg, Topen):
        return [Ropen(tag, ROOT if fids.get(msg.fid) == "/" else FILE, 0)]
    if isinstance(msg, Tstat):
        at = fids.get(msg.fid, "/")
        return [Rstat(tag, entry("/", ROOT) if at == "/" else entry(at, FILE, 1 << 20))]
    if isinstance(msg, Twstat):
        return [Rwstat(tag)]
    if isinstance(msg, Tclunk):
        fids.pop(msg.fid, None)
        return [Rclunk(tag)]
    if isinstance(msg, Tflush):
        return [Rflush(tag)]
    if isinstance(msg, Tread) and read is not None:
        return [read(fids.get(msg.fid, "/"), msg)]
    return [Rerror(tag, "operation not supported")]


def wrong_tags(msg: Message, fids: dict[int, str]) -> list[Message]:
    """Honest answers, but after Tversion each carries a tag that was never asked for."""
    replies = honest(msg, fids)
    if isinstance(msg, Tversion):
        return replies
    return [codec.decode(_retag(codec.encode(r), (msg.tag + 1000) % NOTAG)) for r in replies]


def no_stat(msg: Message, fids: dict[int, str]) -> list[Message]:
    """Honest, but a Tstat is never answered."""
    return [] if isinstance(msg, Tstat) else honest(msg, fids)


def _retag(frame: bytes, tag: int) -> bytes:
    return frame[:5] + struct.pack("<H", tag) + frame[7:]


def endless_directory(msg: Message, fids: dict[int, str]) -> list[Message]:
    """The root directory never ends: every read brings as many new entries as fit."""

    def read(at: str, m: Tread) -> Message:
        if at != "/":
            return Rread(m.tag, b"")
        out = bytearray()
        n = m.offset // 64
        while True:
            e = codec.encode_stat(entry(f"e{n:020}"))
            if len(out) + len(e) > m.count:
                return Rread(m.tag, bytes(out))
            out += e
            n += 1

    return honest(msg, fids, read=read)


def oversized_reads(msg: Message, fids: dict[int, str]) -> list[Message]:
    """Every Tread of "f" is answered with up to 100 bytes more than it asked for (as many
    as still fit the msize of 8192: the frame itself is well formed)."""
    return honest(msg, fids, read=lambda at, m: Rread(m.tag, b"x" * min(m.count + 100, 8192 - 11)))


@contextmanager
def silent_port() -> Iterator[str]:
    """A loopback port whose SYNs go unanswered: its listen backlog is full and nobody
    accepts, so the kernel drops new SYNs, as from a host that is not there."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
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
        time.sleep(0.2)
        yield f"tcp!127.0.0.1!{port}"
    finally:
        for c in fillers:
            c.close()
        lst.close()


async def ninefs(*args: str, timeout: float = 60) -> tuple[int, str, float]:
    """Run the ninefs CLI without blocking this loop (the servers live in it): status,
    stderr and how long it took."""
    start = time.monotonic()
    with trio.fail_after(timeout):
        r = await trio.run_process(
            ninefs_command(*args),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    return r.returncode, r.stderr.decode(), time.monotonic() - start


# --- connecting ------------------------------------------------------------------------


async def test_connect_to_a_server_that_never_answers_tversion_fails_within_its_timeout():
    async with raw_server(never_answers) as address:
        start = trio.current_time()
        with trio.fail_after(2 + MARGIN), pytest.raises(TimeoutError) as caught:
            async with ninep.connect(address, timeout=2):
                pass
        assert trio.current_time() - start < 2 + MARGIN
    e = caught.value
    assert e.errno == errno.ETIMEDOUT
    assert str(e) == f"{address}: timed out: no answer to Tversion within 2 s"


async def test_connect_to_a_silent_host_fails_within_its_timeout():
    with silent_port() as address:
        start = trio.current_time()
        with trio.fail_after(2 + MARGIN), pytest.raises(TimeoutError) as caught:
            async with ninep.connect(address, timeout=2):
                pass
        assert trio.current_time() - start < 2 + MARGIN
    assert str(caught.value) == f"{address}: connection timed out after 2 s"


async def test_connect_timeout_alone_bounds_connecting_and_leaves_calls_without_a_deadline():
    async with raw_server(never_answers) as address:
        with (
            trio.fail_after(1 + MARGIN),
            pytest.raises(TimeoutError, match="no answer to Tversion within 1 s"),
        ):
            async with ninep.connect(address, connect_timeout=1):
                pass


async def test_a_connect_deadline_does_not_outlive_connecting(ram_server):
    async with ninep.connect(ram_server, connect_timeout=0.5) as fs:
        await trio.sleep(1)  # past the connect deadline: calls go on working
        await fs.write_bytes("x", b"still here")
        assert await fs.read_bytes("x") == b"still here"


async def test_wrong_tags_fail_the_attach_instead_of_hanging():
    async with raw_server(speaking(wrong_tags)) as address:
        with trio.fail_after(MARGIN), pytest.raises(ninep.ProtocolError, match="tag"):
            async with ninep.connect(address):
                pass


async def test_wrong_tags_fail_a_remote_tree_attach():
    async with raw_server(speaking(wrong_tags)) as address, ninep.RemoteTree.connect(address) as tree:
        with trio.fail_after(MARGIN), pytest.raises(ninep.ProtocolError, match="tag"):
            await tree.attach("u", "")


# --- what comes back -------------------------------------------------------------------


async def test_an_endless_directory_fails_ls_with_a_clear_error(monkeypatch):
    from ninep import bounds

    monkeypatch.setattr(bounds, "MAX_DIR_ENTRIES", 5000)
    async with raw_server(speaking(endless_directory)) as address, ninep.connect(address) as fs:
        with trio.fail_after(30), pytest.raises(OSError) as caught:
            await fs.ls("/")
        assert str(caught.value) == "/: i/o error: directory listing has more than 5000 entries"
        assert caught.value.errno == errno.EIO
        # The connection survives it.
        assert (await fs.stat("f")).length == 1 << 20


async def test_an_endless_directory_is_bounded_in_bytes_too(monkeypatch):
    from ninep import bounds

    monkeypatch.setattr(bounds, "MAX_DIR_BYTES", 100_000)
    async with raw_server(speaking(endless_directory)) as address, ninep.connect(address) as fs:
        with trio.fail_after(30), pytest.raises(OSError, match="listing has more than 100000 bytes"):
            await fs.listdir("/")


async def test_an_endless_directory_fails_a_remote_tree_readdir(monkeypatch):
    from ninep import bounds

    monkeypatch.setattr(bounds, "MAX_DIR_ENTRIES", 5000)
    async with raw_server(speaking(endless_directory)) as address, ninep.RemoteTree.connect(address) as tree:
        root = await tree.attach("u", "")
        await tree.open(root, ninep.OREAD)
        with trio.fail_after(30), pytest.raises(ninep.NinePError, match="more than 5000 entries"):
            await tree.readdir(root)


async def test_an_rread_larger_than_asked_fails_the_read():
    async with raw_server(speaking(oversized_reads)) as address, ninep.connect(address) as fs:
        with trio.fail_after(MARGIN), pytest.raises(OSError) as caught:
            await fs.read_bytes("f")
        assert caught.value.errno == errno.EIO
        assert "protocol botch: Rread of 8181 bytes for a read of 8168" in str(caught.value)
        assert caught.value.filename == "/f"
        async with fs.open("f", "rb") as f:  # big reads go pipelined: the same check
            with pytest.raises(OSError, match="protocol botch: Rread of"):
                await f.read(100_000)
        fid, _ = await fs.walk_fid("f")
        await fs.conn.open(fid, ninep.OREAD)
        with pytest.raises(ninep.NinePError, match="Rread of 110 bytes for a read of 10"):
            await fs.conn.read(fid, 0, 10)


async def test_an_rread_larger_than_asked_fails_a_remote_tree_read():
    async with raw_server(speaking(oversized_reads)) as address, ninep.RemoteTree.connect(address) as tree:
        root = await tree.attach("u", "")
        _, node = await tree.walk(root, ["f"])
        assert node is not None
        await tree.open(node, ninep.OREAD)
        with pytest.raises(ninep.NinePError, match="protocol botch: Rread of 110 bytes for a read of 10"):
            await tree.read(node, 0, 10)


# --- values 9P cannot carry ----------------------------------------------------------------


async def test_utime_beyond_32_bits_is_eoverflow_naming_the_path(fs):
    await fs.write_bytes("t", b"")
    with pytest.raises(OSError) as caught:
        await fs.utime("t", 2**33)
    assert caught.value.errno == errno.EOVERFLOW
    assert caught.value.filename == "/t"
    with pytest.raises(OSError) as caught:
        await fs.utime("t", -1)
    assert caught.value.errno == errno.EOVERFLOW
    with pytest.raises(OSError) as caught:
        await fs.wstat("t", mtime=2**32)
    assert caught.value.errno == errno.EOVERFLOW
    await fs.utime("t", 2**32 - 2)  # the largest a u32 holds that is not "don't touch"
    assert (await fs.stat("t")).mtime == 2**32 - 2


async def test_offsets_from_2_to_the_63_are_einval_naming_the_path(fs):
    await fs.write_bytes("o", b"data")
    async with fs.open("o", "rb+") as f:
        await f.seek(2**63)
        with pytest.raises(OSError) as caught:
            await f.read(10)
        assert caught.value.errno == errno.EINVAL
        assert caught.value.filename == "/o"
        with pytest.raises(OSError) as caught:
            await f.write(b"x")
        assert caught.value.errno == errno.EINVAL
        await f.seek(2**63 - 4)
        with pytest.raises(OSError, match="past 2\\*\\*63"):
            await f.write(b"12345")
        await f.seek(0)
        assert await f.read() == b"data"
        with pytest.raises(OSError) as caught:
            await fs.truncate("o", 2**63)
        assert caught.value.errno == errno.EINVAL
    # The raw calls: the same errors, not a codec traceback.
    fid, _ = await fs.walk_fid("o")
    await fs.conn.open(fid, ninep.OREAD)
    with pytest.raises(ninep.NinePError) as caught:
        await fs.conn.read(fid, 2**64, 10)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(ninep.NinePError) as caught:
        await fs.conn.write(fid, 2**64, b"x")
    assert caught.value.errno == errno.EINVAL
    assert await fs.conn.read(fid, 0, 10) == b"data"  # the connection is fine


# --- the command line ----------------------------------------------------------------------

cli = pytest.mark.slow


@cli
@pytest.mark.parametrize("command", [["ls"], ["cat"], ["stat"]])
async def test_cli_against_a_server_that_never_answers_says_so_in_one_line(command):
    async with raw_server(never_answers) as address:
        rc, err, took = await ninefs(*command, "--timeout", "2", address, "/f")
    assert rc == 1
    assert err == f"ninefs {command[0]}: {address}: timed out: no answer to Tversion within 2 s\n"
    assert took < 2 + MARGIN


@cli
async def test_cli_against_a_silent_host_says_so_in_one_line():
    with silent_port() as address:
        rc, err, took = await ninefs("ls", "--timeout", "2", address)
    assert rc == 1
    assert err == f"ninefs ls: {address}: connection timed out after 2 s\n"
    assert took < 2 + MARGIN


@cli
async def test_cli_and_cpu_default_deadline_is_ten_seconds():
    from ninep.bounds import CONNECT_TIMEOUT

    assert CONNECT_TIMEOUT == 10
    results = {}

    async def run(*args: str) -> None:
        results[args[0]] = await ninefs(*args, timeout=10 + 30)

    async with raw_server(never_answers) as address, trio.open_nursery() as nursery:
        nursery.start_soon(run, "ls", address)
        nursery.start_soon(run, "cpu", "-T", address, "--", "true")  # at once: 10 s, not 20
    for command, (rc, err, took) in results.items():
        assert rc == 1
        assert err == f"ninefs {command}: {address}: timed out: no answer to Tversion within 10 s\n"
        assert 9 < took < 10 + MARGIN


@cli
async def test_cli_against_wrong_tags_and_botched_reads_says_so_in_one_line():
    async with raw_server(speaking(wrong_tags)) as address:
        rc, err, _ = await ninefs("ls", "--timeout", "2", address)
    assert rc == 1
    assert err == f"ninefs ls: {address}: protocol botch: Rerror for tag 1000, which no request has\n"
    async with raw_server(speaking(oversized_reads)) as address:
        rc, err, _ = await ninefs("cat", address, "f")
    assert rc == 1
    assert err == "ninefs cat: /f: i/o error: protocol botch: Rread of 8181 bytes for a read of 8168\n"


# --- mounts ------------------------------------------------------------------------------


def _ninefs_processes(mountpoint: str) -> list[int]:
    """Pids of processes whose command line names `mountpoint` (our mount processes)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if mountpoint.encode() in argv and b"mount" in argv:
            pids.append(int(pid))
    return pids


@pytest.mark.fuse
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")
@pytest.mark.parametrize("server", ["never_answers", "wrong_tags", "no_stat"])
async def test_a_failed_mount_exits_non_zero_and_leaves_nothing_behind(tmp_path, server):
    handler = {
        "never_answers": never_answers,
        "wrong_tags": speaking(wrong_tags),
        "no_stat": speaking(no_stat),
    }[server]
    mp = tmp_path / "mnt"
    mp.mkdir()
    async with raw_server(handler) as address:
        rc, err, took = await ninefs("mount", "--timeout", "2", address, str(mp))
        assert rc == 1
        assert err.count("\n") == 1 and err.startswith(f"ninefs mount: {address}: "), err
        if server == "never_answers":
            assert err == f"ninefs mount: {address}: timed out: no answer to Tversion within 2 s\n"
        if server == "no_stat":
            assert err.endswith("timed out: no answer to the attach and stat of the root within 2 s\n")
        assert took < 2 + MARGIN
        await trio.sleep(0.5)
        assert str(mp) not in ninefs_mounts()
        assert _ninefs_processes(str(mp)) == []


@pytest.mark.fuse
@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")
async def test_a_mount_of_a_silent_host_fails_within_its_deadline(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with silent_port() as address:
        rc, err, took = await ninefs("mount", "--timeout", "2", address, str(mp))
    assert rc == 1
    assert err == f"ninefs mount: {address}: connection timed out after 2 s\n"
    assert took < 2 + MARGIN
    assert _ninefs_processes(str(mp)) == []


# --- namespaces ----------------------------------------------------------------------------


async def test_a_namespace_mount_of_a_server_that_never_answers_fails_within_its_deadline(monkeypatch):
    from namespaces import Namespace
    from ninep import bounds

    monkeypatch.setattr(bounds, "CONNECT_TIMEOUT", 1.0)
    async with raw_server(never_answers) as address, Namespace() as ns:
        with (
            trio.fail_after(1 + MARGIN),
            pytest.raises(TimeoutError, match="no answer to Tversion within 1 s"),
        ):
            await ns.mount(address, "/n/x")


async def test_a_namespace_mount_of_wrong_tags_fails():
    from namespaces import Namespace

    async with raw_server(speaking(wrong_tags)) as address, Namespace() as ns:
        with trio.fail_after(MARGIN), pytest.raises(ninep.ProtocolError):
            await ns.mount(address, "/n/x")


async def test_cpu_to_a_server_that_never_answers_fails_within_its_deadline(monkeypatch):
    from mount.cpu import run_cpu
    from namespaces import Namespace
    from ninep import bounds

    monkeypatch.setattr(bounds, "CONNECT_TIMEOUT", 1.0)
    async with raw_server(never_answers) as address, Namespace() as ns:
        with (
            trio.fail_after(1 + MARGIN),
            pytest.raises(TimeoutError, match="no answer to Tversion within 1 s"),
        ):
            await run_cpu(address, ["true"], ns)


async def test_a_working_server_still_works_with_deadlines():
    from fileserver.ram import RamTree

    async with serving(RamTree()) as address:
        async with ninep.connect(address, timeout=2) as fs:
            await fs.write_bytes("a", b"1")
        rc, err, _ = await ninefs("cat", "--timeout", "2", address, "a")
        assert rc == 0, err
        rc, err, _ = await ninefs("cat", "--timeout", "0", address, "a")
        assert rc == 0, err
