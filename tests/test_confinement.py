"""An exported directory stays confined while the host changes it underneath (issue #15).

The attacks are the host's: a user who may write inside the export swaps a
directory for a symlink to outside it (renameat2 RENAME_EXCHANGE, or plain
renames) while 9P clients walk, read, list, create and overwrite; or plants
symlinks and asks the server to remove or rename them. The races run for a few
seconds each in a separate process; what must hold is absolute: no byte from
outside is ever returned, no file outside is ever made or written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import ninep
from fileserver.local import LocalTree
from ninep import DMDIR, OREAD, OTRUNC, OWRITE
from ninep.codec import decode_stats

from .fuse_helpers import mounted, needs_fuse, sh
from .servers import raw_connection, server_process, serving

RACE_SECONDS = 2.5
SECRET = b"SECRET: outside the export"

# The swapping process: exchange two names atomically (renameat2 RENAME_EXCHANGE), or
# move a directory away and a symlink in its place with plain renames, until killed.
_SWAPPER = r"""
import ctypes, os, sys
mode, a, b = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
def exchange():
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
def renames():
    os.rename(a, a + ".real"); os.rename(b, a); os.rename(a, b); os.rename(a + ".real", a)
swap = exchange if mode == "exchange" else renames
swap(); swap()
print("swapping", flush=True)
while True:
    swap()
"""


@contextmanager
def swapping(mode: str, a: Path, b: Path) -> Iterator[None]:
    """Swap `a` (a directory) and `b` (a symlink) in a loop while the body runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, mode, str(a), str(b)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "swapping\n"
        yield
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    if mode == "renames" and (a.parent / (a.name + ".real")).exists():  # killed mid-swap
        if a.is_symlink():
            a.rename(b)
        (a.parent / (a.name + ".real")).rename(a)


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """(export, outside): export/sub is a directory, export/sublink a symlink to outside,
    which holds a secret under the same name as sub's file and one more name."""
    export, outside = tmp_path / "export", tmp_path / "outside"
    (export / "sub").mkdir(parents=True)
    (export / "sub" / "f").write_bytes(b"inside")
    outside.mkdir()
    (outside / "f").write_bytes(SECRET)
    (outside / "outside-only").write_bytes(SECRET)
    os.symlink(outside, export / "sublink")
    return export, outside


def untouched(outside: Path) -> bool:
    return sorted(os.listdir(outside)) == ["f", "outside-only"] and all(
        (outside / n).read_bytes() == SECRET for n in ("f", "outside-only")
    )


# --- swap races -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exchange", "renames"])
async def test_a_swap_loop_during_walk_open_read_create_never_reaches_outside(site, mode):
    export, outside = site
    reads = leaked = 0
    async with serving(LocalTree(str(export))) as address, ninep.connect(address) as fs:
        with swapping(mode, export / "sub", export / "sublink"):
            deadline, i = time.monotonic() + RACE_SECONDS, 0
            while time.monotonic() < deadline:
                i += 1
                for path in ("sub/f", "sublink/f"):
                    try:
                        data = await fs.read_bytes(path)
                    except OSError:
                        continue
                    reads += 1
                    leaked += data == SECRET
                try:
                    await fs.write_bytes(f"sub/new{i}", b"made through 9P")
                except OSError:
                    pass
    assert leaked == 0, f"{leaked} of {reads} reads returned the file outside the export"
    assert reads > 0
    assert untouched(outside)


async def test_a_fid_held_on_a_swapped_directory_keeps_naming_that_directory(site):
    export, outside = site
    leaked: list[str] = []
    async with serving(LocalTree(str(export))) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.walk(0, 1, ["sub"])  # fid 1: the directory, held throughout
        with swapping("exchange", export / "sub", export / "sublink"):
            deadline, i = time.monotonic() + RACE_SECONDS, 0
            while time.monotonic() < deadline:
                i += 1
                try:  # read
                    await c.walk(1, 2, ["f"])
                    try:
                        await c.open(2, OREAD)
                        if await c.read(2, 0, 100) == SECRET:
                            leaked.append("read")
                    finally:
                        await c.clunk(2)
                except OSError:
                    pass
                await c.walk(1, 3, [])  # list
                try:
                    await c.open(3, OREAD)
                    names = [st.name for st in decode_stats(await c.read(3, 0, 8192))]
                    if "outside-only" in names:
                        leaked.append("list")
                finally:
                    await c.clunk(3)
                await c.walk(1, 4, [])  # create
                try:
                    await c.create(4, f"new{i}", 0o644, OWRITE)
                    await c.write(4, 0, b"made through the held fid")
                except OSError:
                    pass
                finally:
                    await c.clunk(4)
                try:  # overwrite
                    await c.walk(1, 5, ["f"])
                    try:
                        await c.open(5, OWRITE | OTRUNC)
                        await c.write(5, 0, b"overwritten")
                    finally:
                        await c.clunk(5)
                except OSError:
                    pass
    assert not leaked, f"reached outside the export: {leaked[:5]} ({len(leaked)} times)"
    assert untouched(outside)
    real = (
        export / "sub"
        if (export / "sub").is_dir() and not (export / "sub").is_symlink()
        else export / "sublink"
    )
    assert (real / f"new{i}").read_bytes() == b"made through the held fid"


