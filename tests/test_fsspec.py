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


def _url(address: str) -> str:
    """`tcp!127.0.0.1!5640` as the URL a pandas user types: `9p://127.0.0.1:5640`."""
    _, host, port = address.split("!")
    return f"9p://{host}:{port}"


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
