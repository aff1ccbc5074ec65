"""Real programs doing real work on a real mount (issue #16): `ninefs serve DIR` in one
subprocess, `ninefs mount` in another, and git, tar, rsync, SQLite, appenders, an editor's
save, temporary files, mmap and host-made symlinks on top. Each test checks what a user
would notice, on the mount and in the exported directory behind it."""

from __future__ import annotations

import collections
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fuse_helpers import mounted, needs_fuse
from .servers import server_process

pytestmark = [pytest.mark.fuse, pytest.mark.slow, needs_fuse]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",  # no ~/.gitconfig of whoever runs the tests
}


def needs(program: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(program) is None, reason=f"needs {program} (make system-deps)")


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(export dir, mount point): `ninefs serve EXPORT` and `ninefs mount` of it, both
    subprocesses, unmounted and stopped whatever the test does."""
    export = tmp_path / "export"
    export.mkdir()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process(str(export)) as (address, _), mounted(address, str(mp)):
        yield export, mp


def ok(command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """A shell command that must succeed; its stdout."""
    r = subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert r.returncode == 0, f"{command}: exit {r.returncode}: {r.stderr}"
    return r.stdout


def make_tree(root: Path, files: int, *, empty_dir: bool = True, seed: int = 16) -> None:
    """`files` files of 0-20 KiB (text and binary, some executable) in nested directories,
    and an empty directory (git keeps none)."""
    rnd = random.Random(seed)
    for i in range(files):
        d = root / f"pkg{i % 7}" / f"mod{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"file{i:03}.{'py' if i % 2 else 'bin'}"
        if i % 2:
            p.write_text("".join(f"line {j} of file {i}\n" for j in range(rnd.randint(0, 400))))
        else:
            p.write_bytes(rnd.randbytes(rnd.randint(0, 20_000)))
        if i % 11 == 0:
            p.chmod(0o755)
    if empty_dir:
        (root / "empty-dir").mkdir()


def run_all(argvs: list[list[str]], timeout: float = 120) -> None:
    """Start every command at once (they race, as two users would), wait for all."""
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    try:
        for p in procs:
            _out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"{p.args}: exit {p.returncode}: {err}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --- git ---------------------------------------------------------------------------------------


def test_git_clone_status_and_commit(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    export, mp = mnt
    origin = tmp_path / "origin"
    make_tree(origin, 300, empty_dir=False)
    ok("git init -q . && git add -A && git commit -qm initial", cwd=origin, env=GIT_ENV)

    ok(f"git clone -q {origin} {mp}/clone", env=GIT_ENV)
    clone = mp / "clone"
    assert ok("git status --porcelain", cwd=clone, env=GIT_ENV) == ""  # a fresh clone is clean
    ok(f"diff -r -x .git {origin} {clone}")

    (clone / "pkg0" / "mod0" / "file000.bin").write_bytes(b"changed\n")
    (clone / "NEW.txt").write_text("a new file\n")
    (clone / "pkg1" / "mod1" / "file001.py").unlink()
    status = ok("git status --porcelain", cwd=clone, env=GIT_ENV).splitlines()
    assert sorted(status) == [" D pkg1/mod1/file001.py", " M pkg0/mod0/file000.bin", "?? NEW.txt"]
    ok("git add -A && git commit -qm 'second commit'", cwd=clone, env=GIT_ENV)
    assert ok("git status --porcelain", cwd=clone, env=GIT_ENV) == ""

    # The repository behind the mount is a sound git repository holding the commit.
    host = export / "clone"
    ok("git fsck --no-progress --strict", cwd=host, env=GIT_ENV)
    assert ok("git log --format=%s", cwd=host, env=GIT_ENV).split("\n")[:2] == ["second commit", "initial"]
    assert ok("git show HEAD:NEW.txt", cwd=host, env=GIT_ENV) == "a new file\n"
    assert ok("git status --porcelain", cwd=host, env=GIT_ENV) == ""


# --- tar, rsync --------------------------------------------------------------------------------


def test_tar_x_and_tar_c(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    export, mp = mnt
    src = tmp_path / "src"
    make_tree(src, 250)
    ok(f"tar cf {tmp_path}/in.tar -C {tmp_path} src")

    ok(f"tar xf {tmp_path}/in.tar -C {mp}")
    ok(f"diff -r {src} {mp}/src")
    ok(f"diff -r {src} {export}/src")
    # tar's own check: sizes, modes and mtimes of every member as extracted
    ok(f"tar df {tmp_path}/in.tar -C {mp}")

    out = tmp_path / "out"
    out.mkdir()
    ok(f"tar cf - -C {mp} src | tar xf - -C {out}")
    ok(f"diff -r {src} {out}/src")


@needs("rsync")
def test_rsync_a_in_and_out(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    export, mp = mnt
    src = tmp_path / "src"
    make_tree(src, 250)

    ok(f"rsync -a {src}/ {mp}/copy/")
    ok(f"diff -r {src} {mp}/copy")
    ok(f"diff -r {src} {export}/copy")
    # rsync -a kept modes and mtimes: a second run finds nothing to send
    assert ok(f"rsync -a --itemize-changes {src}/ {mp}/copy/") == ""

    (src / "pkg2" / "mod2" / "file002.bin").write_bytes(b"updated\n")
    ok(f"rsync -a {src}/ {mp}/copy/")  # an update goes through a temp file and a rename
    assert (export / "copy" / "pkg2" / "mod2" / "file002.bin").read_bytes() == b"updated\n"

    out = tmp_path / "out"
    ok(f"rsync -a {mp}/copy/ {out}/")
    ok(f"diff -r {src} {out}")
    assert os.stat(out / "pkg0" / "mod0" / "file000.bin").st_mode & 0o777 == 0o755
    assert not any(p.name.startswith(".") for p in (export / "copy").rglob("*"))  # no temp files left


# --- SQLite ------------------------------------------------------------------------------------

SQLITE_WRITER = """
import sqlite3, sys
db, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(db, timeout=60, isolation_level=None)
for i in range(n):
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO t (who, i, pad) VALUES (?, ?, ?)", (who, i, who * 300))
    con.execute("COMMIT")
