"""`ninefs cp` between here and servers and between servers, `mv` across directories, and the
refusals of `rm -r` on the root and `cat` of a directory: run as a person runs them, against
real `ninefs serve` subprocesses on loopback."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ninep.copy import Location, parse_location

from .servers import ninefs_command, server_process

pytestmark = pytest.mark.slow

MiB = 1 << 20


def ninefs(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(ninefs_command(*args), input=stdin, capture_output=True, timeout=120)


def one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """The single stderr line of a failed command, which must contain every one of `words`."""
    assert result.returncode == 1, result
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    """Temporaries of ours anywhere under `directory`."""
    return [str(p) for p in directory.rglob("*.ninefs-*")]


@pytest.fixture
def export(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "export"
    root.mkdir()
    with server_process(str(root)) as (address, _):
        yield address, root


@pytest.fixture
def second(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "second"
    root.mkdir()
    with server_process(str(root)) as (address, _):
        yield address, root


def make_tree(top: Path) -> None:
    """A tree with unusual modes and old times, so that a copy that drops them shows."""
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "secret").write_bytes(b"private\n")
    (top / "secret").chmod(0o600)
    (top / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (top / "run.sh").chmod(0o755)
    (top / "sub" / "notes").write_bytes(os.urandom(300_000))
    (top / "sub" / "deeper" / "empty").write_bytes(b"")
    (top / "sub" / "deeper").chmod(0o750)
    for i, p in enumerate(sorted(top.rglob("*"), reverse=True)):  # children before parents
        os.utime(p, (1_600_000_000 + i * 1000, 1_500_000_000 + i * 1000))


def shape(top: Path) -> dict[str, tuple[bool, int, int, bytes]]:
    """Every path under `top`: whether a directory, its mode, mtime (s) and contents."""
    return {
        str(p.relative_to(top)): (
            p.is_dir(),
            p.stat().st_mode & 0o777,
            int(p.stat().st_mtime),
            b"" if p.is_dir() else p.read_bytes(),
        )
        for p in top.rglob("*")
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


# --- ADDR:PATH ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "addr", "path"),
    [
        ("tcp!h!564:/a", "tcp!h!564", "/a"),
        ("tcp!::1!564:/a:b", "tcp!::1!564", "/a:b"),
        ("unix!/run/9p.sock:/a", "unix!/run/9p.sock", "/a"),
        ("host:5640:/path", "host:5640", "/path"),
        ("host:/path", "host", "/path"),
        ("host:rel/path", "host", "rel/path"),
        ("[::1]:564:/x", "[::1]:564", "/x"),
        ("host:5640:", "host:5640", "/"),
        ("./a:b", None, "./a:b"),
        ("/abs/a:b", None, "/abs/a:b"),
        ("dir/a:b", None, "dir/a:b"),
        ("plain", None, "plain"),
    ],
)
def test_addr_path_splits_after_the_dial_string_or_host_port(text: str, addr: str | None, path: str) -> None:
    assert parse_location(text) == Location(addr, path)


def test_a_dial_string_without_a_path_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    r = ninefs("cp", str(tmp_path / "f"), "tcp!127.0.0.1!564")
    assert r.returncode == 2 and b":PATH" in r.stderr and b"Traceback" not in r.stderr


# --- copies ---------------------------------------------------------------------------------------


def test_a_file_copied_to_a_server_arrives_whole_under_its_name(export, tmp_path: Path) -> None:
    address, root = export
    (tmp_path / "report.txt").write_bytes(b"quarterly\n" * 1000)
    r = ninefs("cp", str(tmp_path / "report.txt"), f"{address}:/")
    assert r.returncode == 0, r.stderr
    assert (root / "report.txt").read_bytes() == b"quarterly\n" * 1000
    assert re.fullmatch(rb"copied 1 file, 9\.8 KiB in \d+\.\d s, .+/s\n", r.stderr), r.stderr
    assert leftovers(root) == []


def test_a_file_copied_from_a_server_arrives_whole_and_replaces_the_old_one(export, tmp_path: Path) -> None:
    address, root = export
    (root / "data.bin").write_bytes(os.urandom(3 * MiB + 17))
    old = tmp_path / "data.bin"
    old.write_bytes(b"old contents")
    old.chmod(0o640)
    r = ninefs("cp", "-q", f"{address}:/data.bin", str(old))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert old.read_bytes() == (root / "data.bin").read_bytes()
    assert old.stat().st_mode & 0o777 == 0o640  # as cp(1): overwriting keeps the file's mode
    assert leftovers(tmp_path) == []


def test_a_file_copied_between_two_servers_arrives_whole(export, second) -> None:
    (a, root_a), (b, root_b) = export, second
    (root_a / "x").mkdir()
    (root_a / "x" / "blob").write_bytes(os.urandom(5 * MiB))
    r = ninefs("cp", f"{a}:/x/blob", f"{b}:/copied")
    assert r.returncode == 0, r.stderr
    assert (root_b / "copied").read_bytes() == (root_a / "x" / "blob").read_bytes()


def test_a_copy_within_one_server_goes_through_one_connection(export) -> None:
    address, root = export
    (root / "a").write_bytes(b"alpha")
    (root / "d").mkdir()
    r = ninefs("cp", f"{address}:/a", f"{address}:/d")
    assert r.returncode == 0, r.stderr
    assert (root / "d" / "a").read_bytes() == b"alpha" and (root / "a").read_bytes() == b"alpha"


def test_a_tree_copied_with_p_keeps_modes_and_mtimes_both_ways(export, tmp_path: Path) -> None:
    address, root = export
    make_tree(tmp_path / "tree")
    r = ninefs("cp", "-r", "-p", str(tmp_path / "tree"), f"{address}:/")
    assert r.returncode == 0, r.stderr
    assert b"copied 4 files in 3 directories" in r.stderr
    assert shape(root / "tree") == shape(tmp_path / "tree")
    r = ninefs("cp", "-rp", f"{address}:/tree", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    assert shape(tmp_path / "back") == shape(tmp_path / "tree")
    assert leftovers(root) == [] and leftovers(tmp_path) == []


def test_a_tree_copied_without_p_gets_new_times_and_modes_less_the_umask(export, tmp_path: Path) -> None:
    address, root = export
    make_tree(tmp_path / "tree")
    r = subprocess.run(
        [
            "sh",
            "-c",
            'umask 077; exec "$@"',
            "sh",
            *ninefs_command("cp", "-r", str(tmp_path / "tree"), f"{address}:/t"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (root / "t" / "run.sh").stat().st_mode & 0o777 == 0o700
    assert (root / "t" / "sub" / "deeper").stat().st_mode & 0o777 == 0o700
    assert (root / "t" / "sub" / "notes").stat().st_mtime > 1_700_000_000


def test_a_directory_without_r_is_omitted_like_cp(export, tmp_path: Path) -> None:
    address, root = export
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"f")
    r = ninefs("cp", str(tmp_path / "d"), str(tmp_path / "f"), f"{address}:/")
    assert r.returncode == 1
    assert f"ninefs cp: {tmp_path / 'd'}: omitting directory".encode() in r.stderr
    assert (root / "f").read_bytes() == b"f" and not (root / "d").exists()


def test_a_local_name_with_a_colon_is_given_with_dot_slash(export, tmp_path: Path) -> None:
    address, root = export
    (tmp_path / "a:b").write_bytes(b"colon")
    r = subprocess.run(
        ninefs_command("cp", "./a:b", f"{address}:/"), cwd=tmp_path, capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert (root / "a:b").read_bytes() == b"colon"


def test_errors_are_one_line_naming_the_path(export, tmp_path: Path) -> None:
    address, root = export
    one_error(ninefs("cp", f"{address}:/absent", str(tmp_path)), f"{address}:/absent", "no such file")
    (root / "d").mkdir()
    one_error(ninefs("cp", "-r", f"{address}:/d", f"{address}:/d/inner"), "into itself")
    (tmp_path / "f").write_bytes(b"f")
    one_error(ninefs("cp", str(tmp_path / "f"), "tcp!127.0.0.1!1:/f"), "tcp!127.0.0.1!1", "refused")


def test_a_64_mib_file_round_trips_with_the_same_hash(export, tmp_path: Path) -> None:
    address, root = export
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    assert ninefs("cp", "-q", str(big), f"{address}:/big").returncode == 0
    assert ninefs("cp", "-q", f"{address}:/big", str(tmp_path / "back")).returncode == 0
    assert sha256(root / "big") == sha256(big) == sha256(tmp_path / "back")


# --- copies cut short -----------------------------------------------------------------------------


def wait_for_temporary(directory: Path, proc: subprocess.Popen, *, written: int = 0) -> None:
    """Until cp has its temporary in `directory` with more than `written` bytes, or fail."""
    deadline = time.monotonic() + 60
    while not any(os.stat(p).st_size > written for p in leftovers(directory)):
        assert proc.poll() is None, "cp ended before it was cut short"
        assert time.monotonic() < deadline, "cp never started writing"
        time.sleep(0.001)


def test_a_server_killed_mid_copy_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB to send, none to store
    here = tmp_path / "here"
    here.mkdir()
    with server_process(str(root)) as (address, server):
        cp = subprocess.Popen(
            ninefs_command("cp", f"{address}:/big", str(here / "big")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_temporary(here, cp, written=-1)
            server.kill()
            _, err = cp.communicate(timeout=60)
        finally:
            if cp.poll() is None:
                cp.kill()
                cp.wait()
    assert cp.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ninefs cp: {address}:/big: "), lines
    assert list(here.iterdir()) == []  # neither the final name nor the temporary


def test_an_interrupted_copy_to_a_server_removes_its_temporary(export, tmp_path: Path) -> None:
    address, root = export
    with open(tmp_path / "big", "wb") as f:
        f.truncate(2 << 30)
    cp = subprocess.Popen(
        ninefs_command("cp", str(tmp_path / "big"), f"{address}:/big"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_temporary(root, cp, written=MiB)  # bytes flowing: Twrites in flight
        cp.send_signal(signal.SIGINT)
        _, err = cp.communicate(timeout=60)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    assert cp.returncode == 130 and err == b"ninefs cp: interrupted\n", err
    assert list(root.iterdir()) == []


# --- progress -------------------------------------------------------------------------------------

BAR = re.compile(rb"\[[#-]+\] [\d.]+ (B|KiB|MiB) / 8\.0 MiB +\d+%  [\d.]+ (B|KiB|MiB|GiB)/s  ETA \d+:\d\d")


def test_no_progress_bar_off_a_terminal_unless_asked(export, tmp_path: Path) -> None:
    address, _ = export
    (tmp_path / "f").write_bytes(os.urandom(8 * MiB))
    quiet = ninefs("cp", str(tmp_path / "f"), f"{address}:/f")
    assert quiet.returncode == 0 and b"\r" not in quiet.stderr
    assert quiet.stderr.startswith(b"copied 1 file, 8.0 MiB in ")
    shown = ninefs("cp", "--progress", str(tmp_path / "f"), f"{address}:/g")
    assert shown.returncode == 0
    bars, summary, end = shown.stderr.split(b"\n")
    frames = bars.split(b"\r")[1:]  # each redraw starts with a carriage return
    assert frames and all(BAR.fullmatch(f) for f in frames), shown.stderr
    assert b"8.0 MiB / 8.0 MiB 100%" in frames[-1]
    assert summary.startswith(b"copied 1 file, 8.0 MiB in ") and end == b""


def run_on_a_terminal(*args: str) -> tuple[int, bytes]:
    """Run ninefs with stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(ninefs_command(*args), stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end has closed
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=60), out
    finally:
        os.close(leader)


