"""Files through a mount behave as local ones (issue #16): unlinked open files, mmap, SQLite,
and the streams of a machine (/dev, /proc, /cmd) read afresh, directly."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from .fuse_helpers import mounted, needs_fuse, sh
from .servers import ninefs_command, server_process

pytestmark = [pytest.mark.fuse, needs_fuse]


@pytest.fixture(params=["local", "ram"])
def mnt(request, tmp_path):
    """(export dir or None, mount point): a LocalTree or a RamTree served by a subprocess, mounted."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "empty").touch()  # made on the server: the mount opens it, never creates it
    mp = tmp_path / "mnt"
    mp.mkdir()
    args = [str(export)] if request.param == "local" else []
    with server_process(*args) as (address, _), mounted(address, str(mp)):
        if request.param == "ram":
            (mp / "empty").touch()
            export = None
        yield export, mp


def test_a_temporary_file_in_the_mount_is_written_and_read_back(mnt):
    _, mp = mnt
    with tempfile.TemporaryFile(dir=mp) as f:  # open(O_TMPFILE) or create and unlink at once
        f.write(b"kept by the open file\n" * 1000)
        f.seek(0)
        assert f.read() == b"kept by the open file\n" * 1000
        assert os.fstat(f.fileno()).st_size == 22000
    assert os.listdir(mp) == ["empty"]


def test_an_unlinked_open_file_keeps_working_through_its_descriptor(mnt):
    export, mp = mnt
    fd = os.open(mp / "doomed", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abcdef")
        os.unlink(mp / "doomed")
        assert not os.path.exists(mp / "doomed")
        if export is not None:
            assert not (export / "doomed").exists()
        st = os.fstat(fd)
        assert (st.st_nlink, st.st_size) == (0, 6)
        assert os.pread(fd, 100, 0) == b"abcdef"
        assert os.pwrite(fd, b"XY", 1) == 2
        assert os.pread(fd, 100, 0) == b"aXYdef"
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        assert os.pread(fd, 100, 0) == b"aXY"
        os.fchmod(fd, 0o600)
        assert os.fstat(fd).st_mode & 0o777 == 0o600
    finally:
        os.close(fd)


def test_an_unlinked_file_open_twice_is_read_through_the_other_descriptor(mnt):
    _, mp = mnt
    with open(mp / "shared", "w+b") as a, open(mp / "shared", "rb") as b:
        a.write(b"written before the unlink")
        a.flush()
        os.unlink(mp / "shared")
        assert b.read() == b"written before the unlink"
        assert os.fstat(b.fileno()).st_nlink == 0


def shared_map_round_trip(fd: int) -> bytes:
    os.ftruncate(fd, 8192)
    with mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
        m[4096:4101] = b"hello"
        m.flush()
    return os.pread(fd, 5, 4096)


def test_a_new_empty_file_can_be_mmapped_shared_after_ftruncate(mnt):
    export, mp = mnt
    fd = os.open(mp / "made-here", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert shared_map_round_trip(fd) == b"hello"
    finally:
        os.close(fd)
    with open(mp / "made-here", "rb") as f:
        assert f.read()[4096:4101] == b"hello"
    if export is not None:
        assert (export / "made-here").read_bytes()[4096:4101] == b"hello"


def test_an_empty_file_made_elsewhere_is_a_file_not_a_stream(mnt):
    export, mp = mnt
    fd = os.open(mp / "empty", os.O_RDWR)  # opened, not created: length 0 at open
    try:
        assert shared_map_round_trip(fd) == b"hello"
    finally:
        os.close(fd)
    if export is not None:
        assert (export / "empty").stat().st_size == 8192


WRITER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], timeout=120)
    for i in range(int(sys.argv[3])):
        with db:
            db.execute("insert into t values (?, ?)", (sys.argv[2], i))
    db.close()
    """
)


def test_sqlite_in_wal_mode_with_two_writer_processes(mnt):
    import sqlite3

    _, mp = mnt
    path = str(mp / "t.db")
    db = sqlite3.connect(path)
    assert db.execute("pragma journal_mode=wal").fetchone() == ("wal",)
    db.execute("create table t (writer text, i integer)")
    db.commit()  # kept open: -wal and -shm stay while the writers run
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, path, name, "200"], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for w in writers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    rows = db.execute("select writer, i from t").fetchall()
    assert sorted(rows) == sorted((name, i) for name in ("a", "b") for i in range(200))
    db.close()


# --- streams: a machine's /dev, /proc and /cmd ------------------------------------------------


@pytest.fixture
def machine(tmp_path):
    """A mount of `serve --machine --allow-exec`: (its address, mount point)."""
    home = tmp_path / "home"
    home.mkdir()
    mp = tmp_path / "m"
    mp.mkdir()
    with server_process("--machine", str(home), "--allow-exec") as (address, _), mounted(address, str(mp)):
        yield address, mp


def test_dev_files_are_read_afresh_and_directly(machine):
    _, mp = machine
    with open(mp / "dev" / "time", "rb") as f:
        first = f.read()
        assert first and os.fstat(f.fileno()).st_size == 0  # length 0, and read all the same
    with open(mp / "dev" / "time", "rb") as f:
        assert f.read() != first  # afresh at each open: nanoseconds moved on
    fd = os.open(mp / "dev" / "random", os.O_RDONLY)
    try:
        assert os.pread(fd, 64, 0) != os.pread(fd, 64, 0)  # direct: no page kept the first bytes
    finally:
        os.close(fd)
    assert sh(f"cat {mp}/proc/{os.getpid()}/status").stdout.startswith("name ")


CMD_SESSION = """
exec 3<{cmd}/clone          # the session lives while clone is open
read n <&3
echo "exec sh -c 'echo hi; tr a-z A-Z'" > {cmd}/$n/ctl
echo "from stdin" > {cmd}/$n/data
cat {cmd}/$n/data
cat {cmd}/$n/wait
"""


def test_a_command_run_through_the_cmd_tree_of_a_mounted_machine(machine):
    _, mp = machine
    r = sh(CMD_SESSION.format(cmd=mp / "cmd"), timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["hi", "FROM STDIN"] and out[2].startswith("pid ") and out[2].endswith(" exit 0")


def test_a_command_run_through_the_cmd_tree_in_ns_run(machine):
    address, _ = machine
    r = subprocess.run(
        ninefs_command(
            "ns", "run", "-e", f"mount {address} /n/m", "--", "sh", "-c", CMD_SESSION.format(cmd="/n/m/cmd")
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["hi", "FROM STDIN"]


def test_the_hosts_proc_files_exported_read_their_content(tmp_path):
    mp = tmp_path / "p"
    mp.mkdir()
    with server_process("/proc") as (address, _), mounted(address, str(mp)):
        with open(mp / "loadavg") as f:
            assert os.fstat(f.fileno()).st_size == 0
            assert len(f.read().split()) == 5
        assert "processor" in (mp / "cpuinfo").read_text()
