"""POSIX where 9P2000 allows it (issue #16): what a program notices through a mount of
`ninefs serve DIR`, and the 9P conventions underneath (ninep/posix.py, fileserver/hostnames.py)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs

import ninep
from fileserver.hostnames import host_name, wire_name
from fileserver.local import LocalTree
from fileserver.ram import RamTree
from mount.mounter import unmount
from mount.posix import Statfs, wstat_keeping
from ninep.constants import DMSETGID, DMSETUID, DMSETVTX
from ninep.posix import STATFS_NAME, parse_statfs

from .fuse_helpers import needs_fuse, ninefs_mounts, sh
from .servers import ninefs_command, server_process, serving


def real_mount(test):  # type: ignore[no-untyped-def]
    """A test of a real FUSE mount (marked, and skipped without /dev/fuse)."""
    return pytest.mark.fuse(needs_fuse(test))


@contextmanager
def mounted_logged(address: str, mountpoint: Path, log: Path, *args: str) -> Iterator[Path]:
    """`ninefs mount --foreground ARGS` with its log in `log`; unmounted afterwards."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ninefs_command("mount", "--foreground", *args, address, str(mountpoint)), stderr=err
        )
    try:
        for _ in range(300):
            if str(mountpoint) in ninefs_mounts():
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        else:
            raise AssertionError("not mounted")
        yield mountpoint
    finally:
        if str(mountpoint) in ninefs_mounts() and unmount(str(mountpoint)).returncode != 0:
            unmount(str(mountpoint), lazy=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(export dir, mount point, the mount's log) for `ninefs serve DIR`, mounted."""
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "file").write_text("hello\n")
    log = tmp_path / "mount.log"
    # Shared with other users, as pjdfstest runs it (the kernel checks modes: default_permissions)
    with server_process(str(export)) as (address, _), mounted_logged(address, mp, log, "--allow-other"):
        yield export, mp, log


def errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def quiet(log: Path) -> None:
    """The mount logged no traceback and no i/o error."""
    text = log.read_text()
    assert "Traceback" not in text and "failed" not in text, text


# --- what a program notices ----------------------------------------------------------


@real_mount
def test_open_with_access_mode_3_is_einval_as_on_sshfs(mnt):
    _, mp, log = mnt
    assert errno_of(os.open, mp / "file", 3) == errno.EINVAL
    assert errno_of(os.open, mp / "file", 3 | os.O_CREAT, 0o644) == errno.EINVAL
    assert (mp / "file").read_text() == "hello\n"
    quiet(log)


@real_mount
def test_times_outside_what_9p_holds_are_eoverflow_without_a_traceback(mnt):
    export, mp, log = mnt
    before = os.stat(export / "file").st_mtime
    assert errno_of(os.utime, mp / "file", (0, 2**32 + 10)) == errno.EOVERFLOW
    assert errno_of(os.utime, mp / "file", (0, -10)) == errno.EOVERFLOW
    r = sh(f"touch -d 2200-01-01 {mp}/file")
    assert r.returncode == 1 and "Value too large" in r.stderr
    assert os.stat(export / "file").st_mtime == before  # nothing changed
    os.utime(mp / "file", (0, 2**31))  # 2038 is fine: 9P's times are unsigned
    assert os.stat(export / "file").st_mtime == 2**31
    quiet(log)


@real_mount
def test_names_over_255_bytes_are_enametoolong(mnt):
    export, mp, log = mnt
    long = "a" * 256
    (export / "d").mkdir()
    assert errno_of(os.stat, mp / long) == errno.ENAMETOOLONG
    assert errno_of(os.unlink, mp / long) == errno.ENAMETOOLONG
    assert errno_of(os.rmdir, mp / long) == errno.ENAMETOOLONG
    assert errno_of(os.rename, mp / "file", mp / long) == errno.ENAMETOOLONG
    assert errno_of(os.rename, mp / long, mp / "x") == errno.ENAMETOOLONG
    assert errno_of(open, mp / long, "w") == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, mp / "d" / long) == errno.ENAMETOOLONG
    (mp / ("b" * 255)).write_text("255 is fine")  # NAME_MAX itself
    assert (export / ("b" * 255)).read_text() == "255 is fine"
    quiet(log)


