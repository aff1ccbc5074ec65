"""The cmd tree (Inferno's cmd(3)): real host commands driven through 9P over TCP."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from fileserver.cmd import CmdTree, open_cmd_tree
from ninep import ORDWR, OREAD, OWRITE, Client, NinePError, connect

from .servers import raw_connection, serving

CHUNK = 1 << 16


@pytest.fixture
async def tree() -> AsyncIterator[CmdTree]:
    async with open_cmd_tree() as t:
        yield t


@pytest.fixture
async def address(tree: CmdTree) -> AsyncIterator[str]:
    async with serving(tree) as a:
        yield a


@pytest.fixture
async def fs(address: str) -> AsyncIterator[Client]:
    async with connect(address) as client:
        yield client


class Session:
    """One cmd session through raw 9P calls: the clone fid (now n/ctl) and the files opened."""

    def __init__(self, fs: Client, ctl: int, n: int) -> None:
        self.fs = fs
        self.conn = fs.conn
        self.ctl_fid = ctl
        self.n = n
        self.fids: list[int] = [ctl]

    async def ctl(self, request: str) -> None:
        await self.conn.write(self.ctl_fid, 0, request.encode())

    async def open(self, name: str, mode: int = OREAD) -> int:
        fid, _ = await self.fs.walk_fid(f"{self.n}/{name}")
        self.fids.append(fid)
        await self.conn.open(fid, mode)
        return fid

    async def read_all(self, fid: int) -> bytes:
        """Sequential reads until EOF, as cat(1) reads a stream."""
        out, offset = [], 0
        while data := await self.conn.read(fid, offset, self.conn.iounit):
            out.append(data)
            offset += len(data)
        return b"".join(out)

    async def clunk(self, fid: int) -> None:
        self.fids.remove(fid)
        await self.fs._clunk(fid)

    async def close(self) -> None:
        """Clunk every fid of the session: the tree then kills whatever still runs."""
        for fid in reversed(self.fids):
            await self.fs._clunk(fid)
        self.fids.clear()


@asynccontextmanager
async def session(fs: Client) -> AsyncIterator[Session]:
    fid, _ = await fs.walk_fid("clone")
    try:
        await fs.conn.open(fid, ORDWR)
        n = int(await fs.conn.read(fid, 0, 64))
    except BaseException:
        await fs._clunk(fid)
        raise
    s = Session(fs, fid, n)
    try:
        yield s
    finally:
        with trio.CancelScope(shield=True):
            await s.close()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_clone_reads_as_the_new_sessions_ctl(fs: Client) -> None:
    async with session(fs) as a, session(fs) as b:
        assert b.n != a.n
        names = await fs.listdir("/")
        assert names[0] == "clone"
        assert {str(a.n), str(b.n)} <= set(names)
        assert sorted(await fs.listdir(str(a.n))) == ["ctl", "data", "stderr", "term", "wait"]
        ctl_qid = (await fs.stat(f"{a.n}/ctl")).qid
        assert (await fs.conn.stat(a.ctl_fid)).qid == ctl_qid
        assert await fs.read_text(f"{a.n}/ctl") == str(a.n)
        qids = {(await fs.stat(f"{s.n}/{name}")).qid.path for s in (a, b) for name in ("ctl", "data")}
        assert len(qids) == 4
        assert all(st.length == 0 for st in await fs.ls(str(a.n)))


async def test_session_vanishes_when_its_fids_are_clunked(fs: Client) -> None:
    async with session(fs) as s:
        n = s.n
    assert str(n) not in await fs.listdir("/")
    assert not await fs.exists(f"{n}/ctl")


async def test_echo_hello_and_its_exit_status(fs: Client) -> None:
    async with session(fs) as s:
        data = await s.open("data")
        wait = await s.open("wait")
        await s.ctl("exec echo hello")
        assert await s.read_all(data) == b"hello\n"
        assert re.fullmatch(rb"pid \d+ exit 0\n", await s.read_all(wait))


async def test_wc_counts_10_mib_streamed_through_data(fs: Client) -> None:
    async with session(fs) as s:
        await s.ctl("exec wc -c")
        data = await s.open("data", ORDWR)
        chunk = b"x" * CHUNK
        for i in range(10 * (1 << 20) // CHUNK):
            assert await fs.conn.write(data, i * CHUNK, chunk) == CHUNK
        await fs.conn.write(data, 0, b"")  # end of file on stdin
        assert (await s.read_all(data)).strip() == b"10485760"


async def test_clunking_the_last_writer_of_data_closes_stdin(fs: Client) -> None:
    payload = os.urandom(3 << 20)
    async with session(fs) as s:
        await s.ctl("exec sha256sum")
        out = await s.open("data")
        async with fs.open(f"{s.n}/data", "wb") as f:  # pipelined by the client, in order
            await f.write(payload)
        assert (await s.read_all(out)).split()[0].decode() == hashlib.sha256(payload).hexdigest()


async def test_50_mib_of_stdout_streams_in_bounded_memory(fs: Client) -> None:
    total = 50 << 20
    async with session(fs) as s:
        data = await s.open("data")
        await s.ctl(f"exec head -c {total} /dev/zero")
        got, offset, peak = 0, 0, 0
        base = rss()
        while chunk := await fs.conn.read(data, offset, fs.conn.iounit):
            got += len(chunk)
            offset += len(chunk)
            peak = max(peak, rss() - base)
        assert got == total
        assert peak < 16 << 20, f"memory grew by {peak >> 20} MiB while streaming"


async def test_exit_status_3(fs: Client) -> None:
    async with session(fs) as s:
        await s.ctl("exec sh -c 'exit 3'")
        wait = await s.open("wait")
        assert re.fullmatch(rb"pid \d+ exit 3\n", await s.read_all(wait))


async def test_kill_reports_killed(fs: Client) -> None:
    async with session(fs) as s:
        await s.ctl("exec sleep 60")
        wait = await s.open("wait")
        await s.ctl("kill")
        with trio.fail_after(5):
            assert re.fullmatch(rb"pid \d+ killed 9\n", await s.read_all(wait))


async def test_disconnected_client_leaves_no_process_behind(address: str) -> None:
    pids: list[int] = []
    try:
        async with raw_connection(address) as conn:
            await conn.attach(0, "tester")
            await conn.walk(0, 1, ["clone"])
            await conn.open(1, ORDWR)
            n = (await conn.read(1, 0, 64)).decode()
            await conn.write(1, 0, b"exec sh -c 'sleep 60 & echo $$ $!; wait'")
            await conn.walk(0, 2, [n, "data"])
            await conn.open(2, OREAD)
            pids = [int(p) for p in (await conn.read(2, 0, 100)).split()]
            assert len(pids) == 2 and all(alive(p) for p in pids)
        # gone without a single clunk: the server clunks every fid of a dropped connection
        with trio.fail_after(5):
            while any(alive(p) for p in pids):
                await trio.sleep(0.05)
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, 9)


async def test_dir_sets_the_working_directory(fs: Client) -> None:
    async with session(fs) as s:
        data = await s.open("data")
        await s.ctl("dir /tmp")
        await s.ctl("exec pwd")
        assert await s.read_all(data) == os.path.realpath("/tmp").encode() + b"\n"


async def test_stderr_is_separate_from_stdout(fs: Client) -> None:
    async with session(fs) as s:
        data = await s.open("data")
        err = await s.open("stderr")
        await s.ctl("exec sh -c 'echo out; echo err >&2'")
        assert await s.read_all(data) == b"out\n"
        assert await s.read_all(err) == b"err\n"


async def test_unread_stderr_is_discarded_not_blocking(fs: Client) -> None:
    async with session(fs) as s:
        data = await s.open("data")
        await s.ctl("exec sh -c 'head -c 5000000 /dev/zero >&2; echo done'")
        with trio.fail_after(5):
            assert await s.read_all(data) == b"done\n"


async def test_bad_ctl_requests_are_errors(fs: Client) -> None:
    async with session(fs) as s:
        with pytest.raises(NinePError, match="unknown ctl request 'frob'"):
            await s.ctl("frob")
        with pytest.raises(NinePError, match="not a directory"):
            await s.ctl("dir /nonexistent/dir")
        with pytest.raises(NinePError, match="exec /nonexistent/cmd"):
            await s.ctl("exec /nonexistent/cmd")
        with pytest.raises(NinePError, match="no command started"):
            await s.ctl("kill")
        with pytest.raises(PermissionError):
            await s.open("wait", OWRITE)
        await s.ctl("exec true")
        with pytest.raises(NinePError, match="already started"):
            await s.ctl("exec true")


async def test_reads_return_output_as_it_arrives(fs: Client) -> None:
    async with session(fs) as s:
        data = await s.open("data")
        await s.ctl("exec sh -c 'echo a; sleep 60'")
        with trio.fail_after(5):
            assert await fs.conn.read(data, 0, 100) == b"a\n"


async def test_closing_the_tree_kills_its_commands() -> None:
    pid = 0
    try:
        async with (
            open_cmd_tree() as tree,
            serving(tree) as address,
            connect(address) as fs,
            session(fs) as s,
        ):
            data = await s.open("data")
            await s.ctl("exec sh -c 'echo $$; exec sleep 60'")
            pid = int(await fs.conn.read(data, 0, 100))
            await tree.close()
            assert not alive(pid)
            with pytest.raises(NinePError, match="closed"):
                await fs.conn.read(data, 0, 100)
    finally:
        if pid and alive(pid):
            os.kill(pid, 9)


async def test_reads_before_exec_wait_for_it(fs: Client) -> None:
    async with session(fs) as s:
        data = await s.open("data")
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await s.read_all(data))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.sleep(0.05)
                assert not got
                await s.ctl("exec echo late")
        assert got == [b"late\n"]
