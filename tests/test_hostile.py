"""Clients that are broken or hostile, against real `ninefs serve` processes.

Each test is one attack from issue #15 as a bounded run: the server must end
the offending connection only, keep its memory and descriptors in bounds, and
keep serving a well-behaved client. `make fuzz` runs the same attacks at length
(NINEFS_HOSTILE_ROUNDS).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import ninep.sync
from ninep import NOFID, NOTAG, OREAD, codec
from ninep.messages import Tattach, Tauth, Topen, Tread, Tversion, Twalk, Twrite

from .servers import ninefs_command, server_process

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("NINEFS_HOSTILE_ROUNDS", "200"))
MiB = 1 << 20


# --- a server to attack, and what it holds --------------------------------------------


@contextmanager
def attacked(tmp_path, *args: str, listen: str = "tcp!127.0.0.1!0") -> Iterator[tuple[str, int, str]]:
    """`ninefs serve ARGS` in a subprocess: (address, pid, log path); its log is checked at the end."""
    log = tmp_path / "server.log"
    with open(log, "w") as err, server_process(*args, listen=listen, stderr=err) as (address, proc):
        yield address, proc.pid, str(log)
        assert proc.poll() is None, f"the server died: {log.read_text()[-3000:]}"
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def host_port(address: str) -> tuple[str, int]:
    host, port = address.split("!")[1:]
    return host, int(port)


class Raw:
    """A client socket that sends and receives whole 9P frames, for attacks byte by byte."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(host_port(address), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, *msgs: object) -> None:
        self.sock.sendall(b"".join(codec.encode(m) for m in msgs))  # type: ignore[arg-type]

    def recv(self) -> object | None:
        """The next message, or None once the server closed the connection."""
        while len(self.buf) < 4 or len(self.buf) < struct.unpack_from("<I", self.buf)[0]:
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        n = struct.unpack_from("<I", self.buf)[0]
        frame = bytes(self.buf[:n])
        del self.buf[:n]
        return codec.decode(frame)

    def expect(self, name: str) -> object:
        reply = self.recv()
        assert type(reply).__name__ == name, reply
        return reply

    def handshake(self, path: list[str] | None = None, msize: int = MiB) -> None:
        """Tversion, Tattach fid 0, and (with `path`) walk fid 1 there and open it."""
        self.send(Tversion(NOTAG, msize, "9P2000"), Tattach(1, 0, NOFID, "tester", ""))
        self.expect("Rversion")
        self.expect("Rattach")
        if path is not None:
            self.send(Twalk(2, 0, 1, tuple(path)))
            self.expect("Rwalk")
            self.send(Topen(3, 1, OREAD))
            self.expect("Ropen")

    def reset(self) -> None:
        """Close with an RST instead of a FIN (SO_LINGER 0), as a crashed or killed peer does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def closed_within(self, seconds: float) -> bool:
        """The server closes the connection within `seconds` (sending nothing else meanwhile)."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def well_behaved(address: str, path: str, expect: bytes, within: float = 5.0) -> None:
    """A normal client connects and reads `path` within `within` seconds."""
    start = time.monotonic()
    with ninep.sync.connect(address) as fs:
        assert fs.read_bytes(path) == expect
    assert time.monotonic() - start < within


@pytest.fixture
def export(tmp_path):
    """A directory with a small file and a 64 MiB one."""
    d = tmp_path / "export"
    d.mkdir()
    (d / "hello").write_bytes(b"hello\n")
    with open(d / "big", "wb") as f:
        f.truncate(64 * MiB)
    return d


# --- crashes: one connection's failure ends that connection only ----------------------


