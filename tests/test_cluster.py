"""Sixteen machines, each a network namespace with its own hostname and server (tests/cluster.py).

What a person running `ninefs cpu -w` and `ninefs ns run` over a cluster sees: every host
answers, output is grouped and kept per host, a host that dies or drops off the network
is named as such while the rest finish, and a namespace of all of them starts without
the absent one and picks it up when it comes back (issue #19).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, cluster, netns_works
from .fuse_helpers import needs_fuse
from .servers import ninefs_command

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not netns_works(), reason="needs ip netns (root)")]

N = 16
NAMES = {f"nfh{i}" for i in range(1, N + 1)}


@pytest.fixture(scope="module")
def hosts() -> Iterator[Cluster]:
    with cluster(N) as c:
        yield c


@pytest.fixture
def healthy(hosts: Cluster) -> Iterator[Cluster]:
    """The cluster, put back whole after a test that killed a server or cut a link."""
    yield hosts
    for h in hosts.hosts:
        h.restore_link()
        if h.proc is None or h.proc.poll() is not None:
            h.restart()


def fanout(c: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`ninefs cpu -w ^MACHINES ARGS` with the cluster's key."""
    return subprocess.run(
        ninefs_command("cpu", "-w", f"^{c.machines}", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=c.env,
        stdin=subprocess.DEVNULL,
    )


def prefixed(stdout: str) -> dict[str, str]:
    """`h3: nfh3` lines as {label: text}."""
    lines = dict(line.split(": ", 1) for line in stdout.splitlines())
    return lines


def test_hostname_on_sixteen_machines_gives_sixteen_names(healthy: Cluster) -> None:
    r = fanout(healthy, "--", "hostname")
    assert r.returncode == 0, r.stderr
    out = prefixed(r.stdout)
    assert set(out) == {h.name for h in healthy.hosts}
    assert {out[h.name] for h in healthy.hosts} == NAMES
    assert all(out[h.name] == h.hostname for h in healthy.hosts)


def test_b_folds_identical_output_under_one_header_of_host_ranges(healthy: Cluster) -> None:
    r = fanout(healthy, "-b", "--", "echo", "same")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("same") == 1
    assert f"h[1-{N}]" in r.stdout


def test_b_keeps_one_group_per_host_when_outputs_differ(healthy: Cluster) -> None:
    r = fanout(healthy, "-b", "--", "hostname")
    assert r.returncode == 0, r.stderr
    body = [ln.strip() for ln in r.stdout.splitlines() if ln.strip() and not ln.startswith("-")]
    # dshbak -c: a header line naming the host, then its output.
    pairs = dict(zip(body[0::2], body[1::2], strict=True))
    assert pairs == {h.name: h.hostname for h in healthy.hosts}


def test_json_gives_one_record_per_host_with_every_field(healthy: Cluster) -> None:
    r = fanout(healthy, "--json", "--", "sh", "-c", "hostname; echo oops >&2")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == N
    by_host = {rec["host"]: rec for rec in records}
    for h in healthy.hosts:
        rec = by_host[h.name]
        assert set(rec) == {"host", "address", "status", "stdout", "stderr", "seconds", "error"}
        assert rec["address"] == h.address
        assert (rec["status"], rec["stdout"], rec["stderr"], rec["error"]) == (
            0,
            f"{h.hostname}\n",
            "oops\n",
            None,
        )
        assert isinstance(rec["seconds"], int | float) and rec["seconds"] >= 0


def test_outdir_keeps_stdout_stderr_and_status_per_host(healthy: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = fanout(healthy, "--outdir", str(out), "--", "sh", "-c", "hostname; echo oops >&2; exit 3")
    assert r.returncode == 3, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(h.name for h in healthy.hosts)
    for h in healthy.hosts:
        d = out / h.name
        assert (d / "stdout").read_text() == f"{h.hostname}\n"
        assert (d / "stderr").read_text() == "oops\n"
        assert (d / "status").read_text().strip() == "3"


def test_a_host_killed_and_a_link_cut_mid_fanout_are_reported_and_the_other_fourteen_finish(
    healthy: Cluster, tmp_path: Path
) -> None:
    killed, cut = healthy["h5"], healthy["h9"]
    marks = tmp_path / "started"
    marks.mkdir()
    script = f"touch {marks}/$(hostname); sleep 2; hostname"
    proc = subprocess.Popen(
        ninefs_command(
            "cpu", "-w", f"^{healthy.machines}", "--connect-timeout", "3", "--", "sh", "-c", script
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=healthy.env,
    )
    try:
        deadline = time.monotonic() + 30
        while not all((marks / h.hostname).exists() for h in (killed, cut)):
            assert time.monotonic() < deadline and proc.poll() is None, "the two commands never started"
            time.sleep(0.02)
        killed.kill()
        cut.cut_link()
        # The bound is the heartbeat (5 s) plus --connect-timeout: a hang fails here.
        stdout, stderr = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 255, stderr
    out = prefixed(stdout)
    others = [h for h in healthy.hosts if h not in (killed, cut)]
    assert {label: out[label] for label in out} == {h.name: h.hostname for h in others}
    closing = [ln for ln in stderr.splitlines() if ln.startswith(("h5:", "h9:"))]
    assert len(closing) == 2, stderr
    # Killed mid-command: the connection ends; cut: the heartbeat goes unanswered for 3 s.
    assert all(("lost" in ln or "unreachable" in ln) for ln in closing), stderr
    assert not [ln for ln in stderr.splitlines() if ln.split(":")[0] in {h.name for h in others}]


def ns_mounts(c: Cluster) -> list[str]:
    args: list[str] = []
    for h in c.hosts:
        args += ["-e", f"mount {h.address} /n/{h.name}"]
    return args


@needs_fuse
@pytest.mark.fuse
def test_a_namespace_of_sixteen_with_one_absent_runs_and_only_that_subtree_fails(healthy: Cluster) -> None:
    absent = healthy["h7"]
    absent.kill()
    script = "ls /n/h7; echo status=$?; ls /n/h3; cat /n/h12/dev/sysname"
    r = subprocess.run(
        ninefs_command("ns", "run", *ns_mounts(healthy), "--", "sh", "-c", script),
        capture_output=True,
        text=True,
        timeout=60,
        env=healthy.env,
    )
    assert r.returncode == 0, r.stderr
    assert absent.address in r.stderr or "h7" in r.stderr  # the warning names the absent host
    lines = r.stdout.splitlines()
    assert lines[0].startswith("status=") and lines[0] != "status=0"
    assert {"cmd", "dev", "fs", "proc"} <= set(lines[1:-1])
    assert lines[-1] == "nfh12"


@needs_fuse
@pytest.mark.fuse
def test_ns_run_strict_with_a_host_absent_runs_nothing(healthy: Cluster, tmp_path: Path) -> None:
    healthy["h7"].kill()
    ran = tmp_path / "ran"
    r = subprocess.run(
        ninefs_command("ns", "run", "--strict", *ns_mounts(healthy), "--", "touch", str(ran)),
        capture_output=True,
        text=True,
        timeout=60,
        env=healthy.env,
    )
    assert r.returncode != 0 and healthy["h7"].address in r.stderr
    assert not ran.exists()


@needs_fuse
@pytest.mark.fuse
def test_a_host_restarted_rejoins_a_running_namespace(healthy: Cluster, tmp_path: Path) -> None:
    absent = healthy["h7"]
    absent.kill()
    waiting = tmp_path / "waiting"
    # Up to 30 s for the host to come back: the shell polls its sysname like a user would.
    script = (
        f"cat /n/h7/dev/sysname 2>/dev/null && echo too-early; touch {waiting}; i=0; "
        "while [ $i -lt 150 ]; do cat /n/h7/dev/sysname 2>/dev/null && exit 0; sleep 0.2; i=$((i+1)); done; "
        "exit 1"
    )
    proc = subprocess.Popen(
        ninefs_command("ns", "run", *ns_mounts(healthy), "--", "sh", "-c", script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=healthy.env,
    )
    try:
        deadline = time.monotonic() + 30
        while not waiting.exists():
            assert time.monotonic() < deadline and proc.poll() is None, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.05)
        absent.restart()
        stdout, stderr = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout == f"{absent.hostname}\n"
