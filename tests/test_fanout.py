"""`ninefs cpu -w HOSTS -- CMD` and `ninep.run_all`: one command on many machines at once.

Each "machine" is a real `ninefs serve --machine --allow-exec` subprocess on loopback,
started in its own directory (a command starts there, so `pwd` tells the hosts apart).
The same cases on 16 network namespaces with their own host names are tests/test_cluster.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from contextlib import ExitStack

import pytest
import trio

import ninep
import ninep.sync

from .servers import ninefs_command, server_process


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Three machines: two started in a directory named `same`, one in `other`."""
    top = tmp_path_factory.mktemp("fanout")
    with ExitStack() as stack:
        found = []
        for i, name in enumerate(("same", "same", "other")):
            d = top / str(i) / name
            d.mkdir(parents=True)
            address, proc = stack.enter_context(server_process("--machine", str(d), "--allow-exec"))
            found.append((address, proc))
        yield found


def label(address: str) -> str:
    return address.removeprefix("tcp!")


def cpu_w(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ninefs_command("cpu", *args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def every(hosts) -> str:
    return ",".join(a for a, _ in hosts)


@pytest.fixture
def refused():
    """An address where nothing listens (a port just closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp!127.0.0.1!{port}"


@pytest.fixture
def silent():
    """A server that accepts connections and never answers a byte."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"tcp!127.0.0.1!{s.getsockname()[1]}"
    finally:
        s.close()


def test_each_host_runs_the_command_and_each_line_names_its_host(hosts):
    r = cpu_w("-w", every(hosts), "--", "sh", "-c", "echo out; echo err >&2")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(f"{label(a)}: out" for a, _ in hosts)
    assert sorted(r.stderr.splitlines()) == sorted(f"{label(a)}: err" for a, _ in hosts)


def test_dash_N_prints_the_lines_alone(hosts):
    r = cpu_w("-w", every(hosts), "-N", "--", "echo", "hello")
    assert r.stdout.splitlines() == ["hello"] * 3


def test_dash_b_shows_identical_results_once_under_their_folded_hosts(hosts):
    r = cpu_w("-w", every(hosts), "-b", "--", "sh", "-c", "basename $(pwd)")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    same = [label(a) for a, _ in hosts[:2]]
    # dshbak -c: dashes, the folded hosts, dashes, then the output they share
    assert "same" in lines and "other" in lines
    header = lines[lines.index("same") - 2]
    assert all(part in header for part in (same[0].split("!")[0],)), lines
    assert lines.count("same") == 1 and lines.count("other") == 1
    assert lines[lines.index("other") - 2] == label(hosts[2][0])


def test_json_gives_one_record_per_host_with_every_field(hosts, refused):
    r = cpu_w("-w", f"{every(hosts)},{refused}", "--json", "--", "sh", "-c", "echo hi; exit 3")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(rec["host"] for rec in records) == sorted(
        label(a) for a in [*(a for a, _ in hosts), refused]
    )
    for rec in records:
        assert set(rec) == {"host", "address", "status", "stdout", "stderr", "seconds", "error"}
        if rec["address"] == refused:
            assert rec["status"] is None and "connection refused" in rec["error"]
        else:
            assert (rec["status"], rec["stdout"], rec["error"]) == (3, "hi\n", None)
    assert r.returncode == 255


def test_outdir_leaves_the_results_as_files(hosts, tmp_path, refused):
    out = tmp_path / "results"
    r = cpu_w("-w", f"{every(hosts)},{refused}", "--outdir", str(out), "--", "sh", "-c", "echo o; echo e >&2")
    assert r.returncode == 255
    for address, _ in hosts:
        d = out / label(address)
        assert (d / "stdout").read_text() == "o\n"
        assert (d / "stderr").read_text() == "e\n"
        assert (d / "status").read_text() == "0\n"
    assert "connection refused" in (out / label(refused) / "status").read_text()
    assert r.stdout == ""


def test_the_exit_status_is_the_largest_and_each_failed_group_gets_one_closing_line(hosts, refused):
    # the two `same` hosts exit 2, `other` exits 0
    r = cpu_w(
        "-w", f"{every(hosts)},{refused}", "--", "sh", "-c", '[ "$(basename $(pwd))" = other ] || exit 2'
    )
    closing = [line for line in r.stderr.splitlines() if not line.startswith(label(hosts[0][0]) + ":")]
    assert any(line.endswith(": exit 2") for line in closing), r.stderr
    assert f"{label(refused)}: unreachable (connection refused)" in r.stderr.splitlines()
    assert r.returncode == 255
    r = cpu_w("-w", every(hosts), "--", "sh", "-c", '[ "$(basename $(pwd))" = other ] || exit 2')
    assert r.returncode == 2
    assert len([line for line in r.stderr.splitlines() if line.endswith("exit 2")]) == 1


def test_a_silent_host_is_unreachable_within_the_connect_deadline_and_the_others_finish(hosts, silent):
    began = time.monotonic()
    r = cpu_w("-w", f"{every(hosts)},{silent}", "--connect-timeout", "2", "--", "echo", "ok")
    took = time.monotonic() - began
    assert r.stdout.count(": ok") == 3
    assert f"{label(silent)}: unreachable" in r.stderr
    assert r.returncode == 255
    assert took < 30  # not TCP's two minutes: the 2 s deadline (generous for a loaded machine)


def test_a_command_past_its_timeout_is_reported_and_killed(hosts):
    seconds = f"60.{uuid.uuid4().int % 10**9:09d}"  # a sleep no other process runs
    marker = f"sleep {seconds}"
    r = cpu_w("-w", hosts[0][0], "--timeout", "2", "--", "sleep", seconds)
    assert r.returncode == 255
    assert "timed out after 2 s" in r.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
        if not left:
            break
        time.sleep(0.2)
    assert not left, "the timed-out command still runs on its host"


def test_stdin_is_sent_to_every_host(hosts):
    data = "x" * 100_000 + "\n"
    r = cpu_w("-w", every(hosts), "-N", "--", "wc", "-c", stdin=data)
    assert r.stdout.split() == [str(len(data))] * 3


def test_a_machines_file_names_the_hosts_and_dash_x_leaves_some_out(hosts, tmp_path):
    machines = tmp_path / "machines"
    machines.write_text("# our three\n" + "".join(f"m{i} {a}\n" for i, (a, _) in enumerate(hosts, 1)))
    r = cpu_w("-w", f"^{machines}", "-x", "m2", "--", "echo", "hi")
    assert sorted(r.stdout.splitlines()) == ["m1: hi", "m3: hi"]


def test_all_takes_every_machine_a_namespace_file_mounts_under_n(hosts, tmp_path):
    nsfile = tmp_path / "cluster.ns"
    nsfile.write_text("".join(f"mount {a} /n/h{i}\n" for i, (a, _) in enumerate(hosts, 1)) + "bind /tmp /t\n")
    r = cpu_w("-n", str(nsfile), "--all", "--", "echo", "hi")
    assert sorted(r.stdout.splitlines()) == ["h1: hi", "h2: hi", "h3: hi"], r.stderr


def test_a_host_that_stops_answering_mid_command_is_reported_lost(hosts, tmp_path):
    # SIGSTOP: the connection stays open and says nothing, as a cut link does
    with server_process("--machine", str(tmp_path), "--allow-exec") as (address, proc):
        p = subprocess.Popen(
            ninefs_command(
                "cpu", "-w", address, "--connect-timeout", "1", "--", "sh", "-c", "echo on; sleep 30"
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert p.stdout.readline().endswith(": on\n")  # the command runs: now the host stops
            proc.send_signal(signal.SIGSTOP)
            _, err = p.communicate(timeout=30)
        finally:
            proc.send_signal(signal.SIGCONT)
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 255
        assert "connection lost (no answer for 1 s)" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-w", "node[3-1]", "--", "true"], "backwards"),
        (["-w", "h1", "--"], "needs a command"),
        (["-w", "^/nonexistent/machines", "--", "true"], "/nonexistent/machines"),
        ([], "no machine"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(args, message):
    r = cpu_w(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_run_all_gives_one_result_per_host_in_order(hosts, refused):
    addresses = [a for a, _ in hosts] + [refused]

    async def main():
        return await ninep.run_all(addresses, ["sh", "-c", "basename $(pwd)"])

    results = trio.run(main)
    assert [r.address for r in results] == addresses
    assert [r.stdout for r in results[:3]] == [b"same\n", b"same\n", b"other\n"]
    assert results[3].status is None and "connection refused" in results[3].error


def test_the_blocking_run_all_is_the_same_call(hosts):
    results = ninep.sync.run_all([a for a, _ in hosts], ["true"], fanout=1)
    assert [r.status for r in results] == [0, 0, 0]
    assert all(r.error is None and r.seconds > 0 for r in results)


def test_fanout_does_not_depend_on_USER(hosts):
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME")}
    r = subprocess.run(
        ninefs_command("cpu", "-w", hosts[0][0], "--", "echo", "hi"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_a_closed_stdout_ends_the_fan_out_quietly(hosts):
    # `| head`: our own pipe closed, not a host lost; as cat(1) would, stop with SIGPIPE's status
    cpu = subprocess.Popen(
        ninefs_command("cpu", "-w", every(hosts), "--", "seq", "1000000"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run(["head", "-n", "2"], stdin=cpu.stdout, capture_output=True, timeout=60)
    cpu.stdout.close()
    try:
        err = cpu.stderr.read().decode()
        cpu.wait(timeout=30)
    finally:
        if cpu.poll() is None:
            cpu.kill()
            cpu.wait()
    assert len(head.stdout.splitlines()) == 2
    assert cpu.returncode == 128 + signal.SIGPIPE
    assert err == "", err


@pytest.mark.parametrize("where", ["-w", "after ADDR"])
def test_a_bad_key_is_one_line_naming_it_even_if_no_host_asks(hosts, tmp_path, where):
    key = tmp_path / "key"
    key.write_text("not a key\n")
    address = hosts[0][0]
    args = ["-w", address, "-k", str(key)] if where == "-w" else [address, "-k", str(key)]
    r = cpu_w(*args, "--", "true")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"ninefs cpu: {key}: not a PEM private key (make one with `ninefs key gen`)"
    ]