def test_abrupt_disconnects_end_only_their_own_connection(tmp_path, export):
    """RST before Tversion, mid-read of 64 MiB, with 200 requests outstanding; a killed `cat`."""
    with attacked(tmp_path, str(export)) as (address, pid, _):
        well_behaved(address, "hello", b"hello\n")
        fds, rss = fd_count(pid), rss_mib(pid)
        for i in range(ROUNDS):
            Raw(address).reset()  # before Tversion
            s = Raw(address)
            s.handshake(["big"])
            s.send(*(Tread(10 + k, 1, k * MiB, MiB) for k in range(64)))
            s.sock.recv(1 + i * 997 % 65536)  # part of the first reply
            s.reset()  # mid-read
            s = Raw(address)
            s.handshake(["big"])
            s.send(*(Tread(10 + k, 1, 0, 4096) for k in range(200)))
            s.reset()  # 200 outstanding
        for _ in range(max(ROUNDS // 50, 3)):
            cat = subprocess.Popen(ninefs_command("cat", address, "big"), stdout=subprocess.PIPE)
            assert cat.stdout is not None
            cat.stdout.read(MiB)
            cat.kill()
            cat.wait()
            cat.stdout.close()
        well_behaved(address, "hello", b"hello\n")
        time.sleep(0.5)  # the last resets are being cleaned up
        assert fd_count(pid) <= fds + 4
        assert rss_mib(pid) < rss + 64


def test_a_killed_reader_of_dev_random_ends_only_its_connection(tmp_path, export):
    """Under --machine: readers of /dev/random reset mid-read, and a killed `ninefs cat` of it."""
    with attacked(tmp_path, "--machine", str(export)) as (address, pid, _):
        fds = fd_count(pid)
        for _ in range(max(ROUNDS // 4, 10)):
            s = Raw(address)
            s.handshake(["dev", "random"])
            s.send(*(Tread(10 + k, 1, 0, 65536) for k in range(32)))
            s.sock.recv(4096)
            s.reset()
        for _ in range(3):
            cat = subprocess.Popen(ninefs_command("cat", address, "/dev/random"), stdout=subprocess.PIPE)
            assert cat.stdout is not None
            cat.stdout.read(4096)
            cat.kill()
            cat.wait()
            cat.stdout.close()
        well_behaved(address, "fs/hello", b"hello\n")
        time.sleep(0.5)
        assert fd_count(pid) <= fds + 4


def test_tls_aborts_and_a_refused_host_key_end_only_their_connection(tmp_path, export, monkeypatch):
    host_key = tmp_path / "host_key"
    listen = "tls!127.0.0.1!0"
    with attacked(tmp_path, str(export), "--host-key", str(host_key), listen=listen) as (address, pid, _):
        known = tmp_path / "known_hosts"
        monkeypatch.setenv("NINEFS_KNOWN_HOSTS", str(known))
        well_behaved(address, "hello", b"hello\n")  # pins the key
        fds = fd_count(pid)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        for _ in range(max(ROUNDS // 4, 10)):
            s = Raw(address)
            s.sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
            s.reset()  # before the handshake is done
            s = Raw(address)
            s.sock = context.wrap_socket(s.sock)
            s.send(Tversion(NOTAG, MiB, "9P2000"))
            s.expect("Rversion")
            s.reset()  # after it, without a TLS close_notify
        # A client that (rightly) refuses a changed host key must not kill the server it refused.
        pinned = known.read_text().split()
        known.write_text(f"{pinned[0]} {pinned[1]} {'A' * 43}=\n")
        for _ in range(5):
            with pytest.raises(OSError, match="key"), ninep.sync.connect(address):
                pass
        known.unlink()
        well_behaved(address, "hello", b"hello\n")
        time.sleep(0.5)
        assert fd_count(pid) <= fds + 4


# --- resource limits ---------------------------------------------------------------


def test_half_frames_cannot_lock_out_a_well_behaved_client(tmp_path, export):
    """256 connections that send half a frame and then nothing: a real client still gets in."""
    with attacked(tmp_path, str(export), "--handshake-timeout", "3") as (address, _, log):
        squatters = []
        for _ in range(256):
            s = Raw(address)
            s.sock.sendall(b"\x13\x00")  # 2 of a Tversion's 19 bytes
            squatters.append(s)
        well_behaved(address, "hello", b"hello\n", within=5)
        deadline = time.monotonic() + 10  # ... and every one of them is closed by the handshake deadline
        for s in squatters:
            assert s.closed_within(max(deadline - time.monotonic(), 0.1))
            s.close()
        with open(log) as f:
            assert "handshake" in f.read()


def test_connections_that_never_finish_their_handshake_are_closed(tmp_path, export):
    with attacked(tmp_path, str(export), "--handshake-timeout", "1") as (address, _, _):
        silent, versioned, attached = Raw(address), Raw(address), Raw(address)
        versioned.send(Tversion(NOTAG, MiB, "9P2000"))
        versioned.expect("Rversion")
        attached.handshake()
        assert silent.closed_within(5)
        assert versioned.closed_within(5)
        assert not attached.closed_within(1.5)  # done with its handshake: may idle for ever
        for s in (silent, versioned, attached):
            s.close()


def test_half_a_frame_then_silence_closes_the_connection(tmp_path, export):
    with attacked(tmp_path, str(export), "--frame-timeout", "1") as (address, _, _):
        quiet, stuck = Raw(address), Raw(address)
        quiet.handshake()
        stuck.handshake()
        stuck.sock.sendall(b"\x17\x00\x00\x00\x74")  # a Tread's first 5 of 23 bytes
        assert stuck.closed_within(5)
        quiet.send(Twalk(5, 0, 1, ("hello",)))
        quiet.expect("Rwalk")  # whole frames may come at any time
        quiet.close()
        stuck.close()


def test_one_address_cannot_take_every_slot(tmp_path, export):
    """--per-peer: attached connections past it are refused; ones in their handshake make room."""
    with attacked(tmp_path, str(export), "--per-peer", "4") as (address, _, _):
        held = [Raw(address) for _ in range(4)]
        for s in held:
            s.handshake()
        extra = Raw(address)
        assert extra.closed_within(5)  # every slot is in real use: refused
        for s in (*held, extra):
            s.close()
        time.sleep(0.3)
        squatters = [Raw(address) for _ in range(4)]
        time.sleep(0.3)
        well_behaved(address, "hello", b"hello\n")  # the oldest squatter made room
        assert squatters[0].closed_within(5)
        for s in squatters:
            s.close()


def test_huge_names_before_authentication_cost_little(tmp_path, export):
    """Tauth with 60 KB names: the connection is closed, and memory stays small."""
    from ninep.auth import generate_key

    line = generate_key(str(tmp_path / "key"), "tester")
    keys = tmp_path / "authorized"
    keys.write_text(line.rsplit(" ", 1)[0] + " tester\n")
    with attacked(tmp_path, str(export), "--authorized-keys", str(keys)) as (address, pid, _):
        big = "x" * 60000
        for _ in range(3):
            conns = []
            for _ in range(8):
                s = Raw(address)
                try:
                    s.send(Tversion(NOTAG, MiB, "9P2000"), *(Tauth(1 + k, 1 + k, big, big) for k in range(8)))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed by the server before we were done: as it should
                conns.append(s)
            for s in conns:  # a frame that big before attach: closed, without an Rauth
                replies = []
                while (reply := s.recv()) is not None:
                    replies.append(type(reply).__name__)
                assert set(replies) <= {"Rversion"}
                s.close()
        s = Raw(address)
        s.send(Tversion(NOTAG, 8192, "9P2000"), Tauth(1, 1, "u" * 1000, ""))
        s.expect("Rversion")
        assert "uname longer than 256 bytes" in s.expect("Rerror").ename  # type: ignore[attr-defined]
        s.close()
        assert rss_mib(pid) < 300


@pytest.mark.parametrize("machine", [False, True], ids=["dir", "machine"])
def test_unread_replies_hold_bounded_memory(tmp_path, export, machine):
    """8 connections that each ask for 256 MiB and read none of it."""
    data = os.urandom(MiB)
    (export / "mib").write_bytes(data)
    args = ["--machine", str(export)] if machine else [str(export)]
    path = ["fs", "mib"] if machine else ["mib"]
    with attacked(tmp_path, *args) as (address, pid, _):
        hogs = []
        for _ in range(8):
            s = Raw(address)
            s.handshake(path)
            s.send(*(Tread(10 + k, 1, 0, MiB) for k in range(256)))
            hogs.append(s)
        time.sleep(2)
        assert rss_mib(pid) < 300
        well_behaved(address, "/".join(path), data)
        for s in hogs[:2]:  # and a hog still gets all it asked for, once it reads
            s.sock.settimeout(30)
            for _ in range(256):
                assert len(s.expect("Rread").data) == MiB - 24  # type: ignore[attr-defined]  # msize - IOHDRSZ
        for s in hogs:
            s.close()
        assert rss_mib(pid) < 300


# --- bad values: one clean error, never a traceback -------------------------------------


def test_names_longer_than_name_max_are_refused(tmp_path, export):
    with attacked(tmp_path, str(export)) as (address, _, _):
        s = Raw(address)
        s.handshake()
        s.send(Twalk(2, 0, 1, ("n" * 300,)))
        assert "file name too long" in s.expect("Rerror").ename  # type: ignore[attr-defined]
        s.close()


def test_offsets_past_off_t_get_a_clean_error(tmp_path, export):
    with attacked(tmp_path, str(export)) as (address, _, _):
        s = Raw(address)
        s.handshake(["hello"])
        s.send(Tread(4, 1, 1 << 63, 10))
        assert s.expect("Rerror").ename.startswith("invalid argument")  # type: ignore[attr-defined]
        s.send(Twalk(5, 0, 2, ("hello",)))
        s.expect("Rwalk")
        s.send(Topen(6, 2, 1))
        s.expect("Ropen")
        s.send(Twrite(7, 2, (1 << 63) - 1, b"xy"))
        assert s.expect("Rerror").ename.startswith("file too large")  # type: ignore[attr-defined]
        s.send(Twrite(8, 2, (1 << 64) - 1, b""))
        assert s.expect("Rerror").ename.startswith("file too large")  # type: ignore[attr-defined]
        s.close()
