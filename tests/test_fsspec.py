"""fsspec's `9p://` (ninep/fsspec.py) against live `ninefs serve` subprocesses on loopback:
fsspec's own reusable suite for implementations, pandas through 9p:// URLs, the calls that
save round trips, pickling, fork, and the storage options."""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import posixpath
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fsspec
import pytest
import trio
from fsspec.tests import abstract

from fileserver.ram import RamTree
from ninep.codec import decode
from ninep.fsspec import NinePFileSystem

from .servers import ninefs_command, server_process, serving


def _url(address: str, scheme: str = "9p") -> str:
    """`tcp!127.0.0.1!5640` as the URL a user types: `9p://127.0.0.1:5640`."""
    _, host, port = address.split("!")
    return f"{scheme}://{host}:{port}"


@pytest.fixture(scope="module")
def ram_address() -> Iterator[str]:
    """A `ninefs serve` of a fresh RAM tree, shared by the tests of this module."""
    with server_process() as (address, _):
        yield address


@pytest.fixture
def nfs(ram_address: str) -> Iterator[NinePFileSystem]:
    """A file system of its own (no instance cache) on the RAM server, in a fresh directory."""
    fs = NinePFileSystem(address=ram_address, skip_instance_cache=True)
    top = f"/t{os.getpid()}-{id(fs)}"
    fs.makedirs(top)
    fs.top = top  # type: ignore[attr-defined]
    try:
        yield fs
    finally:
        fs.rm(top, recursive=True)
        fs.close()


@pytest.fixture
def exported(tmp_path: Path) -> Iterator[tuple[Path, NinePFileSystem]]:
    """A host directory exported by `ninefs serve DIR`, and a file system on it."""
    root = tmp_path / "export"
    root.mkdir()
    with server_process(str(root)) as (address, _):
        fs = NinePFileSystem(address=address, skip_instance_cache=True)
        try:
            yield root, fs
        finally:
            fs.close()


# --- fsspec's own suite --------------------------------------------------------------------