# --- host symlinks: remove and rename act on the link ------------------------------------


@pytest.fixture
async def linked(tmp_path: Path):
    """An export with sub/f, link -> sub/f and dlink -> sub; a client attached to it."""
    export = tmp_path / "export"
    (export / "sub").mkdir(parents=True)
    (export / "sub" / "f").write_bytes(b"the target")
    os.symlink("sub/f", export / "link")
    os.symlink("sub", export / "dlink")
    async with serving(LocalTree(str(export))) as address, ninep.connect(address) as fs:
        yield export, fs


def targets_intact(export: Path) -> bool:
    return os.listdir(export / "sub") == ["f"] and (export / "sub" / "f").read_bytes() == b"the target"


async def test_removing_a_symlink_to_a_file_removes_the_link_only(linked):
    export, fs = linked
    await fs.remove("link")
    assert not os.path.lexists(export / "link")
    assert targets_intact(export)


async def test_removing_a_symlink_to_a_directory_removes_the_link_only(linked):
    export, fs = linked
    await fs.remove("dlink")
    assert not os.path.lexists(export / "dlink")
    assert targets_intact(export)


@pytest.mark.parametrize("link", ["link", "dlink"])
async def test_renaming_a_symlink_renames_the_link_only(linked, link):
    export, fs = linked
    target = os.readlink(export / link)
    await fs.rename(link, link + "2")
    assert not os.path.lexists(export / link)
    assert os.readlink(export / (link + "2")) == target
    assert targets_intact(export)


async def test_a_symlink_has_a_qid_of_its_own(linked):
    # One qid for both names would make a FUSE mount take dlink for sub itself, and remove
    # sub's files through it whatever the server checks for names walked through dlink.
    _, fs = linked
    assert (await fs.stat("dlink")).qid.path != (await fs.stat("sub")).qid.path
    assert (await fs.stat("link")).qid.path != (await fs.stat("sub/f")).qid.path
    assert {st.name: st.qid for st in await fs.ls("/")}["dlink"] == (await fs.stat("dlink")).qid


async def test_nothing_is_removed_through_a_symlinked_directory(linked):
    # A 9P client sees dlink as the directory it points to; `rm -rf dlink` would empty
    # the target, where the host's rm removes only the link.
    export, fs = linked
    with pytest.raises(PermissionError):
        await fs.remove("dlink/f")
    assert targets_intact(export)


async def test_symlinks_inside_the_export_work_like_their_targets(linked, tmp_path):
    export, fs = linked
    os.symlink("link", export / "chain")
    os.symlink(export / "sub" / "f", export / "absolute")
    os.symlink("../dlink/f", export / "sub" / "up")
    assert await fs.read_bytes("link") == b"the target"
    assert await fs.read_bytes("chain") == b"the target"
    assert await fs.read_bytes("absolute") == b"the target"
    assert await fs.read_bytes("dlink/f") == b"the target"
    assert await fs.read_bytes("sub/up") == b"the target"
    assert sorted(await fs.listdir("dlink")) == ["f", "up"]
    assert (await fs.stat("link")).name == "link"
    assert (await fs.stat("dlink")).mode & DMDIR
    await fs.write_bytes("dlink/new", b"through the link")
    assert (export / "sub" / "new").read_bytes() == b"through the link"


async def test_symlink_loops_and_escapes_are_errors_not_hangs(linked, tmp_path):
    export, fs = linked
    os.symlink("loop2", export / "loop1")
    os.symlink("loop1", export / "loop2")
    os.symlink("../../..", export / "sub" / "climb")
    (tmp_path / "secret").write_bytes(SECRET)
    os.symlink("../secret", export / "escape")
    for path in ("loop1", "sub/climb/etc/passwd", "escape"):
        with pytest.raises(OSError):
            await fs.read_bytes(path)
    assert "escape" not in await fs.listdir("/") and "loop1" not in await fs.listdir("/")


# --- long paths ---------------------------------------------------------------------------


