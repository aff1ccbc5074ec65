"""Interoperability: 9P2000 implementations we did not write, against ours.

1. p9fs (PyPI, an fsspec client with a bundled py9p fork) as a client of our
   server: `ninefs serve DIR` in a subprocess, or a RAM tree served in this loop.
2. Our client (`ninep.connect`, `ninep.sync.connect`) against the directory
   server of that py9p fork, `python -m py9p -w`, in a subprocess.
3. Our client against aio9p's in-memory example server, a sloppy one (skipped
   when aio9p is not installed).

The third-party quirks these tests step around are described in
/work/interop/REPORT.md; each one is named where it matters. Every socket has a
timeout and every subprocess is stopped, so nothing here can hang.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

import ninep
import ninep.sync
from fileserver.ram import RamTree
from ninep import DMDIR, QTDIR, decode_stats

from .servers import server_process, serving

p9fs = pytest.importorskip("p9fs")
from py9p import py9p  # noqa: E402  (the py9p fork bundled in the p9fs wheel)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

TIMEOUT = 10  # seconds: every blocking socket and every trio test body
FID = 500  # a fid for p9fs's low-level calls (its own are 10-13 and 1024 up)


# --- helpers -----------------------------------------------------------------------------


class TimeoutP9FileSystem(p9fs.P9FileSystem):
    """p9fs with a socket timeout: its own socket blocks forever if a reply never comes."""

    def _connect(self) -> None:
        s = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        self.client = py9p.Client(
            s,
            credentials=py9p.Credentials(user=self.username),
            ver=self.version,
            chatty=False,
            aname=self.aname,
        )


def tcp_port(address: str) -> int:
    """The port of a "tcp!host!port" dial string."""
    return int(address.split("!")[2])


@contextmanager
def p9fs_client(address: str) -> Iterator[p9fs.P9FileSystem]:
    """A p9fs client speaking plain 9P2000 to `address` (a tcp dial string)."""
    fs = TimeoutP9FileSystem(
        host="127.0.0.1",
        port=tcp_port(address),
        username="nobody",
        version="9P2000",  # p9fs proposes 9P2000.L unless told
        skip_instance_cache=True,  # fsspec would hand back a cached instance and its old socket
    )
    try:
        yield fs
    finally:
        fs.client.fd.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def third_party_server(argv_for_port, log: Path) -> Iterator[str]:
    """Run a server that listens on the port we give it; yield its dial string.

    The port is found by binding port 0 and closing it, so another process may
    take it first: then the server exits and we try again with a new port.
    """
    for _attempt in range(5):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv_for_port(port), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except OSError:
                    time.sleep(0.05)
                    continue
                yield f"tcp!127.0.0.1!{port}"
                return
            if proc.poll() is None:
                raise RuntimeError(f"server did not listen within {TIMEOUT}s: {log.read_text()}")
        finally:
            stop(proc)
    raise RuntimeError(f"server would not start: {log.read_text()}")


def dir_entry_sizes(data: bytes) -> list[int]:
    """The sizes of the stat entries in one directory read; fails on a split entry."""
    sizes = []
    pos = 0
    while pos < len(data):
        assert pos + 2 <= len(data), "directory read ends inside an entry's size field"
        (n,) = struct.unpack_from("<H", data, pos)
        pos += 2 + n
        assert pos <= len(data), "directory read ends inside an entry"
        sizes.append(n)
    return sizes


# --- 1. p9fs as a client of our server --------------------------------------------------------

KNOWN = bytes(range(256)) * 4 + b"\x00\xff end"
BIG = os.urandom(50_000)


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A directory for our server to export: a small file, a big one, a subdirectory."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "known.bin").write_bytes(KNOWN)
    (root / "big.bin").write_bytes(BIG)
    (root / "private.txt").write_bytes(b"p")
    (root / "private.txt").chmod(0o640)
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    return root


@pytest.fixture
def ours(exported: Path) -> Iterator[str]:
    """`ninefs serve` of the exported directory, in a subprocess."""
    with server_process(str(exported)) as (address, _proc):
        yield address


def test_p9fs_negotiates_9p2000_and_attaches_to_our_server(ours):
    with p9fs_client(ours) as fs:
        c = fs.client
        # p9fs raises VersionError unless we echo "9P2000" exactly; it proposed msize 8192.
        assert c.version == py9p.Version.v9P2000
        assert c.msize == 8192
        # Tauth was refused (else p9fs raises "no authentication method"), Tattach made fid 11 the root.
        c._walk(c.ROOT, FID, [])
        root = c._stat(FID).stat[0]
        c._clunk(FID)
        assert root.mode & DMDIR
        assert root.qid.type & QTDIR  # p9fs decodes qid.type signed: -128 here
        assert sorted(fs.ls("", detail=False)) == [
            "/big.bin",
            "/hello.txt",
            "/known.bin",
            "/private.txt",
            "/sub/",
        ]


def test_p9fs_asking_for_9p2000_L_is_refused_by_our_answer(ours):
    # We answer any "9P2000.x" with "9P2000"; p9fs insists on the dialect it asked for.
    with pytest.raises(py9p.VersionError):
        TimeoutP9FileSystem(
            host="127.0.0.1",
            port=tcp_port(ours),
            username="nobody",
            version="9P2000.L",
            skip_instance_cache=True,
        )
    with p9fs_client(ours) as fs:  # and the server is still fine
        assert fs.cat_file("hello.txt") == b"hello, world\n"


def test_p9fs_stats_files_and_directories(ours):
    with p9fs_client(ours) as fs:
        info = fs.info("hello.txt")
        assert info["type"] == "file" and info["size"] == 13
        assert fs.info("sub")["type"] == "directory"
        assert fs.isdir("sub") and fs.isfile("sub/inner.txt") and not fs.isdir("hello.txt")

        c = fs.client
        c._walk(c.ROOT, FID, ["private.txt"])
        st = c._stat(FID).stat[0]
        c._clunk(FID)
        assert st.name == b"private.txt"
        assert st.length == 1
        assert st.mode & 0o777 == 0o640 and not st.mode & DMDIR
        assert not st.qid.type & QTDIR

        c._walk(c.ROOT, FID, ["sub"])
        st = c._stat(FID).stat[0]
        c._clunk(FID)
        assert st.name == b"sub" and st.mode & DMDIR and st.qid.type & QTDIR


def test_p9fs_reads_a_file_we_serve(ours):
    with p9fs_client(ours) as fs:
        assert fs.cat_file("known.bin") == KNOWN
        assert fs.cat_file("big.bin") == BIG  # many Treads of msize-24 bytes
        with fs.open("big.bin", "rb") as f:
            f.seek(40_000)
            assert f.read(5000) == BIG[40_000:45_000]

        c = fs.client
        c._walk(c.ROOT, FID, ["known.bin"])
        opened = c._open(FID, py9p.OREAD)
        assert 0 < opened.iounit <= c.msize - 24
        assert c._read(FID, 0, 16).data == KNOWN[:16]
        assert c._read(FID, 250, 10).data == KNOWN[250:260]
        assert c._read(FID, len(KNOWN) - 4, 100).data == KNOWN[-4:]
        assert c._read(FID, len(KNOWN), 100).data == b""  # end of file
        c._clunk(FID)


def test_p9fs_creates_and_writes_a_file(ours, exported):
    data = b"written by p9fs\n" * 1000  # 16 000 bytes: two Twrites at msize 8192
    with p9fs_client(ours) as fs:
        # pipe_file: Tcreate (perm 0755, OREAD), Tclunk, then Topen(OWRITE|OTRUNC) and Twrite.
        # (Never 1 byte: p9fs drops the last byte of a write then.)
        fs.pipe_file("new.txt", data)
        assert fs.cat_file("new.txt") == data
        assert fs.info("new.txt")["size"] == len(data)

        c = fs.client
        c._walk(c.ROOT, FID, ["sub"])
        created = c._create(FID, "low.bin", 0o644, py9p.OWRITE)
        assert not created.qid.type & QTDIR
        assert c._write(FID, 0, b"ab").count == 2
        assert c._write(FID, 2, b"cdef").count == 4
        c._clunk(FID)

        # Tcreate of an existing name is an error (so p9fs cannot overwrite through pipe_file).
        c._walk(c.ROOT, FID, [])
        with pytest.raises(py9p.RpcError, match="exists"):
            c._create(FID, "new.txt", 0o644, py9p.OWRITE)
        # The failed create left the fid where it was; it can still be clunked.
        c._clunk(FID)
        with pytest.raises(py9p.RpcError):
            fs.pipe_file("new.txt", b"again")

    assert (exported / "new.txt").read_bytes() == data
    assert (exported / "new.txt").stat().st_mode & 0o777 == 0o755
    assert (exported / "sub" / "low.bin").read_bytes() == b"abcdef"
    with ninep.sync.connect(ours, uname="tester") as mine:
        assert mine.read_bytes("sub/low.bin") == b"abcdef"
        assert mine.stat("new.txt").length == len(data)


def test_p9fs_removes_a_file(ours, exported):
    with p9fs_client(ours) as fs:
        fs.rm("hello.txt")
        assert not (exported / "hello.txt").exists()
        assert "/hello.txt" not in fs.ls("", detail=False)

        c = fs.client
        c._walk(c.ROOT, FID, ["known.bin"])
        c._remove(FID)
        with pytest.raises(py9p.RpcError, match="fid"):
            c._clunk(FID)  # remove(5) clunked it
        assert not (exported / "known.bin").exists()


def test_p9fs_lists_a_directory_of_150_entries(ours, exported):
    many = exported / "many"
    many.mkdir()
    # Names of varying length, so entries end at odd places relative to the read size.
    names = {f"entry_{i:03d}_" + "x" * (i % 37) for i in range(150)}
    for i, name in enumerate(sorted(names)):
        (many / name).write_bytes(b"z" * i)

    with p9fs_client(ours) as fs:
        listed = fs.ls("many", detail=True)
        assert sorted(e["name"] for e in listed) == sorted(f"many/{n}" for n in names)
        assert {e["name"].split("/")[1]: e["size"] for e in listed} == {
            n: i for i, n in enumerate(sorted(names))
        }

        # The same through the low-level calls: every Rread holds whole entries only.
        c = fs.client
        c._walk(c.ROOT, FID, ["many"])
        c._open(FID, py9p.OREAD)
        offset, reads, seen = 0, 0, []
        while True:
            data = c._read(FID, offset, c.msize).data  # p9fs caps the count at msize-24
            if not data:
                break
            assert len(data) <= c.msize - 24
            assert dir_entry_sizes(data)
            seen += [st.name for st in decode_stats(data)]
            offset += len(data)
            reads += 1
        c._clunk(FID)
        assert reads >= 2, "the listing should need several reads"
        assert sorted(seen) == sorted(names)


def test_p9fs_makes_and_removes_directories(ours, exported):
    with p9fs_client(ours) as fs:
        fs.mkdir("made", create_parents=False)  # Tcreate with DMDIR|0755
        assert (exported / "made").is_dir()
        assert fs.isdir("made")
        fs.makedirs("made/a/b", exist_ok=True)
        assert (exported / "made" / "a" / "b").is_dir()
        fs.pipe_file("made/a/b/f.txt", b"deep")
        assert fs.cat_file("made/a/b/f.txt") == b"deep"

        with pytest.raises(py9p.RpcError, match="not empty"):
            fs.rmdir("made/a/b")
        fs.rm("made/a/b/f.txt")
        fs.rmdir("made/a/b")  # p9fs removes directories with Twalk + Tremove too
        fs.rmdir("made/a")
        fs.rmdir("made")
        assert not (exported / "made").exists()


def test_p9fs_walk_to_a_missing_name_is_an_error(ours):
    with p9fs_client(ours) as fs:
        c = fs.client
        # First name missing: Rerror, in Plan 9's wording.
        with pytest.raises(py9p.RpcError) as err:
            c._walk(c.ROOT, FID, ["nonexistent"])
        assert err.value.args[0] == b"file does not exist"
        # A later name missing: Rwalk with the qids that worked, and no new fid.
        reply = c._walk(c.ROOT, FID, ["sub", "nonexistent"])
        assert len(reply.wqid) == 1 and reply.wqid[0].type & QTDIR
        with pytest.raises(py9p.RpcError, match="fid"):
            c._stat(FID)
        # Walking below a file stops there too.
        reply = c._walk(c.ROOT, FID, ["hello.txt", "x"])
        assert len(reply.wqid) == 1 and not reply.wqid[0].type & QTDIR

        assert not fs.exists("sub/nonexistent")  # p9fs sees the short Rwalk
        # p9fs's info()/exists() recognise a missing first name only by the exact string
        # "file not found" (lib9p's); ours is Plan 9's "file does not exist", so p9fs raises.
        with pytest.raises(py9p.RpcError, match="does not exist"):
            fs.exists("nonexistent")
        assert fs.cat_file("hello.txt") == b"hello, world\n"  # the session is still fine


def test_p9fs_self_flush_is_answered(ours):
    # When a receive fails, p9fs sends Tflush with tag 1 and oldtag 1: it names itself.
    # lib9p answers that at once (sflush: oldreq == r); flush(5) says answer a flush promptly.
    with p9fs_client(ours) as fs:
        c = fs.client
        c.fd.sock.settimeout(2)
        reply = c._flush(1, 2)  # (p9fs's _flush ignores its second argument: oldtag = tag = 1)
        assert reply.type == py9p.Rflush
        c.fd.sock.settimeout(TIMEOUT)
        assert fs.cat_file("hello.txt") == b"hello, world\n"


async def test_p9fs_uses_a_ram_tree_served_in_this_loop():
    async with serving(RamTree()) as address:
        async with ninep.connect(address, uname="tester") as mine:
            await mine.mkdir("d")
            await mine.write_bytes("d/ours.txt", b"from our client")

        def with_p9fs() -> tuple[list[str], bytes]:
            with p9fs_client(address) as fs:
                fs.pipe_file("d/theirs.bin", BIG)
                return sorted(fs.ls("d", detail=False)), fs.cat_file("d/ours.txt")

        with trio.fail_after(TIMEOUT):
            listed, ours_read = await trio.to_thread.run_sync(with_p9fs)
            assert listed == ["d/ours.txt", "d/theirs.bin"]
            assert ours_read == b"from our client"
            async with ninep.connect(address, uname="tester") as mine:
                assert await mine.read_bytes("d/theirs.bin") == BIG


# --- 2. our client against py9p's server ---------------------------------------------------------


@pytest.fixture
def py9p_root(tmp_path: Path) -> Path:
    root = tmp_path / "py9p-root"
    root.mkdir()
    return root


@pytest.fixture
def py9p_server(py9p_root: Path, tmp_path: Path) -> Iterator[str]:
    """`python -m py9p -w` exporting py9p_root: msize at most 8192, iounit 8168."""

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "py9p", "-a", "127.0.0.1", "-p", str(port), "-r", str(py9p_root), "-w"]

    with third_party_server(argv, tmp_path / "py9p.log") as address:
        yield address


async def test_we_list_and_stat_a_py9p_tree(py9p_server, py9p_root):
    (py9p_root / "a.txt").write_bytes(b"alpha")
    (py9p_root / "a.txt").chmod(0o640)
    (py9p_root / "dir").mkdir()
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            assert fs.conn.msize == 8192  # py9p caps it
            assert fs.root_qid.is_dir
            assert sorted(await fs.listdir("/")) == ["a.txt", "dir"]
            st = await fs.stat("a.txt")
            assert st.name == "a.txt" and st.length == 5
            assert st.mode & 0o777 == 0o640 and not st.is_dir
            d = await fs.stat("dir")
            assert d.is_dir and d.mode & DMDIR and d.qid.type & QTDIR
            assert [e.name for e in await fs.ls("a.txt")] == ["a.txt"]  # a file lists as itself
            assert await fs.exists("dir") and not await fs.exists("nope")


async def test_we_read_a_file_larger_than_py9p_iounit(py9p_server, py9p_root):
    data = os.urandom(100_000)  # 13 reads of at most 8168 bytes
    (py9p_root / "big.bin").write_bytes(data)
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            assert await fs.read_bytes("big.bin") == data
            async with fs.open("big.bin", "rb") as f:
                assert f.iounit == 8168
                await f.seek(99_000)
                assert await f.read(5000) == data[99_000:]
                await f.seek(5)
                assert await f.read(20_000) == data[5:20_005]


async def test_we_write_files_to_py9p(py9p_server, py9p_root):
    # No ORDWR anywhere: py9p crashes on it ("cannot access local variable 'm'").
    data = os.urandom(30_000)  # 4 pipelined Twrites
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            assert await fs.write_bytes("new.bin", data) == len(data)  # Tcreate with OWRITE
            assert (py9p_root / "new.bin").read_bytes() == data
            assert await fs.write_bytes("new.bin", b"short") == 5  # Topen with OWRITE|OTRUNC
            assert (py9p_root / "new.bin").read_bytes() == b"short"
            await fs.write_bytes("new.bin", b" and more", append=True)
            assert (py9p_root / "new.bin").read_bytes() == b"short and more"
            async with fs.open("x.txt", "x") as f:
                await f.write("exclusive ")
                await f.write("text")
            assert (py9p_root / "x.txt").read_text() == "exclusive text"
            assert await fs.read_text("x.txt") == "exclusive text"


async def test_we_make_and_remove_on_py9p(py9p_server, py9p_root):
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            await fs.mkdir("d")
            assert (py9p_root / "d").is_dir()
            await fs.mkdir("p/q/r", parents=True)
            assert (py9p_root / "p" / "q" / "r").is_dir()
            await fs.write_bytes("p/q/r/f.txt", b"nested")
            assert (py9p_root / "p" / "q" / "r" / "f.txt").read_bytes() == b"nested"
            assert await fs.read_bytes("/p/q/r/f.txt") == b"nested"
            assert [w async for w in fs.walk("p")] == [
                ("/p", ["q"], []),
                ("/p/q", ["r"], []),
                ("/p/q/r", [], ["f.txt"]),
            ]
            await fs.remove("p/q/r/f.txt")
            assert not (py9p_root / "p" / "q" / "r" / "f.txt").exists()
            await fs.rmtree("p")
            await fs.remove("d")
            assert sorted(os.listdir(py9p_root)) == []
            with pytest.raises(FileNotFoundError):
                await fs.remove("d")
            with pytest.raises(FileNotFoundError):
                await fs.stat("p/q")  # py9p: Rerror "file not found", not a short Rwalk
            with pytest.raises(FileNotFoundError):
                await fs.read_bytes("nope")


async def test_we_list_a_py9p_directory_of_150_entries(py9p_server, py9p_root):
    names = {f"file_{i:03d}" + "y" * (i % 23) for i in range(150)}
    for n in names:
        (py9p_root / n).write_bytes(b"")
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            assert sorted(await fs.listdir("/")) == sorted(names)  # several short reads


async def test_we_walk_a_20_name_path_on_py9p(py9p_server, py9p_root):
    # Our client walks 16 names, then the last 4 with the new fid in place (newfid == fid).
    # py9p bug: a walk in place bumps the fid's reference count, so the Tclunk afterwards
    # does not free it and the next use of that fid number gets "duplicate fid". Hence a
    # fresh connection for each deep walk here.
    names = [f"d{i:02d}" for i in range(20)]
    deep = py9p_root.joinpath(*names)
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_bytes(b"twenty down")
    path = "/".join(names)
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            assert await fs.read_bytes(path + "/leaf.txt") == b"twenty down"
        async with ninep.connect(py9p_server) as fs:
            st = await fs.stat(path)
            assert st.is_dir and st.name == "d19"
        async with ninep.connect(py9p_server) as fs:
            # Missing in the second walk: py9p answers Rerror "file not found" (not a short Rwalk).
            with pytest.raises(FileNotFoundError):
                await fs.stat(path + "/missing.txt")
        async with ninep.connect(py9p_server) as fs:
            # Missing in the first walk of the two.
            with pytest.raises(FileNotFoundError):
                await fs.stat("/".join([*names[:5], "missing", *names[6:]]))
            assert sorted(await fs.listdir("/")) == ["d00"]


async def test_we_rename_through_wstat_on_py9p(py9p_server, py9p_root):
    (py9p_root / "old.txt").write_bytes(b"renamed")
    (py9p_root / "sub").mkdir()
    (py9p_root / "sub" / "a").write_bytes(b"a")
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(py9p_server) as fs:
            await fs.rename("old.txt", "new.txt")  # Twstat with only the name set
            assert sorted(os.listdir(py9p_root)) == ["new.txt", "sub"]
            await fs.rename("/sub/a", "/sub/b")
            assert os.listdir(py9p_root / "sub") == ["b"]
            assert await fs.read_bytes("new.txt") == b"renamed"
            with pytest.raises(OSError):
                await fs.rename("new.txt", "sub/new.txt")  # 9P cannot move between directories


def test_the_blocking_facade_against_py9p(py9p_server, py9p_root):
    (py9p_root / "lines.txt").write_text("one\ntwo\nthree\n")
    data = os.urandom(20_000)
    with ninep.sync.connect(py9p_server) as fs:
        assert fs.listdir("/") == ["lines.txt"]
        assert fs.stat("lines.txt").length == 14
        with fs.open("lines.txt") as f:
            assert list(f) == ["one\n", "two\n", "three\n"]
        assert fs.write_bytes("blob.bin", data) == len(data)
        assert fs.read_bytes("blob.bin") == data
        fs.mkdir("dir")
        assert fs.stat("dir").is_dir
        assert sorted(fs.listdir("/")) == ["blob.bin", "dir", "lines.txt"]
        fs.remove("blob.bin")
        fs.remove("dir")
        with pytest.raises(FileNotFoundError):
            fs.read_bytes("blob.bin")
    assert sorted(os.listdir(py9p_root)) == ["lines.txt"]


# --- 3. our client against aio9p, a sloppy server ---------------------------------------------

# aio9p's example server, as a script: stock it listens only on ./py9p.sock and wipes its
# root on every Tattach. This one listens on TCP and preloads files. Protocol code is aio9p's.
AIO9P_SERVER = """
import asyncio, sys
from aio9p.constant import DMDIR, DMFILE
from aio9p.example.simple import Simple9P2000, BASEQID
from aio9p.helper import mkqid
from aio9p.protocol import Py9PServer
from aio9p.stat import Py9P2000Stat

