"""`ninefs serve` and the plan9port-style commands, run as a person runs them."""

from __future__ import annotations

import subprocess

import pytest

from .servers import ninefs_command, server_process

pytestmark = pytest.mark.slow


def ninefs(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(ninefs_command(*args), input=stdin, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def addr():
    with server_process() as (address, _):
        yield address


@pytest.fixture
def export(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "b.txt").write_text("beta\n")
    with server_process(str(tmp_path)) as (address, _):
        yield address, tmp_path


def test_write_creates_then_truncates_and_cat_streams(addr):
    assert ninefs("write", addr, "/w", stdin=b"first version, long\n").returncode == 0
    assert ninefs("write", addr, "/w", stdin=b"second\n").returncode == 0
    assert ninefs("cat", addr, "/w").stdout == b"second\n"
    assert ninefs("write", "-a", addr, "/w", stdin=b"more\n").returncode == 0
    assert ninefs("cat", addr, "/w").stdout == b"second\nmore\n"


def test_cat_of_a_large_file_is_byte_exact(addr):
    data = bytes(range(256)) * 20000
    assert ninefs("write", addr, "big", stdin=data).returncode == 0
    assert ninefs("cat", addr, "big").stdout == data


def test_ls_l_looks_like_ls_l(export):
    address, _root = export
    out = ninefs("ls", "-l", address, "/").stdout.decode().splitlines()
    assert len(out) == 2
    fields = out[0].split()
    assert fields[0].startswith("-rw") and fields[4] == "6" and fields[-1] == "a.txt"
    assert out[1].startswith("d") and out[1].endswith(" dir")


def test_ls_mkdir_mv_rm(export):
    address, root = export
    assert ninefs("mkdir", "-p", address, "x/y/z").returncode == 0
    assert (root / "x" / "y" / "z").is_dir()
    assert ninefs("mv", address, "a.txt", "renamed.txt").returncode == 0
    assert ninefs("mv", address, "renamed.txt", "dir").returncode == 0  # across directories: copied
    assert (root / "dir" / "renamed.txt").read_text() == "alpha\n"
    assert ninefs("ls", address, "dir").stdout.decode().split() == ["b.txt", "renamed.txt"]
    assert ninefs("rm", "-r", address, "x").returncode == 0
    assert not (root / "x").exists()


def test_stat_prints_the_9p_entry(export):
    address, _ = export
    out = ninefs("stat", address, "a.txt").stdout.decode()
    assert "'a.txt'" in out and "length 6" in out and "qid" in out


def test_errors_name_the_path_and_exit_non_zero(export):
    address, _ = export
    r = ninefs("cat", address, "missing.txt")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "ninefs cat: /missing.txt: file does not exist"
    r = ninefs("rm", address, "dir")
    assert r.returncode == 1 and "/dir: directory not empty" in r.stderr.decode()


def test_connection_refused_is_a_clear_error():
    r = ninefs("ls", "tcp!127.0.0.1!1", "/")
    assert r.returncode == 1 and "tcp!127.0.0.1!1" in r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()


def test_read_only_server_refuses_writes(tmp_path):
    (tmp_path / "f").write_text("keep")
    with server_process(str(tmp_path), "--ro") as (address, _):
        r = ninefs("write", address, "f", stdin=b"clobber")
        assert r.returncode == 1 and "read-only file system" in r.stderr.decode()
    assert (tmp_path / "f").read_text() == "keep"


def test_serve_stops_cleanly_on_sigterm():
    with server_process() as (_, proc):
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_serve_refuses_a_busy_port(addr):
    r = subprocess.run(ninefs_command("serve", "--listen", addr), capture_output=True, timeout=30)
    assert r.returncode == 1 and "in use" in r.stderr.decode().lower()


def test_trace_prints_every_message(tmp_path):
    proc = subprocess.Popen(
        ninefs_command("serve", "--listen", "tcp!127.0.0.1!0", "--trace"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = proc.stdout.readline().split()[-1]
        ninefs("ls", address, "/")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "-> Tversion(" in err and "<- Rversion(" in err and "-> Tattach(" in err
