"""Namespaces of many machines that start without the absent ones (issue #19): `ns run`
with refused, silent and late hosts, the status file, `mount -l`, and `machines` discovery.

Real servers as subprocesses on loopback, `ns run` as a real subprocess (as in test_nsrun.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

import ninep.sync

from .fuse_helpers import needs_fuse
from .servers import (
    ninefs_command,
    server_address,
    server_process,
    server_processes,
    start_server,
    stop_servers,
)

pytestmark = [pytest.mark.fuse, needs_fuse]

WAIT = 30  # every poll in these tests gives up after this long, with a message


def ns_run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(ninefs_command("ns", "run", *args), capture_output=True, text=True, timeout=timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (so a dial to it is refused until a server takes it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "joins when it answers" in line]


@contextmanager
def silent_host() -> Iterator[str]:
    """A listening socket that never answers: the kernel completes the handshake, no 9P comes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"tcp!127.0.0.1!{s.getsockname()[1]}"


@pytest.fixture
def alpha():
    with server_process() as (address, _proc):
        with ninep.sync.connect(address) as fs:
            fs.write_bytes("readme", b"I am alpha\n")
        yield address


def test_a_refused_host_warns_once_and_the_others_work(alpha, tmp_path):
    dead = f"tcp!127.0.0.1!{free_port()}"
    nsfile = tmp_path / "two.ns"
    nsfile.write_text(f"mount {alpha} /n/alpha\nmount {dead} /n/dead\n")
    script = "ls /n; cat /n/alpha/readme; ls /n/dead; echo ls-status=$?; cat /n/alpha/readme"
    r = ns_run("-n", str(nsfile), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert warnings(r.stderr) == [
        f"ninefs ns run: /n/dead: {dead}: connection refused (it joins when it answers)"
    ], r.stderr
    assert r.stdout == "alpha\ndead\nI am alpha\nls-status=2\nI am alpha\n"
    assert "/n/dead" in r.stderr and "Input/output error" in r.stderr


def test_a_host_started_afterwards_joins_without_restarting_anything(alpha, tmp_path):
    port = free_port()
    late = f"tcp!127.0.0.1!{port}"
    nsfile = tmp_path / "late.ns"
    nsfile.write_text(f"mount {alpha} /n/alpha\nmount -c {late} /n/late\n")
    # The command waits (with its own deadline) for the late host's file, then shows the status.
    script = (
        f"end=$(( $(date +%s) + {WAIT} )); "
        "until cat /n/late/hello 2>/dev/null; do "
        '[ "$(date +%s)" -lt "$end" ] || { echo never-joined; exit 1; }; sleep 0.1; done; '
        "grep '^/n/late ' /n/.status"
    )
    proc = subprocess.Popen(
        ninefs_command("ns", "run", "-n", str(nsfile), "--", "sh", "-c", script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the one warning: the namespace is up without it
        assert "/n/late" in line and "connection refused" in line, line
        with server_process(listen=late) as (address, _late_proc):
            with ninep.sync.connect(address) as fs:
                fs.write_bytes("hello", b"late but here\n")
            out, err = proc.communicate(timeout=WAIT + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    text, status = out.splitlines()
    assert text == "late but here"
    assert status.startswith(f"/n/late {late} up "), status


def test_strict_fails_in_one_line_and_runs_nothing(alpha, tmp_path):
    dead = f"tcp!127.0.0.1!{free_port()}"
    marker = tmp_path / "ran"
    r = ns_run(
        "--strict", "--mount", alpha, "/n/alpha", "--mount", dead, "/n/dead", "--", "touch", str(marker)
    )
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("ninefs ns run: --mount ") and dead in r.stderr
    assert "refused" in r.stderr
    assert not marker.exists()


def test_a_silent_host_does_not_hold_up_the_command_past_the_connect_deadline(alpha):
    with silent_host() as silent:
        started = time.monotonic()
        r = ns_run(
            "--connect-timeout", "2", "--mount", alpha, "/n/alpha", "--mount", silent, "/n/silent",
            "--", "sh", "-c", "cat /n/alpha/readme; grep '^/n/silent ' /n/.status",
        )  # fmt: skip
        took = time.monotonic() - started
    print(f"ns run with a silent host (--connect-timeout 2): {took:.2f} s in all")
    assert r.returncode == 0, r.stderr
    (warning,) = warnings(r.stderr)
    assert warning.startswith(f"ninefs ns run: /n/silent: {silent}: ") and "timed out" in warning
    readme, status = r.stdout.splitlines()
    assert readme == "I am alpha"
    assert status.startswith(f"/n/silent {silent} down ")


def test_the_status_file_lists_every_machine_and_is_hidden_from_ls(alpha):
    dead = f"tcp!127.0.0.1!{free_port()}"
    r = ns_run(
        "--mount", alpha, "/n/alpha", "--mount", dead, "/n/dead",
        "--", "sh", "-c", "ls /n; echo --; ls -A /n; echo --; echo /n/*; echo --; cat /n/.status",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plain, with_dots, glob, status = r.stdout.split("--\n")
    assert plain.split() == ["alpha", "dead"]
    assert with_dots.split() == [".status", "alpha", "dead"]
    assert glob.split() == ["/n/alpha", "/n/dead"]
    up, down = status.splitlines()
    mount_point, address, state, since = up.split()
    assert (mount_point, address, state) == ("/n/alpha", alpha, "up")
    assert since.endswith("Z") and time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")
    assert down.startswith(f"/n/dead {dead} down ") and down.endswith(" connection refused")


def test_a_lazy_mount_dials_at_first_use_not_at_start(alpha):
    script = "cat /n/.status; cat /n/lazy/readme; cat /n/.status"
    r = ns_run("-e", f"mount -l {alpha} /n/lazy", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    before, readme, after = r.stdout.splitlines()
    assert before.startswith(f"/n/lazy {alpha} idle ")
    assert readme == "I am alpha"
    assert after.startswith(f"/n/lazy {alpha} up ")


@contextmanager
def servers(n: int) -> Iterator[list[str]]:
    """`n` RAM servers, each holding a file `name` with its number."""
    with server_processes(n) as addresses:
        for i, address in enumerate(addresses):
            with ninep.sync.connect(address) as fs:
                fs.write_bytes("name", f"h{i}\n".encode())
        yield addresses


def test_sixteen_mounts_are_dialled_at_once(tmp_path):
    with servers(16) as addresses, silent_host() as silent:
        nsfile = tmp_path / "sixteen.ns"
        lines = [f"mount {a} /n/h{i}" for i, a in enumerate(addresses)]
        # Two silent hosts: dialled one after the other they would cost two connect deadlines.
        lines += [f"mount {silent} /n/silent1", f"mount {silent} /n/silent2"]
        nsfile.write_text("\n".join(lines) + "\n")
        started = time.monotonic()
        r = ns_run("-v", "--connect-timeout", "3", "-n", str(nsfile), "--", "sh", "-c", "cat /n/h*/name")
        took = time.monotonic() - started
    ready = [line for line in r.stderr.splitlines() if "ready in" in line or "applied in" in line]
    print(f"ns run, 16 servers + 2 silent (--connect-timeout 3): {took:.2f} s in all; {ready}")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(f"h{i}" for i in range(16))
    assert len(warnings(r.stderr)) == 2


def test_a_machines_file_mounts_every_machine_by_name(alpha, tmp_path):
    dead = f"tcp!127.0.0.1!{free_port()}"
    (tmp_path / "machines").write_text(f"# the cluster\nkremvax {alpha}\nnowhere {dead}\n")
    nsfile = tmp_path / "cluster.ns"
    nsfile.write_text("machines machines\nmachines machines /n/again\n")
    r = ns_run("-n", str(nsfile), "--", "sh", "-c", "ls /n /n/again; cat /n/kremvax/readme")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/n:\nagain\nkremvax\nnowhere\n\n/n/again:\nkremvax\nnowhere\nI am alpha\n"
    assert len(warnings(r.stderr)) == 2 and "/n/nowhere" in r.stderr


def test_a_bad_machines_file_names_its_line_and_nothing_runs(tmp_path):
    (tmp_path / "machines").write_text("a b c\n")
    nsfile = tmp_path / "bad.ns"
    nsfile.write_text("machines machines\n")
    r = ns_run("-n", str(nsfile), "--", "true")
    assert r.returncode == 2
    assert r.stderr.startswith(f"ninefs ns run: {nsfile}:1: ") and "machines:1" in r.stderr


def _unshare_works() -> bool:
    return (
        os.geteuid() == 0 and subprocess.run(["unshare", "-mu", "true"], capture_output=True).returncode == 0
    )


@contextmanager
def machine_named(sysname: str, listen: str, fs_dir: str) -> Iterator[subprocess.Popen]:
    """`ninefs serve --machine` in a UTS namespace of its own, so its /dev/sysname is `sysname`."""
    serve = " ".join(ninefs_command("serve", "--machine", fs_dir, "--listen", listen))
    proc = start_server(["unshare", "-u", "sh", "-c", f"hostname {sysname} && exec {serve}"])
    try:
        server_address(proc)
        yield proc
    finally:
        stop_servers(proc)


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare -mu")
def test_a_dns_name_of_many_addresses_mounts_each_machine_by_its_sysname(tmp_path):
    port = free_port("127.0.0.2")
    hosts = tmp_path / "hosts"
    # One name, three addresses (a headless Service's records); nothing listens on .4.
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.{i} pool.test\n" for i in (2, 3, 4)))
    (tmp_path / "fs").mkdir()
    with ExitStack() as stack:
        for i, name in ((2, "node-a"), (3, "node-b")):
            stack.enter_context(machine_named(name, f"tcp!127.0.0.{i}!{port}", str(tmp_path / "fs")))
        nsfile = tmp_path / "pool.ns"
        nsfile.write_text(f"machines dns!pool.test!{port}\n")
        run = " ".join(ninefs_command("ns", "run", "--connect-timeout", "3", "-n", str(nsfile)))
        script = "ls /n; cat /n/node-a/dev/sysname /n/node-b/dev/sysname; cat /n/.status"
        # A private /etc/hosts, in a mount namespace of this command only: the host's stays as it is.
        r = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                f'mount --bind {hosts} /etc/hosts && exec {run} -- sh -c "{script}"',
            ],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:5] == ["127.0.0.4", "node-a", "node-b", "node-a", "node-b"], r.stdout
    status = r.stdout.splitlines()[5:]
    assert [line.split()[:3] for line in status] == [
        ["/n/127.0.0.4", f"tcp!127.0.0.4!{port}", "down"],
        ["/n/node-a", f"tcp!127.0.0.2!{port}", "up"],
        ["/n/node-b", f"tcp!127.0.0.3!{port}", "up"],
    ]
    (warning,) = warnings(r.stderr)
    assert warning.startswith(f"ninefs ns run: /n/127.0.0.4: tcp!127.0.0.4!{port}: connection refused")
