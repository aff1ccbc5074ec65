"""Exporting a host directory: the mapping onto the host, and confinement to the root."""

from __future__ import annotations

import os
import pwd

import pytest
import trio

import ninep
from fileserver.local import LocalTree
from ninep import DMAPPEND, ORDWR, OREAD
from ninep.constants import QTAPPEND

from .servers import raw_connection, serving


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello from the host\n")
    (root / "sub").mkdir()
    (root / "sub" / "inner").write_bytes(b"inner")
    (tmp_path / "secret").write_bytes(b"outside the export")
    return root


@pytest.fixture
async def local(export):
    async with serving(LocalTree(str(export))) as address, ninep.connect(address) as fs:
        yield fs


async def test_files_of_the_host_are_read_and_written(local, export):
    assert await local.read_bytes("hello.txt") == b"hello from the host\n"
    await local.write_bytes("sub/new", b"from 9P")
    assert (export / "sub" / "new").read_bytes() == b"from 9P"


async def test_owner_and_group_are_names(local, export):
    st = await local.stat("hello.txt")
    assert st.uid == pwd.getpwuid(os.stat(export / "hello.txt").st_uid).pw_name
    assert (st.gid and not st.gid.isdigit()) or st.gid.isdigit()


async def test_qid_path_is_the_inode_and_vers_moves_when_the_file_changes(local, export):
    before = (await local.stat("hello.txt")).qid
    assert before.path & 0xFFFFFFFFFFFF == os.stat(export / "hello.txt").st_ino & 0xFFFFFFFFFFFF
    await local.write_bytes("hello.txt", b"changed and longer")
    after = (await local.stat("hello.txt")).qid
    assert after.path == before.path and after.vers != before.vers


async def test_permissions_come_from_the_host(local, export):
    os.chmod(export / "hello.txt", 0o640)
    assert (await local.stat("hello.txt")).mode & 0o777 == 0o640
    await local.chmod("hello.txt", 0o604)
    assert os.stat(export / "hello.txt").st_mode & 0o777 == 0o604


async def test_create_applies_plan9_permissions_not_the_umask(local, export):
    os.chmod(export, 0o777)
    old = os.umask(0o077)
    try:
        await local.write_bytes("made", b"x", perm=0o664)
    finally:
        os.umask(old)
    assert os.stat(export / "made").st_mode & 0o777 == 0o664


async def test_rename_truncate_mtime_through_wstat(local, export):
    await local.rename("hello.txt", "renamed.txt")
    assert (export / "renamed.txt").exists() and not (export / "hello.txt").exists()
    await local.truncate("renamed.txt", 5)
    assert (export / "renamed.txt").read_bytes() == b"hello"
    await local.utime("renamed.txt", 1_000_000_000)
    assert os.stat(export / "renamed.txt").st_mtime == 1_000_000_000


async def test_rename_onto_an_existing_file_is_refused(local, export):
    (export / "other").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        await local.rename("hello.txt", "other")
    assert (export / "other").read_bytes() == b"keep me"


async def test_null_wstat_syncs(local):
    await local.fsync("hello.txt")
    await local.fsync("/")


async def test_remove_files_and_empty_directories(local, export):
    await local.remove("sub/inner")
    await local.remove("sub")
    assert not (export / "sub").exists()
    with pytest.raises(PermissionError):
        await local.remove("/")


async def test_orclose_removes_the_host_file(export):
    async with serving(LocalTree(str(export))) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.create(0, "scratch", 0o644, ORDWR | ninep.ORCLOSE)
        assert (export / "scratch").exists()
        await c.clunk(0)
        assert not (export / "scratch").exists()


async def test_dmappend_files_append_whatever_the_offset(export):
    async with serving(LocalTree(str(export))) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.create(0, "log", DMAPPEND | 0o644, ORDWR)
        await c.write(0, 0, b"first ")
        await c.write(0, 0, b"second")
        assert (export / "log").read_bytes() == b"first second"
        assert (await c.stat(0)).mode & DMAPPEND


async def test_dmappend_set_on_the_host_shows_at_once_and_unchanged_files_read_no_xattr(export, monkeypatch):
    # The bits are remembered by inode and ctime (fileserver/dmbits.py KnownBits): a file
    # whose ctime has not moved is not asked again; one the host marks append-only is.
    path = export / "hello.txt"
    await trio.sleep(0.15)  # its ctime settled: older than the clock's granularity
    lists: list[str] = []
    listxattr = os.listxattr

    def counted(p, *a, **kw):
        lists.append(str(p))
        return listxattr(p, *a, **kw)

    monkeypatch.setattr(os, "listxattr", counted)
    async with serving(LocalTree(str(export))) as address, ninep.connect(address) as fs:
        assert not (await fs.stat("hello.txt")).mode & DMAPPEND
        asked = len(lists)
        for _ in range(3):
            assert not (await fs.stat("hello.txt")).mode & DMAPPEND
        assert len(lists) == asked  # walked, stat'ed and clunked three times: nothing read
        os.setxattr(path, "user.ninefs.dm", str(DMAPPEND).encode())  # by hand, on the host
        st = await fs.stat("hello.txt")
        assert st.mode & DMAPPEND and st.qid.type & QTAPPEND
        os.removexattr(path, "user.ninefs.dm")
        assert not (await fs.stat("hello.txt")).mode & DMAPPEND