def test_a_terminal_gets_the_bar_unless_no_progress(export, tmp_path: Path) -> None:
    address, _ = export
    (tmp_path / "f").write_bytes(os.urandom(8 * MiB))
    code, out = run_on_a_terminal("cp", str(tmp_path / "f"), f"{address}:/f")
    assert code == 0 and BAR.search(out) and b"copied 1 file" in out, out
    code, out = run_on_a_terminal("cp", "--no-progress", str(tmp_path / "f"), f"{address}:/g")
    assert code == 0 and b"\r" not in out.replace(b"\r\n", b"\n") and b"copied 1 file" in out, out


# --- mv, rm, cat ----------------------------------------------------------------------------------


def test_mv_across_directories_keeps_mode_0600_and_mtime(export) -> None:
    address, root = export
    (root / "from").mkdir()
    (root / "to").mkdir()
    (root / "from" / "key").write_bytes(b"secret")
    (root / "from" / "key").chmod(0o600)
    os.utime(root / "from" / "key", (1_500_000_000, 1_500_000_000))
    r = ninefs("mv", address, "/from/key", "/to")
    assert r.returncode == 0, r.stderr
    moved = root / "to" / "key"
    assert moved.read_bytes() == b"secret" and not (root / "from" / "key").exists()
    assert moved.stat().st_mode & 0o777 == 0o600 and int(moved.stat().st_mtime) == 1_500_000_000
    assert leftovers(root) == []