@real_mount
def test_ls_a_shows_dot_and_dotdot(mnt):
    export, mp, _ = mnt
    (export / "sub").mkdir()
    (export / "sub" / "inner").write_text("x")
    assert sh(f"ls -a {mp}").stdout.split() == [".", "..", "file", "sub"]
    assert sh(f"ls -a {mp}/sub").stdout.split() == [".", "..", "inner"]
    out = sh(f"ls -ai {mp}/sub").stdout.split()
    assert int(out[out.index(".") - 1]) == os.stat(mp / "sub").st_ino
    assert sorted(os.listdir(mp / "sub")) == ["inner"]  # os.listdir leaves them out, as ever


@real_mount
def test_new_files_get_the_umask_not_the_directory_rule(mnt):
    export, mp, _ = mnt
    os.mkdir(mp / "private", 0o700)
    r = sh(f"umask 022 && cd {mp}/private && touch f && mkdir d && mkdir -m 0750 e")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(mp / "private" / "f").st_mode) == 0o644  # open(5) alone: 0600
    assert stat.S_IMODE(os.stat(mp / "private" / "d").st_mode) == 0o755  # open(5) alone: 0700
    assert stat.S_IMODE(os.stat(export / "private" / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(export / "private" / "d").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(export / "private" / "e").st_mode) == 0o750
    sh(f"umask 077 && touch {mp}/private/g")
    assert stat.S_IMODE(os.stat(export / "private" / "g").st_mode) == 0o600


@real_mount
def test_cp_a_as_root_exits_0_and_keeps_modes_and_times(mnt, tmp_path):
    export, mp, log = mnt
    src = tmp_path / "src"
    (src / "shared").mkdir(parents=True)
    (src / "tmp").mkdir()
    (src / "shared" / "tool").write_text("#!/bin/sh\n")
    (src / "secret").write_text("s")
    os.chmod(src / "shared", 0o2775)
    os.chmod(src / "tmp", 0o1777)
    os.chmod(src / "shared" / "tool", 0o4755)
    os.chmod(src / "secret", 0o600)
    os.utime(src / "secret", (1e9, 1e9))
    r = sh(f"cp -a {src} {mp}/copy")
    assert r.returncode == 0, r.stderr
    for rel in ("shared", "tmp", "shared/tool", "secret"):
        want = stat.S_IMODE(os.stat(src / rel).st_mode)
        assert stat.S_IMODE(os.stat(export / "copy" / rel).st_mode) == want, rel
        assert stat.S_IMODE(os.stat(mp / "copy" / rel).st_mode) == want, rel
    assert os.stat(export / "copy" / "secret").st_mtime == 1e9
    quiet(log)


@real_mount
def test_chown_and_chgrp_that_change_nothing_succeed(mnt):
    _, mp, _ = mnt
    st = os.stat(mp / "file")
    os.chown(mp / "file", st.st_uid, st.st_gid)
    os.chown(mp / "file", -1, st.st_gid)
    assert sh(f"chgrp {st.st_gid} {mp}/file && chown {st.st_uid}:{st.st_gid} {mp}/file").returncode == 0


@real_mount
def test_chmod_u_s_g_s_and_t_are_kept_by_our_server(mnt):
    export, mp, log = mnt
    (export / "dir").mkdir()
    for path, spec, bit in (
        ("file", "u+s", stat.S_ISUID),
        ("file", "g+s", stat.S_ISGID),
        ("dir", "+t", stat.S_ISVTX),
        ("dir", "g+s", stat.S_ISGID),
    ):
        assert sh(f"chmod {spec} {mp}/{path}").returncode == 0
        assert os.stat(export / path).st_mode & bit, spec
        assert os.stat(mp / path).st_mode & bit, spec
    assert sh(f"chmod u-s,g-s {mp}/file").returncode == 0
    assert not os.stat(export / "file").st_mode & (stat.S_ISUID | stat.S_ISGID)
    os.umask(0o022)
    fd = os.open(mp / "made-setuid", os.O_CREAT | os.O_WRONLY, 0o4755)
    os.close(fd)
    assert stat.S_IMODE(os.stat(export / "made-setuid").st_mode) == 0o4755
    quiet(log)


@real_mount
def test_chmod_u_s_on_a_server_that_cannot_keep_it_is_eperm(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process() as (address, _), mounted_logged(address, mp, tmp_path / "log"):  # a RAM tree
        (mp / "f").write_text("x")
        os.chmod(mp / "f", 0o640)
        assert errno_of(os.chmod, mp / "f", 0o4755) == errno.EPERM
        assert stat.S_IMODE(os.stat(mp / "f").st_mode) == 0o640  # nothing changed
        r = sh(f"chmod u+s {mp}/f")
        assert r.returncode == 1 and "Operation not permitted" in r.stderr
        os.chmod(mp / "f", 0o644)  # plain bits still work
        assert stat.S_IMODE(os.stat(mp / "f").st_mode) == 0o644
        st = os.statvfs(mp)  # no .ninefs.statfs: 9pfuse's "lots"
        assert st.f_blocks * st.f_frsize == 1 << 42


@real_mount
def test_a_non_utf8_host_name_is_listed_escaped_and_opens(mnt):
    export, mp, log = mnt
    with open(os.path.join(os.fsencode(export), b"caf\xe9"), "w") as f:
        f.write("latin-1 name\n")
    assert "caf\uf7e9" in os.listdir(mp)
    assert (mp / "caf\uf7e9").read_text() == "latin-1 name\n"
    assert "caf\uf7e9" in sh(f"ls {mp}").stdout
    (mp / "new\uf7fe").write_text("made through the mount")
    assert b"new\xfe" in os.listdir(os.fsencode(export))
    os.rename(mp / "new\uf7fe", mp / "moved\uf7fd")
    assert b"moved\xfd" in os.listdir(os.fsencode(export))
    os.unlink(mp / "caf\uf7e9")
    assert b"caf\xe9" not in os.listdir(os.fsencode(export))
    # A name only a host could have, not UTF-8 from the start: 9P cannot carry it.
    assert errno_of(open, os.path.join(os.fsencode(mp), b"raw\xff"), "w") == errno.EINVAL
    quiet(log)


@real_mount
def test_df_shows_the_exported_file_system(mnt):
    export, mp, _ = mnt
    got, want = os.statvfs(mp), os.statvfs(export)
    assert got.f_blocks * got.f_frsize == want.f_blocks * want.f_frsize
    assert (
        abs(got.f_bavail * got.f_frsize - want.f_bavail * want.f_frsize)
        <= 0.03 * want.f_blocks * want.f_frsize
    )
    assert got.f_files == want.f_files
    out = sh(f"df -P {mp} {export}").stdout.splitlines()
    assert out[1].split()[1] == out[2].split()[1]  # the same size in 1K blocks


# --- the 9P conventions ----------------------------------------------------------------


@pytest.fixture
async def local(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "sub").mkdir()
    async with serving(LocalTree(str(root))) as address, ninep.connect(address) as fs:
        yield fs, root


async def test_statfs_file_is_walkable_unlisted_and_read_only(local):
    fs, root = local
    fields = parse_statfs(await fs.read_bytes(STATFS_NAME))
    assert fields is not None and fields["blocks"] == os.statvfs(root).f_blocks
    assert parse_statfs(await fs.read_bytes(f"sub/{STATFS_NAME}")) is not None
    assert STATFS_NAME not in [st.name for st in await fs.ls("/")]
    with pytest.raises(OSError):
        await fs.write_bytes(STATFS_NAME, b"x")
    with pytest.raises(FileExistsError):
        await fs.mkdir(STATFS_NAME)
    with pytest.raises(OSError):
        await fs.remove(STATFS_NAME)
    assert not (root / STATFS_NAME).exists()


async def test_setuid_setgid_sticky_travel_as_9p2000u_bits(local):
    fs, root = local
    (root / "tool").write_text("x")
    os.chmod(root / "tool", 0o4755)
    assert (await fs.stat("tool")).mode & (DMSETUID | 0o777) == DMSETUID | 0o755
    await fs.wstat("tool", mode=DMSETGID | 0o750)
    assert stat.S_IMODE(os.stat(root / "tool").st_mode) == 0o2750
    await fs.wstat("sub", mode=ninep.DMDIR | DMSETVTX | 0o777)
    assert stat.S_IMODE(os.stat(root / "sub").st_mode) == 0o1777


async def test_a_non_utf8_name_is_walked_by_its_escape(local):
    fs, root = local
    (Path(os.fsdecode(os.path.join(os.fsencode(root), b"\xff\xfe")))).write_text("bytes")
    assert "\uf7ff\uf7fe" in [st.name for st in await fs.ls("/")]
    assert await fs.read_bytes("\uf7ff\uf7fe") == b"bytes"
    with pytest.raises(FileNotFoundError):
        await fs.read_bytes("\uf7c3\uf7a9")  # "é" spelled in escapes is not a host name's escape


@given(hs.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_every_host_name_has_one_utf8_name_that_leads_back(raw):
    wire = wire_name(os.fsdecode(raw))
    wire.encode("utf-8")  # sendable
    assert os.fsencode(host_name(wire)) == raw


async def test_mount_refuses_setuid_a_server_drops():
    tree = RamTree("glenda")
    root = await tree.attach("glenda", "")
    _, node = await tree.walk(root, [])
    await tree.create(node, "f", 0o644, 0)
    with pytest.raises(Exception) as e:  # mount.fuseabi.FuseError(EPERM)
        await wstat_keeping(tree, node, {"mode": DMSETUID | 0o755}, 0o644)
    assert getattr(e.value, "errno", None) == errno.EPERM
    assert (await tree.stat(node)).mode & 0o777 == 0o644  # put back


async def test_mount_statfs_falls_back_once_for_a_server_without_the_file():
    tree = RamTree("glenda")
    root = await tree.attach("glenda", "")
    s = Statfs(ttl=1.0)
    assert (await s.read(tree, root)).f_blocks == 1 << 30
    assert not s.supported


# --- owners and atime: our servers' extension of wstat(5) ------------------------------


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@real_mount
@needs_root
def test_chown_as_root_through_the_mount_changes_the_host_owner(mnt):
    export, mp, log = mnt
    assert sh(f"chown 65534 {mp}/file").returncode == 0
    assert os.stat(export / "file").st_uid == 65534
    assert os.stat(mp / "file").st_uid == 65534
    os.chown(mp / "file", 0, 65534)
    assert (os.stat(export / "file").st_uid, os.stat(export / "file").st_gid) == (0, 65534)
    os.chmod(mp / "file", 0o4755)
    os.chown(mp / "file", 4242, -1)  # a uid without a name travels as digits
    got = os.stat(export / "file")
    assert got.st_uid == 4242
    assert not got.st_mode & stat.S_ISUID  # as chown(2) on the host: a new owner clears setuid
    assert not os.stat(mp / "file").st_mode & stat.S_ISUID
    quiet(log)


@real_mount
@needs_root
def test_cp_a_as_root_of_files_another_user_owns_keeps_the_owners(mnt, tmp_path):
    export, mp, log = mnt
    src = tmp_path / "src"
    (src / "home").mkdir(parents=True)
    (src / "home" / "note").write_text("nobody's")
    (src / "mine").write_text("root's")
    os.chown(src / "home", 65534, 65534)
    os.chown(src / "home" / "note", 65534, 65534)
    r = sh(f"cp -a {src} {mp}/copy")
    assert r.returncode == 0, r.stderr
    for rel, owner in (("home", 65534), ("home/note", 65534), ("mine", 0)):
        assert os.stat(export / "copy" / rel).st_uid == owner, rel
        assert os.stat(mp / "copy" / rel).st_uid == owner, rel
    assert os.stat(export / "copy" / "home").st_gid == 65534
    quiet(log)


@real_mount
def test_utime_sets_atime_and_mtime_on_the_host(mnt):
    export, mp, log = mnt
    os.utime(mp / "file", (1_000_000_000, 1_500_000_000))
    got = os.stat(export / "file")
    assert (got.st_atime, got.st_mtime) == (1_000_000_000, 1_500_000_000)
    assert os.stat(mp / "file").st_atime == 1_000_000_000
    assert sh(f"touch -a -d @1200000000 {mp}/file").returncode == 0
    got = os.stat(export / "file")
    assert (got.st_atime, got.st_mtime) == (1_200_000_000, 1_500_000_000)  # -a: mtime kept
    quiet(log)


@real_mount
def test_chown_on_a_ram_tree_is_eperm_and_changes_nothing(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process() as (address, _), mounted_logged(address, mp, tmp_path / "log"):  # a RAM tree
        (mp / "f").write_text("x")
        before = os.stat(mp / "f")
        assert errno_of(os.chown, mp / "f", before.st_uid + 1, -1) == errno.EPERM
        r = sh(f"chown 65534 {mp}/f")
        assert r.returncode == 1 and "Operation not permitted" in r.stderr
        assert os.stat(mp / "f").st_uid == before.st_uid
        os.utime(mp / "f", (1_000_000_000, 1_100_000_000))  # atime: the RAM tree keeps it too
        assert os.stat(mp / "f").st_atime == 1_000_000_000


async def test_a_ram_tree_refuses_a_new_owner_but_takes_its_own():
    tree = RamTree("glenda")
    root = await tree.attach("glenda", "")
    _, node = await tree.walk(root, [])
    await tree.create(node, "f", 0o644, 0)
    with pytest.raises(PermissionError):
        await tree.wstat(node, ninep.Stat.dont_touch(uid="nobody", mtime=5))
    assert (await tree.stat(node)).mtime != 5  # all or none
    await tree.wstat(node, ninep.Stat.dont_touch(uid="glenda", atime=7))
    assert (await tree.stat(node)).atime == 7


async def test_a_mount_leaves_out_an_atime_a_server_refuses():
    class NoAtime(RamTree):  # as a server that keeps to wstat(5)
        async def wstat(self, node, st):  # type: ignore[no-untyped-def]
            if st.atime != ninep.Stat.dont_touch().atime:
                raise ninep.NinePError("wstat -- attempt to change atime")
            await super().wstat(node, st)

    tree = NoAtime("glenda")
    root = await tree.attach("glenda", "")
    _, node = await tree.walk(root, [])
    await tree.create(node, "f", 0o644, 0)
    assert await wstat_keeping(tree, node, {"atime": 3, "mtime": 4}, 0o644) == {"mtime": 4}
    assert (await tree.stat(node)).mtime == 4
    assert await wstat_keeping(tree, node, {"atime": 3}, 0o644) == {}


@needs_root
async def test_with_check_users_only_root_gives_a_file_away(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o777)
    (root / "f").write_text("x")
    os.chown(root / "f", 65534, 65534)
    os.utime(root / "f", (100, 200))
    tree = LocalTree(str(root), check_users=True)

    async def file_as(uname: str):  # type: ignore[no-untyped-def]
        return await tree.walk1(await tree.attach(uname, ""), "f")

    node = await file_as("nobody")
    with pytest.raises(ninep.NinePError, match="operation not permitted"):
        await tree.wstat(node, ninep.Stat.dont_touch(uid="root", mtime=300))
    got = os.stat(root / "f")
    assert (got.st_uid, got.st_mtime) == (65534, 200)  # all or none
    await tree.wstat(node, ninep.Stat.dont_touch(uid="nobody", atime=150))  # its own owner, its atime
    assert os.stat(root / "f").st_atime == 150
    os.chown(root / "f", 0, 0)
    with pytest.raises(PermissionError):
        await tree.wstat(await file_as("nobody"), ninep.Stat.dont_touch(atime=1))  # not its file
    await tree.wstat(await file_as("root"), ninep.Stat.dont_touch(uid="nobody", atime=1))
    got = os.stat(root / "f")
    assert (got.st_uid, got.st_atime) == (65534, 1)


@real_mount
@needs_root
def test_a_file_another_user_makes_through_the_mount_is_that_users_and_group(mnt):
    export, mp, log = mnt
    (export / "pub").mkdir()
    os.chmod(export / "pub", 0o777)
    as_nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups"
    # From inside: tmp_path's ancestors are root's 0700 directories.
    r = sh(f"cd {mp}/pub && {as_nobody} sh -c 'umask 022; echo x > f && mkdir d && chmod 600 f'")
    assert r.returncode == 0, r.stderr  # chmod: nobody owns what it made
    for rel, mode in (("pub/f", 0o600), ("pub/d", 0o755)):
        assert (os.stat(export / rel).st_uid, os.stat(export / rel).st_gid) == (65534, 65534), rel
        assert (os.stat(mp / rel).st_uid, os.stat(mp / rel).st_gid) == (65534, 65534), rel
        assert stat.S_IMODE(os.stat(export / rel).st_mode) == mode, rel
    (mp / "pub" / "root-made").write_text("y")
    assert os.stat(export / "pub" / "root-made").st_uid == 0  # the mount's own user: no wstat
    quiet(log)