async def test_read_only_export_refuses_every_change(export):
    async with serving(LocalTree(str(export), read_only=True)) as address, ninep.connect(address) as fs:
        assert await fs.read_bytes("hello.txt")
        for change in (
            fs.write_bytes("hello.txt", b"x"),
            fs.write_bytes("new", b"x"),
            fs.mkdir("d"),
            fs.remove("hello.txt"),
            fs.rename("hello.txt", "x"),
            fs.chmod("hello.txt", 0o777),
        ):
            with pytest.raises(OSError, match="read-only file system"):
                await change
        assert (export / "hello.txt").read_bytes() == b"hello from the host\n"


# --- confinement: nothing outside the root is reachable -------------------------------


async def test_dotdot_at_the_root_stays_inside(local):
    assert sorted(await local.listdir("../../..")) == ["hello.txt", "sub"]
    with pytest.raises(FileNotFoundError):
        await local.read_bytes("../secret")
    with pytest.raises(FileNotFoundError):
        await local.read_bytes("sub/../../secret")


async def test_absolute_paths_are_relative_to_the_root(local):
    with pytest.raises(FileNotFoundError):
        await local.read_bytes("/etc/passwd")


async def test_a_symlink_out_of_the_export_is_neither_listed_nor_followed(local, export, tmp_path):
    os.symlink(tmp_path / "secret", export / "escape")
    os.symlink("/etc", export / "etc")
    os.symlink("../secret", export / "sub" / "relative-escape")
    assert sorted(await local.listdir("/")) == ["hello.txt", "sub"]
    for path in ("escape", "etc/passwd"):
        with pytest.raises(PermissionError):
            await local.read_bytes(path)
    # Deeper in a walk, 9P can only say how far it got (walk(5)): the name does not exist.
    with pytest.raises(FileNotFoundError):
        await local.read_bytes("sub/relative-escape")


async def test_a_symlink_inside_the_export_works_like_its_target(local, export):
    os.symlink("sub/inner", export / "link")
    assert await local.read_bytes("link") == b"inner"


async def test_names_with_a_slash_cannot_be_walked_or_created(export):
    async with serving(LocalTree(str(export))) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        with pytest.raises(FileNotFoundError):
            await c.walk(0, 1, ["../secret"])
        with pytest.raises(FileNotFoundError):
            await c.walk(0, 1, ["/etc"])
        await c.walk(0, 1, [])
        with pytest.raises(ninep.NinePError, match="create prohibited"):
            await c.create(1, "../../evil", 0o644, OREAD)
        await c.walk(0, 2, [])
        with pytest.raises(ninep.NinePError):
            await c.wstat(2, ninep.Stat.dont_touch(name="../moved"))
        assert not (export.parent / "evil").exists()


async def test_an_aname_cannot_climb_out(export):
    async with serving(LocalTree(str(export))) as address, raw_connection(address) as c:
        with pytest.raises(PermissionError):
            await c.attach(0, "u", "../")
        await c.attach(1, "u", "sub")
        assert (await c.stat(1)).name == "sub"


async def test_non_utf8_host_names_are_skipped_not_fatal(local, export):
    os.close(os.open(os.path.join(os.fsencode(export), b"bad-\xff-name"), os.O_CREAT | os.O_WRONLY))
    assert "hello.txt" in await local.listdir("/")


async def test_exporting_the_root_directory_reaches_everything_below_it(tmp_path):
    (tmp_path / "f").write_text("deep")
    async with serving(LocalTree("/")) as address, ninep.connect(address) as fs:
        assert await fs.read_text(str(tmp_path / "f")) == "deep"
        assert "tmp" in await fs.listdir("/")


async def test_a_fifo_read_waits_in_a_thread_while_other_requests_are_answered(export):
    """Reads of regular files are answered inline (Tree.io_never_blocks); a FIFO's must not
    be: the server would stop for everyone until a writer came."""
    os.mkfifo(export / "pipe")
    async with serving(LocalTree(str(export))) as address, ninep.connect(address) as fs:
        fid, _ = await fs.walk_fid("pipe")
        await fs.conn.open(fid, OREAD)
        got: list[bytes] = []

        async def read_pipe() -> None:
            got.append(await fs.conn.read(fid, 0, 100))

        # A writer that has written nothing yet (with none, a FIFO reads as end of file).
        w = os.open(export / "pipe", os.O_WRONLY | os.O_NONBLOCK)  # the server holds the read end
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_pipe)
                await trio.sleep(0.05)  # the Tread is at the server, waiting for data
                with trio.fail_after(5):
                    assert await fs.read_bytes("hello.txt") == b"hello from the host\n"
                assert not got
                os.write(w, b"through the pipe")
        finally:
            os.close(w)
        assert got == [b"through the pipe"]
        await fs.conn.clunk(fid)