def test_mv_across_directories_moves_a_directory_with_everything_in_it(export) -> None:
    address, root = export
    make_tree(root / "project")
    before = shape(root / "project")
    (root / "archive").mkdir()
    r = ninefs("mv", address, "project", "archive/2026")
    assert r.returncode == 0, r.stderr
    assert not (root / "project").exists()
    assert shape(root / "archive" / "2026") == before


def test_mv_within_a_directory_is_a_rename_and_replaces_a_file(export) -> None:
    address, root = export
    (root / "new").write_bytes(b"new")
    (root / "old").write_bytes(b"old")
    ino = (root / "new").stat().st_ino
    assert ninefs("mv", address, "new", "old").returncode == 0
    assert (root / "old").read_bytes() == b"new" and (root / "old").stat().st_ino == ino


def test_mv_of_a_directory_into_itself_is_refused(export) -> None:
    address, root = export
    (root / "d" / "e").mkdir(parents=True)
    one_error(ninefs("mv", address, "d", "d/e"), "into itself")
    assert (root / "d" / "e").is_dir()


@pytest.mark.parametrize("path", ["/", ".", "//", "a/..", "a/../."])
def test_rm_r_of_the_root_is_refused_before_anything_is_deleted(export, path: str) -> None:
    address, root = export
    (root / "a").mkdir()
    (root / "a" / "file").write_bytes(b"keep me")
    (root / "first").write_bytes(b"keep me too")
    one_error(ninefs("rm", "-r", address, "first", path), path, "refusing to remove the root")
    assert (root / "a" / "file").read_bytes() == b"keep me"
    assert (root / "first").read_bytes() == b"keep me too"


def test_cat_of_a_directory_says_is_a_directory(export) -> None:
    address, root = export
    (root / "dir").mkdir()
    (root / "dir" / "f").write_bytes(b"x")
    r = ninefs("cat", address, "dir")
    assert one_error(r) == "ninefs cat: dir: is a directory" and r.stdout == b""
