"""The path API and the blocking facade, as a person uses them."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
import trio

import ninep
import ninep.sync
from fileserver.ram import RamTree
from ninep import Stat

from .servers import server_process, serving


async def test_write_then_read_bytes_and_text(fs):
    await fs.write_bytes("/greeting", b"hello")
    assert await fs.read_bytes("greeting") == b"hello"
    await fs.write_text("t", "héllo\n")
    assert await fs.read_text("./t") == "héllo\n"


async def test_write_bytes_truncates_and_append_appends(fs):
    await fs.write_bytes("f", b"long content")
    await fs.write_bytes("f", b"short")
    assert await fs.read_bytes("f") == b"short"
    await fs.write_bytes("f", b"+more", append=True)
    assert await fs.read_bytes("f") == b"short+more"


async def test_missing_file_raises_file_not_found_naming_the_path(fs):
    with pytest.raises(FileNotFoundError) as info:
        await fs.read_bytes("no/such/file")
    assert info.value.filename == "/no/such/file"
    assert "file does not exist" in str(info.value)
    assert "/no/such/file" in str(info.value)


async def test_errors_are_pythons_own_classes(fs):
    await fs.mkdir("d")
    await fs.write_bytes("d/f", b"x")
    with pytest.raises(FileExistsError):
        await fs.mkdir("d")
    with pytest.raises(NotADirectoryError):
        await fs.listdir("d/f/x")
    with pytest.raises(OSError) as info:
        await fs.remove("d")
    assert "directory not empty" in str(info.value)
    with pytest.raises(IsADirectoryError):
        async with fs.open("d", "w"):
            pass


async def test_except_outside_the_connection_block_catches_the_error(ram_server):
    with pytest.raises(FileNotFoundError):
        async with ninep.connect(ram_server) as fs:
            await fs.read_bytes("missing")


async def test_ls_listdir_and_stat(fs):
    await fs.mkdir("d")
    for name in ("b", "a", "c"):
        await fs.write_bytes(f"d/{name}", name.encode() * 3)
    assert sorted(await fs.listdir("d")) == ["a", "b", "c"]
    entries = {e.name: e for e in await fs.ls("d")}
    assert entries["a"].length == 3 and not entries["a"].is_dir
    st = await fs.stat("d")
    assert st.is_dir and st.name == "d"


async def test_mkdir_parents_and_walk(fs):
    await fs.mkdir("x/y/z", parents=True)
    await fs.mkdir("x/y/z", parents=True)  # no error when it exists
    await fs.write_bytes("x/y/file", b"1")
    tree = [(d, sorted(ds), sorted(fs_)) async for d, ds, fs_ in fs.walk("x")]
    assert tree == [("/x", ["y"], []), ("/x/y", ["z"], ["file"]), ("/x/y/z", [], [])]


async def test_rename_within_a_directory_and_exdev_across(fs):
    await fs.mkdir("a")
    await fs.mkdir("b")
    await fs.write_bytes("a/old", b"x")
    await fs.rename("a/old", "a/new")
    assert await fs.listdir("a") == ["new"]
    with pytest.raises(OSError) as info:
        await fs.rename("a/new", "b/new")
    assert info.value.errno == 18  # EXDEV, so callers fall back to copying, as mv does


async def test_remove_and_rmtree(fs):
    await fs.mkdir("t/u", parents=True)
    await fs.write_bytes("t/u/f", b"x")
    await fs.rmtree("t")
    assert not await fs.exists("t")


async def test_chmod_truncate_utime(fs):
    await fs.write_bytes("f", b"0123456789")
    await fs.chmod("f", 0o600)
    await fs.truncate("f", 4)
    await fs.utime("f", 1234567)
    st = await fs.stat("f")
    assert (st.mode & 0o777, st.length, st.mtime) == (0o600, 4, 1234567)


async def test_open_read_seek_readline_iterate(fs):
    await fs.write_bytes("lines", b"one\ntwo\nthree\n")
    async with fs.open("lines") as f:
        assert await f.readline() == "one\n"
        assert [line async for line in f] == ["two\n", "three\n"]
        await f.seek(4)
        assert await f.read(3) == "two"
        assert f.tell() == 7
        await f.seek(-6, 2)
        assert await f.read() == "three\n"
    async with fs.open("lines", "rb") as f:
        assert await f.read(3) == b"one"


async def test_open_modes(fs):
    async with fs.open("n", "x") as f:
        await f.write("new")
    with pytest.raises(FileExistsError):
        await fs.open("n", "x")
    async with fs.open("n", "a") as f:
        await f.write("er")
    async with fs.open("n", "r+") as f:
        await f.seek(0)
        await f.write("N")
        await f.seek(0)
        assert await f.read() == "Newer"
    async with fs.open("n", "w+b") as f:
        await f.write(b"w")
        await f.seek(0)
        assert await f.read() == b"w"
    f = await fs.open("n")
    assert await f.read() == "w"
    await f.close()


async def test_paths_deeper_than_16_names_are_split_into_walks(fs):
    deep = "/".join(f"level{i}" for i in range(40))
    await fs.mkdir(deep, parents=True)
    await fs.write_bytes(deep + "/leaf", b"deep")
    assert await fs.read_bytes(deep + "/leaf") == b"deep"
    with pytest.raises(FileNotFoundError):
        await fs.stat(deep + "/missing/x")


async def test_reads_and_writes_larger_than_iounit_are_split(ram_server):
    data = os.urandom(300_000)
    async with ninep.connect(ram_server, msize=8192) as fs:
        assert fs.conn.iounit == 8192 - 24
        await fs.write_bytes("big", data)
        assert await fs.read_bytes("big") == data
        async with fs.open("big", "rb") as f:
            await f.seek(10_000)
            assert await f.read(50_000) == data[10_000:60_000]


async def test_concurrent_clients_see_each_others_files(ram_server):
    async with ninep.connect(ram_server) as a, ninep.connect(ram_server) as b:

        async def writer(i):
            await a.write_bytes(f"f{i}", str(i).encode())

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(writer, i)
        assert sorted(await b.listdir("/"), key=lambda n: int(n[1:])) == [f"f{i}" for i in range(50)]
        assert await b.read_bytes("f42") == b"42"


async def test_cancelling_a_call_flushes_it_and_the_connection_goes_on():
    from .test_server import SlowTree

    tree = SlowTree()
    async with serving(tree) as address, ninep.connect(address) as fs:
        await fs.write_bytes("slow", b"x")
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def reader():
                with scope:
                    await fs.read_bytes("slow")

            nursery.start_soon(reader)
            await tree.reading.wait()  # the read is waiting on the server: now cancel it
            scope.cancel()
        with trio.fail_after(5):
            while tree.cancelled != 1:  # the server was told (Tflush) and stopped waiting
                await trio.sleep(0.01)
        tree.release.set()
        assert await fs.read_bytes("slow") == b"x"


async def test_raw_calls_are_there_for_those_who_need_them(fs):
    fid, qid = await fs.walk_fid("/")
    assert qid.is_dir
    await fs.conn.create(fid, "raw", 0o644, ninep.ORDWR)
    await fs.conn.write(fid, 0, b"raw!")
    assert await fs.conn.read(fid, 0, 10) == b"raw!"
    await fs.conn.wstat(fid, Stat.dont_touch(name="cooked"))
    await fs.conn.clunk(fid)
    assert await fs.read_bytes("cooked") == b"raw!"


async def test_attach_as_a_user_owns_the_files_they_create(ram_server):
    async with ninep.connect(ram_server, uname="glenda") as fs:
        await fs.write_bytes("mine", b"x")
        assert (await fs.stat("mine")).uid == "glenda"


def test_blocking_facade_from_threads():
    with server_process() as (address, _), ninep.sync.connect(address) as fs:
        fs.write_bytes("shared", b"")
        errors = []

        def worker(i):
            try:
                fs.write_bytes(f"t{i}", f"thread {i}".encode())
                assert fs.read_bytes(f"t{i}") == f"thread {i}".encode()
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(fs.listdir("/")) == 9
        with fs.open("t3") as f:
            assert f.read() == "thread 3"
        with pytest.raises(FileNotFoundError):
            fs.stat("missing")
        assert [d for d, _, _ in fs.walk("/")] == ["/"]


def test_blocking_facade_reports_a_server_that_is_not_there():
    with pytest.raises(OSError):
        ninep.sync.connect("tcp!127.0.0.1!1")


@pytest.mark.slow
async def test_100_mib_transfer_through_a_subprocess_server_keeps_every_byte():
    chunk = os.urandom(1 << 20)
    want = hashlib.sha256()
    with server_process() as (address, _):
        async with ninep.connect(address) as fs:
            async with fs.open("big", "wb") as f:
                for i in range(100):
                    block = chunk[i:] + chunk[:i]
                    want.update(block)
                    await f.write(block)
            got = hashlib.sha256()
            async with fs.open("big", "rb") as f:
                while data := await f.read(4 << 20):
                    got.update(data)
            assert (await fs.stat("big")).length == 100 << 20
    assert got.hexdigest() == want.hexdigest()


async def test_unix_socket_server(tmp_path):
    sock = tmp_path / "9p.sock"
    async with serving(RamTree(), f"unix!{sock}") as address, ninep.connect(address) as fs:
        await fs.write_bytes("u", b"over unix")
        assert await fs.read_bytes("u") == b"over unix"


async def test_more_concurrent_calls_than_the_server_allows_in_flight_all_succeed(fs):
    # The server allows 256 requests in flight; the client queues the rest rather than fail.
    await fs.write_bytes("f", b"x")
    results = []

    async def one():
        results.append((await fs.stat("f")).length)

    async with trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(one)
    assert results == [1] * 1000


async def test_a_call_with_no_answer_times_out_when_asked():
    from .test_server import SlowTree

    tree = SlowTree()
    async with serving(tree) as address, ninep.connect(address, timeout=2) as fs:
        await fs.write_bytes("slow", b"x")
        with pytest.raises(TimeoutError, match="timed out"):
            await fs.read_bytes("slow")
        assert tree.cancelled >= 1  # the server was told (Tflush) and stopped waiting
        tree.release.set()
        assert await fs.read_bytes("slow") == b"x"


async def test_the_client_reconnects_after_the_server_restarts(tmp_path):
    import signal

    with server_process(str(tmp_path)) as (address, proc):
        async with ninep.connect(address) as fs:
            await fs.write_bytes("kept", b"on disk")
            before = await fs.open("kept")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            with server_process(str(tmp_path), listen=address):
                assert (await fs.stat("kept")).length == 7  # repeated on a new connection
                assert await fs.read_bytes("kept") == b"on disk"
                await fs.write_bytes("new", b"after")
                assert (tmp_path / "new").read_bytes() == b"after"
                with pytest.raises(OSError, match="open the file again"):
                    await before.read()
                await before.close()


async def test_without_reconnect_a_lost_connection_stays_lost(tmp_path):
    import signal

    with server_process(str(tmp_path)) as (address, proc):
        async with ninep.connect(address, reconnect=False) as fs:
            await fs.write_bytes("f", b"x")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            with server_process(str(tmp_path), listen=address), pytest.raises(OSError, match="connection"):
                await fs.stat("f")
