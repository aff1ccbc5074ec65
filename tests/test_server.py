"""The server against the rules of NINEP.md, over real TCP sockets."""

from __future__ import annotations

import struct

import pytest
import trio

from fileserver.local import LocalTree
from fileserver.ram import RamTree
from ninep import DMDIR, NOFID, NOTAG, ORCLOSE, ORDWR, OREAD, OTRUNC, OWRITE, Limits, Stat, codec, transport
from ninep.errors import NinePError
from ninep.messages import (
    Rattach,
    Rerror,
    Rflush,
    Ropen,
    Rread,
    Rversion,
    Rwalk,
    Tattach,
    Tflush,
    Topen,
    Tread,
    Tstat,
    Tversion,
    Twalk,
)

from .servers import raw_connection, serving


class RawSocket:
    """A bare TCP socket speaking frames, for tests that must control every byte."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, *frames: bytes) -> None:
        for f in frames:
            await self.stream.send_all(f)

    async def recv(self):
        """The next reply, or None once the server closed the connection."""
        with trio.fail_after(5):
            while not (len(self.buf) >= 4 and len(self.buf) >= struct.unpack_from("<I", self.buf)[0]):
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.buf += data
        n = struct.unpack_from("<I", self.buf)[0]
        frame, self.buf = self.buf[:n], self.buf[n:]
        return codec.decode(frame)


async def send_raw(address: str, *frames: bytes, replies: int = 1) -> list:
    """Send raw frames on a fresh socket and decode `replies` answers (None once closed)."""
    host, port = address.split("!")[1:]
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        sock = RawSocket(stream)
        await sock.send(*frames)
        out = []
        while len(out) < replies:
            out.append(await sock.recv())
            if out[-1] is None:
                break
        return out


def version_frame(msize: int = 8192, version: str = "9P2000") -> bytes:
    return codec.encode(Tversion(NOTAG, msize, version))


# --- version(5) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "proposed, answered",
    [
        ("9P2000", "9P2000"),
        ("9P2000.L", "9P2000"),
        ("9P2000.u", "9P2000"),
        ("9P3000", "9P2000"),
        ("XP", "unknown"),
    ],
)
async def test_version_answers_9p2000_or_unknown(ram_server, proposed, answered):
    (reply,) = await send_raw(ram_server, version_frame(version=proposed))
    assert isinstance(reply, Rversion) and reply.version == answered


async def test_msize_is_never_more_than_the_client_asked(ram_server):
    (reply,) = await send_raw(ram_server, version_frame(msize=4096))
    assert reply.msize == 4096
    (reply,) = await send_raw(ram_server, version_frame(msize=1 << 30))
    assert reply.msize == Limits().msize


async def test_nothing_but_tversion_before_tversion(ram_server):
    (reply,) = await send_raw(ram_server, codec.encode(Tstat(1, 0)))
    assert isinstance(reply, Rerror) and "Tversion" in reply.ename


async def test_tversion_clunks_every_fid(conn):
    await conn.rpc(Tversion(NOTAG, conn.msize, "9P2000"), Rversion)
    with pytest.raises(NinePError, match="fid unknown"):
        await conn.stat(0)


# --- attach(5), auth(5) ---------------------------------------------------------------


async def test_tauth_is_refused_when_no_auth_is_required(conn):
    with pytest.raises(NinePError, match="authentication not required"):
        await conn.auth(5, "tester", "")


async def test_attach_to_a_fid_in_use_is_an_error(conn):
    with pytest.raises(NinePError, match="fid already in use"):
        await conn.attach(0, "tester")


async def test_attach_to_an_unknown_tree_is_an_error(conn):
    with pytest.raises(FileNotFoundError):
        await conn.attach(1, "tester", "nosuchtree")


# --- walk(5) ------------------------------------------------------------------------------


async def make_dirs(conn, *names: str) -> None:
    """Create nested directories a/b/... below the root (fid 0 stays at the root)."""
    await conn.walk(0, 99, [])
    for n in names:
        await conn.create(99, n, DMDIR | 0o755, OREAD)
        await conn.clunk(99)
        await conn.walk(0, 99, names[: names.index(n) + 1])
    await conn.clunk(99)


async def test_walk_with_no_names_clones_the_fid(conn):
    assert await conn.walk(0, 1, []) == []
    assert (await conn.stat(1)).is_dir


async def test_partial_walk_leaves_newfid_unset(conn):
    await make_dirs(conn, "a")
    qids = await conn.walk(0, 1, ["a", "missing", "x"])
    assert len(qids) == 1
    with pytest.raises(NinePError, match="fid unknown"):
        await conn.stat(1)


async def test_failing_first_name_is_an_error(conn):
    with pytest.raises(FileNotFoundError):
        await conn.walk(0, 1, ["missing"])


async def test_walk_in_place_moves_the_fid(conn):
    await make_dirs(conn, "a")
    await conn.walk(0, 1, [])
    await conn.walk(1, 1, ["a"])
    assert (await conn.stat(1)).name == "a"


async def test_partial_walk_in_place_does_not_move_the_fid(conn):
    await make_dirs(conn, "a")
    await conn.walk(0, 1, [])
    await conn.walk(1, 1, ["a", "missing"])
    assert (await conn.stat(1)).name == "/"


async def test_dotdot_at_the_root_stays_at_the_root(conn):
    qids = await conn.walk(0, 1, ["..", ".."])
    root = await conn.stat(0)
    assert qids[-1] == root.qid


async def test_dotdot_walks_to_the_parent(conn):
    await make_dirs(conn, "a", "b")
    qids = await conn.walk(0, 1, ["a", "b", "..", ".."])
    assert qids[-1] == (await conn.stat(0)).qid


async def test_walk_of_more_than_16_names_is_refused(conn):
    with pytest.raises(NinePError, match="too many names"):
        await conn.walk(0, 1, ["a"] * 17)


async def test_walk_to_a_newfid_in_use_is_an_error(conn):
    await conn.walk(0, 1, [])
    with pytest.raises(NinePError, match="fid already in use"):
        await conn.walk(0, 1, [])


async def test_walk_of_an_open_fid_is_an_error(conn):
    await conn.walk(0, 1, [])
    await conn.open(1, OREAD)
    with pytest.raises(NinePError, match="open fid"):
        await conn.walk(1, 2, [])


async def test_walk_names_with_a_slash_are_refused(conn):
    await make_dirs(conn, "a", "b")
    with pytest.raises(FileNotFoundError):
        await conn.walk(0, 1, ["a/b"])


# --- open(5), create(5) -----------------------------------------------------------------


async def test_directories_open_only_for_reading(conn):
    await conn.walk(0, 1, [])
    with pytest.raises(IsADirectoryError):
        await conn.open(1, OWRITE)
    await conn.open(1, OREAD)


async def test_a_fid_is_opened_once(conn):
    await conn.walk(0, 1, [])
    await conn.open(1, OREAD)
    with pytest.raises(NinePError, match="already open"):
        await conn.open(1, OREAD)


async def test_create_makes_the_fid_the_new_open_file(conn):
    await conn.walk(0, 1, [])
    _qid, iounit = await conn.create(1, "f", 0o644, ORDWR)
    assert iounit == conn.msize - 24
    assert await conn.write(1, 0, b"hello") == 5
    assert await conn.read(1, 0, 100) == b"hello"
    assert (await conn.stat(1)).name == "f"


@pytest.mark.parametrize("name", [".", "..", "a/b", ""])
async def test_dot_dotdot_and_slashes_cannot_be_created(conn, name):
    await conn.walk(0, 1, [])
    with pytest.raises(NinePError, match="create prohibited"):
        await conn.create(1, name, 0o644, OWRITE)


async def test_creating_an_existing_name_is_an_error(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, OWRITE)
    await conn.walk(0, 2, [])
    with pytest.raises(FileExistsError):
        await conn.create(2, "f", 0o644, OWRITE)


async def test_created_permissions_are_limited_by_the_directory(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "d", DMDIR | 0o750, OREAD)
    await conn.walk(0, 2, ["d"])
    await conn.create(2, "f", 0o666, OWRITE)
    assert (await conn.stat(2)).mode & 0o777 == 0o640


async def test_otrunc_empties_the_file(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, OWRITE)
    await conn.write(1, 0, b"hello")
    await conn.walk(0, 2, ["f"])
    await conn.open(2, OWRITE | OTRUNC)
    assert (await conn.stat(2)).length == 0


async def test_orclose_removes_the_file_at_clunk(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "tmp", 0o644, ORDWR | ORCLOSE)
    await conn.clunk(1)
    with pytest.raises(FileNotFoundError):
        await conn.walk(0, 2, ["tmp"])


# --- read(5), write(5) ------------------------------------------------------------------------


async def test_read_of_an_unopened_fid_is_an_error(conn):
    await conn.walk(0, 1, [])
    with pytest.raises(NinePError, match="not open"):
        await conn.read(1, 0, 10)


async def test_write_to_a_file_open_for_reading_is_refused(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, OREAD)
    with pytest.raises(PermissionError):
        await conn.write(1, 0, b"x")


async def test_directory_reads_return_whole_entries_only(conn):
    await conn.walk(0, 1, [])
    for i in range(40):
        await conn.walk(0, 2, [])
        await conn.create(2, f"file-with-a-longish-name-{i:03}", 0o644, OWRITE)
        await conn.clunk(2)
    await conn.open(1, OREAD)
    names, offset = [], 0
    while data := await conn.read(1, offset, 300):
        assert len(data) <= 300
        names += [s.name for s in codec.decode_stats(data)]  # raises if an entry were cut
        offset += len(data)
    assert names == [f"file-with-a-longish-name-{i:03}" for i in range(40)]


async def test_directory_read_at_another_offset_is_an_error(conn):
    await conn.walk(0, 1, [])
    await conn.open(1, OREAD)
    await conn.read(1, 0, 1000)
    with pytest.raises(NinePError, match="bad offset"):
        await conn.read(1, 5, 1000)


async def test_directory_read_at_offset_zero_rewinds(conn):
    await make_dirs(conn, "a")
    await conn.walk(0, 1, [])
    await conn.open(1, OREAD)
    first = await conn.read(1, 0, 1000)
    assert await conn.read(1, len(first), 1000) == b""
    assert await conn.read(1, 0, 1000) == first


async def test_directory_read_too_small_for_one_entry_is_an_error(conn):
    await make_dirs(conn, "a")
    await conn.walk(0, 1, [])
    await conn.open(1, OREAD)
    with pytest.raises(NinePError, match="too small"):
        await conn.read(1, 0, 10)


async def test_read_past_end_of_file_is_empty(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, ORDWR)
    await conn.write(1, 0, b"abc")
    assert await conn.read(1, 3, 10) == b""
    assert await conn.read(1, 1 << 40, 10) == b""


async def test_read_count_is_capped_by_msize(ram_server):
    async with raw_connection(ram_server, msize=4096) as c:
        await c.attach(0, "u")
        await c.create(0, "f", 0o644, ORDWR)
        await c.write(0, 0, b"x" * 4000)
        await c.write(0, 4000, b"x" * 4000)
        assert len(await c.read(0, 0, 100000)) == 4096 - 24


async def test_dmappend_files_ignore_the_write_offset(conn):
    from ninep import DMAPPEND

    await conn.walk(0, 1, [])
    await conn.create(1, "log", DMAPPEND | 0o644, ORDWR)
    await conn.write(1, 0, b"one ")
    await conn.write(1, 0, b"two")
    assert await conn.read(1, 0, 100) == b"one two"
    assert (await conn.stat(1)).mode & DMAPPEND


# --- clunk(5), remove(5) --------------------------------------------------------------------------


async def test_clunk_releases_the_fid(conn):
    await conn.walk(0, 1, [])
    await conn.clunk(1)
    with pytest.raises(NinePError, match="fid unknown"):
        await conn.clunk(1)
    await conn.walk(0, 1, [])  # the number is free again


async def test_remove_clunks_the_fid_even_when_it_fails(conn):
    await make_dirs(conn, "a", "b")
    await conn.walk(0, 1, ["a"])
    with pytest.raises(NinePError, match="directory not empty"):
        await conn.remove(1)
    with pytest.raises(NinePError, match="fid unknown"):
        await conn.stat(1)


async def test_removed_file_stays_readable_through_an_open_fid(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, ORDWR)
    await conn.write(1, 0, b"data")
    await conn.walk(0, 2, ["f"])
    await conn.remove(2)
    assert await conn.read(1, 0, 10) == b"data"  # remove(5) takes the name; the open fid keeps the file
    with pytest.raises(FileNotFoundError):
        await conn.walk(0, 3, ["f"])


# --- stat(5), wstat(5) ------------------------------------------------------------------------------


async def test_wstat_renames_within_the_directory(conn):
    await make_dirs(conn, "a")
    await conn.walk(0, 1, ["a"])
    await conn.wstat(1, Stat.dont_touch(name="b"))
    assert await conn.walk(0, 2, ["b"])


async def test_wstat_rename_onto_an_existing_name_is_an_error_and_changes_nothing(conn):
    await make_dirs(conn, "a")
    await make_dirs(conn, "b")
    await conn.walk(0, 1, ["a"])
    with pytest.raises(FileExistsError):
        await conn.wstat(1, Stat.dont_touch(name="b", mode=DMDIR | 0o700))
    assert (await conn.stat(1)).mode & 0o777 == 0o755  # all or nothing


async def test_wstat_cannot_change_the_dmdir_bit(conn):
    await make_dirs(conn, "a")
    await conn.walk(0, 1, ["a"])
    with pytest.raises(PermissionError):
        await conn.wstat(1, Stat.dont_touch(mode=0o755))


async def test_wstat_truncates_and_sets_mtime(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, ORDWR)
    await conn.write(1, 0, b"hello world")
    await conn.wstat(1, Stat.dont_touch(length=5, mtime=1000000))
    s = await conn.stat(1)
    assert (s.length, s.mtime) == (5, 1000000)


async def test_null_wstat_is_accepted_as_sync(conn):
    await conn.walk(0, 1, [])
    await conn.wstat(1, Stat.dont_touch())


async def test_qid_vers_changes_when_the_file_changes(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, ORDWR)
    before = (await conn.stat(1)).qid
    await conn.write(1, 0, b"x")
    after = (await conn.stat(1)).qid
    assert before.path == after.path and before.vers != after.vers


# --- flush(5) and concurrency --------------------------------------------------------------------------


class SlowTree(RamTree):
    """Reads of files named "slow" wait until `release` is set."""

    never_blocks = RamTree.never_blocks - {"read"}  # this tree's reads do wait

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.reading = trio.Event()  # set once a slow read is waiting
        self.cancelled = 0

    async def read(self, node, offset, count):
        if node.file.name == "slow":
            self.reading.set()
            try:
                await self.release.wait()
            except trio.Cancelled:
                self.cancelled += 1
                raise
        return await super().read(node, offset, count)


@pytest.fixture
async def slow():
    tree = SlowTree()
    async with serving(tree) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.walk(0, 1, [])
        await c.create(1, "slow", 0o644, ORDWR)
        yield tree, c


async def test_a_slow_read_does_not_block_a_stat(slow):
    tree, c = slow
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.read, 1, 0, 10)
        with trio.fail_after(5):
            assert (await c.stat(1)).name == "slow"
        tree.release.set()


async def test_flush_cancels_a_slow_read_and_it_is_never_answered(slow):
    tree, c = slow
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def reader():
            with scope:  # the client sends Tflush when the call is cancelled
                await c.read(1, 0, 10)

        nursery.start_soon(reader)
        await tree.reading.wait()
        scope.cancel()
    assert tree.cancelled == 1  # Rflush came only after the server stopped the read
    tree.release.set()
    assert (await c.stat(1)).name == "slow"  # the connection is in order afterwards


async def test_flush_of_an_unknown_tag_gets_rflush(conn):
    r = await conn.rpc(Tflush(0, 1234), Rflush)
    assert isinstance(r, Rflush)


async def test_flush_is_answered_after_the_flushed_reply_or_instead_of_it(ram_server):
    # flush(5): Rstat may come first (it was already answered), or never; never after Rflush.
    host, port = ram_server.split("!")[1:]
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        sock = RawSocket(stream)
        await sock.send(version_frame(), codec.encode(Tattach(1, 0, NOFID, "u", "")))
        assert [(await sock.recv()).tag for _ in range(2)] == [NOTAG, 1]
        await sock.send(codec.encode(Tstat(2, 0)), codec.encode(Tflush(3, 2)), codec.encode(Tstat(4, 0)))
        tags = []
        while not {3, 4} <= set(tags):
            tags.append((await sock.recv()).tag)
        assert tags.count(2) <= 1
        if 2 in tags:
            assert tags.index(2) < tags.index(3)


async def test_many_requests_in_flight_on_one_connection(conn):
    await conn.walk(0, 1, [])
    await conn.create(1, "f", 0o644, ORDWR)
    await conn.write(1, 0, b"abc")
    results = []

    async def one():
        results.append(await conn.read(1, 0, 3))

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(one)
    assert results == [b"abc"] * 200


# --- limits and hostile clients -----------------------------------------------------------------------


async def test_too_many_fids_is_a_clear_error():
    async with serving(RamTree(), limits=Limits(fids=3)) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.walk(0, 1, [])
        await c.walk(0, 2, [])
        with pytest.raises(NinePError, match="too many fids"):
            await c.walk(0, 3, [])


async def test_too_many_outstanding_requests_is_a_clear_error():
    tree = SlowTree()
    async with serving(tree, limits=Limits(outstanding=2)) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.create(0, "slow", 0o644, ORDWR)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.read, 0, 0, 1)
            nursery.start_soon(c.read, 0, 0, 1)
            await trio.sleep(0.2)
            with pytest.raises(NinePError, match="too many outstanding"):
                await c.stat(0)
            tree.release.set()


async def test_a_frame_larger_than_msize_closes_that_connection_only(ram_server):
    async with raw_connection(ram_server) as good:
        await good.attach(0, "u")
        huge = struct.pack("<IBH", 100000, 118, 1) + b"\0" * 100
        replies = await send_raw(ram_server, version_frame(msize=8192), huge, replies=2)
        assert isinstance(replies[0], Rversion) and replies[1] is None
        assert (await good.stat(0)).is_dir


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x03\x00\x00\x00",  # size smaller than a header
        b"\xff" * 64,  # huge size
        struct.pack("<IBH", 7, 250, 9),  # unknown type
        struct.pack("<IBHH", 11, 107, 1, 9) + b"ab",  # overrun
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
async def test_garbage_gets_rerror_or_a_closed_connection_and_others_carry_on(ram_server, garbage):
    async with raw_connection(ram_server) as good:
        await good.attach(0, "u")
        replies = await send_raw(ram_server, version_frame(), garbage, replies=2)
        assert isinstance(replies[0], Rversion)
        assert replies[1] is None or isinstance(replies[1], Rerror)
        assert (await good.stat(0)).is_dir


async def test_an_unknown_type_with_a_readable_tag_gets_rerror_and_the_session_goes_on(ram_server):
    replies = await send_raw(
        ram_server,
        version_frame(),
        struct.pack("<IBH", 7, 250, 9),
        codec.encode(Tattach(1, 0, NOFID, "u", "")),
        replies=3,
    )
    assert isinstance(replies[1], Rerror) and replies[1].tag == 9
    assert type(replies[2]).__name__ == "Rattach"


async def test_a_client_that_vanishes_mid_request_releases_its_fids():
    tree = SlowTree()
    clunked = []
    orig = tree.clunk

    async def clunk(node):
        clunked.append(node)
        await orig(node)

    tree.clunk = clunk
    async with serving(tree) as address:
        async with raw_connection(address) as c:
            await c.attach(0, "u")
            await c.create(0, "slow", 0o644, ORDWR)

            async def doomed_read():
                with pytest.raises(NinePError, match="connection closed"):
                    await c.read(0, 0, 1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed_read)
                await trio.sleep(0.1)
                await c.aclose()
        with trio.fail_after(5):
            while not clunked:
                await trio.sleep(0.01)
        assert tree.cancelled == 1


async def test_a_tree_that_never_blocks_is_answered_in_order_even_when_pipelined(ram_server):
    # RamTree promises its operations never wait, so the server answers them inline;
    # pipelined dependent requests then come back in order, each exactly once.
    host, port = ram_server.split("!")[1:]
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        sock = RawSocket(stream)
        await sock.send(
            version_frame(),
            codec.encode(Tattach(1, 0, NOFID, "u", "")),
            *[codec.encode(Tstat(t, 0)) for t in range(2, 50)],
        )
        replies = [await sock.recv() for _ in range(50)]
    assert [r.tag for r in replies] == [NOTAG, *range(1, 50)]
    assert all(type(r).__name__ in ("Rversion", "Rattach", "Rstat") for r in replies)


async def test_a_directory_walked_opened_and_read_together_is_answered_in_one_write(tmp_path, monkeypatch):
    # A FUSE opendir sends Twalk, Topen and the first Tread together; a local export's
    # listing never waits, so the three replies go in one write: one wake-up of the
    # client, not two (the read was answered by a task of its own, after the other two).
    (tmp_path / "d").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "d" / name).write_text(name)
    writes: list[int] = []
    write_parts = transport._write_parts

    def counted(sock, parts):
        writes.append(len(parts))
        write_parts(sock, parts)

    async with serving(LocalTree(str(tmp_path))) as address:
        host, port = address.split("!")[1:]
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            sock = RawSocket(stream)
            await sock.send(version_frame(), codec.encode(Tattach(1, 0, NOFID, "u", "")))
            assert [type(await sock.recv()) for _ in range(2)] == [Rversion, Rattach]
            monkeypatch.setattr(transport, "_write_parts", counted)
            await sock.send(
                codec.encode(Twalk(2, 0, 1, ["d"]))
                + codec.encode(Topen(3, 1, OREAD))
                + codec.encode(Tread(4, 1, 0, 4096))
            )
            replies = [await sock.recv() for _ in range(3)]
    assert [type(r) for r in replies] == [Rwalk, Ropen, Rread]
    assert sorted(st.name for st in codec.decode_stats(replies[2].data)) == ["a", "b", "c"]
    assert writes == [3]
