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

from .servers import server_process, serving


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