async def test_a_4000_byte_path_inside_the_export_works(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    names = [f"{i:02}" + "d" * 199 for i in range(20)]
    deep = "/".join(names)
    assert len(deep) > 4000 and len(str(export)) + len(deep) > 4096
    async with serving(LocalTree(str(export))) as address, ninep.connect(address) as fs:
        for i in range(1, len(names) + 1):
            await fs.mkdir("/".join(names[:i]))
        await fs.write_bytes(f"{deep}/file", b"deep down")
        assert await fs.read_bytes(f"{deep}/file") == b"deep down"
        st = await fs.stat(f"{deep}/file")
        assert st.name == "file" and st.length == 9
        assert await fs.listdir(deep) == ["file"]
        fd = os.open(export, os.O_PATH)
        try:
            for name in names:
                fd, old = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=fd), fd
                os.close(old)
            assert os.stat("file", dir_fd=fd).st_size == 9
        finally:
            os.close(fd)
        await fs.remove(f"{deep}/file")
        for i in range(len(names), 0, -1):
            await fs.remove("/".join(names[:i]))
    assert os.listdir(export) == []


# --- every user its own: search permission ------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make root's private directory")
async def test_nobody_cannot_read_a_file_inside_roots_0700_directory(tmp_path):
    export = tmp_path / "export"
    (export / "private").mkdir(parents=True)
    (export / "private" / "f").write_bytes(b"root's private")
    os.chmod(export / "private" / "f", 0o644)
    os.chmod(export / "private", 0o700)
    (export / "no-search").mkdir()
    os.chmod(export / "no-search", 0o776)
    (export / "public.txt").write_bytes(b"anyone")
    os.chmod(export / "public.txt", 0o644)
    os.symlink("private/f", export / "via-link")
    os.chmod(export, 0o755)
    async with serving(LocalTree(str(export), check_users=True)) as address, raw_connection(address) as c:
        await c.attach(0, "nobody")
        await c.walk(0, 1, ["public.txt"])
        await c.open(1, OREAD)
        assert await c.read(1, 0, 100) == b"anyone"
        await c.walk(0, 2, ["private"])  # the export's root may be searched
        with pytest.raises(PermissionError):
            await c.walk(2, 3, ["f"])
        assert await c.walk(0, 3, ["private", "f"]) == [(await c.stat(2)).qid]  # walk(5): stops
        with pytest.raises(PermissionError, match="nobody may not enter"):
            await c.walk(0, 3, ["via-link"])  # a link's target is searched for as the host would
        await c.walk(0, 4, ["no-search"])
        with pytest.raises(PermissionError):
            await c.create(4, "made", 0o644, OWRITE)  # create needs write and search
        assert os.listdir(export / "no-search") == []


# --- the same through a FUSE mount --------------------------------------------------------


@pytest.mark.fuse
@needs_fuse
def test_mv_and_rm_rf_of_symlinks_through_a_mount_leave_the_targets(tmp_path):
    export, mp = tmp_path / "export", tmp_path / "mnt"
    (export / "sub").mkdir(parents=True)
    (export / "sub" / "f").write_bytes(b"the target")
    os.symlink("sub/f", export / "link")
    os.symlink("sub", export / "dlink")
    mp.mkdir()
    with server_process(str(export)) as (address, _), mounted(address, str(mp)):
        sh(f"ls -laR {mp}")  # the mount knows every name, the targets' as well as the links'
        r = sh(f"mv {mp}/link {mp}/link2")
        assert r.returncode == 0, r.stderr
        r = sh(f"rm -rf {mp}/dlink")
        assert "Permission denied" in r.stderr  # refused, not done on the target
        assert targets_intact(export)
        r = sh(f"rmdir {mp}/dlink")  # removes the link, though it lists as a directory with files
        assert r.returncode == 0, r.stderr
    assert os.readlink(export / "link2") == "sub/f" and not os.path.lexists(export / "link")
    assert not os.path.lexists(export / "dlink")
    assert targets_intact(export)


# --- descriptors ----------------------------------------------------------------------------


async def test_every_descriptor_a_node_holds_is_closed_when_its_fids_are(linked):
    export, fs = linked
    (export / "sub" / "deeper").mkdir()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    fids = [(await fs.walk_fid(path))[0] for path in ("sub/f", "sub/deeper", "dlink/f", "link") * 50]
    assert open_fds() - before < 20  # one place per name in a directory, shared by its fids
    for fid in fids:
        await fs.conn.clunk(fid)
        fs.conn.fids.put(fid)
    for i in range(20):  # walks, opens, listings, creates, renames and removes, clunked
        await fs.write_bytes(f"sub/deeper/n{i}", b"x")
        assert await fs.read_bytes(f"dlink/deeper/n{i}") == b"x"
        await fs.rename(f"sub/deeper/n{i}", f"sub/deeper/m{i}")
        await fs.listdir("sub/deeper")
        await fs.remove(f"sub/deeper/m{i}")
    assert open_fds() <= before
