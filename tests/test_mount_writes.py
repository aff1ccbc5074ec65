"""Nothing written through the mount is lost silently: appends, and writes around faults.

Appends through one mount never land on each other, and an O_APPEND write goes to the
server's end of the file even when another mount or the host appended since. A write
the writer was told had succeeded but that never reached the server (the server was
killed and restarted, the link was cut) is reported by a later write, fsync or close;
an fsync that succeeds means the server has every byte written before it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ninep.sync
from ninep.constants import DMAPPEND

from .fuse_helpers import mounted, needs_fuse, sh
from .servers import ninefs_command, server_process
from .test_faults import serve_in
from .test_nsrun import _netns_works, netns_host

pytestmark = [pytest.mark.fuse, needs_fuse]

# --- appends ---------------------------------------------------------------------------


def appenders(path: Path, writers: str, lines: int) -> None:
    """One shell per letter in `writers`, at once, each appending `lines` lines with >>."""
    procs = [
        subprocess.Popen(
            ["sh", "-c", f'i=0; while [ $i -lt {lines} ]; do echo "{w} $i" >> {path}; i=$((i+1)); done']
        )
        for w in writers
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0


def every_line(writers: str, lines: int) -> set[str]:
    return {f"{w} {i}" for w in writers for i in range(lines)}


@pytest.fixture
def export_mp(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, str]]:
    """(export, one mount point, another mount point of the same server, its address)."""
    export, mp, mp2 = tmp_path / "export", tmp_path / "mnt", tmp_path / "mnt2"
    for d in (export, mp, mp2):
        d.mkdir()
    with server_process(str(export)) as (address, _), mounted(address, str(mp)), mounted(address, str(mp2)):
        yield export, mp, mp2, address


def test_two_processes_appending_through_one_mount_keep_every_line(export_mp):
    export, mp, _, _ = export_mp
    for round in range(5):
        appenders(mp / f"log{round}", "ab", 1000)
        got = (export / f"log{round}").read_text().splitlines()
        assert len(got) == 2000 and set(got) == every_line("ab", 1000), f"round {round}"


def alternate(paths: list[Path], n: int) -> None:
    """`echo line I >> P`, P taking turns among `paths`, as a shell script would."""
    script = "; ".join(f"echo line {i} >> {paths[i % len(paths)]}" for i in range(n))
    r = sh(script)
    assert r.returncode == 0, r.stderr


def test_appends_alternating_through_two_mounts_keep_every_line(export_mp):
    export, mp, mp2, _ = export_mp
    alternate([mp / "log", mp2 / "log"], 100)
    assert (export / "log").read_text() == "".join(f"line {i}\n" for i in range(100))


def test_appends_alternating_through_a_mount_and_the_host_keep_every_line(export_mp):
    export, mp, _, _ = export_mp
    alternate([mp / "log", export / "log"], 100)
    assert (export / "log").read_text() == "".join(f"line {i}\n" for i in range(100))


def test_a_dmappend_file_is_appended_by_the_server(export_mp):
    export, mp, mp2, address = export_mp
    with ninep.sync.connect(address) as fs:
        try:
            fs.open("log", "w", perm=DMAPPEND | 0o644).close()
        except OSError as e:
            pytest.skip(f"DMAPPEND needs user xattrs here: {e}")
    alternate([mp / "log", mp2 / "log", export / "log"], 99)
    appenders(mp / "log", "ab", 200)
    got = (export / "log").read_text().splitlines()
    assert got[:99] == [f"line {i}" for i in range(99)]
    assert len(got) == 99 + 400 and set(got[99:]) == every_line("ab", 200)


# --- writes around a fault ---------------------------------------------------------------

MIB = 48  # the file each writer writes, in 1 MiB chunks
# A writer as programs are: `once` writes every chunk whatever happens, then fsync and close;
# `retry` repeats each open and pwrite that failed, and the whole file (a new pattern each round)
# until an fsync and a close succeed. Prints what every call said.
WRITER = r"""
import json, os, sys, time
path, mib, retry = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "retry"
def chunk(r, i): return b"%03d%05d" % (r, i) * (1 << 17)
rounds = []
for r in range(20):
    got = {"write_errors": 0, "fsync": None, "close": None}
    rounds.append(got)
    for attempt in range(100 if retry else 1):  # the server may still be down: retry the open too
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if r else os.O_TRUNC), 0o644)
            break
        except OSError:
            got["write_errors"] += 1
            time.sleep(0.1)
    for i in range(mib):
        for attempt in range(100 if retry else 1):
            try:
                os.pwrite(fd, chunk(r, i), i << 20)
                break
            except OSError:
                got["write_errors"] += 1
                time.sleep(0.1)
    for call in ("fsync", "close"):
        try:
            os.fsync(fd) if call == "fsync" else os.close(fd)
            got[call] = 0
        except OSError as e:
            got[call] = e.errno
    if not retry or got["fsync"] == got["close"] == 0:
        break