class NinePFixtures(abstract.AbstractFixtures):
    """fsspec.tests.abstract wired as fsspec's implementations/tests wire theirs."""

    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, ram_address: str) -> Iterator[NinePFileSystem]:
        # auto_mkdir, as the suite's own LocalFileSystem fixture: its scenarios pipe files
        # into directories they never made.
        fs = NinePFileSystem(address=ram_address, auto_mkdir=True, skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_join(self) -> Any:
        return posixpath.join

    @pytest.fixture
    def fs_path(self, fs: NinePFileSystem) -> Iterator[str]:
        path = "/abstract"
        fs.makedirs(path, exist_ok=True)
        yield path
        fs.rm(path, recursive=True)


class TestNinePCopy(abstract.AbstractCopyTests, NinePFixtures):
    pass


class TestNinePGet(abstract.AbstractGetTests, NinePFixtures):
    pass


class TestNinePPut(abstract.AbstractPutTests, NinePFixtures):
    pass


class TestNinePOpen(abstract.AbstractOpenTests, NinePFixtures):
    pass


class TestNinePPipe(abstract.AbstractPipeTests, NinePFixtures):
    pass


# --- pandas, as a user types it ----------------------------------------------------------------


def test_pandas_reads_and_writes_csv_through_a_ninep_url(ram_address: str) -> None:
    pandas = pytest.importorskip("pandas")
    df = pandas.DataFrame({"city": ["Murray Hill", "Lucent", "Bell Labs"], "n": [9, 0, 1]})
    url = f"{_url(ram_address, 'ninep')}/cities-{os.getpid()}.csv"
    df.to_csv(url, index=False)
    try:
        assert pandas.read_csv(url).equals(df)
        with fsspec.open(url.replace("ninep://", "9p://"), "rb") as f:
            assert f.read() == df.to_csv(index=False).encode()
    finally:
        fsspec.filesystem("9p", address=ram_address).rm_file(url)


def test_pandas_reads_and_writes_parquet_through_a_ninep_url(ram_address: str) -> None:
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")  # not a dependency: 55 MB for one format
    df = pandas.DataFrame({"x": list(range(1000)), "y": [f"row {i}" for i in range(1000)]})
    url = f"{_url(ram_address, 'ninep')}/table-{os.getpid()}.parquet"
    df.to_parquet(url)
    try:
        assert pandas.read_parquet(url).equals(df)
    finally:
        fsspec.filesystem("9p", address=ram_address).rm_file(url)


# --- contents --------------------------------------------------------------------------------------


def test_a_one_byte_file_is_written_with_its_byte(exported: tuple[Path, NinePFileSystem]) -> None:
    """p9fs 0.0.4 writes a 1-byte file empty; here every small size arrives whole."""
    root, fs = exported
    with fs.open("/one", "wb") as f:
        f.write(b"x")
    fs.pipe_file("/piped", b"y")
    with fsspec.open("9p:///text", "w", address=fs.address) as t:
        t.write("z")
    fs.touch("/empty")
    assert (root / "one").read_bytes() == b"x"
    assert (root / "piped").read_bytes() == b"y"
    assert (root / "text").read_bytes() == b"z"
    assert (root / "empty").read_bytes() == b""
    assert [fs.cat_file(p) for p in ("/one", "/piped", "/text", "/empty")] == [b"x", b"y", b"z", b""]
    assert fs.size("/one") == 1


def test_ranged_reads_give_exactly_the_bytes_asked_for(nfs: NinePFileSystem) -> None:
    data = hashlib.sha256(b"9").digest() * (100_000)  # 3.2 MB: several iounits, pipelined
    path = f"{nfs.top}/big"  # type: ignore[attr-defined]
    nfs.pipe_file(path, data)
    assert nfs.cat_file(path) == data
    for start, end in [(0, 1), (5, 10), (1 << 20, (1 << 20) + 5), (-7, None), (10, -10), (None, 3), (-3, -1)]:
        assert nfs.cat_file(path, start=start, end=end) == data[start:end], (start, end)
    assert nfs.cat_file(path, start=len(data) + 5) == b""
    assert nfs.cat_file(path, start=len(data) - 2, end=len(data) + 100) == data[-2:]
    assert nfs.cat_ranges([path, path], [0, 100], [4, 104]) == [data[0:4], data[100:104]]
    with nfs.open(path, "rb", block_size=4096) as f:
        assert f.size == len(data)
        for at, n in [(3_000_000, 10), (7, 5000), (len(data) - 3, 10), (1 << 20, 1 << 20)]:
            f.seek(at)
            assert f.read(n) == data[at : at + n], (at, n)
        f.seek(-4, 2)
        assert f.read() == data[-4:] and f.tell() == len(data)


def test_writes_of_many_blocks_and_appends_arrive_in_order(nfs: NinePFileSystem) -> None:
    path = f"{nfs.top}/blocks"  # type: ignore[attr-defined]
    pieces = [bytes([i]) * 300_000 for i in range(7)]
    with nfs.open(path, "wb", block_size=256 * 1024) as f:
        for p in pieces:
            f.write(p)
    assert nfs.cat_file(path) == b"".join(pieces)
    with nfs.open(path, "ab") as f:
        f.write(b"tail")
    assert nfs.cat_file(path, start=-5) == bytes([6]) + b"tail"
    with nfs.open(path, "wb") as f:  # w truncates
        f.write(b"short")
    assert nfs.cat_file(path) == b"short"


def test_missing_names_directories_and_existing_files_raise_pythons_errors(nfs: NinePFileSystem) -> None:
    top = nfs.top  # type: ignore[attr-defined]
    with pytest.raises(FileNotFoundError, match="nothing"):
        nfs.cat_file(f"{top}/nothing")
    with pytest.raises(FileNotFoundError, match="nothing"):
        nfs.open(f"{top}/nothing", "rb")
    with pytest.raises(FileNotFoundError):
        nfs.pipe_file(f"{top}/no/such/dir/f", b"x")  # auto_mkdir is off by default
    with pytest.raises(IsADirectoryError):
        nfs.cat_file(top)
    nfs.pipe_file(f"{top}/f", b"1")
    with pytest.raises(FileExistsError):
        nfs.open(f"{top}/f", "xb")
    with pytest.raises(NotADirectoryError):
        nfs.info(f"{top}/f/under")
    assert not nfs.exists(f"{top}/nothing") and nfs.exists(f"{top}/f")


# --- metadata and directories ------------------------------------------------------------------


def test_info_gives_size_type_mode_and_mtime_and_modified_is_that_mtime(
    exported: tuple[Path, NinePFileSystem],
) -> None:
    root, fs = exported
    (root / "f").write_bytes(b"12345")
    (root / "f").chmod(0o640)
    os.utime(root / "f", (1_700_000_000, 1_700_000_000))
    (root / "d").mkdir()
    info = fs.info("/f")
    assert (info["name"], info["size"], info["type"], info["mode"] & 0o777) == ("/f", 5, "file", 0o640)
    assert fs.info("/d")["type"] == "directory" and fs.isdir("/d") and fs.isfile("/f")
    assert fs.modified("/f") == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
    with pytest.raises(NotImplementedError):
        fs.created("/f")


def test_makedirs_makes_parents_and_says_when_it_exists(nfs: NinePFileSystem) -> None:
    top = nfs.top  # type: ignore[attr-defined]
    nfs.makedirs(f"{top}/a/b/c")
    assert nfs.isdir(f"{top}/a/b/c")
    with pytest.raises(FileExistsError):
        nfs.makedirs(f"{top}/a/b")
    nfs.makedirs(f"{top}/a/b", exist_ok=True)
    with pytest.raises(FileExistsError):
        nfs.mkdir(f"{top}/a")
    nfs.mkdir(f"{top}/x/y")  # create_parents, as fsspec's default
    nfs.rmdir(f"{top}/x/y")
    assert nfs.ls(f"{top}/x") == []


def test_mv_within_a_directory_is_a_rename_that_keeps_the_file(
    exported: tuple[Path, NinePFileSystem],
) -> None:
    root, fs = exported
    fs.pipe_file("/old", b"contents")
    os.utime(root / "old", (1_600_000_000, 1_600_000_000))
    inode = (root / "old").stat().st_ino
    qid = fs.info("/old")["qid"]
    fs.mv("/old", "/new")
    assert not fs.exists("/old") and fs.cat_file("/new") == b"contents"
    assert (root / "new").stat().st_ino == inode and fs.info("/new")["qid"][2] == qid[2]
    assert fs.info("/new")["mtime"] == 1_600_000_000
    fs.pipe_file("/other", b"replaced")
    fs.mv("/new", "/other")  # onto an existing file: replaces it, as mv(1) does
    assert fs.cat_file("/other") == b"contents" and not fs.exists("/new")


def test_mv_across_directories_copies_then_removes_whole_trees(nfs: NinePFileSystem) -> None:
    top = nfs.top  # type: ignore[attr-defined]
    nfs.makedirs(f"{top}/src/sub")
    nfs.makedirs(f"{top}/dst")
    nfs.pipe_file(f"{top}/src/a", b"A")
    nfs.pipe_file(f"{top}/src/sub/b", b"B")
    nfs.mv(f"{top}/src/a", f"{top}/dst/")  # into a directory, keeping the name
    assert nfs.cat_file(f"{top}/dst/a") == b"A" and not nfs.exists(f"{top}/src/a")
    nfs.mv(f"{top}/src", f"{top}/dst/moved")  # a directory: all of it
    assert nfs.cat_file(f"{top}/dst/moved/sub/b") == b"B" and not nfs.exists(f"{top}/src")


def test_rm_recursive_removes_a_tree_and_never_the_root(nfs: NinePFileSystem) -> None:
    top = nfs.top  # type: ignore[attr-defined]
    for d in range(3):
        nfs.makedirs(f"{top}/tree/d{d}/deeper")
        for i in range(20):
            nfs.pipe_file(f"{top}/tree/d{d}/f{i}", b"x")
        nfs.pipe_file(f"{top}/tree/d{d}/deeper/leaf", b"y")
    with pytest.raises(PermissionError, match="root"):
        nfs.rm("/", recursive=True)
    with pytest.raises(PermissionError, match="root"):
        nfs.rm(["/", f"{top}/tree"], recursive=True)
    assert nfs.exists(f"{top}/tree/d0/f0")  # refused before anything was removed
    nfs.rm(f"{top}/tree", recursive=True)
    assert not nfs.exists(f"{top}/tree") and nfs.ls(top) == []


# --- round trips -----------------------------------------------------------------------------------


def _writes(fs: NinePFileSystem) -> list[list[str]]:
    """The T-message names of each write this file system's connection makes from now on.

    Observes the real connection (the messages still go to the real server): which
    requests leave together is what a round trip saved looks like from the client."""
    conn = fs._sync().client.conn
    writes: list[list[str]] = []
    send = conn._send_parts

    async def observed(parts: list[bytes]) -> None:
        await send(parts)  # `soon` requests (a Tclunk) join `parts` during the send
        data, names = b"".join(bytes(p) for p in parts), []
        while data:
            size = int.from_bytes(data[:4], "little")
            names.append(type(decode(data[:size])).__name__)
            data = data[size:]
        writes.append(names)

    conn._send_parts = observed  # type: ignore[method-assign]
    return writes


def test_info_is_a_walk_and_a_stat_in_one_write(nfs: NinePFileSystem) -> None:
    path = f"{nfs.top}/f"  # type: ignore[attr-defined]
    nfs.pipe_file(path, b"x" * 10)
    writes = _writes(nfs)
    assert nfs.info(path)["size"] == 10
    walks = [w for w in writes if "Twalk" in w]
    assert len(walks) == 1 and "Tstat" in walks[0]


def test_ls_detail_reads_the_directory_without_a_stat_per_entry(nfs: NinePFileSystem) -> None:
    top = nfs.top  # type: ignore[attr-defined]
    for i in range(40):
        nfs.pipe_file(f"{top}/f{i:02}", b"y" * i)
    nfs.makedirs(f"{top}/sub")
    writes = _writes(nfs)
    entries = nfs.ls(top, detail=True)
    assert [(e["name"], e["size"], e["type"]) for e in entries] == [
        *[(f"{top}/f{i:02}", i, "file") for i in range(40)],
        (f"{top}/sub", 0, "directory"),
    ]
    sent = [name for w in writes for name in w]
    assert sent.count("Tstat") == 1 and sent.count("Twalk") == 1  # the directory's own
    assert ["Topen", "Tread"] in [[n for n in w if n != "Tclunk"] for w in writes]


def test_cat_and_pipe_of_a_small_file_send_the_walk_with_everything_after_it(nfs: NinePFileSystem) -> None:
    path = f"{nfs.top}/small"  # type: ignore[attr-defined]
    writes = _writes(nfs)
    nfs.pipe_file(path, b"new")  # a new file: the walk to its directory, create, write
    assert ["Twalk", "Tcreate", "Twrite"] in writes
    nfs.pipe_file(path, b"again")  # an existing one: walk, open with OTRUNC, write
    assert ["Twalk", "Topen", "Twrite"] in [[n for n in w if n != "Tclunk"] for w in writes]
    del writes[:]
    assert nfs.cat_file(path) == b"again"
    assert [[n for n in w if n != "Tclunk"] for w in writes] == [["Twalk", "Topen", "Tstat", "Tread"]]


class LateWalks(RamTree):
    """Answers a walk a moment after the requests sent behind it in the same write, as
    intro(5) allows: they find no fid yet and are refused, and must be sent again."""

    never_blocks = RamTree.never_blocks - {"walk"}

    async def walk(self, node: Any, names: Sequence[str]) -> Any:
        await trio.sleep(0.01)
        return await super().walk(node, names)


async def test_a_server_that_answers_out_of_order_gets_every_call_right() -> None:
    async with serving(LateWalks()) as address:

        def work() -> list[Any]:
            fs = NinePFileSystem(address=address, skip_instance_cache=True)
            try:
                fs.makedirs("/d/e")
                fs.pipe_file("/d/f", b"first")
                fs.pipe_file("/d/f", b"second")
                with pytest.raises(FileExistsError):
                    fs.pipe_file("/d/f", b"x", mode="create")
                with fs.open("/d/e/g", "wb") as f:
                    f.write(b"g")
                with fs.open("/d/f", "ab") as f:
                    f.write(b"+")
                seen = [fs.info("/d/f")["size"], fs.cat_file("/d/f"), fs.cat_file("/d/f", start=-2)]
                seen.append(sorted(fs.ls("/d", detail=False)))
                with fs.open("/d/e/g") as f:
                    seen.append(f.read())
                fs.rm("/d", recursive=True)
                seen.append(fs.ls("/", detail=False))
                return seen
            finally:
                fs.close()

        assert await trio.to_thread.run_sync(work) == [7, b"second+", b"d+", ["/d/e", "/d/f"], b"g", []]


# --- pickling, fork, options -------------------------------------------------------------------------


def test_a_file_system_pickles_by_its_options_and_another_process_reconnects(nfs: NinePFileSystem) -> None:
    path = f"{nfs.top}/shared"  # type: ignore[attr-defined]
    nfs.pipe_file(path, b"0123456789")
    with nfs.open(path, "rb") as f:
        f.seek(4)
        blob = pickle.dumps((nfs, f))  # a connected instance, and an open file at offset 4
    assert b"socket" not in blob.lower() and len(blob) < 2000
    reader = "import pickle, sys; fs, f = pickle.loads(sys.stdin.buffer.read()); print(fs.cat_file(f.path, start=8).decode() + f.read().decode())"
    out = subprocess.run(
        [sys.executable, "-c", reader], input=blob, capture_output=True, timeout=60, check=True
    ).stdout
    assert out == b"89456789\n"


def test_a_forked_child_dials_its_own_connection(nfs: NinePFileSystem) -> None:
    path = f"{nfs.top}/forked"  # type: ignore[attr-defined]
    nfs.pipe_file(path, b"parent wrote this")
    assert nfs.cat_file(path) == b"parent wrote this"  # connected before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it ends here
        try:
            signal.alarm(30)
            nfs.pipe_file(path + ".child", nfs.cat_file(path).upper())
            os.write(w, b"ok")
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as got:
            assert got.read() == b"ok"
    finally:
        os.waitpid(pid, 0)
    # The parent's connection is untouched by the child's requests.
    assert nfs.cat_file(path + ".child") == b"PARENT WROTE THIS"
    assert nfs.cat_file(path) == b"parent wrote this"


def test_address_uname_and_the_url_reach_the_server_they_name(tmp_path: Path) -> None:
    sock = tmp_path / "ninefs.sock"
    with server_process(listen=f"unix!{sock}") as (address, _):
        with fsspec.open("9p:///by-unix-socket", "wb", address=address) as f:
            f.write(b"over a unix socket")
        fs = fsspec.filesystem("9p", address=f"unix!{sock}", uname="glenda")
        assert fs.cat_file("9p:///by-unix-socket") == b"over a unix socket"
        fs.pipe_file("/glendas", b"")
        assert fs.info("/glendas")["uid"] == "glenda"
    with server_process() as (address, _):
        url = _url(address).replace("9p://", "9p://rob@")
        with fsspec.open(f"{url}/robs", "wb") as f:
            f.write(b"r")
        of = fsspec.open(f"{url}/robs")
        assert (
            of.fs.info("/robs")["uid"] == "rob" and of.fs.unstrip_protocol("/robs") == f"{_url(address)}/robs"
        )


def test_tls_true_dials_tls_and_pins_the_servers_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NINEFS_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    host_key = str(tmp_path / "host_ed25519")
    with server_process("--host-key", host_key, listen="tls!127.0.0.1!0") as (address, _):
        _, host, port = address.split("!")
        fs = NinePFileSystem(host=host, port=int(port), tls=True, skip_instance_cache=True)
        try:
            assert fs.address == f"tls!{host}!{port}"
            fs.pipe_file("/secret", b"inside TLS")
            assert fs.cat_file("/secret") == b"inside TLS"
        finally:
            fs.close()
    assert f"{host}!{port}" in (tmp_path / "known_hosts").read_text()


def test_key_and_uname_authenticate_to_a_server_that_wants_keys(tmp_path: Path) -> None:
    for name in ("alice", "mallory"):
        made = subprocess.run(
            ninefs_command("key", "gen", "--out", str(tmp_path / name)), capture_output=True, timeout=60
        )
        assert made.returncode == 0, made.stderr
    pub = (tmp_path / "alice.pub").read_text().strip()
    (tmp_path / "authorized_keys").write_text(f"user=alice {pub}\n")
    with server_process("--authorized-keys", str(tmp_path / "authorized_keys")) as (address, _):
        url = _url(address).replace("9p://", "9p://alice@")
        with fsspec.open(f"{url}/notes", "wb", key=str(tmp_path / "alice")) as f:
            f.write(b"signed in")
        fs = NinePFileSystem(
            address=address, uname="alice", key=str(tmp_path / "alice"), skip_instance_cache=True
        )
        try:
            assert pickle.loads(pickle.dumps(fs)).cat_file("/notes") == b"signed in"
        finally:
            fs.close()
        impostor = NinePFileSystem(
            address=address, uname="alice", key=str(tmp_path / "mallory"), skip_instance_cache=True
        )
        with pytest.raises(PermissionError, match="authentication failed"):
            impostor.cat_file("/notes")


def test_no_server_or_a_bad_option_is_one_clear_error() -> None:
    import socket

    with socket.socket() as s:  # bound, never listening: refused, and nobody else's meanwhile
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        fs = NinePFileSystem(host="127.0.0.1", port=port, skip_instance_cache=True, connect_timeout=5)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            fs.exists("/anything")  # unreachable is an error, not "does not exist"
    with pytest.raises(ValueError, match="no server"):
        NinePFileSystem(skip_instance_cache=True)
    with pytest.raises(ValueError, match="tls=True needs a TCP address"):
        NinePFileSystem(address="unix!/tmp/x", tls=True, skip_instance_cache=True)
    with pytest.raises(ValueError, match="not both"):
        NinePFileSystem(host="h", address="tcp!h!1", skip_instance_cache=True)
