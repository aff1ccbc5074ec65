from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from fileserver.ram import RamTree
from ninep import Client, Connection, connect

from .servers import raw_connection, serving


@pytest.fixture
async def ram_server() -> AsyncIterator[str]:
    """The address of a fresh RAM tree served in this loop."""
    async with serving(RamTree()) as address:
        yield address


@pytest.fixture
async def fs(ram_server: str) -> AsyncIterator[Client]:
    """A client attached to a fresh RAM tree."""
    async with connect(ram_server) as client:
        yield client


@pytest.fixture
async def conn(ram_server: str) -> AsyncIterator[Connection]:
    """A raw, versioned connection to a fresh RAM tree; fid 0 is attached to its root."""
    async with raw_connection(ram_server) as c:
        await c.attach(0, "tester")
        yield c


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind(tmp_path_factory):
    """The suite must leave no FUSE mount of ours behind (checked when it ends).

    Ours are the ones under this run's temporary directory, where every test mounts:
    another process's mounts (a developer's, another suite's running beside this one)
    are none of this suite's business.
    """
    from .fuse_helpers import ninefs_mounts

    base = str(tmp_path_factory.getbasetemp()) + os.sep
    yield
    left = [m for m in ninefs_mounts() if m.startswith(base)]
    assert not left, f"tests left FUSE mounts behind: {sorted(left)}"