con.close()
"""


def sqlite_two_writers(export: Path, mp: Path, journal_mode: str, n: int) -> None:
    import sqlite3

    db = mp / "test.db"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode.lower()
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, i INTEGER, pad TEXT)")
    finally:
        con.close()
    run_all([[sys.executable, "-c", SQLITE_WRITER, str(db), who, str(n)] for who in "ab"])
    for path in (db, export / "test.db"):  # through the mount, then on the server's disk
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            rows = con.execute("SELECT who, count(*), count(DISTINCT i) FROM t GROUP BY who").fetchall()
            assert rows == [("a", n, n), ("b", n, n)]
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode.lower()
        finally:
            con.close()


def test_sqlite_journal_mode_two_writers(mnt: tuple[Path, Path]) -> None:
    export, mp = mnt
    sqlite_two_writers(export, mp, "DELETE", 60)


def test_sqlite_wal_mode_two_writers(mnt: tuple[Path, Path]) -> None:
    export, mp = mnt
    sqlite_two_writers(export, mp, "WAL", 60)


# --- appends, atomic saves, temporary files, mmap ------------------------------------------------

APPENDER = """
import os, sys
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(n):
    os.write(fd, f"{who} line {i:04}\\n".encode())
os.close(fd)
"""


def test_two_processes_appending_to_one_log(mnt: tuple[Path, Path]) -> None:
    export, mp = mnt
    log = mp / "app.log"
    want: collections.Counter[str] = collections.Counter()
    for r in range(5):
        who = [f"round{r}-a", f"round{r}-b"]
        run_all([[sys.executable, "-c", APPENDER, str(log), w, "1000"] for w in who])
        want.update(f"{w} line {i:04}" for w in who for i in range(1000))
        for path in (export / "app.log", log):
            got = collections.Counter(path.read_text().splitlines())
            assert got == want, (
                f"round {r}: {sum((want - got).values())} lines lost, {sum((got - want).values())} extra"
            )


def test_editor_style_atomic_save(mnt: tuple[Path, Path]) -> None:
    export, mp = mnt
    doc = mp / "notes.txt"
    doc.write_text("first version\n")
    old_ino = os.stat(doc).st_ino

    # What vim (backupcopy=no), emacs, VS Code and gedit do: write a temp file beside the
    # original, fsync it, rename it over the original, fsync the directory.
    tmp = mp / ".notes.txt.swp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"second version\n" * 1000)
        os.fsync(fd)
    finally:
        os.close(fd)
    new_ino, host_new_ino = os.stat(tmp).st_ino, os.stat(export / ".notes.txt.swp").st_ino
    os.rename(tmp, doc)
    dfd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

    assert doc.read_text() == "second version\n" * 1000
    assert ok(f"cat {doc}") == "second version\n" * 1000  # another process sees it at once
    assert (export / "notes.txt").read_text() == "second version\n" * 1000
    assert sorted(os.listdir(mp)) == ["notes.txt"] == sorted(os.listdir(export))
    # The name now points at the new file, on the mount and on the server's disk.
    assert os.stat(doc).st_ino == new_ino != old_ino
    assert os.stat(export / "notes.txt").st_ino == host_new_ino


def test_tempfile_temporary_file_in_the_mount(mnt: tuple[Path, Path]) -> None:
    export, mp = mnt
    data = random.Random(1).randbytes(300_000)
    with tempfile.TemporaryFile(dir=mp) as f:
        f.write(data)
        f.flush()
        f.seek(0)
        assert f.read() == data
        f.seek(100_000)
        f.write(b"patched")
        f.seek(99_990)
        assert f.read(30) == data[99_990:100_000] + b"patched" + data[100_007:100_020]
        os.fsync(f.fileno())
    assert os.listdir(mp) == [] and os.listdir(export) == []  # nothing left behind


@pytest.mark.parametrize(
    "made_by",
    ["this open", "another process"],
)
def test_mmap_shared_of_a_new_empty_file(mnt: tuple[Path, Path], made_by: str) -> None:
    """What SQLite does with its -shm file: open (maybe made a moment ago by another
    process), ftruncate, mmap shared, write, msync."""
    export, mp = mnt
    size = 64 * 1024
    data = random.Random(2).randbytes(size)
    flags = os.O_RDWR | os.O_CREAT
    if made_by == "another process":
        ok(f"touch {mp}/mapped.bin")
    else:
        flags |= os.O_EXCL
    fd = os.open(mp / "mapped.bin", flags, 0o644)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[:] = data
            m.flush()  # msync(MS_SYNC)
            assert m[:16] == data[:16]
    finally:
        os.close(fd)
    assert (export / "mapped.bin").read_bytes() == data  # on the server's disk
    assert (mp / "mapped.bin").read_bytes() == data


# --- symlinks made on the host -----------------------------------------------------------------


def test_host_symlinks_renamed_and_removed_through_the_mount(mnt: tuple[Path, Path]) -> None:
    """9P2000 has no symlinks: a host link shows as what it leads to, and renaming or removing
    it acts on the link. A link to a directory looks like a directory, so it goes with rmdir
    (and `rm -rf` of it must not empty its target); one that leads nowhere is not shown."""
    export, mp = mnt
    (export / "target.txt").write_text("the target\n")
    (export / "dir").mkdir()
    (export / "dir" / "inside.txt").write_text("inside\n")
    (export / "to-file").symlink_to("target.txt")
    (export / "to-dir").symlink_to("dir")
    (export / "dangling").symlink_to("nowhere")

    ok(f"mv {mp}/to-file {mp}/to-file2 && mv {mp}/to-dir {mp}/to-dir2")
    assert os.readlink(export / "to-file2") == "target.txt"
    assert os.readlink(export / "to-dir2") == "dir"
    assert not any((export / n).is_symlink() for n in ("to-file", "to-dir"))
    assert sorted(os.listdir(mp)) == ["dir", "target.txt", "to-dir2", "to-file2"]

    assert (
        subprocess.run(["rm", "-rf", f"{mp}/to-dir2"], capture_output=True).returncode != 0
    )  # refused: it would empty dir/
    assert (export / "dir" / "inside.txt").read_text() == "inside\n"
    ok(f"rm {mp}/to-file2 && rmdir {mp}/to-dir2")
    assert sorted(os.listdir(export)) == ["dangling", "dir", "target.txt"]
    # Only the links were touched: what they pointed at is as it was.
    assert (export / "target.txt").read_text() == "the target\n"
    assert (export / "dir" / "inside.txt").read_text() == "inside\n"
    assert sorted(os.listdir(mp)) == ["dir", "target.txt"]