print(json.dumps(rounds))
"""


def chunk(r: int, i: int) -> bytes:
    return b"%03d%05d" % (r, i) * (1 << 17)


def start_writer(tmp_path: Path, path: Path, how: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(path), str(MIB), how], stdout=subprocess.PIPE, text=True
    )


def wait_for_bytes(path: Path, size: int) -> None:
    deadline = time.monotonic() + 120
    while not path.exists() or path.stat().st_size < size:
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.01)


def check(writer: subprocess.Popen, on_disk: Path, how: str) -> list[dict]:
    out, _ = writer.communicate(timeout=600)
    assert writer.returncode == 0
    rounds = json.loads(out)
    time.sleep(3)  # a write of an old round still on its way would land by now
    data = on_disk.read_bytes()
    last = len(rounds) - 1
    intact = len(data) == MIB << 20 and all(
        data[i << 20 : (i + 1) << 20] == chunk(last, i) for i in range(MIB)
    )
    final = rounds[-1]
    if final["fsync"] == 0:
        assert intact, f"fsync said 0 but the file is not what was written: {rounds}"
    if not intact:  # a lost write fails the fsync and the close after it, whatever came between
        assert final["fsync"] and final["close"], f"data lost silently: {rounds}"
    if how == "retry":
        assert final["fsync"] == final["close"] == 0 and intact, rounds
    return rounds


@pytest.mark.parametrize("how", ["once", "retry"])
def test_a_server_killed_and_restarted_during_a_write_loses_nothing_silently(tmp_path, how):
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    with server_process(str(export)) as (address, proc), mounted(address, str(mp), "--timeout=10"):
        writer = start_writer(tmp_path, mp / "big", how)
        try:
            wait_for_bytes(export / "big", (MIB << 20) // 3)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.5)
            with server_process(str(export), listen=address):
                rounds = check(writer, export / "big", how)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert any(r["write_errors"] or r["fsync"] or r["close"] for r in rounds), "no write met the restart"


def cut_link(netns: str, seconds: float) -> None:
    """The server's end of its link down for `seconds`: packets go nowhere and no route
    changes (downing our end would drop the route, and the mount's redials would leave
    for the default route, outside the namespaces of the test)."""
    inner = f"{netns}b"
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", inner, "down"], check=True)
    try:
        time.sleep(seconds)
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", inner, "up"], check=True)


@pytest.mark.skipif(not _netns_works(), reason="needs ip netns")
@pytest.mark.parametrize("how,index", [("once", 21), ("retry", 22)])
def test_a_link_cut_during_a_write_loses_nothing_silently(tmp_path, how, index):
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    with netns_host(index) as (name, ip):
        proc, address = serve_in(name, ip, str(export))
        try:
            with mounted(address, str(mp), "--timeout=2"):
                writer = start_writer(tmp_path, mp / "big", how)
                try:
                    wait_for_bytes(export / "big", (MIB << 20) // 3)
                    # Longer than --timeout and the 5 s a cancelled request waits for Rflush:
                    # the mount gives the connection up while the link is down.
                    cut_link(name, 8)
                    rounds = check(writer, export / "big", how)
                finally:
                    if writer.poll() is None:
                        writer.kill()
                        writer.wait()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert any(r["write_errors"] or r["fsync"] or r["close"] for r in rounds), "no write met the cut"


def test_every_descriptor_of_a_file_hears_of_a_lost_write(tmp_path):
    """Two descriptors of one file, one writing: after the server comes back, the lost
    write-behind fails the next write, fsync and close of each, once each."""
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    with server_process(str(export)) as (address, proc), mounted(address, str(mp), "--timeout=10"):
        a = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        b = os.open(mp / "f", os.O_WRONLY)
        still_open = [a, b]
        successor: subprocess.Popen | None = None
        try:
            os.pwrite(a, b"x" * 4096, 0)
            os.fsync(a)
            # The server that comes back is started now and held until the old one is gone: a
            # process started after the loss would close the descriptors it inherits (FUSE
            # FLUSH) and take the report meant for the close below.
            successor = subprocess.Popen(
                ["sh", "-c", 'read go && exec "$@"', "sh", *ninefs_command("serve", str(export), "--listen", address)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            proc.send_signal(signal.SIGSTOP)  # it takes the write below and never answers
            os.pwrite(a, b"y" * (1 << 20), 4096)  # accepted, sent, then lost with the connection
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert successor.stdin and successor.stdout
            successor.stdin.write("go\n")
            successor.stdin.flush()
            assert successor.stdout.readline().startswith("ninefs: serving on")
            time.sleep(1)
            for fd in (a, b):
                with pytest.raises(OSError) as e:
                    os.pwrite(fd, b"z", 0)
                assert e.value.errno == errno.EIO
                os.pwrite(fd, b"z", 0)  # reported once: the writer may go on
                with pytest.raises(OSError) as e:
                    os.fsync(fd)
                assert e.value.errno == errno.EIO
                os.pwrite(fd, b"y" * (1 << 20), 4096)  # written again: nothing is lost now
                os.fsync(fd)
            for fd in (a, b):
                still_open.remove(fd)
                with pytest.raises(OSError) as e:
                    os.close(fd)  # and close reports it, once
                assert e.value.errno == errno.EIO
            assert (export / "f").read_bytes() == b"z" + b"x" * 4095 + b"y" * (1 << 20)
        finally:
            if successor is not None:
                successor.kill()
                successor.wait(timeout=10)
            for fd in still_open:
                try:
                    os.close(fd)
                except OSError:
                    pass
