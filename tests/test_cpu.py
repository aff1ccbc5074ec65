"""`ninefs cpu`: a command on another machine that sees the caller's files at /mnt/term."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

import ninep
import ninep.sync

from .fuse_helpers import needs_fuse, on_terminal
from .servers import ninefs_command, server_process

pytestmark = [pytest.mark.fuse, needs_fuse]


def cpu(address: str, *args: str, stdin: str = "", cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ninefs_command("cpu", address, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
    )


@pytest.fixture
def machine(tmp_path):
    with server_process("--machine", str(tmp_path), "--allow-exec") as (address, _):
        yield address


def test_the_remote_command_reads_and_writes_the_callers_files(machine, tmp_path):
    mine = tmp_path / "caller"
    mine.mkdir()
    (mine / "notes.txt").write_text("the caller's notes\n")
    r = cpu(
        machine,
        "--",
        "sh",
        "-c",
        f"cat /mnt/term{mine}/notes.txt; echo from the remote > /mnt/term{mine}/reply.txt",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the caller's notes\n"
    assert (mine / "reply.txt").read_text() == "from the remote\n"


def test_exit_status_stdin_and_stderr_pass_through(machine):
    r = cpu(machine, "--", "sh", "-c", "wc -c; echo oops >&2; exit 3", stdin="x" * 100_000)
    assert r.returncode == 3
    assert r.stdout.strip() == "100000"
    assert r.stderr == "oops\n"


def test_cwd_is_the_callers_directory_under_mnt_term(machine, tmp_path):
    (tmp_path / "here.txt").write_text("here\n")
    r = cpu(machine, "--cwd", "--", "sh", "-c", "pwd; cat here.txt", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"/mnt/term{tmp_path}\nhere\n"


def test_the_callers_namespace_file_shapes_what_the_remote_sees(machine, tmp_path):
    with server_process() as (beta, _):
        with ninep.sync.connect(beta) as fs:
            fs.write_bytes("report", b"from beta\n")
        r = cpu(machine, "-e", f"mount {beta} /n/beta", "--", "cat", "/mnt/term/n/beta/report")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "from beta\n"


def test_a_server_without_exec_says_so(tmp_path):
    with server_process("--machine", str(tmp_path)) as (address, _):
        r = cpu(address, "--", "true")
        assert r.returncode == 1 and "--allow-exec" in r.stderr


def test_a_missing_program_is_exit_127_with_a_message(machine):
    r = cpu(machine, "--", "no-such-program-here")
    assert r.returncode == 127 and "no-such-program-here" in r.stderr


def test_a_signal_to_cpu_reaches_the_remote_command(machine, tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        ninefs_command(
            "cpu",
            machine,
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert "got TERM" in out
        assert proc.returncode == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_from_a_terminal_the_remote_command_gets_a_terminal_of_the_same_size(machine):
    script = "tty; stty size; read line; echo got $line; exit 5"
    argv = ninefs_command("cpu", machine, "--", "sh", "-c", script)
    status, out = on_terminal(argv, b"33 101", b"typed\r", size=(33, 101))
    assert status == 5, out
    text = out.decode(errors="replace")
    assert "/dev/pts/" in text and "33 101" in text and "got typed" in text


def test_ctrl_c_at_a_terminal_interrupts_the_remote_command(machine):
    script = "trap 'echo interrupted; exit 3' INT; echo ready; while :; do sleep 0.1; done"
    status, out = on_terminal(ninefs_command("cpu", machine, "--", "sh", "-c", script), b"ready", b"\x03")
    assert status == 3, out
    assert b"interrupted" in out


# --- /mnt/term served by the server itself (issue #19) ---------------------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server mounts /mnt/term itself only as root")


@pytest.fixture
def machine_and_pid(tmp_path):
    with server_process("--machine", str(tmp_path), "--allow-exec") as (address, proc):
        yield address, proc.pid


@as_root
def test_the_command_is_the_servers_own_child_not_a_second_python(machine_and_pid, tmp_path):
    address, server_pid = machine_and_pid
    (tmp_path / "seen.txt").write_text("seen\n")
    script = f"echo $PPID; cat /mnt/term{tmp_path}/seen.txt"
    r = cpu(address, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n", 1) == [str(server_pid), "seen\n"]


@as_root
def test_mnt_term_is_seen_by_the_command_only_and_the_hosts_mnt_is_unchanged(machine, tmp_path):
    (tmp_path / "mine.txt").write_text("mine\n")
    before = sorted(os.listdir("/mnt"))
    script = f"cat /mnt/term{tmp_path}/mine.txt; ls /mnt; echo ready; read line"
    proc = subprocess.Popen(
        ninefs_command("cpu", machine, "--", "sh", "-c", script),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        seen = []
        while (line := proc.stdout.readline()) not in ("ready\n", ""):
            seen.append(line.strip())
        assert seen[0] == "mine" and "term" in seen[1:], seen
        # While the command runs with it: not here, on the host, nor any change to /mnt.
        assert not os.path.exists(f"/mnt/term{tmp_path}/mine.txt")
        assert sorted(os.listdir("/mnt")) == before
        proc.stdin.write("done\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert sorted(os.listdir("/mnt")) == before
    assert set(before) <= set(seen[1:])  # the command's /mnt holds the host's entries too


@as_root
def test_a_program_of_the_callers_runs_from_mnt_term(machine):
    r = cpu(machine, "--", "/mnt/term/bin/echo", "from", "the caller's echo")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from the caller's echo\n"


async def dir_in_mnt_term(address: str, key: str | None = None) -> str:
    """The error of `term`, `dir /mnt/term/tmp` and exec on a cmd session."""
    async with ninep.connect(address, uname="nobody" if key else None, key=key) as fs:
        ctl, _ = await fs.walk_fid("cmd/clone")
        await fs.conn.open(ctl, ninep.ORDWR)
        await fs.conn.write(ctl, 0, b"term")
        with pytest.raises(ninep.NinePError) as e:  # at `dir`, or at the exec that would wait
            await fs.conn.write(ctl, 0, b"dir /mnt/term/tmp")
            await fs.conn.write(ctl, 0, b"exec true")
        return str(e.value)


@as_root
def test_dir_in_mnt_term_is_refused_not_waited_for(machine):
    assert "/mnt/term" in trio.run(dir_in_mnt_term, machine)


@as_root
def test_a_command_run_as_nobody_sees_the_callers_files_with_nobodys_rights(tmp_path):
    from ninep.auth import generate_key

    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(str(keys / "nobody"), "nobody@test")
    kind, blob = (keys / "nobody.pub").read_text().split()[:2]
    (keys / "authorized").write_text(f"{kind} {blob} nobody\n")
    shared = Path(tempfile.mkdtemp(prefix="ninefs-cpu-"))
    try:
        os.chmod(shared, 0o755)
        (shared / "open.txt").write_text("for everyone\n")
        (shared / "secret.txt").write_text("root's\n")
        os.chmod(shared / "secret.txt", 0o600)
        script = f"id -un; cat /mnt/term{shared}/open.txt; cat /mnt/term{shared}/secret.txt"
        args = ("--machine", "--allow-exec", "--authorized-keys", str(keys / "authorized"))
        with server_process(*args) as (address, _):
            r = cpu(address, "-k", str(keys / "nobody"), "-u", "nobody", "--", "sh", "-c", script)
            # As a user, `dir` is entered by the child, after the mount: one in /mnt/term
            # is refused at exec, before the child would wait there for the caller.
            assert "/mnt/term" in trio.run(dir_in_mnt_term, address, str(keys / "nobody"))
        assert r.stdout == "nobody\nfor everyone\n", r.stderr
        assert r.returncode != 0 and "Permission denied" in r.stderr
    finally:
        shutil.rmtree(shared)


def test_t_without_a_terminal_is_one_line_not_a_traceback(machine):
    r = cpu(machine, "-t", "--", "true")  # stdin: a pipe
    assert r.returncode == 2
    assert r.stderr == "ninefs cpu: -t: stdin is not a terminal\n"
