"""`ninefs ns run` and `ns export`: real servers, real mount namespaces, real shell commands."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from contextlib import contextmanager

import pytest

import ninep.sync

from .fuse_helpers import needs_fuse, on_terminal
from .servers import ninefs_command, server_process

pytestmark = [pytest.mark.fuse, needs_fuse]


def ns_run(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ninefs_command("ns", "run", *args), input=stdin, capture_output=True, text=True, timeout=timeout
    )


def mounts(tmp_path) -> list[str]:
    """The host's mounts an `ns run` of this test could have made: at /n, under the test's
    directory, or a work directory of ns run. Others' mounts are none of this test's business."""

    def ours(point: str) -> bool:
        return point == "/n" or point.startswith(("/n/", f"{tmp_path}/", "/tmp/ninefs-ns"))

    with open("/proc/mounts") as f:
        return [line for line in f if ours(line.split()[1])]


@pytest.fixture
def cluster(tmp_path):
    """Two servers (separate processes and ports) with different trees, and a local bin dir."""
    with server_process() as (alpha, _alpha_proc), server_process() as (beta, beta_proc):
        with ninep.sync.connect(alpha) as a, ninep.sync.connect(beta) as b:
            a.mkdir("bin")
            a.write_bytes("bin/tool", b"echo alpha tool\n")
            a.write_bytes("readme", b"I am alpha\n")
            b.mkdir("data")
            b.write_bytes("data/report", b"beta's report\n")
        local = tmp_path / "localbin"
        local.mkdir()
        (local / "tool").write_text("echo local tool\n")
        (local / "only-local").write_text("echo only local\n")
        nsfile = tmp_path / "cluster.ns"
        nsfile.write_text(
            f"# two machines and a union\n"
            f"mount -c {alpha} /n/alpha\n"
            f"mount -c {beta} /n/beta\n"
            f"bind -a {local} /n/alpha/bin\n"
        )
        yield {"alpha": alpha, "beta": beta, "nsfile": str(nsfile), "local": local, "beta_proc": beta_proc}


def test_commands_see_both_machines_at_ordinary_paths(cluster):
    r = ns_run("-n", cluster["nsfile"], "--", "sh", "-c", "ls /n; cat /n/alpha/readme /n/beta/data/report")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "alpha\nbeta\nI am alpha\nbeta's report\n"


def test_cp_between_two_remote_trees(cluster):
    r = ns_run("-n", cluster["nsfile"], "--", "cp", "/n/beta/data/report", "/n/alpha/copied")
    assert r.returncode == 0, r.stderr
    with ninep.sync.connect(cluster["alpha"]) as a:
        assert a.read_bytes("copied") == b"beta's report\n"


def test_union_lists_both_members_first_wins(cluster):
    r = ns_run(
        "-n",
        cluster["nsfile"],
        "--",
        "sh",
        "-c",
        "ls /n/alpha/bin; sh /n/alpha/bin/tool; sh /n/alpha/bin/only-local",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "only-local\ntool\nalpha tool\nonly local\n"


def test_create_in_a_union_lands_in_the_mcreate_member(cluster, tmp_path):
    local = cluster["local"]
    ns = tmp_path / "create.ns"
    ns.write_text(f"mount {cluster['alpha']} /n/alpha\nbind -ac {local} /n/alpha/bin\n")
    r = ns_run("-n", str(ns), "--", "sh", "-c", "echo new > /n/alpha/bin/created")
    assert r.returncode == 0, r.stderr
    assert (local / "created").read_text() == "new\n"
    ns.write_text(f"mount {cluster['alpha']} /n/alpha\nbind -a {local} /n/alpha/bin\n")
    r = ns_run("-n", str(ns), "--", "sh", "-c", "echo new > /n/alpha/bin/refused")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr  # Plan 9: create prohibited
    assert not (local / "refused").exists()


def test_exit_status_and_stdin_pass_through(cluster):
    r = ns_run("-n", cluster["nsfile"], "--", "sh", "-c", "exit 42")
    assert r.returncode == 42
    r = ns_run("-n", cluster["nsfile"], "--", "sh", "-c", "cat > /n/beta/from-stdin", stdin="piped in\n")
    assert r.returncode == 0, r.stderr
    with ninep.sync.connect(cluster["beta"]) as b:
        assert b.read_bytes("from-stdin") == b"piped in\n"


def test_outside_sees_nothing_while_it_runs_and_after(cluster, tmp_path):
    before = mounts(tmp_path)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    child = subprocess.Popen(
        ninefs_command(
            "ns",
            "run",
            "-n",
            cluster["nsfile"],
            "--",
            "sh",
            "-c",
            f"ls /n/alpha > {tmp_path}/seen; cat {fifo}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "seen").exists() or not (tmp_path / "seen").read_text():
            assert time.monotonic() < deadline and child.poll() is None, (
                child.stderr.read() if child.poll() else ""
            )
            time.sleep(0.05)
        assert "readme" in (tmp_path / "seen").read_text()
        # Meanwhile, out here: no mounts, and the remote files are not at /n/alpha.
        assert mounts(tmp_path) == before
        assert not os.path.exists("/n/alpha/readme")
        with open(fifo, "w") as f:
            f.write("done\n")
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert mounts(tmp_path) == before
    assert not os.path.exists("/n/alpha")


def test_nested_ns_run(cluster, tmp_path):
    inner = f"mount {cluster['beta']} /n/inner"
    cmd = shlex.join(
        [*ninefs_command("ns", "run", "-e", inner), "--", "cat", "/n/inner/data/report", "/n/alpha/readme"]
    )
    r = ns_run("-n", cluster["nsfile"], "--", "sh", "-c", cmd, timeout=90)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "beta's report\nI am alpha\n"


def test_a_server_that_dies_fails_only_its_paths(cluster):
    pid = cluster["beta_proc"].pid
    script = (
        "cat /n/beta/data/report; "
        f"kill -9 {pid}; sleep 0.5; "
        "cat /n/beta/data/report 2>/dev/null && echo beta-still-there || echo beta-failed; "
        "cat /n/alpha/readme"
    )
    r = ns_run("-n", cluster["nsfile"], "--timeout=5", "--", "sh", "-c", script)
    assert r.stdout == "beta's report\nbeta-failed\nI am alpha\n", r.stderr


def test_namespace_file_errors_name_the_line_and_nothing_runs(tmp_path):
    ns = tmp_path / "bad.ns"
    ns.write_text("mount tcp!127.0.0.1!1 /n/x\nbind -q /a /b\n")
    r = ns_run("-n", str(ns), "--", "touch", str(tmp_path / "ran"))
    assert r.returncode == 2 and f"{ns}:2: unknown flag -q" in r.stderr
    assert not (tmp_path / "ran").exists()
    ns.write_text("# unreachable server\nmount tcp!127.0.0.1!1 /n/x\n")
    r = ns_run("--strict", "-n", str(ns), "--", "touch", str(tmp_path / "ran"))  # all or nothing
    assert r.returncode == 2 and f"{ns}:2: mount tcp!127.0.0.1!1 /n/x" in r.stderr
    assert not (tmp_path / "ran").exists()


def test_ns_export_serves_one_view_of_many(cluster):
    proc = subprocess.Popen(
        ninefs_command("ns", "export", "-n", cluster["nsfile"], "--listen", "tcp!127.0.0.1!0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = proc.stdout.readline().split()[-1]
        with ninep.sync.connect(address) as fs:
            # /n/.status: namespaces/status.py
            assert sorted(fs.listdir("/n")) == [".status", "alpha", "beta"]
            assert fs.read_bytes("/n/beta/data/report") == b"beta's report\n"
            assert sorted(fs.listdir("/n/alpha/bin")) == ["only-local", "tool"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- several hosts: network namespaces with their own addresses ------------------------------------


@contextmanager
def netns_host(index: int):
    """A "host": a network namespace joined to ours by a veth pair; yields its address."""
    name = f"nf{uuid.uuid4().hex[:6]}"
    outer, inner = f"{name}a", f"{name}b"
    host_ip, ns_ip = f"10.231.{index}.1", f"10.231.{index}.2"
    # While the veth is down (a test cutting the link) or gone, its /30 must not fall
    # through to the default route: nothing a test sends may leave this machine.
    guard = f"unreachable 10.231.{index}.0/30 metric 4000"
    cmds = [
        f"ip route replace {guard}",
        f"ip netns add {name}",
        f"ip link add {outer} type veth peer name {inner}",
        f"ip link set {inner} netns {name}",
        f"ip addr add {host_ip}/30 dev {outer}",
        f"ip link set {outer} up",
        f"ip netns exec {name} ip addr add {ns_ip}/30 dev {inner}",
        f"ip netns exec {name} ip link set {inner} up",
        f"ip netns exec {name} ip link set lo up",
    ]
    try:
        for c in cmds:
            subprocess.run(c, shell=True, check=True, capture_output=True)
        yield name, ns_ip
    finally:
        subprocess.run(f"ip link del {outer}", shell=True, capture_output=True)
        subprocess.run(f"ip netns del {name}", shell=True, capture_output=True)
        subprocess.run(f"ip route del {guard}", shell=True, capture_output=True)


@contextmanager
def server_in(netns: str, ip: str):
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, *ninefs_command("serve", "--listen", f"tcp!{ip}!5640")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("ninefs: serving on"), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _netns_works() -> bool:
    r = subprocess.run("ip netns add nfprobe && ip netns del nfprobe", shell=True, capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _netns_works(), reason="needs ip netns")
def test_a_cluster_of_network_namespaces_composed_into_one_namespace(tmp_path):
    with (
        netns_host(1) as (n1, ip1),
        netns_host(2) as (n2, ip2),
        server_in(n1, ip1) as a1,
        server_in(n2, ip2) as a2,
    ):
        with ninep.sync.connect(a1) as fs:
            fs.write_bytes("whoami", b"host one\n")
        with ninep.sync.connect(a2) as fs:
            fs.write_bytes("whoami", b"host two\n")
        r = ns_run(
            "-e",
            f"mount -c {a1} /n/one",
            "-e",
            f"mount -c {a2} /n/two",
            "--",
            "sh",
            "-c",
            "cat /n/one/whoami /n/two/whoami; cp /n/one/whoami /n/two/from-one",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == "host one\nhost two\n"
        with ninep.sync.connect(a2) as fs:
            assert fs.read_bytes("from-one") == b"host one\n"


def test_machines_in_a_namespace_read_like_files(tmp_path):
    with (
        server_process("--machine", str(tmp_path)) as (alpha, _),
        server_process("--machine", str(tmp_path)) as (beta, _),
    ):
        r = ns_run("-e", f"mount {alpha} /n/alpha", "-e", f"mount {beta} /n/beta", "--", "sh", "-c",
                   "cat /n/alpha/dev/ncpu; wc -w < /n/beta/dev/load; ls /n/beta")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(len(os.sched_getaffinity(0))), "3", "dev", "fs", "proc"]


def test_sigterm_to_ns_run_reaches_the_command_and_its_status_comes_back(cluster):
    import signal

    proc = subprocess.Popen(
        ninefs_command(
            "ns",
            "run",
            "-n",
            cluster["nsfile"],
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_at_a_terminal_is_the_commands_and_the_namespace_stays(cluster):
    script = "trap 'echo interrupted' INT; echo ready; sleep 1; cat /n/alpha/readme; exit 4"
    argv = ninefs_command("ns", "run", "-n", cluster["nsfile"], "--", "sh", "-c", script)
    status, out = on_terminal(argv, b"ready", b"\x03")
    assert status == 4, out
    assert b"interrupted" in out and b"I am alpha" in out