def mkstat(qid, mode, name, length=0):
    return Py9P2000Stat(p9type=0, p9dev=0, p9qid=qid, p9mode=mode, p9atime=0, p9mtime=0,
                        p9length=length, p9name=name, p9uid=b'root', p9gid=b'root', p9muid=b'root')

class Preloaded(Simple9P2000):
    async def attach(self, fid, afid, uname, aname):
        if not self._direntry.get(BASEQID):
            self._direntry[BASEQID] = {}
            self._stat[BASEQID] = mkstat(BASEQID, DMDIR | 0o777, b'/')
            for n, (name, data) in enumerate(PRELOAD.items(), 1):
                qid = mkqid(DMFILE, n)
                self._direntry[BASEQID][name] = qid
                self._content[qid] = data
                self._stat[qid] = mkstat(qid, DMFILE | 0o644, name, len(data))
        self._fid[fid] = BASEQID
        return BASEQID

PRELOAD = {b'hello.txt': b'hello from aio9p\\n', b'pattern.bin': bytes(range(256)) * 300}

async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Py9PServer(Preloaded(65535)), '127.0.0.1', port)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
"""


@pytest.fixture
def aio9p_server(tmp_path: Path) -> Iterator[str]:
    if importlib.util.find_spec("aio9p") is None:
        pytest.skip("aio9p is not installed")
    script = tmp_path / "aio9p_server.py"
    script.write_text(AIO9P_SERVER)
    with third_party_server(
        lambda port: [sys.executable, str(script), str(port)], tmp_path / "aio9p.log"
    ) as a:
        yield a


async def test_we_list_stat_and_read_an_aio9p_tree(aio9p_server):
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(aio9p_server) as fs:
            assert fs.conn.msize == 65535
            assert sorted(await fs.listdir("/")) == ["hello.txt", "pattern.bin"]
            st = await fs.stat("hello.txt")
            assert st.name == "hello.txt" and st.length == 17 and not st.is_dir
            assert (await fs.stat("/")).is_dir
            assert await fs.read_bytes("hello.txt") == b"hello from aio9p\n"
            # iounit 0 in Ropen: we use msize-24 and never ask for more.
            assert await fs.read_bytes("pattern.bin") == bytes(range(256)) * 300


async def test_we_create_write_and_mkdir_on_aio9p(aio9p_server):
    # aio9p refuses a write that starts past the end of the file, and runs each request as
    # its own task, so pipelined writes of one big buffer may land out of order. Write
    # pieces no bigger than the iounit, one after the other.
    data = os.urandom(200_000)
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(aio9p_server) as fs:
            async with fs.open("new.bin", "xb") as f:  # Tcreate; no walk to a missing name first
                for i in range(0, len(data), 50_000):
                    assert await f.write(data[i : i + 50_000]) == 50_000
            assert (await fs.stat("new.bin")).length == len(data)
            assert await fs.read_bytes("new.bin") == data  # pipelined reads are fine
            await fs.mkdir("d")
            assert (await fs.stat("d")).is_dir
            async with fs.open("d/inside.txt", "x") as f:
                await f.write("inside")
            # (No listdir("d"): aio9p gives a created directory a qid without QTDIR, though its
            # stat has DMDIR, so to our client's walk it looks like a file.)
            assert await fs.read_text("d/inside.txt") == "inside"
            with pytest.raises(FileExistsError):
                await fs.mkdir("hello.txt")
            await fs.remove("d/inside.txt")
            await fs.remove("d")
            await fs.remove("new.bin")
            assert sorted(await fs.listdir("/")) == ["hello.txt", "pattern.bin"]


async def test_a_malformed_rerror_from_aio9p_fails_one_call_not_the_connection(aio9p_server):
    with trio.fail_after(TIMEOUT):
        async with ninep.connect(aio9p_server) as fs:
            # A missing first name: aio9p appends a 9P2000.u errno to the Rerror. Our codec, like
            # Plan 9's convM2S, rejects the frame; only that call fails.
            with pytest.raises(OSError):
                await fs.stat("nonexistent")
            # A name below a file is a proper short Rwalk.
            with pytest.raises(NotADirectoryError):
                await fs.stat("hello.txt/below")
            assert await fs.read_bytes("hello.txt") == b"hello from aio9p\n"


async def test_walk_and_act_in_one_round_trip_on_py9p(py9p_server, py9p_root):
    # Twalk with Topen, Tread, Tstat or Tremove behind it in the same write (ninep/remote.py).
    from ninep.constants import OREAD
    from ninep.remote import RemoteTree

    (py9p_root / "d").mkdir()
    (py9p_root / "d" / "f.txt").write_bytes(b"read with its open\n")
    (py9p_root / "d" / "old.txt").write_bytes(b"x")
    with trio.fail_after(TIMEOUT):
        async with RemoteTree.connect(py9p_server) as remote:
            root = await remote.attach("", "")
            node, _, _, data = await remote.walk_open_read(root, ["d", "f.txt"], OREAD, 1 << 20)
            assert bytes(data) == b"read with its open\n"
            await remote.clunk(node)
            node, stat = await remote.walk_stat(root, ["d", "f.txt"])
            assert (stat.name, stat.length) == ("f.txt", 19)
            await remote.clunk(node)
            await remote.walk_remove(root, ["d", "old.txt"])
            assert not (py9p_root / "d" / "old.txt").exists()
            with pytest.raises(FileNotFoundError):
                await remote.walk_open(root, ["d", "old.txt"], OREAD)


@pytest.mark.fuse
def test_a_py9p_tree_mounted_works_with_shell_commands(py9p_server, py9p_root, tmp_path):
    from .fuse_helpers import fuse_available, mounted, sh

    if not fuse_available():
        pytest.skip("needs /dev/fuse")
    (py9p_root / "notes.txt").write_text("from py9p\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(py9p_server, str(mp)):
        r = sh(
            f"cat {mp}/notes.txt && ls -l {mp} && echo new > {mp}/new.txt && cat {mp}/new.txt && rm {mp}/notes.txt"
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("from py9p\n") and r.stdout.endswith("new\n")
        assert " notes.txt" in r.stdout
    assert (py9p_root / "new.txt").read_text() == "new\n"
    assert not (py9p_root / "notes.txt").exists()
