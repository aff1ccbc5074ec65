"""Namespaces that do not disturb each other (issue #16): many `ns run` and `cpu` sessions at
once, over the same mount points, one of them killed; and creates that obey MCREATE."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

import ninep.sync
from fileserver.ram import RamTree
from namespaces import MAFTER, MBEFORE, MCREATE, Namespace

from .fuse_helpers import needs_fuse
from .servers import ninefs_command, server_process, serving


def host_mounts(*paths: str) -> set[str]:
    """Mounts of this (the test's) mount namespace that a session of ours could have made:
    `ns run`'s FUSE mounts, and anything on or below `paths`. Other tests' mounts (other
    processes on this machine mount and unmount meanwhile) are not counted."""
    with open("/proc/self/mounts") as f:
        return {m for m in f if m.startswith("ninefs-ns ") or any(p in m.split()[1] for p in paths)}


def wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def processes_with(token: str) -> list[int]:
    """Pids whose command line mentions `token` (our sessions' commands carry one)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def checker(token: str, ready: Path, go: Path, rounds: int, checks: list[tuple[str, str]]) -> str:
    """A shell loop: say it is ready, wait for go, then `rounds` times check that each
    file holds what this session put there (exit 7 at the first that does not)."""
    tests = " && ".join(f'[ "$(cat {path} 2>&1)" = "{want}" ]' for path, want in checks)
    return (
        f": {token}; touch {ready}; while [ ! -e {go} ]; do sleep 0.1; done; "
        f"i=0; while [ $i -lt {rounds} ]; do "
        f'{tests} || {{ echo "lost at round $i" >&2; exit 7; }}; i=$((i+1)); sleep 0.2; done'
    )


@contextmanager
def started(argv: list[str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.fuse
@needs_fuse
def test_concurrent_sessions_over_the_same_mount_points_keep_their_own_and_leave_nothing(tmp_path):
    token = f"nsiso-{uuid.uuid4().hex[:10]}"
    missing = f"/n/ninefs-test-{uuid.uuid4().hex[:10]}"  # does not exist on this machine
    prefix = tmp_path / "prefix"  # exists: only the mount points below it are missing
    prefix.mkdir()
    (prefix / "already-here").write_text("kept\n")
    go = tmp_path / "go"
    n_before, term_before = os.path.exists("/n"), os.path.exists("/mnt/term")
    prefix_before = sorted(os.listdir(prefix))
    ours = (str(tmp_path), missing, "/mnt/term")
    mounts_before = host_mounts(*ours)
    work_dirs_before = set(glob.glob("/tmp/ninefs-ns-*"))

    sessions: list[tuple[str, list[str]]] = []  # (name, argv)
    for i in range(8):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "marker").write_text(f"session {i}\n")
        h = f"h{i % 3}"  # three sessions share each name: the mount points overlap
        rounds = 3 if i % 2 else 25  # half end early, while the others still use the same names
        script = checker(token, tmp_path / f"ready{i}", go, rounds,
                         [(f"{missing}/{h}/marker", f"session {i}"), (f"{prefix}/{h}/marker", f"session {i}")])  # fmt: skip
        argv = ninefs_command("ns", "run", "-e", f"bind {src} {missing}/{h}", "-e", f"bind {src} {prefix}/{h}",
                              "--", "sh", "-c", script)  # fmt: skip
        sessions.append((f"ns{i}", argv))

    with server_process("--machine", str(tmp_path), "--allow-exec") as (machine, _proc):
        for j in range(2):
            src = tmp_path / f"cpusrc{j}"
            src.mkdir()
            (src / "marker").write_text(f"cpu {j}\n")
            # The remote command sees this session's files at /mnt/term: every cpu session's
            # ns run on the server makes a /mnt/term of its own.
            script = checker(token, tmp_path / f"cpuready{j}", go, 25 if j else 3,
                             [(f"/mnt/term{src}/marker", f"cpu {j}")])  # fmt: skip
            sessions.append((f"cpu{j}", ninefs_command("cpu", machine, "-T", "--", "sh", "-c", script)))

        victim = "ns2"
        with ExitStack() as stack:
            procs = {name: stack.enter_context(started(argv)) for name, argv in sessions}
            readies = [tmp_path / f"ready{i}" for i in range(8)] + [
                tmp_path / f"cpuready{j}" for j in range(2)
            ]

            def all_ready() -> bool:
                for name, proc in procs.items():
                    assert proc.poll() is None, f"{name} ended early: {proc.stderr.read().decode()}"
                return all(r.exists() for r in readies)

            wait_for(all_ready, "every session to start")
            # While they run, out here: the missing names do not exist and no mount of theirs shows.
            assert not os.path.exists(missing)
            assert sorted(os.listdir(prefix)) == prefix_before
            assert host_mounts(*ours) == mounts_before
            go.touch()
            time.sleep(1)
            procs[victim].send_signal(signal.SIGKILL)
            results = {}
            for name, proc in procs.items():
                status = proc.wait(timeout=300)
                results[name] = (status, proc.stderr.read().decode())
        assert results[victim][0] == -signal.SIGKILL
        for name, (status, err) in results.items():
            if name != victim:
                assert status == 0, f"{name}: exit {status}: {err}"

    # Afterwards: nothing new on the host, no private work directory, no mount, no process.
    assert not os.path.exists(missing)
    assert os.path.exists("/n") == n_before
    assert sorted(os.listdir(prefix)) == prefix_before
    assert set(glob.glob("/tmp/ninefs-ns-*")) <= work_dirs_before
    assert os.path.exists("/mnt/term") == term_before
    assert host_mounts(*ours) == mounts_before
    wait_for(lambda: not processes_with(token), "the killed session's command to go", timeout=60)


@pytest.mark.fuse
@needs_fuse
def test_the_command_runs_on_after_idle_worker_threads_exit(tmp_path):
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits: the command must be
    # forked by a thread that lives as long as ns run (trio's workers go after 10 s idle).
    (tmp_path / "f").write_text("still here\n")
    r = ns_run("-e", f"bind {tmp_path} /n/ninefs-test-{uuid.uuid4().hex[:8]}", "--",
               "sh", "-c", f"sleep 12; cat {tmp_path}/f")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr


@pytest.mark.fuse
@needs_fuse
def test_a_killed_cpu_server_leaves_nothing_and_cpu_says_so_in_one_line(tmp_path):
    token = f"nsiso-{uuid.uuid4().hex[:10]}"
    ready = tmp_path / "ready"
    work_dirs_before = set(glob.glob("/tmp/ninefs-ns-*"))
    term_before = os.path.exists("/mnt/term")
    with server_process("--machine", str(tmp_path), "--allow-exec") as (machine, server):
        script = (
            f": {token}; touch {ready}; while cat /mnt/term{tmp_path}/ready >/dev/null; do sleep 0.2; done"
        )
        with started(ninefs_command("cpu", machine, "-T", "--", "sh", "-c", script)) as cpu:
            wait_for(ready.exists, "the remote command to start")
            server.kill()
            assert cpu.wait(timeout=120) == 1
            err = cpu.stderr.read().decode()
    assert err.count("\n") == 1 and "connection closed" in err, err
    assert os.path.exists("/mnt/term") == term_before
    assert set(glob.glob("/tmp/ninefs-ns-*")) <= work_dirs_before
    wait_for(lambda: not processes_with(token), "the remote command to go", timeout=60)


# --- MCREATE ------------------------------------------------------------------------------------


def ns_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ninefs_command("ns", "run", *args), capture_output=True, text=True, timeout=120)


@contextmanager
def exported(*lines: str) -> Iterator[str]:
    argv = ninefs_command("ns", "export", "--listen", "tcp!127.0.0.1!0")
    for line in lines:
        argv += ["-e", line]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving on" in line, line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def host_dirs(tmp_path):
    """A stand-in for /usr/local/bin, a directory already there to bind onto, another member."""
    hostbin = tmp_path / "hostbin"
    hostbin.mkdir()
    (hostbin / "tool").write_text("tool\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    return hostbin, existing, other


def union_cases(hostbin: Path, existing: Path) -> list[tuple[list[str], str]]:
    """(namespace lines, the union directory): a union with no MCREATE member anywhere."""
    missing = f"/n/ninefs-test-{uuid.uuid4().hex[:8]}/bin"
    return [
        ([f"bind -a {hostbin} {missing}"], missing),  # onto a name that did not exist
        ([f"bind -a {hostbin} {existing}"], str(existing)),  # onto a directory of the host
        ([f"bind -b {hostbin} {existing}"], str(existing)),
    ]


@pytest.mark.fuse
@needs_fuse
def test_create_in_a_union_without_mcreate_is_prohibited_through_ns_run(host_dirs):
    hostbin, existing, _ = host_dirs
    for lines, union in union_cases(hostbin, existing):
        args = [a for line in lines for a in ("-e", line)]
        r = ns_run(*args, "--", "sh", "-c", f"ls {union}; touch {union}/created")
        assert r.returncode != 0, lines
        assert "Operation not permitted" in r.stderr, r.stderr
        assert "tool" in r.stdout  # the union itself works
        assert sorted(os.listdir(hostbin)) == ["tool"]
        assert os.listdir(existing) == []


def test_create_in_a_union_without_mcreate_is_prohibited_through_ns_export(host_dirs):
    hostbin, existing, _ = host_dirs
    for lines, union in union_cases(hostbin, existing):
        # The host at / (with -c, as `ns run` has it), and the union over it.
        with exported("bind -c / /", *lines) as address, ninep.sync.connect(address) as fs:
            assert "tool" in fs.listdir(union)
            with pytest.raises(PermissionError, match="create prohibited"):
                fs.write_bytes(f"{union}/created", b"x")
        assert sorted(os.listdir(hostbin)) == ["tool"]
        assert os.listdir(existing) == []


@pytest.mark.fuse
@needs_fuse
def test_create_in_a_union_goes_to_the_member_bound_with_c(host_dirs):
    hostbin, existing, other = host_dirs
    r = ns_run("-e", f"bind -a {hostbin} {existing}", "-e", f"bind -bc {other} {existing}",
               "--", "sh", "-c", f"echo new > {existing}/created")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (other / "created").read_text() == "new\n"
    assert not (existing / "created").exists() and not (hostbin / "created").exists()
    lines = ("bind -c / /", f"bind -ac {hostbin} {existing}")
    with exported(*lines) as address, ninep.sync.connect(address) as fs:
        fs.write_bytes(f"{existing}/exported", b"x")
    assert (hostbin / "exported").read_bytes() == b"x"
    assert not (existing / "exported").exists()


async def test_the_directory_a_union_starts_from_joins_it_without_mcreate():
    # bind(2): `old` enters the union with no flags, whatever it was mounted with.
    alpha, beta = RamTree(), RamTree()
    async with serving(alpha) as a, serving(beta) as b:
        async with ninep.connect(a) as fa, ninep.connect(b) as fb:
            await fa.mkdir("bin")
            await fb.mkdir("bin")
        async with Namespace() as ns:
            await ns.mount(a, "/n/alpha", MCREATE)
            await ns.mount(b, "/n/beta")
            await ns.bind("/n/beta/bin", "/n/alpha/bin", MAFTER)
            async with serving(ns) as served, ninep.connect(served) as fs:
                with pytest.raises(PermissionError, match="create prohibited"):
                    await fs.write_bytes("/n/alpha/bin/new", b"x")
                await fs.write_bytes("/n/alpha/elsewhere", b"x")  # outside the union: alpha's -c
            await ns.bind("/n/beta/bin", "/n/alpha/bin", MBEFORE | MCREATE)
            async with serving(ns) as served, ninep.connect(served) as fs:
                await fs.write_bytes("/n/alpha/bin/new", b"to beta")
        async with ninep.connect(a) as fa, ninep.connect(b) as fb:
            assert not await fa.exists("bin/new")
            assert await fb.read_bytes("bin/new") == b"to beta"
